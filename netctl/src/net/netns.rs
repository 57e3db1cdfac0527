//! Named network namespaces, interchangeable with `ip netns`: the namespace is kept alive
//! by a bind mount of its nsfs file on `/run/netns/NAME`, so no process has to stay in it.
//!
//! `setns` and `unshare` change the calling *thread*; every function that enters a
//! namespace does so on a fresh thread that ends afterwards, never on a tokio worker.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context, anyhow, bail};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, statfs},
};

pub const NETNS_RUN_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// True when `/run/netns/NAME` is a live namespace (a mounted nsfs file).
pub fn exists(name: &str) -> bool {
    statfs(&path(name)).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Names of every namespace under `/run/netns` (ours or not).
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Creates the namespace `name`. Fails if a file of that name is already there.
pub fn create(name: &str) -> anyhow::Result<()> {
    ensure_run_dir()?;
    let target = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    let mount_target = target.clone();
    let made = thread::spawn(move || -> anyhow::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &mount_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "bind-mounting the new namespace on {}",
                mount_target.display()
            )
        })
    })
    .join()
    .map_err(|_| anyhow!("namespace creation thread panicked"))
    .and_then(|r| r);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(e.context(format!("creating network namespace {name}")));
    }
    Ok(())
}

/// Deletes the namespace `name`. Returns false when there was nothing to delete.
/// Interfaces inside are destroyed by the kernel once no process holds the namespace.
pub fn delete(name: &str) -> anyhow::Result<bool> {
    let target = path(name);
    if !target.exists() {
        return Ok(false);
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", target.display())),
    }
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("removing {}", target.display())),
    }
}

/// Opens the namespace file, e.g. to move a link into it.
pub fn open(name: &str) -> anyhow::Result<File> {
    if !exists(name) {
        bail!("network namespace {name} does not exist");
    }
    File::open(path(name)).with_context(|| format!("opening network namespace {name}"))
}

/// Opens a network namespace by its file: a runtime's `/var/run/netns/cni-...`,
/// `/proc/PID/ns/net`, or a named one's `/run/netns/NAME`. Refuses files that are not a
/// network namespace.
pub fn open_path(file: &Path) -> anyhow::Result<File> {
    let is_nsfs = statfs(file).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC);
    if !is_nsfs {
        bail!("{} is not a network namespace", file.display());
    }
    File::open(file).with_context(|| format!("opening network namespace {}", file.display()))
}

/// Runs `f` on a new thread that has entered namespace `name`.
pub fn run_in<T, F>(name: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    run_in_file(open(name)?, name, f)
}

/// Runs `f` on a new thread that has entered the namespace `ns` (`label` names it in
/// errors).
pub fn run_in_file<T, F>(ns: File, label: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let name = label.to_string();
    thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> anyhow::Result<T> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {name}"))?;
            f()
        })
        .context("spawning a namespace thread")?
        .join()
        .map_err(|_| anyhow!("thread in namespace {label} panicked"))?
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so that namespaces
/// created here are visible from other mount namespaces and vice versa.
fn ensure_run_dir() -> anyhow::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR).context("creating /run/netns")?;
    let share = || {
        mount(
            Some(""),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .context("bind-mounting /run/netns on itself")?;
            share().context("making /run/netns a shared mount")
        }
        Err(e) => Err(e).context("making /run/netns a shared mount"),
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), which eBPF
/// programs compare with `bpf_get_netns_cookie`.
pub fn current_cookie() -> anyhow::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}
