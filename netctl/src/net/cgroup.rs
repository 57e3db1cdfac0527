//! Finding the cgroup v2 root, where the socket-level load balancer attaches so that it
//! sees every process on the host and in every namespace.

use std::path::PathBuf;

use anyhow::{Context, anyhow};

/// Mount point of the cgroup2 filesystem (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn v2_root() -> anyhow::Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .ok_or_else(|| {
            anyhow!("no cgroup2 filesystem is mounted (socket-level load balancing needs one)")
        })
}
