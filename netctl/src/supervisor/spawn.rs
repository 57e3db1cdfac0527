//! Starting a process inside a network namespace. The namespace file is opened before
//! the fork; the child, between fork and exec, enters the namespace, its own process
//! group and its user — all plain syscalls, safe in a forked child. The parent's threads
//! never change namespace.

use std::{
    fs,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
    process::Stdio,
};

use anyhow::{Context, bail};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{Gid, Pid, Uid, setgid, setgroups, setpgid, setuid},
};

use super::spec::ProcessSpec;
use crate::net::netns;

/// Logs larger than this are moved to `<name>.log.1` when the process starts again.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// Starts `spec` with `env` (its plain and secret variables), output appended to `log`.
pub fn spawn(
    spec: &ProcessSpec,
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let Some(program) = spec.argv.first() else {
        bail!("{}: nothing to run", spec.name);
    };
    let ns = netns::open(&spec.netns)?;
    let ns_fd = ns.as_raw_fd();
    let ids = match &spec.user {
        Some(name) => {
            let u = nix::unistd::User::from_name(name)
                .with_context(|| format!("looking up user {name}"))?
                .with_context(|| format!("there is no user {name}"))?;
            Some((u.uid, u.gid))
        }
        None => None,
    };
    let log_file = open_log(log)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log file")?)
        .stderr(log_file)
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe syscalls between fork and exec (no allocation):
    // setns on an fd opened before the fork, setpgid, setgroups/setgid/setuid.
    unsafe {
        cmd.pre_exec(move || enter(ns_fd, ids).map_err(std::io::Error::from));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {program} in {}", spec.netns))?;
    drop(ns);
    Ok(child)
}

/// In the child: namespace, process group, user.
fn enter(ns_fd: i32, ids: Option<(Uid, Gid)>) -> nix::Result<()> {
    // SAFETY: the fd stays open in the parent until spawn returns, so it is open in the
    // child (it is close-on-exec, closed only by the exec).
    let ns = unsafe { BorrowedFd::borrow_raw(ns_fd) };
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    if let Some((uid, gid)) = ids {
        setgroups(&[gid])?;
        setgid(gid)?;
        setuid(uid)?;
    }
    Ok(())
}

fn open_log(path: &Path) -> anyhow::Result<fs::File> {
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(path, path.with_extension("log.1"));
    }
    crate::instance::logs::open_private_log(path)
}

/// Appends a line from the supervisor to a process's log (start, exit, restart).
pub fn log_line(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = open_log(path) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(f, "[netctl {now:.3}] {line}");
    }
}
