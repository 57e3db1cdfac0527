//! Service load balancing for real: namespaces, the eBPF programs, TCP and UDP servers in
//! the replicas, clients in another tier. Both paths: the TC programs (per-packet NAT with
//! conntrack) and socket-level LB (connect/sendmsg go straight to a backend).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{
    Platform, Slot, assert_success, http,
    internet::Internet,
    traffic::{HealthServer, NamedServer, Session, UdpNamedServer, greetings, udp_ask},
    two_tiers, wait_for,
};
use netctl::{
    dataplane::ebpf::{lb::LbMaps, pins::Pins},
    topology::{HealthSpec, ServiceBuilder, TopologyBuilder},
};
use netctl_common::{
    maps::CFG_F_SOCKET_LB,
    stats::{CNT_LB_SOCK, CNT_LB_TC},
};
use serde_json::Value;

const WEB_TCP: u16 = 7000;
const WEB_UDP: u16 = 7001;

/// Three `web` replicas from `address` on `network`, TCP `WEB_TCP` and UDP `WEB_UDP`.
fn web_replicas(s: ServiceBuilder, network: &str, address: &str) -> ServiceBuilder {
    s.network(network)
        .address(address)
        .replicas(3)
        .tcp(WEB_TCP)
        .udp(WEB_UDP)
}

fn topology(algorithm: &str, socket_lb: bool) -> TopologyBuilder {
    two_tiers()
        .service("web", |s| {
            web_replicas(s, "back", "10.0.2.10").lb(algorithm)
        })
        .socket_lb(socket_lb)
}

struct Web<'a> {
    platform: Platform<'a>,
    servers: Vec<Option<NamedServer>>,
    udp: Vec<Option<UdpNamedServer>>,
}

