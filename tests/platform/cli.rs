//! The command line on bad input and without root: one clear message, a non-zero exit,
//! nothing created.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{os::unix::process::CommandExt, process::Command};

use common::{NETCTL, Slot, snapshot::Snapshot};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_invalid_topology_is_refused_with_every_problem_and_nothing_made() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[networks.a]
subnet = "10.230.0.0/24"
[networks.b]
subnet = "10.230.0.128/25"
[services.web]
network = "a"
address = "10.231.0.5"
[services.db]
network = "nowhere"
"#,
    )
    .expect("write");
    let out = slot.netctl(&["up", "-f", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.toml: 3 problems"), "{err}");
    assert!(
        err.contains("networks.a.subnet (10.230.0.0/24) overlaps networks.b.subnet"),
        "{err}"
    );
    assert!(
        err.contains("services.web.address: 10.231.0.5 is outside network \"a\""),
        "{err}"
    );
    assert!(
        err.contains("services.db.network: unknown network \"nowhere\""),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn a_missing_or_malformed_file_is_a_clear_error() {
    let out = Command::new(NETCTL)
        .args(["validate", "-f", "/nonexistent/topology.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reading topology file /nonexistent/topology.toml"));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("t.toml");
    std::fs::write(&file, "[networks.a\nsubnet = 1").expect("write");
    let out = Command::new(NETCTL)
        .args(["validate", "-f", file.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("t.toml: 1 problem") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn bad_arguments_exit_with_usage_errors() {
    let out = Command::new(NETCTL).arg("upp").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unrecognized subcommand"));
    let out = Command::new(NETCTL)
        .args(["flows", "--limit", "many"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn commands_that_change_the_host_refuse_to_run_without_root() {
    require_root!();
    // Run a copy of the binary as `nobody` (the build directory may not be readable to it).
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("netctl");
    std::fs::copy(NETCTL, &bin).expect("copy binary");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    // Every subcommand but `validate` (and `--help`/`--version`), each with the name it
    // reports: (arguments, "netctl NAME needs root").
    let commands: &[(&[&str], &str)] = &[
        (&["up"], "up"),
        (&["up", "--foreground"], "up"),
        (&["down"], "down"),
        (&["down", "--volumes"], "down"),
        (&["status"], "status"),
        (&["flows"], "flows"),
        (&["services"], "services"),
        (&["conntrack"], "conntrack"),
        (&["conntrack", "--summary"], "conntrack"),
        (&["maps"], "maps"),
        (&["maps", "CT"], "maps"),
        (&["drain", "product/product-1"], "drain"),
        (&["drain", "--undo", "product/product-1"], "drain"),
        (&["endpoints"], "endpoints"),
        (&["endpoints", "rm", "c1"], "endpoints"),
        (
            &["endpoints", "add", "c1", "--netns", "x", "--network", "y"],
            "endpoints",
        ),
        (&["policy"], "policy"),
        (&["connectivity"], "connectivity"),
        (
            &["connectivity", "--json", "--service", "edge"],
            "connectivity",
        ),
        (
            &["policy", "apply", "-f", "/nonexistent.toml"],
            "policy apply",
        ),
        (&["drops"], "drops"),
        (&["monitor"], "monitor"),
        (&["report"], "report"),
        (&["topology"], "topology"),
        (&["health", "--once"], "health"),
        (&["logs", "product"], "logs"),
        (&["logs", "-f", "controller"], "logs"),
        (&["serve", "registry"], "serve"),
        (&["serve", "order"], "serve"),
        (&["controller"], "controller"),
    ];
    // Nothing about the commands may be missing from that list.
    let help = Command::new(NETCTL).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("help lists commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| !["help", "validate"].contains(c))
        .collect();
    for c in &listed {
        assert!(
            commands.iter().any(|(args, _)| args[0] == *c),
            "subcommand {c} is not checked without root"
        );
    }
    assert!(listed.len() >= 16, "{listed:?}");
    for (args, name) in commands {
        let out = Command::new(&bin)
            .args(*args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(&format!("netctl {name} needs root")),
            "{args:?}: {err}"
        );
    }
    // Validation needs no root.
    let out = Command::new(&bin)
        .arg("validate")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    // With a short summary of the resolved plan: networks, and where each service runs.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("ok: 3 networks, 7 services in 9 namespaces"),
        "{text}"
    );
    assert!(
        text.contains("backend   172.21.0.0/24  172.21.0.1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("product")
            && l.contains("172.21.0.10 172.21.0.11 172.21.0.12")
            && l.contains("5000/tcp")),
        "{text}"
    );
}

#[test]
fn down_status_and_flows_with_nothing_up() {
    require_root!();
    let slot = Slot::acquire();
    let out = slot.netctl(&["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing is up"));
    let out = slot.netctl(&["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no netctl platform is up"));
    let out = slot.netctl(&["flows"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no netctl platform is up"));
}
