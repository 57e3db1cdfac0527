//! The controller process: started by `up`, restarted by `up` when it died, stopped by
//! `down`; or run in the foreground for systemd.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{NETCTL, Platform, Slot, assert_success, block_on, snapshot::Snapshot};
use netctl::controller::{api, daemon};
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