impl<'a> Web<'a> {
    fn up(slot: &'a Slot, algorithm: &str, socket_lb: bool) -> Web<'a> {
        Self::up_with(slot, topology(algorithm, socket_lb))
    }

    /// Any topology with a client and three `web` replicas: a named TCP and UDP server in
    /// each replica, and all three active in the maps.
    fn up_with(slot: &'a Slot, topology: TopologyBuilder) -> Web<'a> {
        let platform = Platform::build(slot, topology);
        platform.up_ok();
        let mut servers = Vec::new();
        let mut udp = Vec::new();
        for i in 1..=3 {
            let ep = platform.endpoint(&format!("web-{i}"));
            servers.push(Some(NamedServer::start(
                &ep.netns, ep.address, WEB_TCP, &ep.name,
            )));
            udp.push(Some(UdpNamedServer::start(
                &ep.netns, ep.address, WEB_UDP, &ep.name,
            )));
        }
        let web = Web {
            platform,
            servers,
            udp,
        };
        web.wait_active(3);
        web
    }

    fn vip(&self) -> Ipv4Addr {
        self.platform.plan.service("web").expect("web").vip
    }

    fn client_ns(&self) -> String {
        self.platform.endpoint("client").netns.clone()
    }

    /// `netctl services --json`, frontend web:7000/tcp: active backend addresses.
    fn active(&self) -> Vec<Ipv4Addr> {
        active_backends(self.platform.slot, "web", WEB_TCP)
    }

    fn wait_active(&self, n: usize) -> Duration {
        wait_backends(
            self.platform.slot,
            "web",
            WEB_TCP,
            Duration::from_secs(10),
            &format!("{n} active backends"),
            |a| a.len() == n,
        )
    }

    fn drain(&self, instance: &str, undo: bool) {
        let target = format!("web/{instance}");
        let mut args = vec!["drain", target.as_str()];
        if undo {
            args.push("--undo");
        }
        assert_success(&self.platform.slot.netctl(&args), "netctl drain");
    }
}

/// `netctl services --json`: the active backends of `service`'s frontend on `port`.
fn active_backends(slot: &Slot, service: &str, port: u16) -> Vec<Ipv4Addr> {
    let out = slot.netctl(&["services", "--json", "--service", service]);
    assert_success(&out, "netctl services");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let Some(fe) = v["frontends"]
        .as_array()
        .expect("frontends")
        .iter()
        .find(|f| f["port"] == port && f["host_port"] != true)
    else {
        return Vec::new();
    };
    fe["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["state"] == "active")
        .map(|b| b["addr"].as_str().expect("addr").parse().expect("ip"))
        .collect()
}

/// Polls `netctl services` until `cond` holds on the active backends; how long it took.
fn wait_backends(
    slot: &Slot,
    service: &str,
    port: u16,
    within: Duration,
    what: &str,
    cond: impl Fn(&[Ipv4Addr]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let active = active_backends(slot, service, port);
        if cond(&active) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?} (active: {active:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
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
fn the_tc_path_spreads_new_connections_over_every_backend_with_each_algorithm() {
    require_root!();
    let slot = Slot::acquire();
    let mut web = Web::up(&slot, "round-robin", false);
    for algorithm in ["round-robin", "random", "maglev"] {
        // Changing the algorithm is a map update (`up` again), no program reload.
        web.platform.update(topology(algorithm, false));
        std::thread::sleep(Duration::from_millis(500));
        let out = slot.netctl(&["services", "--json", "--service", "web"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(
            v["frontends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["algorithm"] == algorithm),
            "the maps switched to {algorithm}: {v}"
        );
        let answers = greetings(&web.client_ns(), web.vip(), WEB_TCP, 300);
        let counts = spread(&answers);
        assert_eq!(
            counts.len(),
            3,
            "{algorithm}: all three replicas served: {counts:?}"
        );
        for (name, n) in &counts {
            let share = *n as f64 / 300.0;
            assert!(
                (0.20..=0.46).contains(&share),
                "{algorithm}: {name} got {n} of 300 ({:.0}%)",
                share * 100.0
            );
        }
    }
    // Conntrack saw them as NATed connections to the VIP, each pinned to a backend.
    let out = slot.netctl(&["conntrack", "--json", "--service", "web"]);
    let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let client = web.platform.endpoint("client").address.to_string();
    let from_client: Vec<&Value> = conns.iter().filter(|c| c["client"] == client).collect();
    assert!(from_client.len() >= 300, "{} tracked", from_client.len());
    assert!(
        from_client
            .iter()
            .all(|c| c["frontend"] == web.vip().to_string() && c["nat"] == true)
    );
}

#[test]
fn socket_lb_connects_straight_to_a_backend_and_shows_the_vip_as_peer() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", true);
    let counts = spread(&greetings(&web.client_ns(), web.vip(), WEB_TCP, 30));
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 10), "round-robin: {counts:?}");

    let session = Session::open(&web.client_ns(), web.vip(), WEB_TCP);
    let peer = session.stream.peer_addr().expect("peer");
    assert_eq!(
        peer,
        SocketAddr::from((web.vip(), WEB_TCP)),
        "getpeername shows the VIP"
    );

    // No per-packet NAT: conntrack holds the direct connection (the open session's among
    // them), not a VIP one.
    let out = slot.netctl(&["conntrack", "--json"]);
    let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let client = web.platform.endpoint("client").address.to_string();
    assert!(
        conns.iter().any(|c| c["client"] == client),
        "the session is tracked: {conns:?}"
    );
    assert!(
        conns.iter().all(|c| c["nat"] == false),
        "socket LB needs no NAT"
    );
    let lb_sock = counter(&slot, CNT_LB_SOCK);
    assert!(
        lb_sock >= 31,
        "socket LB counted its connections: {lb_sock}"
    );
}

/// One of the dataplane's `COUNTERS` (`netctl maps COUNTERS`).
fn counter(slot: &Slot, key: u32) -> u64 {
    let out = slot.netctl(&["maps", "COUNTERS"]);
    assert_success(&out, "netctl maps COUNTERS");
    let counters: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    counters
        .iter()
        .find(|c| c["key"] == key)
        .and_then(|c| c["value"].as_u64())
        .unwrap_or(0)
}

/// Until the dataplane's `CONFIG` says socket LB is `on` (`up` writes it, the programs
/// read it at each connect/sendmsg).
fn wait_socket_lb(slot: &Slot, on: bool) {
    let maps = LbMaps::open(&Pins::for_instance(&slot.instance())).expect("LB maps");
    wait_for(&format!("socket LB {on}"), Duration::from_secs(10), || {
        (maps.config_flags().expect("CONFIG") & CFG_F_SOCKET_LB != 0) == on
    });
}

#[test]
fn an_established_connection_survives_the_drain_of_every_backend() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", false);
    let mut session = Session::open(&web.client_ns(), web.vip(), WEB_TCP);
    let mine = session.server.clone();
    assert_eq!(session.ask("a").expect("works"), format!("{mine}:a"));

    // Drain the others, then its own backend: it keeps working throughout.
    for i in 1..=3 {
        let name = format!("web-{i}");
        if name != mine {
            web.drain(&name, false);
        }
    }
    web.wait_active(1);
    assert_eq!(session.ask("b").expect("still works"), format!("{mine}:b"));
    let after = greetings(&web.client_ns(), web.vip(), WEB_TCP, 5);
    assert!(
        after.iter().all(|a| a.as_deref() == Ok(mine.as_str())),
        "{after:?}"
    );

    web.drain(&mine, false);
    web.wait_active(0);
    assert_eq!(
        session.ask("c").expect("drained, not cut"),
        format!("{mine}:c")
    );
    let refused = greetings(&web.client_ns(), web.vip(), WEB_TCP, 1);
    assert!(
        refused[0].is_err(),
        "no backend takes new connections: {refused:?}"
    );

    for i in 1..=3 {
        web.drain(&format!("web-{i}"), true);
    }
    web.wait_active(3);
    assert_eq!(
        session.ask("d").expect("still the same backend"),
        format!("{mine}:d")
    );
    assert!(
        greetings(&web.client_ns(), web.vip(), WEB_TCP, 3)
            .iter()
            .all(Result::is_ok)
    );
}

#[test]
fn a_killed_backend_leaves_the_maps_within_two_seconds() {
    require_root!();
    let slot = Slot::acquire();
    let mut web = Web::up(&slot, "round-robin", false);
    let killed = web.platform.endpoint("web-2").address;
    web.servers[1] = None; // the process dies: its listener closes
    let took = web.wait_active(2);
    assert!(
        took < Duration::from_secs(2),
        "left the maps after {took:?}"
    );
    assert!(!web.active().contains(&killed));
    let counts = spread(&greetings(&web.client_ns(), web.vip(), WEB_TCP, 30));
    assert!(
        !counts.contains_key("web-2"),
        "no new connection to the dead backend: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 30);
}

#[test]
fn udp_through_a_vip_on_both_paths_answers_from_the_vip() {
    require_root!();
    let slot = Slot::acquire();
    let mut web = Web::up(&slot, "round-robin", false);
    for socket_lb in [false, true] {
        web.platform.update(topology("round-robin", socket_lb));
        wait_socket_lb(&slot, socket_lb);
        let (tc_before, sock_before) = (counter(&slot, CNT_LB_TC), counter(&slot, CNT_LB_SOCK));
        let answers = udp_ask(&web.client_ns(), web.vip(), WEB_UDP, 6);
        assert_eq!(answers.len(), 6, "socket_lb={socket_lb}: {answers:?}");
        // The path that took the datagrams: sendmsg4 picks the backend with socket LB, the
        // TC program NATs them without.
        let (tc, sock) = (
            counter(&slot, CNT_LB_TC) - tc_before,
            counter(&slot, CNT_LB_SOCK) - sock_before,
        );
        if socket_lb {
            assert!(sock >= 6 && tc == 0, "socket LB: sock {sock}, tc {tc}");
        } else {
            assert!(tc >= 1 && sock == 0, "TC path: sock {sock}, tc {tc}");
        }
        for (_, from) in &answers {
            assert_eq!(
                *from,
                SocketAddr::from((web.vip(), WEB_UDP)),
                "socket_lb={socket_lb}: reply from the VIP"
            );
        }
        let names: std::collections::HashSet<&str> =
            answers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.is_empty());
    }
}

#[test]
fn a_host_port_reaches_the_edge_from_localhost_and_from_outside() {
    require_root!();
    let slot = Slot::acquire();
    let internet = Internet::create(&slot);
    let platform = Platform::build(
        &slot,
        TopologyBuilder::new()
            .uplinks(&[&internet.name])
            .network("front", "10.0.1.0/24")
            .service("edge", |s| {
                s.network("front").address("10.0.1.10").ports(&["80"])
            })
            .port_forward(8080, "edge", 80),
    );
    platform.up_ok();
    let edge = platform.endpoint("edge");
    let _server = NamedServer::start(&edge.netns, edge.address, 80, "edge");
    let port = slot.host_port(0);
    // Wait for the health check to put the edge into service.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut from_host = Err("not tried".to_string());
    while Instant::now() < deadline {
        from_host = greeting_from_host(Ipv4Addr::LOCALHOST, port);
        if from_host.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        from_host.as_deref(),
        Ok("edge"),
        "localhost:{port} on the host"
    );

    let outside = greetings(&internet.name, internet.host_addr, port, 3);
    assert!(
        outside.iter().all(|g| g.as_deref() == Ok("edge")),
        "from outside: {outside:?}"
    );
    let out = slot.netctl(&["conntrack", "--json"]);
    let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        conns
            .iter()
            .any(|c| c["via_uplink"] == true && c["client"] == internet.addr.to_string()),
        "the outside connection came through the uplink hook: {conns:?}"
    );
}

fn greeting_from_host(addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim().to_string())
}

/// Port reuse under churn (the `bench lb` stall): thousands of connections through the VIP
/// from one namespace, each closed with RST (zero linger, no TIME_WAIT), from a local port
/// range so narrow that every tuple comes back within milliseconds, round-robin moving
/// each reuse to another backend. The table holds what an earlier round left (expired
/// entries of the same tuples, and others) and a conntrack GC pass overlaps the reuse, as
/// the controller's (every 5 s, seconds long on a full table) does: it must not take the
/// new connections' entries. Every connection must answer within its read timeout.
#[test]
fn rst_closed_connections_reusing_their_ports_never_stall() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", false);
    let (vip, ns) = (web.vip(), web.client_ns());
    let client = web.platform.endpoint("client").address;
    let backends: Vec<Ipv4Addr> = (1..=3)
        .map(|i| web.platform.endpoint(&format!("web-{i}")).address)
        .collect();
    let pins = netctl::dataplane::ebpf::Pins::for_instance(&slot.instance());
    let mut ct = netctl::dataplane::ebpf::conntrack::open(&pins).expect("CT pinned");
    seed_leftovers(&mut ct, client, vip, &backends, PORTS);

    // A GC pass as slow as on a full table: its snapshot before the clients start, its
    // deletions while they reuse the tuples.
    let plan = netctl::dataplane::ebpf::conntrack::gc_plan(&ct).expect("gc snapshot");
    let gc = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        netctl::dataplane::ebpf::conntrack::gc_sweep(&mut ct, plan)
    });
    let report = netctl::net::netns::run_in(&ns, move || {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_local_port_range",
            format!("{} {}", PORTS.start, PORTS.end - 1),
        )?;
        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut worst = Duration::ZERO;
                    let mut failures = Vec::new();
                    let mut done = 0;
                    while done < 750 && started.elapsed() < Duration::from_secs(8) {
                        let t = Instant::now();
                        match rst_closed_round_trip(vip, WEB_TCP) {
                            Ok(()) => done += 1,
                            // Every port of the range busy: try again.
                            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
                            Err(e) => failures.push(format!("{e} after {:?}", t.elapsed())),
                        }
                        worst = worst.max(t.elapsed());
                    }
                    (done, worst, failures)
                })
            })
            .collect();
        Ok(threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect::<Vec<_>>())
    })
    .expect("clients");
    let pass = gc.join().expect("gc thread");
    let done: usize = report.iter().map(|r| r.0).sum();
    let worst = report.iter().map(|r| r.1).max().unwrap_or_default();
    let failures: Vec<&String> = report.iter().flat_map(|r| &r.2).collect();
    eprintln!(
        "{done} connections, slowest {worst:?}, {} failed; gc: {pass:?}",
        failures.len()
    );
    assert!(
        pass.expired >= LEFTOVERS,
        "the GC pass ran over the leftovers"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(done >= 2000, "only {done} connections in 8 s");
}

