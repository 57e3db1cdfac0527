//! Network policy for real, on the default platform (its seed policies): every pair of
//! (source service, destination service, port), and every ping, gets the verdict the
//! reference model computes; the gateway's rate limit holds per source, the edge's own
//! limit beats it; `netctl monitor` shows the drops, says when events were lost and ends
//! with a summary on Ctrl-C; a policy change keeps allowed connections and cuts revoked
//! ones without reloading programs, and one the kernel refuses is reported, not claimed;
//! `netctl maps` dumps every map.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    Platform, Slot, assert_success,
    internet::Internet,
    monitor::Monitor,
    traffic::{NamedServer, Session, burst_connects, ping, probe},
};
use netctl::{
    instance::daemon,
    net::netns,
    policy::model,
    topology::{DEFAULT_TOPOLOGY, Topology, policy::Peer},
};
use netctl_common::flow::IPPROTO_ICMP;
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

    // Pings: one per destination address (port 0: only rules for any port decide).
    let mut pinged = BTreeSet::new();
    let pings: Vec<(Peer, Ipv4Addr)> = targets
        .iter()
        .filter(|(_, addr, _)| pinged.insert(*addr))
        .map(|(dst, addr, _)| (dst.clone(), *addr))
        .collect();

    let results: Vec<Vec<(String, bool, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .flat_map(|(src, ns)| {
                let (targets, pings) = (&targets, &pings);
                let policy = &plan.policy;
                let tcp = s.spawn(move || {
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
                });
                let icmp = s.spawn(move || {
                    pings
                        .iter()
                        .filter(|(dst, _)| dst != src)
                        .map(|(dst, addr)| {
                            let want = model::verdict(policy, src, dst, 0, IPPROTO_ICMP).allow;
                            let got = ping(ns.as_deref(), *addr, TIMEOUT);
                            (format!("{} -> {} ping", src.name(), dst.name()), want, got)
                        })
                        .collect()
                });
                [tcp, icmp]
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
    let pings_denied = all
        .iter()
        .filter(|(what, want, _)| what.ends_with("ping") && !want)
        .count();
    assert!(
        pings_denied >= 10,
        "{pings_denied} pings denied by the model"
    );

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
    // Port-less: the database refuses pings even from its one allowed client, the world
    // (an allow-list of ports) refuses them, the host may ping anything.
    assert!(!ping(Some(&order.netns), postgres.address, TIMEOUT));
    assert!(!ping(Some(&edge.netns), internet.addr, TIMEOUT));
    assert!(ping(None, postgres.address, Duration::from_secs(2)));
    assert!(ping(
        Some(&edge.netns),
        order.address,
        Duration::from_secs(2)
    ));
}

fn verdict(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

#[test]
fn the_gateway_rate_limit_holds_per_source_and_monitor_shows_the_drops() {
    require_root!();
    let slot = Slot::acquire();
    // The platform's own limits: the seed's 100/minute burst 20 per source, and the
    // edge's own 200/second burst 2000.
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let gateway = platform.endpoint("gateway");
    let _server = NamedServer::start(&gateway.netns, gateway.address, 3000, "gateway");
    let order = platform.endpoint("order");
    let product = platform.endpoint("product-1");
    let edge = platform.endpoint("edge");

    let mut monitor = Monitor::start(
        &slot,
        &["--json", "--drops", "--service", "gateway", "--count", "10"],
    );

    // 200 attempts in one second from one source: the burst (20) passes, and about one
    // token a second more; the rest are dropped.
    let burst = |ns: &str, n| {
        burst_connects(
            ns,
            gateway.address,
            3000,
            n,
            Duration::from_millis(5),
            Duration::from_millis(200),
        )
    };
    let started = std::time::Instant::now();
    let passed = burst(&order.netns, 200);
    // The tokens that came back while it ran (100/minute), however slow the machine was.
    let refilled = (started.elapsed().as_secs_f64() * 100.0 / 60.0).ceil() as usize;
    assert!(
        (20..=21 + refilled).contains(&passed),
        "{passed} of 200 connected in {:?}",
        started.elapsed()
    );
    // A second source is not affected.
    assert_eq!(burst(&product.netns, 20), 20);
    // The edge (nginx, every outside client over its pool) has a limit of its own.
    assert_eq!(burst(&edge.netns, 200), 200, "the edge's own limit");

    let lines: Vec<Value> = BufReader::new(monitor.stdout())
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json"))
        .collect();
    let (status, summary) = monitor.wait();
    assert!(status.success());
    assert_eq!(lines.len(), 10);
    for e in &lines {
        assert_eq!(e["kind"], "drop");
        assert_eq!(e["reason"], "rate-limited", "{e}");
        assert_eq!(e["src_identity"], "order");
        assert_eq!(e["dst_identity"], "gateway");
    }
    assert!(summary.contains("-- 10 events shown; 0 lost"), "{summary}");

    let drops = slot.netctl(&["drops", "--json"]);
    assert_success(&drops, "netctl drops");
    let drops: Value = serde_json::from_slice(&drops.stdout).unwrap();
    let limited = |src: &str| {
        drops["by_pair"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["source"] == src && p["destination"] == "gateway" && p["reason"] == "rate-limited"
            })
            .map_or(0, |p| p["packets"].as_u64().unwrap())
    };
    assert!(limited("order") >= 170, "{drops}");
    assert_eq!(limited("edge"), 0, "{drops}");
    assert_eq!(limited("product"), 0, "{drops}");

    // `netctl policy` has both limits, with their sources.
    let out = slot.netctl(&["policy", "--json"]);
    assert_success(&out, "netctl policy");
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    let limits: Vec<(String, String, f64, u64)> = policy["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["source"].as_str().unwrap().to_string(),
                l["destination"].as_str().unwrap().to_string(),
                l["per_second"].as_f64().unwrap(),
                l["burst"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        limits,
        vec![
            ("*".into(), "gateway".into(), 1.666, 20),
            ("edge".into(), "gateway".into(), 200.0, 2000),
        ]
    );

    dump_every_map(&slot);
}

/// `netctl maps` counts the entries of every map but the ring buffer, and `maps NAME`
/// dumps each one decoded (here, after traffic, every policy map has entries).
fn dump_every_map(slot: &Slot) {
    let out = slot.netctl(&["maps", "--json"]);
    assert_success(&out, "netctl maps");
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeSet<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), netctl_common::maps::ALL.len(), "{names:?}");
    let fields = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let set = |keys: &[&str]| -> BTreeSet<String> { keys.iter().map(|k| k.to_string()).collect() };
    let tuple = set(&["src", "dst", "src_port", "dst_port", "proto"]);
    // (map, key fields, value fields, must have entries); no fields: a number.
    let expected: Vec<(&str, BTreeSet<String>, BTreeSet<String>, bool)> = vec![
        (
            "FLOWS",
            tuple.clone(),
            set(&[
                "packets",
                "bytes",
                "first_seen_ns",
                "last_seen_ns",
                "tcp_flags",
            ]),
            true,
        ),
        (
            "CT",
            tuple.clone(),
            set(&[
                "created_ns",
                "last_seen_ns",
                "nat_addr",
                "nat_port",
                "flags",
                "tcp_flags",
                "backend_id",
                "service_id",
                "src_identity",
                "dst_identity",
                "policy_port",
                "policy_gen",
            ]),
            true,
        ),
        (
            "LB_SERVICES",
            set(&["addr", "port", "proto", "slot"]),
            set(&[
                "backend_id",
                "service_id",
                "maglev_table",
                "rr_next",
                "count",
                "algorithm",
                "flags",
            ]),
            true,
        ),
        (
            "LB_BACKENDS",
            set(&[]),
            set(&["addr", "port", "proto", "state"]),
            false,
        ),
        (
            "LB_BACKEND_ADDRS",
            set(&["addr", "port", "proto"]),
            set(&["backend_id"]),
            true,
        ),
        ("LB_MAGLEV", set(&[]), set(&[]), false),
        (
            "SOCK_REVNAT",
            set(&["cookie", "backend_addr", "backend_port"]),
            set(&["frontend_addr", "frontend_port"]),
            false,
        ),
        ("DROPS", set(&[]), set(&[]), true),
        ("COUNTERS", set(&[]), set(&[]), true),
        ("CONFIG", set(&[]), set(&[]), true),
        (
            "IDENTITIES",
            set(&["addr", "generation"]),
            set(&["identity", "name"]),
            true,
        ),
        (
            "POLICY",
            set(&["generation", "src", "dst", "port", "proto"]),
            set(&["verdict", "rule"]),
            true,
        ),
        (
            "RATE_LIMITS",
            set(&["generation", "src", "dst"]),
            set(&["rate_milli", "burst", "by"]),
            true,
        ),
        (
            "RATE_BUCKETS",
            set(&["source", "dst", "by"]),
            set(&["nano_tokens", "refilled_ns"]),
            true,
        ),
        (
            "DROP_PAIRS",
            set(&["src_identity", "dst_identity", "reason"]),
            set(&[]),
            true,
        ),
    ];
    for (name, key, value, must) in &expected {
        let row = list.iter().find(|m| m["name"] == *name).expect(name);
        let out = slot.netctl(&["maps", name]);
        assert_success(&out, &format!("netctl maps {name}"));
        let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        // Counted in the list (traffic may add flows and buckets between the two looks).
        let counted = row["entries"].as_u64().expect("counted");
        if ["IDENTITIES", "POLICY", "RATE_LIMITS", "CONFIG"].contains(name) {
            assert_eq!(counted, entries.len() as u64, "{name}");
        }
        assert!(!must || !entries.is_empty(), "{name} has no entries");
        for e in &entries {
            assert_eq!(&fields(&e["key"]), key, "{name} key: {e}");
            assert_eq!(&fields(&e["value"]), value, "{name} value: {e}");
        }
    }
    let rl: Vec<Value> =
        serde_json::from_slice(&slot.netctl(&["maps", "RATE_LIMITS"]).stdout).unwrap();
    assert_eq!(rl.len(), 2, "the general limit and the edge's own");
    let out = slot.netctl(&["maps", "EVENTS"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring buffer"));
    let events = list.iter().find(|m| m["name"] == "EVENTS").unwrap();
    assert!(events["entries"].is_null());
    assert_eq!(expected.len() + 1, list.len(), "every map is checked");
}

/// The controller's process, stopped (SIGSTOP) until dropped.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn controller(slot: &Slot) -> Stopped {
        let pid = daemon::running(&slot.instance())
            .expect("a controller runs")
            .pid;
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// `monitor` refuses a service the platform does not have, shows the events the
/// dataplane lost (here: while the controller, the ring buffer's reader, was stopped)
/// and ends on Ctrl-C with its summary.
#[test]
fn monitor_shows_lost_events_and_ends_on_ctrl_c_with_a_summary() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let out = slot.netctl(&["monitor", "--service", "nosuch", "--count", "1"]);
    assert!(!out.status.success(), "an unknown service is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no service or replica \"nosuch\""), "{err}");
    assert!(err.contains("gateway"), "names the known ones: {err}");

    let mut monitor = Monitor::start(&slot, &["--json", "--drops"]);

    // More denied datagrams than the 1 MiB ring buffer holds events, while nobody reads.
    let edge = platform.endpoint("edge");
    let postgres = platform.endpoint("postgres").address;
    {
        let _stopped = Stopped::controller(&slot);
        netns::run_in(&edge.netns, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..40_000u32 {
                let _ = sock.send_to(&i.to_be_bytes(), (postgres, 5432));
            }
            Ok(())
        })
        .unwrap();
    }
    // The stream says so, in line with the events.
    let stdout = monitor.stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).expect("json line");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut lost_by_dataplane = 0;
    let mut drops = 0;
    while lost_by_dataplane == 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = rx.recv_timeout(left).expect("a lost record within 20 s");
        match v["kind"].as_str() {
            Some("lost") if v["by"] == "dataplane" => {
                lost_by_dataplane = v["count"].as_u64().unwrap();
            }
            Some("drop") => drops += 1,
            _ => {}
        }
    }
    assert!(drops > 0);
    assert!(
        (1..=40_000).contains(&lost_by_dataplane),
        "{lost_by_dataplane} lost"
    );

    // Ctrl-C ends it cleanly, with the summary.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (status, summary) = monitor.wait();
    reader.join().unwrap();
    assert!(status.success(), "{status:?}: {summary}");
    assert!(summary.contains("events shown (interrupted)"), "{summary}");
    assert!(summary.contains("lost by the dataplane"), "{summary}");
    let lost_in_summary: u64 = summary
        .split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(lost_in_summary >= lost_by_dataplane, "{summary}");

    // The human form says it too, and ends on Ctrl-C with the summary on stdout.
    let mut human = Monitor::start(&slot, &[]);
    let stdout = human.stdout();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(human.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (status, _) = human.wait();
    assert!(status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text).unwrap();
    assert!(text.contains("events shown (interrupted)"), "{text}");
}

