//! The controller process of an instance: started in the background by `up`, found again
//! through its pid file, stopped by `down`. A pid file holds the pid and the process's start
//! time, so a recycled pid is never mistaken for (or signalled as) the controller.

use std::{
    fs, io,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    ProcessId, agent_client as api,
    logs::{open_private_log, restrict_logs},
    paths::{controller_log, controller_pid_file},
    private_file::write_private,
};

/// Records the calling process as the controller of `instance`.
pub fn write_pid_file(instance: &str) -> anyhow::Result<()> {
    let me = ProcessId::current().context("reading /proc/self/stat")?;
    // Written whole or not at all, 0600 in the 0700 state directory, like the state file.
    write_private(
        &controller_pid_file(instance),
        format!("{} {}\n", me.pid, me.start_time).as_bytes(),
    )
}

/// The running controller of `instance`, if any.
pub fn running(instance: &str) -> Option<ProcessId> {
    let text = fs::read_to_string(controller_pid_file(instance)).ok()?;
    let mut parts = text.split_whitespace();
    let id = ProcessId {
        pid: parts.next()?.parse().ok()?,
        start_time: parts.next()?.parse().ok()?,
    };
    id.is_alive().then_some(id)
}

/// Whether the running controller of `instance` runs this very binary. A rebuilt or
/// upgraded `netctl` makes `up` replace an older controller.
pub fn is_current(id: &ProcessId) -> bool {
    let (Ok(running), Ok(me)) = (
        fs::read_link(format!("/proc/{}/exe", id.pid)),
        std::env::current_exe(),
    ) else {
        return false;
    };
    running == me
}

/// Starts `netctl controller` for `instance` in its own session, logging to the instance's
/// log directory, and waits until its API answers.
pub async fn spawn(instance: &str, prefix: &str) -> anyhow::Result<ProcessId> {
    let exe = std::env::current_exe().context("finding the netctl binary")?;
    let log_path = controller_log(instance);
    let log = open_private_log(&log_path)?;
    restrict_logs(instance);
    let mut cmd = Command::new(exe);
    cmd.arg("--prefix")
        .arg(prefix)
        .arg("controller")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    // SAFETY: setsid is async-signal-safe; it detaches the controller from our terminal
    // and process group so that it outlives `netctl up`.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd.spawn().context("starting the controller")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().context("checking the controller")? {
            bail!(
                "the controller exited during start-up ({status}); see {}",
                log_path.display()
            );
        }
        if api::get(instance, "/v1/status").await.is_ok() {
            let id = ProcessId::of(child.id()).context("reading the controller's /proc entry")?;
            return Ok(id);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the controller did not answer within 15 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the controller: SIGTERM, then SIGKILL after `grace`. False when none was running.
pub async fn stop(instance: &str, grace: Duration) -> anyhow::Result<bool> {
    let Some(id) = running(instance) else {
        let _ = fs::remove_file(controller_pid_file(instance));
        return Ok(false);
    };
    let pid = Pid::from_raw(id.pid as i32);
    kill(pid, Signal::SIGTERM).context("signalling the controller")?;
    let deadline = Instant::now() + grace;
    while id.is_alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if id.is_alive() {
        tracing::warn!(pid = id.pid, "controller ignored SIGTERM; killing it");
        let _ = kill(pid, Signal::SIGKILL);
        while id.is_alive() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = fs::remove_file(controller_pid_file(instance));
    let _ = fs::remove_file(api::socket_path(instance));
    Ok(true)
}

/// Asks a running controller to re-read the state file.
pub fn reload(instance: &str) -> anyhow::Result<bool> {
    match running(instance) {
        Some(id) => {
            kill(Pid::from_raw(id.pid as i32), Signal::SIGHUP)
                .context("signalling the controller")?;
            Ok(true)
        }
        None => Ok(false),
    }
}