/// The client's local ports in the churn test.
const PORTS: std::ops::Range<u16> = 40_000..40_064;
/// Unrelated expired entries.
const LEFTOVERS: usize = 1_000;

/// What an earlier round leaves in the table: the same client ports' closed connections
/// to every backend, expired but not collected yet, and many unrelated expired pairs.
fn seed_leftovers(
    ct: &mut netctl::dataplane::ebpf::conntrack::CtMap,
    client: Ipv4Addr,
    vip: Ipv4Addr,
    backends: &[Ipv4Addr],
    ports: std::ops::Range<u16>,
) {
    use netctl_common::{
        CtEntry, FlowKey,
        ct::{CT_F_CLOSING, CT_F_DNAT, CT_F_REPLIED, CT_F_REVERSE, CT_F_SNAT},
        flow::IPPROTO_TCP,
    };
    let long_ago = netctl::dataplane::ebpf::clock::BootClock::now()
        .expect("clock")
        .boot_ns
        .saturating_sub(60_000_000_000);
    let closed = |flags: u8, addr: Ipv4Addr, port: u16| CtEntry {
        created_ns: long_ago,
        last_seen_ns: long_ago,
        nat_addr: addr.octets(),
        nat_port: port,
        flags: flags | CT_F_CLOSING | CT_F_REPLIED,
        backend_id: 1,
        service_id: 1,
        ..CtEntry::default()
    };
    for (i, p) in ports.enumerate() {
        let b = backends[i % backends.len()];
        let fwd = FlowKey::new(client.octets(), vip.octets(), p, WEB_TCP, IPPROTO_TCP);
        ct.insert(fwd, closed(CT_F_DNAT, b, WEB_TCP), 0)
            .expect("seed");
        for b in backends {
            let rev = FlowKey::new(b.octets(), client.octets(), WEB_TCP, p, IPPROTO_TCP);
            ct.insert(rev, closed(CT_F_REVERSE | CT_F_SNAT, vip, WEB_TCP), 0)
                .expect("seed");
        }
    }
    for i in 0..LEFTOVERS as u32 {
        let src = (0x0a63_0000u32 + i / 1000).to_be_bytes();
        let key = FlowKey::new(
            src,
            client.octets(),
            1000 + (i % 1000) as u16,
            9,
            IPPROTO_TCP,
        );
        ct.insert(key, closed(0, Ipv4Addr::UNSPECIFIED, 0), 0)
            .expect("seed");
    }
}

