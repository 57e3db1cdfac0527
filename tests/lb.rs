//! Service load balancing for real: namespaces, the eBPF programs, TCP and UDP servers in
//! the replicas, clients in another tier. Both paths: the TC programs (per-packet NAT with
//! conntrack) and socket-level LB (connect/sendmsg go straight to a backend).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{
    Platform, Slot, assert_success,
    internet::Internet,
    traffic::{NamedServer, Session, UdpNamedServer, greetings, udp_ask},
};
use serde_json::Value;

const WEB_TCP: u16 = 7000;
const WEB_UDP: u16 = 7001;

/// A client tier and three web replicas on another tier (routed through the host).
fn topology(algorithm: &str, socket_lb: bool) -> String {
    format!(
        r#"
[networks.front]
subnet = "10.0.1.0/24"
[networks.back]
subnet = "10.0.2.0/24"
[services.client]
network = "front"
address = "10.0.1.10"
[services.web]
network = "back"
address = "10.0.2.10"
replicas = 3
ports = [{WEB_TCP}, "{WEB_UDP}/udp"]
lb = "{algorithm}"
[dataplane]
socket_lb = {socket_lb}
"#
    )
}

struct Web<'a> {
    platform: Platform<'a>,
    servers: Vec<Option<NamedServer>>,
    _udp: Vec<UdpNamedServer>,
}

impl<'a> Web<'a> {
    fn up(slot: &'a Slot, algorithm: &str, socket_lb: bool) -> Web<'a> {
        let platform = Platform::from_toml(slot, &topology(algorithm, socket_lb));
        platform.up_ok();
        let mut servers = Vec::new();
        let mut udp = Vec::new();
        for i in 1..=3 {
            let ep = platform.endpoint(&format!("web-{i}"));
            servers.push(Some(NamedServer::start(
                &ep.netns, ep.address, WEB_TCP, &ep.name,
            )));
            udp.push(UdpNamedServer::start(
                &ep.netns, ep.address, WEB_UDP, &ep.name,
            ));
        }
        let web = Web {
            platform,
            servers,
            _udp: udp,
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
        let out = self
            .platform
            .slot
            .netctl(&["services", "--json", "--service", "web"]);
        assert_success(&out, "netctl services");
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        let fe = v["frontends"]
            .as_array()
            .expect("frontends")
            .iter()
            .find(|f| f["port"] == WEB_TCP)
            .expect("web tcp frontend")
            .clone();
        fe["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .filter(|b| b["state"] == "active")
            .map(|b| b["addr"].as_str().expect("addr").parse().expect("ip"))
            .collect()
    }

    fn wait_active(&self, n: usize) -> Duration {
        let start = Instant::now();
        while self.active().len() != n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waiting for {n} active backends"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
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
        web.platform.update_toml(&topology(algorithm, false));
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

    // No per-packet NAT: conntrack holds the direct connection, not a VIP one.
    let out = slot.netctl(&["conntrack", "--json"]);
    let conns: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        conns.iter().all(|c| c["nat"] == false),
        "socket LB needs no NAT"
    );
    let counters = slot.netctl(&["maps", "COUNTERS"]);
    let counters: Vec<Value> = serde_json::from_slice(&counters.stdout).expect("json");
    let lb_sock = counters
        .iter()
        .find(|c| c["key"] == 4)
        .map_or(0, |c| c["value"].as_u64().unwrap());
    assert!(
        lb_sock >= 31,
        "socket LB counted its connections: {lb_sock}"
    );
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
        web.platform
            .update_toml(&topology("round-robin", socket_lb));
        std::thread::sleep(Duration::from_millis(500));
        let answers = udp_ask(&web.client_ns(), web.vip(), WEB_UDP, 6);
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
port = 80
"#,
        uplink = internet.name
    );
    let platform = Platform::from_toml(&slot, &text);
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
