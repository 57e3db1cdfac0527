//! The iptables dataplane (`--dataplane iptables`) for real: kube-proxy-style rules from
//! Debian's iptables, real namespaces and TCP. VIP spread, listed backends, hairpin,
//! health, drain, host ports from localhost and from outside, masquerade, switching
//! dataplanes, rollback, and `down` leaving no rule or chain behind.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use netctl::topology::TopologyBuilder;

use common::{
    Platform, Slot, assert_success,
    internet::Internet,
    snapshot::Snapshot,
    traffic::{NamedServer, Session, greetings, tcp_send, tcp_sink},
};
use serde_json::Value;

const PORT: u16 = 7000;
const EXT_PORT: u16 = 7100;

/// A client tier, three web replicas on another tier, and `ext`: a VIP over two of the
/// replicas listed by hand, with a target port.
fn topology(mode: &str) -> TopologyBuilder {
    common::two_tiers()
        .service("web", |s| {
            s.network("back").address("10.0.2.10").replicas(3).tcp(PORT)
        })
        .service("ext", |s| {
            s.tcp(EXT_PORT)
                .backends(&[&format!("10.0.2.10:{PORT}"), &format!("10.0.2.11:{PORT}")])
                .lb("random")
        })
        .mode(mode)
}

/// Lines of `iptables-save` that are not another test slot's and not counters or
/// built-in chain headers: what a test may compare before and after.
fn iptables_lines(slot: &Slot) -> BTreeSet<String> {
    let out = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    assert!(out.status.success());
    let own = format!("NCTL-{}-", slot.instance());
    let own_accept = format!("NCTL-FWD-{}", slot.instance());
    let is_own = |l: &str| {
        l.contains(&own)
            || l.split_whitespace()
                .any(|w| w.trim_start_matches(':') == own_accept)
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(":NCTL-"))
        .filter(|l| is_own(l) || !is_someone_elses(l))
        .map(str::to_string)
        .collect()
}

/// A line of another netctl instance (other slots, the benchmarks' `NCTL-bncp-`/`NCTL-bs-`,
/// their accept chains) or a rule another test inserts for a while (`netctl test:` comment).
fn is_someone_elses(line: &str) -> bool {
    line.contains("NCTL-") || line.contains("netctl test:")
}

fn own_rules(slot: &Slot) -> Vec<String> {
    let own = format!("NCTL-{}-", slot.instance());
    iptables_lines(slot)
        .into_iter()
        .filter(|l| l.contains(&own))
        .collect()
}

/// Active backends of a frontend as `netctl services --json` reads them from the rules.
fn active(slot: &Slot, service: &str, port: u16) -> Vec<Ipv4Addr> {
    let out = slot.netctl(&["services", "--json", "--service", service]);
    assert_success(&out, "netctl services");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["frontends"]
        .as_array()
        .expect("frontends")
        .iter()
        .filter(|f| f["port"] == port && f["host_port"] == false)
        .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["state"] == "active")
        .map(|b| b["addr"].as_str().expect("addr").parse().expect("ip"))
        .collect()
}