/// Connect, greeting, one echo, close with RST; every wait bounded.
fn rst_closed_round_trip(addr: Ipv4Addr, port: u16) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"x")?;
    let n = s.read(&mut buf)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    set_zero_linger(&s)
}

fn set_zero_linger(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &linger).map_err(Into::into)
}

/// A client tier and three web replicas with an HTTP health check of their own, fast.
fn http_checked() -> TopologyBuilder {
    two_tiers()
        .service("web", |s| {
            s.network("back")
                .address("10.0.2.10")
                .replicas(3)
                .ports(&["7000"])
                .health(
                    HealthSpec::check("http")
                        .path("/health")
                        .every("200ms", "150ms", 2),
                )
        })
        .socket_lb(false)
}

#[test]
fn a_backend_whose_http_check_fails_leaves_the_maps_although_its_port_is_open() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, http_checked());
    platform.up_ok();
    let servers: Vec<HealthServer> = (1..=3)
        .map(|i| {
            let ep = platform.endpoint(&format!("web-{i}"));
            HealthServer::start(&ep.netns, ep.address, WEB_TCP)
        })
        .collect();
    wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(10),
        "3 active",
        |a| a.len() == 3,
    );
    let sick = platform.endpoint("web-2").address;
    servers[1]
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let took = wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(2),
        "web-2 out",
        |a| a.len() == 2 && !a.contains(&sick),
    );
    eprintln!("out of the maps {took:?} after /health answered 503");
    // Its port still accepts connections: a TCP check would have kept it.
    let client = platform.endpoint("client").netns.clone();
    assert_eq!(
        common::traffic::probe(Some(&client), sick, WEB_TCP, Duration::from_secs(1)),
        common::traffic::Probe::Connected
    );
    servers[1]
        .healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(2),
        "web-2 back",
        |a| a.len() == 3,
    );
}