/// TC program ids on a platform veth (ingress and egress hooks).
fn program_ids(ifname: &str) -> Vec<u32> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .flat_map(|t| SchedClassifier::query_tcx(ifname, t).expect("query tcx").1)
        .map(|p| p.id())
        .collect()
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
    let programs = program_ids(&order.host_ifname);
    assert_eq!(programs.len(), 2);
    let generation = || {
        let out = slot.netctl(&["policy", "--json"]);
        assert_success(&out, "netctl policy");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["generation"]
            .as_u64()
            .unwrap()
    };
    let before = generation();
    let changed = Platform::write_file(&slot, &topology);
    let out = slot.netctl(&["policy", "apply", "-f", changed.1.to_str().unwrap()]);
    assert_success(&out, "netctl policy apply");
    // It returns once the kernel has the new generation: no waiting here.
    let after = generation();
    assert!(after > before, "generation {before} -> {after}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("generation {after}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        program_ids(&order.host_ifname),
        programs,
        "no program reload"
    );

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

    // A policy the kernel cannot hold (more entries than POLICY has room for) is not
    // claimed installed: the controller's error, exit 1, and the old one stays in force.
    let mut huge = topology.clone();
    huge.policy.rules.push(netctl::topology::policy::RuleSpec {
        from: Some(
            ["edge", "gateway", "order", "product", "redis"]
                .map(String::from)
                .to_vec(),
        ),
        to: "postgres".into(),
        ports: Some(
            (0..64u32)
                .map(|i| {
                    let lo = i * 1024 + 1;
                    let hi = (lo + 1023).min(65535);
                    netctl::topology::PortSpec::Text(format!("{lo}-{hi}"))
                })
                .collect(),
        ),
        action: None,
    });
    let huge_file = Platform::write_file(&slot, &huge);
    let out = slot.netctl(&["policy", "apply", "-f", huge_file.1.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("could not install the policy") && err.contains("POLICY"),
        "{err}"
    );
    assert!(
        err.contains(&format!("generation {after} stays in force")),
        "{err}"
    );
    assert_eq!(generation(), after);
    assert_eq!(program_ids(&order.host_ifname), programs);
    assert!(
        !probe(Some(&order.netns), postgres.address, 5432, TIMEOUT).passed(),
        "the old policy still decides"
    );
    // The state still describes the policy in force: applying it again changes nothing.
    let out = slot.netctl(&["policy", "apply", "-f", changed.1.to_str().unwrap()]);
    assert_success(&out, "netctl policy apply (again)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy unchanged"));

    // Changing more than the policy is refused.
    topology.services.get_mut("edge").unwrap().replicas = 2;
    let bigger = Platform::write_file(&slot, &topology);
    let out = slot.netctl(&["policy", "apply", "-f", bigger.1.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changes more than the policy"));
}
