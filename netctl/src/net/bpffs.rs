//! The BPF filesystem where programs, maps and links are pinned so that they outlive the
//! process that loaded them.

use std::path::Path;

use anyhow::Context;
use netctl_common::maps::PIN_ROOT;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

pub const BPFFS: &str = "/sys/fs/bpf";

pub fn is_mounted() -> bool {
    statfs(Path::new(BPFFS)).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs on `/sys/fs/bpf` unless it is there. Returns true when it mounted it.
pub fn ensure_mounted() -> anyhow::Result<bool> {
    if is_mounted() {
        return Ok(false);
    }
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .context("mounting bpffs on /sys/fs/bpf")?;
    Ok(true)
}

/// Unmounts bpffs if nothing at all is pinned in it any more (empty directories of
/// netctl's own are removed first). Others' pins keep it mounted.
pub fn unmount_if_unused() -> anyhow::Result<()> {
    if !is_mounted() {
        return Ok(());
    }
    let root = Path::new(BPFFS);
    remove_pin_root_if_empty()?;
    // The kernel's preloaded iterators show up as `maps.debug` and `progs.debug`.
    let pinned = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| !e.file_name().to_string_lossy().ends_with(".debug"));
    if !pinned {
        nix::mount::umount(root).context("unmounting /sys/fs/bpf")?;
    }
    Ok(())
}

/// Removes `/sys/fs/bpf/netctl` once no instance has pins under it.
pub fn remove_pin_root_if_empty() -> anyhow::Result<()> {
    let dir = Path::new(PIN_ROOT);
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