#[test]
fn a_stopped_redis_is_reported_down_although_it_accepts_connections() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(
        &slot,
        TopologyBuilder::new()
            .network("db", "10.0.3.0/24")
            .service("redis", |s| {
                s.network("db")
                    .kind("redis")
                    .health(HealthSpec::check("redis").every("300ms", "200ms", 2))
            }),
    );
    platform.up_ok();
    let redis = platform.endpoint("redis").address;
    wait_backends(
        &slot,
        "redis",
        6379,
        Duration::from_secs(10),
        "redis active",
        |a| a == [redis],
    );
    let pid = common::service(&slot, "redis").pid.expect("redis runs");
    let _stopped = Stopped::new(pid);
    let took = wait_backends(
        &slot,
        "redis",
        6379,
        Duration::from_secs(3),
        "redis out",
        |a| a.is_empty(),
    );
    eprintln!("a SIGSTOPped redis left the maps after {took:?}");
    // Its kernel still completes the handshake: only the PING check can tell.
    assert_eq!(
        common::traffic::probe(None, redis, 6379, Duration::from_secs(1)),
        common::traffic::Probe::Connected
    );
    let lb = common::block_on(netctl::instance::agent_client::get(
        &slot.instance(),
        "/v1/status",
    ))
    .expect("controller answers");
    let backend = lb["components"]["lb"]["backends"]
        .as_array()
        .expect("lb backends")
        .iter()
        .find(|b| b["service"] == "redis")
        .expect("redis backend")
        .clone();
    assert_eq!(backend["state"], "down", "{backend}");
    assert_eq!(backend["health"]["check"], "redis :6379", "{backend}");
    common::wait_for("the supervisor to see it", Duration::from_secs(3), || {
        common::service(&slot, "redis").state == netctl::supervisor::ServiceState::Unhealthy
    });
    drop(_stopped);
    wait_backends(
        &slot,
        "redis",
        6379,
        Duration::from_secs(3),
        "redis back",
        |a| a == [redis],
    );
}

