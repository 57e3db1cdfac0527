//! Network policy for real, on the default platform (its seed policies): every pair of
//! (source service, destination service, port) gets the verdict the reference model
//! computes; the gateway's rate limit holds per source; `netctl monitor` shows the drops;
//! a policy change keeps allowed connections and cuts revoked ones.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    NETCTL, Platform, Slot, assert_success,
    internet::Internet,
    traffic::{NamedServer, Session, burst_connects, probe},
};
use netctl::{
    policy::model,
    topology::{DEFAULT_TOPOLOGY, Topology, policy::Peer},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_millis(400);
const EXTRA_PORT: u16 = 2222;

#[test]
fn every_source_destination_and_port_gets_the_verdict_of_the_reference_model() {
    require_root!();
    let slot = Slot::acquire();
    let internet = Internet::create(&slot);
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let plan = &platform.plan;

    // Something listens on every port probed, so "passed" means connected.
    let mut servers = Vec::new();
    let mut targets: Vec<(Peer, Ipv4Addr, u16)> = Vec::new();
    let mut services = BTreeSet::new();
    for ep in &plan.endpoints {
        if !services.insert(ep.service.clone()) {
            continue; // one replica per service stands for all of them
        }
        let ports: BTreeSet<u16> = ep
            .ports
            .iter()
            .map(|p| p.port)
            .chain([EXTRA_PORT])
            .collect();
        for port in ports {
            servers.push(NamedServer::start(&ep.netns, ep.address, port, &ep.name));
            targets.push((Peer::Service(ep.service.clone()), ep.address, port));
        }
    }
    for port in [80, 443, 25, 53] {
        servers.push(NamedServer::start(
            &internet.name,
            internet.addr,
            port,
            "internet",
        ));
        targets.push((Peer::World, internet.addr, port));
    }

    // Sources: one replica of each service, and the host.
    let mut sources: Vec<(Peer, Option<String>)> = Vec::new();
    let mut seen = BTreeSet::new();
    for ep in &plan.endpoints {
        if seen.insert(ep.service.clone()) {
            sources.push((Peer::Service(ep.service.clone()), Some(ep.netns.clone())));
        }
    }
    sources.push((Peer::Host, None));

    let results: Vec<Vec<(String, bool, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(src, ns)| {
                let targets = &targets;
                let policy = &plan.policy;
                s.spawn(move || {
                    targets
                        .iter()
                        .filter(|(dst, _, _)| dst != src)
                        .map(|(dst, addr, port)| {
                            let want = model::verdict(policy, src, dst, *port, 6).allow;
                            let got = probe(ns.as_deref(), *addr, *port, TIMEOUT).passed();
                            (
                                format!("{} -> {}:{port}", src.name(), dst.name()),
                                want,
                                got,
                            )
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("prober"))
            .collect()
    });
    let all: Vec<&(String, bool, bool)> = results.iter().flatten().collect();
    let wrong: Vec<String> = all
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| {
            format!(
                "{what}: model {} dataplane {}",
                verdict(*want),
                verdict(*got)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} pairs differ:\n  {}",
        wrong.len(),
        all.len(),
        wrong.join("\n  ")
    );
    let denied = all.iter().filter(|(_, want, _)| !want).count();
    assert!(
        denied >= 20,
        "the matrix exercises denials too ({denied} of {})",
        all.len()
    );
    assert!(all.len() >= 100, "{} pairs", all.len());

    // The seed's rules, spelled out.
    let order = plan.endpoint("order").unwrap();
    let product = plan
        .endpoints
        .iter()
        .find(|e| e.service == "product")
        .unwrap();
    let edge = plan.endpoint("edge").unwrap();
    let postgres = plan.endpoint("postgres").unwrap();
    let redis = plan.endpoint("redis").unwrap();
    assert!(probe(Some(&order.netns), postgres.address, 5432, TIMEOUT).passed());
    assert!(!probe(Some(&edge.netns), postgres.address, 5432, TIMEOUT).passed());
    assert!(probe(Some(&product.netns), redis.address, 6379, TIMEOUT).passed());
    assert!(!probe(Some(&order.netns), redis.address, 6379, TIMEOUT).passed());
    assert!(!probe(Some(&edge.netns), internet.addr, 25, TIMEOUT).passed());
    assert!(probe(Some(&edge.netns), internet.addr, 443, TIMEOUT).passed());
}

fn verdict(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

#[test]
fn the_gateway_rate_limit_holds_per_source_and_monitor_shows_the_drops() {
    require_root!();
    let slot = Slot::acquire();
    // The seed's limit, whatever the default's tuning: few tokens make a sharp test.
    let mut topology = Topology::parse(DEFAULT_TOPOLOGY).unwrap();
    common::relocate(&mut topology, slot.block());
    common::run_nothing(&mut topology);
    let limit = &mut topology.policy.rate_limits[0];
    assert_eq!(limit.to, "gateway");
    limit.rate = "100/minute".into();
    limit.burst = 20;
    let platform = Platform::from_topology(&slot, &topology);
    platform.up_ok();
    let gateway = platform.endpoint("gateway");
    let _server = NamedServer::start(&gateway.netns, gateway.address, 3000, "gateway");
    let edge = platform.endpoint("edge");
    let order = platform.endpoint("order");

    let mut monitor = Command::new(NETCTL)
        .args([
            "--prefix",
            &slot.prefix(),
            "monitor",
            "--json",
            "--drops",
            "--service",
            "gateway",
            "--count",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("netctl monitor");
    std::thread::sleep(Duration::from_millis(500));

    // 200 attempts in one second from one source: the burst (20) passes, and about one
    // token a second more; the rest are dropped.
    let passed = burst_connects(
        &edge.netns,
        gateway.address,
        3000,
        200,
        Duration::from_millis(5),
        Duration::from_millis(200),
    );
    assert!((20..=24).contains(&passed), "{passed} of 200 connected");
    // A second source is not affected.
    let other = burst_connects(
        &order.netns,
        gateway.address,
        3000,
        20,
        Duration::from_millis(5),
        Duration::from_millis(200),
    );
    assert_eq!(other, 20);

    let out = monitor.stdout.take().expect("stdout");
    let lines: Vec<Value> = BufReader::new(out)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json"))
        .collect();
    let _ = monitor.wait();
    assert_eq!(lines.len(), 10);
    for e in &lines {
        assert_eq!(e["kind"], "drop");
        assert_eq!(e["reason"], "rate-limited", "{e}");
        assert_eq!(e["src_identity"], "edge");
        assert_eq!(e["dst_identity"], "gateway");
    }

    let drops = slot.netctl(&["drops", "--json"]);
    assert_success(&drops, "netctl drops");
    let drops: Value = serde_json::from_slice(&drops.stdout).unwrap();
    let limited = drops["by_pair"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["source"] == "edge" && p["destination"] == "gateway" && p["reason"] == "rate-limited"
        })
        .expect("edge -> gateway rate-limited drops");
    assert!(limited["packets"].as_u64().unwrap() >= 170, "{limited}");
}

#[test]
fn a_policy_change_keeps_allowed_connections_and_cuts_revoked_ones() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let postgres = platform.endpoint("postgres");
    let _db = NamedServer::start(&postgres.netns, postgres.address, 5432, "postgres");
    let order = platform.endpoint("order");
    let product = platform
        .plan
        .endpoints
        .iter()
        .find(|e| e.service == "product")
        .unwrap();
    let mut from_order = Session::open(&order.netns, postgres.address, 5432);
    let mut from_product = Session::open(&product.netns, postgres.address, 5432);

    // The new policy lets only the product service reach the database.
    let mut topology = Topology::parse(DEFAULT_TOPOLOGY).unwrap();
    common::relocate(&mut topology, slot.block());
    common::run_nothing(&mut topology);
    let rule = topology
        .policy
        .rules
        .iter_mut()
        .find(|r| r.to == "postgres")
        .unwrap();
    rule.from = Some(vec!["product".into()]);
    let changed = Platform::write_file(&slot, &topology);
    let out = slot.netctl(&["policy", "apply", "-f", changed.1.to_str().unwrap()]);
    assert_success(&out, "netctl policy apply");
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(from_product.ask("q").expect("still allowed"), "postgres:q");
    from_order
        .stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    assert!(
        from_order.ask("q").is_err(),
        "revoked: the connection is cut"
    );
    assert!(
        !probe(Some(&order.netns), postgres.address, 5432, TIMEOUT).passed(),
        "new ones denied"
    );
    let drops = slot.netctl(&["drops", "--json"]);
    let drops: Value = serde_json::from_slice(&drops.stdout).unwrap();
    let revoked = drops["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "policy-revoked")
        .unwrap();
    assert!(revoked["packets"].as_u64().unwrap() >= 1);

    // Changing more than the policy is refused.
    topology.services.get_mut("edge").unwrap().replicas = 2;
    let bigger = Platform::write_file(&slot, &topology);
    let out = slot.netctl(&["policy", "apply", "-f", bigger.1.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changes more than the policy"));
}
