//! `up` failing half-way, crashing half-way, or meeting objects it did not make: nothing
//! may be left half-made, and nothing that is not netctl's may be touched.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Platform, Slot, assert_success, block_on, snapshot::Snapshot};
use netctl::net::netlink::Netlink;

const FAILPOINT: &str = "NETCTL_FAILPOINT";

#[test]
fn a_failure_half_way_rolls_back_everything_the_run_made() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let platform = Platform::network_only(&slot);
    // 3 bridges + 9 namespaces + NAT + dataplane come first: fail among the TC hooks.
    let file = platform.file.to_str().expect("path");
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "fail-after:16")]);
    assert!(!out.status.success(), "up must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("injected failure"), "{err}");
    assert!(err.contains("rolled back the 16 resource(s)"), "{err}");
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // Failing at the very first resource leaves nothing either.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "fail-after:0")]);
    assert!(!out.status.success());
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // And a later clean up works.
    platform.up_ok();
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn a_crash_half_way_leaves_a_journal_that_down_and_up_clean() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let platform = Platform::network_only(&slot);
    let file = platform.file.to_str().expect("path");

    // Killed (abort) in the middle of creating the namespaces.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "abort-after:6")]);
    assert!(!out.status.success(), "the process died");
    let status = slot.netctl(&["status"]);
    assert!(
        !status.status.success(),
        "a half-made platform is not healthy"
    );
    let down = slot.netctl(&["down"]);
    assert_success(&down, "down after a crash");
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // Crash again, then `up` finishes the job from the journal.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "abort-after:20")]);
    assert!(!out.status.success());
    let up = platform.up_ok();
    assert!(up.contains("is up"), "{up}");
    let status = slot.netctl(&["status"]);
    assert_success(&status, "status after recovery");
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn names_taken_by_others_stop_up_before_any_change() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    let squatter = platform.plan.networks[1].bridge.clone();
    // A link netctl did not make, with the name of the platform's second bridge.
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.create_bridge(&squatter).await.expect("create squatter");
    });
    let before = Snapshot::take(&slot.prefix());
    let out = platform.up();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("a link named {squatter} already exists"))
            && err.contains("not changing anything"),
        "{err}"
    );
    before.assert_same(&Snapshot::take(&slot.prefix()));
    // The squatter is untouched by up, and by down.
    let _ = slot.netctl(&["down"]);
    assert!(common::snapshot::link_names().contains(&squatter));
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.delete_link(&squatter).await.expect("remove squatter");
    });
}

#[test]
fn subnets_that_collide_with_host_routes_are_refused() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    let taken = platform.plan.networks[0].subnet;
    let dummy = format!("{}route", slot.prefix());
    // A link of ours that owns a route into the platform's first subnet.
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        let idx = nl.create_bridge(&dummy).await.expect("dummy link");
        nl.add_address(
            idx,
            taken.hosts().nth(100).expect("host"),
            taken.prefix_len(),
        )
        .await
        .expect("address");
    });
    let before = Snapshot::take(&slot.prefix());
    let out = platform.up();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.delete_link(&dummy).await.expect("remove dummy");
    });
    assert!(!out.status.success());
    assert!(
        err.contains("overlaps the host's route") && err.contains(&dummy),
        "{err}"
    );
    let after = Snapshot::take(&slot.prefix());
    let mut before = before;
    before.links.remove(&dummy);
    before.assert_same(&after);
}