/// SIGSTOPs a process; SIGCONT when dropped, even when the test fails.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn new(pid: u32) -> Stopped {
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

#[test]
fn a_replica_reaches_its_own_vip_on_the_tc_path() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", false);
    let me = web.platform.endpoint("web-1");
    // Round-robin sends one in three to itself: DNATed to its own address, and SNATed to
    // the VIP, or it would come back from itself and be dropped as martian.
    let answers = greetings(&me.netns, web.vip(), WEB_TCP, 9);
    let counts = spread(&answers);
    assert_eq!(counts.get("web-1"), Some(&3), "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    let mut session = Session::open(&me.netns, web.vip(), WEB_TCP);
    assert_eq!(
        session.stream.peer_addr().expect("peer"),
        SocketAddr::from((web.vip(), WEB_TCP))
    );
    let server = session.server.clone();
    assert_eq!(session.ask("hi").expect("echo"), format!("{server}:hi"));
    // UDP too, answered from the VIP.
    let udp = udp_ask_each(&me.netns, web.vip(), WEB_UDP, 6);
    let names: std::collections::HashSet<&str> = udp.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains("web-1"), "{udp:?}");
    assert!(
        udp.iter()
            .all(|(_, from)| *from == SocketAddr::from((web.vip(), WEB_UDP)))
    );
}

#[test]
fn the_tc_path_works_between_namespaces_on_one_bridge() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up_with(
        &slot,
        TopologyBuilder::new()
            .network("flat", "10.0.1.0/24")
            .service("client", |s| s.network("flat").address("10.0.1.5"))
            .service("web", |s| web_replicas(s, "flat", "10.0.1.10"))
            .socket_lb(false),
    );
    let counts = spread(&greetings(&web.client_ns(), web.vip(), WEB_TCP, 30));
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 10), "round-robin: {counts:?}");
    // The replies come straight over the bridge and are un-NATed at the backend's veth.
    let mut session = Session::open(&web.client_ns(), web.vip(), WEB_TCP);
    let server = session.server.clone();
    assert_eq!(session.ask("x").expect("echo"), format!("{server}:x"));
    let udp = udp_ask_each(&web.client_ns(), web.vip(), WEB_UDP, 3);
    assert!(
        udp.iter()
            .all(|(_, from)| *from == SocketAddr::from((web.vip(), WEB_UDP)))
    );
}

