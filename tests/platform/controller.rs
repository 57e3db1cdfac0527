//! The controller process: started by `up`, restarted by `up` when it died, stopped by
//! `down`; or run in the foreground for systemd.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{NETCTL, Platform, Slot, assert_success, block_on, snapshot::Snapshot};
use netctl::{
    instance::ProcessId,
    instance::{agent_client as api, daemon},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_starts_the_controller_restarts_it_after_a_crash_and_down_stops_it() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    {
        let platform = Platform::network_only(&slot);
        platform.up_ok();
        let first = daemon::running(&slot.instance()).expect("controller running after up");
        let status = block_on(api::get(&slot.instance(), "/v1/status")).expect("API answers");
        assert_eq!(status["instance"], slot.instance());
        assert_eq!(status["pid"], first.pid);

        kill(Pid::from_raw(first.pid as i32), Signal::SIGKILL).expect("kill -9");
        wait_for("the controller to die", || !first.is_alive());
        let status = slot.netctl(&["status"]);
        assert!(
            !status.status.success(),
            "status reports the dead controller"
        );

        let out = platform.up_ok();
        assert!(
            out.contains("1 created, 1 removed"),
            "only the controller is redone: {out}"
        );
        let second = daemon::running(&slot.instance()).expect("restarted");
        assert_ne!(second, first);
        assert_success(&slot.netctl(&["status"]), "status after restart");

        assert_success(&slot.netctl(&["down"]), "down");
        assert!(!second.is_alive(), "down stopped the controller");
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn up_foreground_runs_the_controller_until_down() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let platform = Platform::network_only(&slot);
    let mut child = Command::new(NETCTL)
        .args(["--prefix", &slot.prefix(), "up", "--foreground", "-f"])
        .arg(&platform.file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start up --foreground");
    wait_for("the foreground controller", || {
        daemon::running(&slot.instance()).is_some_and(|id| id.pid == child.id())
    });
    assert_success(&slot.netctl(&["status"]), "status");
    assert_success(&slot.netctl(&["down"]), "down");
    let status = child.wait().expect("foreground up exits");
    assert!(
        status.success(),
        "up --foreground exits cleanly on down: {status}"
    );
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

/// `up --foreground` with services: it supervises them (a killed one is restarted) for
/// as long as it runs, and `down` stops them and then it.
#[test]
fn up_foreground_supervises_services_until_down() {
    use std::io::Read;
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let [a, b, _, _] = slot.block().network().octets();
    let platform = Platform::from_toml(
        &slot,
        &format!(
            r#"
[networks.app]
subnet = "10.0.0.0/24"
[services.web]
network = "app"
address = "10.0.0.5"
ports = [8080]
command = ["{NETCTL}", "serve", "registry"]
env = {{ LISTEN = "{a}.{b}.0.5:8080" }}
health = {{ check = "http", path = "/health", interval = "300ms", timeout = "200ms", retries = 2 }}
"#
        ),
    );
    let mut child = Command::new(NETCTL)
        .args(["--prefix", &slot.prefix(), "up", "--foreground", "-f"])
        .arg(&platform.file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start up --foreground");
    let web = || {
        block_on(api::get(&slot.instance(), "/v1/status"))
            .ok()
            .and_then(|v| netctl::supervisor::status::from_status(&v))
            .and_then(|s| s.into_iter().find(|s| s.name == "web"))
    };
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (mut stdout, out) = (child.stdout.take().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // It says when its services are healthy, as `up` does.
    wait_for("up --foreground to report web healthy", || {
        out.lock().unwrap().contains("1 services healthy")
    });
    assert!(web().is_some_and(|s| s.state == netctl::supervisor::ServiceState::Healthy));
    assert_eq!(daemon::running(&slot.instance()).unwrap().pid, child.id());
    let first = web().unwrap().pid.unwrap();
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    wait_for("web to be restarted", || {
        web().is_some_and(|s| {
            s.pid.is_some_and(|p| p != first)
                && s.state == netctl::supervisor::ServiceState::Healthy
        })
    });
    let second = ProcessId::of(web().unwrap().pid.unwrap()).unwrap();
    assert_success(&slot.netctl(&["down"]), "down");
    let status = child.wait().expect("foreground up exits");
    assert!(status.success(), "up --foreground exits on down: {status}");
    assert!(!second.is_alive(), "down stopped the service");
    reader.join().unwrap();
    let out = out.lock().unwrap().clone();
    assert!(
        out.lines().any(|l| l.starts_with("web ")),
        "the summary: {out}"
    );
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

/// A process that ignores its stop signal is killed when the grace period ends, with
/// whatever it started in its namespace (which never got a signal).
#[test]
fn a_process_ignoring_its_stop_signal_is_killed_after_the_grace_period() {
    require_root!();
    let slot = Slot::acquire();
    let ns = format!("{}stubborn", slot.prefix());
    netctl::net::netns::create(&ns).unwrap();
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = netctl::net::netns::delete(&self.0);
        }
    }
    let _ns = Gone(ns.clone());
    let mut main = netctl::net::netns::run_in(&ns, || {
        Ok(Command::new("/bin/sh")
            .args([
                "-c",
                "trap '' TERM; sleep 1000 & while :; do sleep 0.05; done",
            ])
            .spawn()?)
    })
    .unwrap();
    let inode = netctl::supervisor::stop::netns_inode(&ns).unwrap();
    wait_for("the child in the namespace", || {
        netctl::supervisor::stop::processes_in(inode).len() >= 2
    });
    let id = ProcessId::of(main.id()).unwrap();
    let grace = Duration::from_millis(800);
    let started = Instant::now();
    let killed = block_on(netctl::supervisor::stop::terminate(
        Some(id),
        Signal::SIGTERM,
        Some(inode),
        grace,
    ));
    let took = started.elapsed();
    let _ = main.wait();
    assert!(killed, "it had to be killed");
    assert!(
        took >= grace,
        "SIGTERM first, then the grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(2), "{took:?}");
    assert!(!id.is_alive());
    assert_eq!(
        netctl::supervisor::stop::processes_in(inode),
        Vec::new(),
        "nothing left in the namespace"
    );
}