fn wait_active(slot: &Slot, service: &str, port: u16, n: usize) -> Duration {
    let start = Instant::now();
    loop {
        let now = active(slot, service, port);
        if now.len() == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "waiting for {n} active backends of {service}, have {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spread(answers: &[Result<String, String>]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.clone().expect("every connection answered"))
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn iptables_vips_spread_heal_drain_and_down_leaves_no_rule() {
    require_root!();
    let slot = Slot::acquire();
    let before = iptables_lines(&slot);
    let snapshot = Snapshot::take(&slot.prefix());
    {
        let platform = Platform::build(&slot, topology("iptables"));
        let out = platform.up_ok();
        assert!(out.contains("iptables dataplane"), "{out}");
        let mut servers: Vec<Option<NamedServer>> = (1..=3)
            .map(|i| {
                let ep = platform.endpoint(&format!("web-{i}"));
                Some(NamedServer::start(&ep.netns, ep.address, PORT, &ep.name))
            })
            .collect();
        wait_active(&slot, "web", PORT, 3);
        assert!(
            !own_rules(&slot).is_empty(),
            "the rules are iptables rules of this instance"
        );
        let client = platform.endpoint("client").netns.clone();
        let vip = platform.plan.service("web").expect("web").vip;

        // Round-robin (statistic nth) over all three.
        let counts = spread(&greetings(&client, vip, PORT, 300));
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (name, n) in &counts {
            assert!((60..=138).contains(n), "{name} got {n} of 300: {counts:?}");
        }
        // Listed backends with a target port: only the two listed replicas, at random.
        let ext_vip = platform.plan.service("ext").expect("ext").vip;
        wait_active(&slot, "ext", EXT_PORT, 2);
        let counts = spread(&greetings(&client, ext_vip, EXT_PORT, 100));
        assert_eq!(
            counts.keys().collect::<BTreeSet<_>>(),
            ["web-1", "web-2"]
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>()
                .iter()
                .collect(),
            "{counts:?}"
        );
        // Hairpin: a replica reaching its own service through the VIP gets itself too.
        let web1 = platform.endpoint("web-1").netns.clone();
        let counts = spread(&greetings(&web1, vip, PORT, 30));
        assert_eq!(counts.len(), 3, "hairpin: {counts:?}");

        // The kernel's conntrack shows the NAT; flows say what this mode lacks.
        let out = slot.netctl(&["conntrack", "--json", "--service", "web"]);
        assert_success(&out, "netctl conntrack");
        let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
        let client_addr = platform.endpoint("client").address.to_string();
        assert!(
            conns.iter().any(|c| c["client"] == client_addr
                && c["frontend"] == vip.to_string()
                && c["nat"] == true),
            "{conns:?}"
        );
        let out = slot.netctl(&["flows"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("iptables dataplane"), "{err}");

        // An established connection survives the drain of its backend; new ones avoid it.
        let mut session = Session::open(&client, vip, PORT);
        let mine = session.server.clone();
        let drain = format!("web/{mine}");
        assert_success(&slot.netctl(&["drain", &drain]), "netctl drain");
        wait_active(&slot, "web", PORT, 2);
        assert_eq!(
            session.ask("a").expect("drained, not cut"),
            format!("{mine}:a")
        );
        let after = spread(&greetings(&client, vip, PORT, 20));
        assert!(!after.contains_key(&mine), "{after:?}");
        assert_success(
            &slot.netctl(&["drain", &drain, "--undo"]),
            "netctl drain --undo",
        );
        wait_active(&slot, "web", PORT, 3);

        // A killed backend leaves its chain within two seconds.
        servers[1] = None;
        let took = wait_active(&slot, "web", PORT, 2);
        assert!(took < Duration::from_secs(2), "left after {took:?}");
        let counts = spread(&greetings(&client, vip, PORT, 30));
        assert!(!counts.contains_key("web-2"), "{counts:?}");

        // No backend at all: refused at once (REJECT), not a timeout.
        servers.clear();
        wait_active(&slot, "web", PORT, 0);
        let started = Instant::now();
        let refused = greetings(&client, vip, PORT, 1);
        assert!(refused[0].is_err(), "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        iptables_lines(&slot),
        before,
        "down leaves iptables as it found it"
    );
    snapshot.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn iptables_host_ports_from_localhost_and_outside_and_masquerade() {
    require_root!();
    let slot = Slot::acquire();
    let internet = Internet::create(&slot);
    let text = format!(
        r#"
[platform]
uplinks = ["{uplink}"]
[networks.front]
subnet = "10.0.1.0/24"
[services.edge]
network = "front"
address = "10.0.1.10"
ports = [80]
[[port_forwards]]
host_port = 8080
service = "edge"
[dataplane]
mode = "iptables"
"#,
        uplink = internet.name
    );
    let platform = Platform::from_toml(&slot, &text);
    platform.up_ok();
    let edge = platform.endpoint("edge");
    let _server = NamedServer::start(&edge.netns, edge.address, 80, "edge");
    wait_active(&slot, "edge", 80, 1);
    let port = slot.host_port(0);

    // localhost:PORT on the host (OUTPUT DNAT, route_localnet, masquerade).
    let s = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .expect("localhost host port");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
    assert_eq!(line.trim(), "edge");

    // From outside, through the uplink (PREROUTING DNAT).
    let outside = greetings(&internet.name, internet.host_addr, port, 3);
    assert!(
        outside.iter().all(|g| g.as_deref() == Ok("edge")),
        "{outside:?}"
    );

    // Masquerade: the edge reaching the outside appears as the host's uplink address.
    let sink = tcp_sink(&internet.name, internet.addr, 9000);
    tcp_send(&edge.netns, internet.addr, 9000, 100);
    let got = sink.join().expect("sink");
    assert_eq!(got.bytes, 100);
    assert_eq!(
        got.peer.ip(),
        std::net::IpAddr::V4(internet.host_addr),
        "masqueraded"
    );

    // `services` shows the host port from the rules.
    let out = slot.netctl(&["services", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["host_port"] == true && f["port"] == port),
        "{v}"
    );
}

#[test]
fn switching_dataplanes_keeps_the_namespaces_and_rolls_back_on_failure() {
    require_root!();
    let slot = Slot::acquire();
    let before = iptables_lines(&slot);
    let platform = Platform::build(&slot, topology("ebpf"));
    platform.up_ok();
    let file = platform.file.to_str().unwrap().to_string();
    let client = platform.endpoint("client").netns.clone();
    let web = platform.endpoint("web-1");
    let _server = NamedServer::start(&web.netns, web.address, PORT, "web-1");
    let vip = platform.plan.service("web").expect("web").vip;

    // eBPF -> iptables: the dataplane is swapped, the namespaces stay.
    let out = slot.netctl(&["up", "-f", &file, "--dataplane", "iptables"]);
    assert_success(&out, "up --dataplane iptables");
    let status: Value =
        serde_json::from_slice(&slot.netctl(&["status", "--json"]).stdout).expect("json");
    let kinds: BTreeSet<String> = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains("iptables") && !kinds.contains("dataplane") && !kinds.contains("tc-hook")
    );
    assert_eq!(status["healthy"], true);
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/netctl/{}", slot.instance())).exists());
    wait_active(&slot, "web", PORT, 1);
    assert_eq!(
        greetings(&client, vip, PORT, 2),
        [Ok("web-1".into()), Ok("web-1".into())]
    );

    // ... and back: the chains go, the programs come back.
    platform.up_ok();
    assert!(own_rules(&slot).is_empty(), "{:?}", own_rules(&slot));
    wait_active(&slot, "web", PORT, 1);
    assert_eq!(greetings(&client, vip, PORT, 1), [Ok("web-1".into())]);

    // A failure after the chains were made removes them with the rest.
    assert_success(&slot.netctl(&["down"]), "down");
    let resources = 2 + 4 + 1; // bridges, namespaces, iptables: fail at the controller
    let out = slot.netctl_env(
        &["up", "-f", &file, "--dataplane", "iptables"],
        &[("NETCTL_FAILPOINT", &format!("fail-after:{resources}"))],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(iptables_lines(&slot), before, "rollback leaves no rule");
}
