//! Stopping processes: the clean signal to the main process, a grace period, then
//! SIGKILL to everything left in its network namespace (nginx workers, PostgreSQL
//! backends, anything a service forked). Every process of an endpoint lives in the
//! endpoint's namespace, so the namespace says exactly what is ours.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{instance::ProcessId, net::netns};

/// The inode of a named namespace, `None` when it does not exist.
pub fn netns_inode(name: &str) -> Option<u64> {
    if !netns::exists(name) {
        return None;
    }
    fs::metadata(netns::path(name)).ok().map(|m| m.ino())
}

/// The namespace inode of a record, while its named namespace is still that one (an
/// inode number is reused once its namespace is gone: never sweep a stale one).
pub fn netns_inode_matching(r: &super::record::Record) -> Option<u64> {
    netns_inode(&r.netns).filter(|i| *i == r.netns_inode)
}

/// Live processes whose network namespace is `inode` (zombies excluded).
pub fn processes_in(inode: u64) -> Vec<ProcessId> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode))
        .filter_map(ProcessId::of)
        .collect()
}

/// Stops `main` with `signal`, waits up to `grace`, then kills whatever is left in the
/// namespace `inode`. Returns true when something had to be killed.
pub async fn terminate(
    main: Option<ProcessId>,
    signal: Signal,
    inode: Option<u64>,
    grace: Duration,
) -> bool {
    if let Some(p) = main.filter(ProcessId::is_alive) {
        let _ = kill(Pid::from_raw(p.pid as i32), signal);
        let deadline = Instant::now() + grace;
        while p.is_alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut killed = false;
    let mut left: Vec<ProcessId> = main.into_iter().filter(ProcessId::is_alive).collect();
    if let Some(inode) = inode {
        for p in processes_in(inode) {
            if !left.contains(&p) {
                left.push(p);
            }
        }
    }
    // Kill until nothing is left (a dying parent may still fork once).
    for _ in 0..50 {
        left.retain(ProcessId::is_alive);
        if left.is_empty() {
            break;
        }
        for p in &left {
            if p.is_alive() {
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
                killed = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(inode) = inode {
            for p in processes_in(inode) {
                if !left.contains(&p) {
                    left.push(p);
                }
            }
        }
    }
    killed
}
