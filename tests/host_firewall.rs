//! The platform beside Docker Engine and a host firewall whose FORWARD policy is DROP, on
//! both dataplanes: a real `dockerd` (Debian's docker.io) starts first, on a host where it
//! turns forwarding on itself (so it sets FORWARD to DROP and loads br_netfilter, as on a
//! fresh machine); then the default platform comes up, FORWARD is set to DROP again, and
//! the shop answers through its port forward, orders commit, and `netctl connectivity`
//! finds every check as the policy says. netctl's accept chain removed behind its back is
//! named by `netctl status` (exit 1) and put back by `up`.
//!
//! It changes the host's firewall, so it runs alone (`cargo xtask test` runs it after the
//! rest of the suite). What it found is put back whatever happens: a guard restores the
//! FORWARD policy, ip_forward and br_netfilter's switch, stops dockerd and removes Docker's
//! chains; a crashed run left its notes in `/run/netctl-test-host-firewall.json`, which
//! the next run restores first.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Platform, Slot, assert_success,
    http::{self, get, post},
    relocate,
};
use netctl::{
    net::{iptables, sysctl},
    topology::{DEFAULT_TOPOLOGY, Topology},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NOTES: &str = "/run/netctl-test-host-firewall.json";
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// What the host had before the test, to put back.
#[derive(Debug, Serialize, Deserialize)]
struct HostState {
    forward_policy: String,
    ip_forward: String,
    bridge_nf: Option<String>,
    /// Docker's chains that were there already (another Docker's): left alone.
    docker_chains: Vec<(String, String)>,
    dockerd_pid: Option<u32>,
}

impl HostState {
    fn read() -> HostState {
        HostState {
            forward_policy: iptables::policy("filter", "FORWARD")
                .expect("iptables")
                .unwrap_or_else(|| "ACCEPT".into()),
            ip_forward: sysctl::read(sysctl::IP_FORWARD).expect("ip_forward"),
            bridge_nf: std::fs::read_to_string(BRIDGE_NF)
                .ok()
                .map(|s| s.trim().to_string()),
            docker_chains: docker_chains(),
            dockerd_pid: None,
        }
    }

    fn save(&self) {
        std::fs::write(NOTES, serde_json::to_vec(self).unwrap()).expect("notes");
    }

    fn restore(&self) {
        if let Some(pid) = self.dockerd_pid {
            stop_pid(pid);
        }
        remove_docker_chains(&self.docker_chains);
        set_forward_policy(&self.forward_policy);
        let _ = sysctl::write(sysctl::IP_FORWARD, &self.ip_forward);
        if let Some(v) = &self.bridge_nf {
            let _ = std::fs::write(BRIDGE_NF, v);
        }
        let _ = std::fs::remove_file(NOTES);
    }
}

/// Restores the host when dropped (also on panic).
struct Restore(HostState);

impl Drop for Restore {
    fn drop(&mut self) {
        self.0.restore();
    }
}

/// The host as it is, after putting back what a crashed earlier run changed.
fn take_host() -> Restore {
    if let Ok(text) = std::fs::read(NOTES)
        && let Ok(old) = serde_json::from_slice::<HostState>(&text)
    {
        eprintln!("a crashed run left its notes: restoring {old:?}");
        old.restore();
    }
    let state = HostState::read();
    state.save();
    Restore(state)
}

fn docker_chains() -> Vec<(String, String)> {
    ["filter", "nat"]
        .iter()
        .flat_map(|t| {
            iptables::save(t)
                .expect("iptables-save")
                .chains
                .into_iter()
                .filter(|c| c.starts_with("DOCKER"))
                .map(move |c| (t.to_string(), c))
        })
        .collect()
}

/// Deletes the jumps into Docker's chains and the chains themselves, but those in `keep`.
fn remove_docker_chains(keep: &[(String, String)]) {
    for table in ["filter", "nat"] {
        let Ok(t) = iptables::save(table) else {
            continue;
        };
        let gone = |c: &str| {
            c.starts_with("DOCKER") && !keep.iter().any(|(kt, kc)| kt == table && kc == c)
        };
        let mut script = format!("*{table}\n");
        for r in &t.rules {
            if r.target().is_some_and(|x| gone(&x)) && !gone(&r.chain) {
                script.push_str(&format!("-D {} {}\n", r.chain, r.spec));
            }
        }
        let chains: Vec<&String> = t.chains.iter().filter(|c| gone(c)).collect();
        for c in &chains {
            script.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            script.push_str(&format!("-X {c}\n"));
        }
        script.push_str("COMMIT\n");
        if let Err(e) = iptables::restore(&script) {
            eprintln!("removing Docker's {table} chains: {e:#}");
        }
    }
}

fn set_forward_policy(policy: &str) {
    let status = Command::new("iptables")
        .args(["-w", "-P", "FORWARD", policy])
        .status()
        .expect("iptables");
    assert!(status.success(), "iptables -P FORWARD {policy}");
}

fn stop_pid(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    let start = Instant::now();
    while nix::sys::signal::kill(pid, None).is_ok() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// A dockerd of the test's own: its own roots and socket, no docker0.
struct Dockerd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    fn start(host: &mut Restore) -> Dockerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| -> PathBuf { dir.path().join(name) };
        let log = std::fs::File::create(p("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .args(["--bridge=none", "--iptables=true", "--ip-forward=true"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd (cargo xtask setup installs docker.io)");
        host.0.dockerd_pid = Some(child.id());
        host.0.save();
        let mut d = Dockerd { child, _dir: dir };
        d.wait_ready();
        d
    }

    /// Up once it made its chains (what it does to the firewall is what matters here).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dockerd exited ({status}): {}",
                    std::fs::read_to_string(self._dir.path().join("dockerd.log"))
                        .unwrap_or_default()
                );
            }
            let ready = Path::new(&self._dir.path().join("docker.sock")).exists()
                && docker_chains().iter().any(|(_, c)| c == "DOCKER-USER");
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not come up: {}",
                std::fs::read_to_string(self._dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

#[test]
fn the_platform_works_beside_docker_and_a_forward_drop_policy_on_both_dataplanes() {
    require_root!();
    let mut host = take_host();
    // As on a fresh machine: forwarding off, so Docker turns it on and sets DROP.
    sysctl::write(sysctl::IP_FORWARD, "0").expect("ip_forward");
    let docker = Dockerd::start(&mut host);
    let policy = iptables::policy("filter", "FORWARD").unwrap();
    let br_nf = std::fs::read_to_string(BRIDGE_NF).unwrap_or_default();
    eprintln!(
        "dockerd up: FORWARD policy {policy:?}, bridge-nf-call-iptables {}",
        br_nf.trim()
    );
    assert_eq!(policy.as_deref(), Some("DROP"), "Docker's own DROP policy");

    let (slot_e, slot_i) = (Slot::acquire(), Slot::acquire());
    std::thread::scope(|s| {
        let e = s.spawn(|| beside_docker("ebpf", &slot_e));
        let i = s.spawn(|| beside_docker("iptables", &slot_i));
        e.join().expect("ebpf side");
        i.join().expect("iptables side");
    });
    drop(docker);
    drop(host);
    assert_eq!(
        iptables::policy("filter", "FORWARD").unwrap().as_deref(),
        Some(HostState::read().forward_policy.as_str())
    );
}

fn beside_docker(mode: &str, slot: &Slot) {
    let mut topology = Topology::parse(DEFAULT_TOPOLOGY).expect("default parses");
    relocate(&mut topology, slot.block());
    topology.dataplane.mode = mode.into();
    let platform = Platform::from_topology(slot, &topology);
    platform.up_ok();
    // And DROP after `up`, as a firewall started later would.
    set_forward_policy("DROP");

    let rt = http::runtime();
    let client = http::client();
    let edge = platform.edge_url();
    let gets = (0..20)
        .filter(|_| {
            rt.block_on(get(&client, &format!("{edge}/api/products")))
                .status
                == 200
        })
        .count();
    let posts = (0..5)
        .filter(|i| {
            let body =
                format!(r#"{{"customer_id": "docker-{i}", "product_id": "1", "quantity": 1}}"#);
            rt.block_on(post(&client, &format!("{edge}/api/orders"), &body))
                .status
                == 201
        })
        .count();
    eprintln!("{mode}: beside dockerd, FORWARD DROP: {gets}/20 GET, {posts}/5 POST served");
    assert_eq!((gets, posts), (20, 5), "{mode}");

    // Same-bridge (edge -> gateway, through br_netfilter) and cross-tier traffic, every pair.
    let out = slot.netctl(&["connectivity", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("connectivity json");
    assert!(out.status.success(), "{mode}: {v:#}");
    let status = |slot: &Slot| -> (bool, Value) {
        let out = slot.netctl(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("status json");
        (out.status.success(), v)
    };
    let (ok, v) = status(slot);
    assert!(ok, "{mode}: {v:#}");
    assert_eq!(v["host_firewall"]["blocked"], false, "{mode}: {v:#}");
    assert_eq!(v["host_firewall"]["forward_policy"], "DROP");

    // netctl's jump removed behind its back: status names the cause; `up` puts it back.
    let chain = format!("NCTL-FWD-{}", slot.instance());
    let filter = iptables::save("filter").unwrap();
    let jump = filter
        .rules
        .iter()
        .find(|r| r.chain == "FORWARD" && r.target().as_deref() == Some(chain.as_str()))
        .expect("the jump to the accept chain");
    iptables::restore(&format!("*filter\n-D FORWARD {}\nCOMMIT\n", jump.spec)).unwrap();
    let (ok, v) = status(slot);
    assert!(!ok, "{mode}: status exits 1");
    assert_eq!(v["host_firewall"]["blocked"], true, "{mode}: {v:#}");
    let found = v["host_firewall"]["findings"].to_string();
    assert!(
        found.contains("FORWARD policy is DROP") && found.contains(&chain),
        "{mode}: {found}"
    );
    // Without it the host's DROP is what the shop meets: proof that the chain carries it.
    let cut = rt.block_on(get(&client, &format!("{edge}/api/products")));
    eprintln!("{mode}: jump removed: GET answered {}", cut.status);
    assert_ne!(
        cut.status, 200,
        "{mode}: served without netctl's accept chain"
    );
    platform.up_ok();
    let (ok, v) = status(slot);
    assert!(ok, "{mode}: fixed by up: {v:#}");
    let r = rt.block_on(get(&client, &format!("{edge}/api/products")));
    assert_eq!(r.status, 200, "{mode}");

    // `down` removes the chain and its jump, nothing else.
    assert_success(&slot.netctl(&["down"]), "netctl down");
    let filter = iptables::save("filter").unwrap();
    assert!(!filter.chains.contains(&chain), "{mode}: {chain} left");
    assert!(
        !filter
            .rules
            .iter()
            .any(|r| r.target().as_deref() == Some(chain.as_str())),
        "{mode}: a jump to {chain} left"
    );
}