#[test]
fn udp_flows_of_many_sockets_spread_and_a_stale_one_moves_when_its_backend_dies() {
    require_root!();
    let slot = Slot::acquire();
    let mut web = Web::up(&slot, "round-robin", false);
    // One datagram from each of 30 sockets: 30 flows, ten per backend.
    let answers = udp_ask_each(&web.client_ns(), web.vip(), WEB_UDP, 30);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (name, _) in &answers {
        *counts.entry(name.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 10), "{counts:?}");

    // One socket keeps its flow (and backend) while the backend lives...
    let (vip, ns) = (web.vip(), web.client_ns());
    let flow = UdpFlow::open(&ns, vip, WEB_UDP);
    let first = flow.ask().expect("first answer");
    for _ in 0..3 {
        assert_eq!(flow.ask().as_deref(), Ok(first.as_str()), "pinned");
    }
    // ... and is answered by another one soon after that backend dies: kube-proxy left
    // such flows pointing at the dead backend until their conntrack entry aged out.
    let i: usize = first.trim_start_matches("web-").parse().expect("web-N");
    web.servers[i - 1] = None;
    web.udp[i - 1] = None;
    let start = Instant::now();
    let moved = loop {
        match flow.ask() {
            Ok(name) if name != first => break name,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still no other backend {:?} after {first} died",
            start.elapsed()
        );
    };
    eprintln!(
        "the flow moved from {first} to {moved} after {:?}",
        start.elapsed()
    );
    assert_eq!(flow.ask().as_deref(), Ok(moved.as_str()), "and stays there");
}

/// One connected UDP socket in a namespace (one flow), asked from the test thread.
struct UdpFlow(std::net::UdpSocket);

impl UdpFlow {
    fn open(ns: &str, addr: Ipv4Addr, port: u16) -> UdpFlow {
        let sock = netctl::net::netns::run_in(ns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddr::from((addr, port)))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .expect("udp socket");
        UdpFlow(sock)
    }

    fn ask(&self) -> Result<String, String> {
        self.0.send(b"hello").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = self.0.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// From `ns`, one datagram from each of `count` new sockets to `addr:port`: each answer
/// and where it came from.
fn udp_ask_each(ns: &str, addr: Ipv4Addr, port: u16, count: usize) -> Vec<(String, SocketAddr)> {
    netctl::net::netns::run_in(ns, move || {
        let mut out = Vec::new();
        for _ in 0..count {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            sock.send_to(b"hello", SocketAddr::from((addr, port)))?;
            let mut buf = [0u8; 256];
            let (n, from) = sock.recv_from(&mut buf)?;
            out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
        }
        Ok(out)
    })
    .expect("udp")
}

#[test]
fn a_host_process_connects_to_a_vip_through_socket_lb() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", true);
    let vip = SocketAddr::from((web.vip(), WEB_TCP));
    // This test process runs on the host, in the host's network namespace.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connects");
        assert_eq!(
            s.peer_addr().expect("peer"),
            vip,
            "getpeername shows the VIP"
        );
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).expect("greeting");
        seen.insert(line.trim().to_string());
    }
    assert_eq!(seen.len(), 3, "round-robin over all three: {seen:?}");
    // Connected at connect(): socket LB counted each, and no per-packet NAT, so no NATed
    // conntrack entry for them.
    assert!(counter(&slot, CNT_LB_SOCK) >= 6, "socket LB took them");
    let out = slot.netctl(&["conntrack", "--json", "--service", "web"]);
    let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(conns.iter().all(|c| c["nat"] == false), "{conns:?}");
}

#[test]
fn registering_and_deregistering_in_the_registry_reaches_the_maps_within_a_second() {
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up_with(
        &slot,
        two_tiers()
            .service("registry", |s| {
                s.network("back").address("10.0.2.5").kind("registry")
            })
            .service("web", |s| web_replicas(s, "back", "10.0.2.10")),
    );
    let registry = web.platform.endpoint("registry").address;
    let addr = |i: usize| web.platform.endpoint(&format!("web-{i}")).address;
    // An instance registers from its own namespace (the registry takes the caller's
    // address): a service the registry knows is balanced over what it lists.
    let register = |i: usize| {
        let ns = web.platform.endpoint(&format!("web-{i}")).netns.clone();
        let body =
            format!(r#"{{"service": "web", "id": "web-{i}", "port": {WEB_TCP}, "ttl_secs": 60}}"#);
        let (status, answer) =
            http::from_namespace(&ns, (registry, 8500).into(), "POST", "/v1/instances", &body);
        assert!(
            status == 200 || status == 201,
            "register web-{i}: {status} {answer}"
        );
    };
    register(1);
    register(2);
    wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(5),
        "web-1, web-2",
        |a| a.len() == 2 && a.contains(&addr(1)) && a.contains(&addr(2)),
    );
    register(3);
    let joined = wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(1),
        "web-3 in",
        |a| a.contains(&addr(3)),
    );
    let ns = web.platform.endpoint("web-3").netns.clone();
    let (status, answer) = http::from_namespace(
        &ns,
        (registry, 8500).into(),
        "DELETE",
        "/v1/instances/web/web-3",
        "",
    );
    assert!(status < 300, "deregister: {status} {answer}");
    let left = wait_backends(
        &slot,
        "web",
        WEB_TCP,
        Duration::from_secs(1),
        "web-3 out",
        |a| !a.contains(&addr(3)),
    );
    eprintln!("registered -> in the maps {joined:?}; deregistered -> out {left:?}");
}

/// Connects from `ns` out of `client:port` (SO_REUSEADDR, so a second socket can bind the
/// same port towards another destination) to `to:WEB_TCP`; the greeting names the server.
fn connect_from_port(
    ns: &str,
    client: Ipv4Addr,
    port: u16,
    to: Ipv4Addr,
) -> std::io::Result<(TcpStream, String)> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let stream = netctl::net::netns::run_in(ns, move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(SocketAddr::from((client, port))))?;
        s.connect_timeout(
            &SockAddr::from(SocketAddr::from((to, WEB_TCP))),
            Duration::from_secs(2),
        )?;
        Ok(TcpStream::from(s))
    })
    .map_err(std::io::Error::other)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)?;
    Ok((stream, line.trim().to_string()))
}

/// One client port used through the VIP and straight to the backend the VIP chose: at the
/// backend both are the same tuple. The eBPF dataplane refuses the second connection
/// (counted as `nat-collision`) and the first keeps working; it never hands one
/// connection's replies to the other (issue 20, item 3).
#[test]
fn one_client_port_through_the_vip_and_straight_to_its_backend_never_mixes_them() {
    use std::io::{Read, Write};
    require_root!();
    let slot = Slot::acquire();
    let web = Web::up(&slot, "round-robin", false);
    let ns = web.client_ns();
    let client = web.platform.endpoint("client").address;
    let port = 41000 + (std::process::id() % 1000) as u16;
    let (mut through_vip, server) =
        connect_from_port(&ns, client, port, web.vip()).expect("through the VIP");
    let backend = web.platform.endpoint(&server).address;
    let direct = connect_from_port(&ns, client, port, backend);
    assert!(
        direct.is_err(),
        "the second connection on the same tuple was let through: {:?}",
        direct.map(|(_, s)| s)
    );
    through_vip.write_all(b"still").expect("write");
    let mut buf = [0u8; 64];
    let n = through_vip
        .read(&mut buf)
        .expect("the VIP connection answers");
    assert_eq!(&buf[..n], format!("{server}:still").as_bytes());
    let pins = Pins::for_instance(&slot.instance());
    let collisions = netctl::dataplane::ebpf::stats::drops(&pins)
        .expect("drop counters")
        .into_iter()
        .find(|(r, _)| r.name() == "nat-collision")
        .map_or(0, |(_, n)| n);
    assert!(collisions >= 1, "counted: {collisions}");
    // Once the VIP connection is gone, the port works straight to the backend.
    drop(through_vip);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match connect_from_port(&ns, client, port, backend) {
            Ok((_, s)) => {
                assert_eq!(s, server);
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("the port stays refused after the VIP connection closed: {e}"),
        }
    }
}
