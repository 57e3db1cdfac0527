//! Seeing the network: the traffic report (CSV checked against traffic the test made, the
//! HTML page rendered by headless Chromium), the topology picture (DOT read by Graphviz),
//! Prometheus metrics, `health --once`, `conntrack --summary`.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use netctl::topology::TopologyBuilder;

use common::{
    Platform, Slot, assert_success,
    traffic::{self, NamedServer, Session},
    wait_for,
};
use serde_json::Value;

/// A client tier and one server on another tier.
fn topology() -> TopologyBuilder {
    common::two_tiers().service("server", |s| {
        s.network("back").address("10.0.2.10").tcp(7000)
    })
}

#[test]
fn the_report_counts_known_traffic_and_renders_with_its_charts() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, topology());
    platform.up_ok();
    let client = platform.endpoint("client");
    let server = platform.endpoint("server");

    // Exactly N datagrams of a known size client -> server, and M of another size server
    // -> client (the client has no port, so nothing health-checks it: it sends nothing
    // else, and receives only these).
    const N: usize = 25;
    const PAYLOAD: usize = 200;
    const M: usize = 12;
    const PAYLOAD_BACK: usize = 60;
    let frame = (14 + 20 + 8 + PAYLOAD) as u64;
    let frame_back = (14 + 20 + 8 + PAYLOAD_BACK) as u64;
    let sink = traffic::udp_sink(&server.netns, server.address, 7100, N);
    traffic::udp_send(Some(&client.netns), 17100, server.address, 7100, N, PAYLOAD);
    assert_eq!(sink.join().unwrap(), N);
    let sink = traffic::udp_sink(&client.netns, client.address, 7200, M);
    traffic::udp_send(
        Some(&server.netns),
        17200,
        client.address,
        7200,
        M,
        PAYLOAD_BACK,
    );
    assert_eq!(sink.join().unwrap(), M);

    let dir = tempfile::tempdir().unwrap();
    let out = slot.netctl(&["report", "-o", dir.path().to_str().unwrap(), "--reset"]);
    assert_success(&out, "netctl report");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let pairs = read("packets_per_service_pair.csv");
    assert!(
        pairs.starts_with("source,destination,packets,bytes\n"),
        "{pairs}"
    );
    assert!(
        pairs.contains(&format!("client,server,{N},{}\n", N as u64 * frame)),
        "{pairs}"
    );
    assert!(
        pairs.contains(&format!("server,client,{M},{}\n", M as u64 * frame_back)),
        "{pairs}"
    );
    let talkers = read("top_talkers.csv");
    assert!(
        talkers.contains(&format!("client,{N},{}\n", N as u64 * frame)),
        "{talkers}"
    );
    // The protocol distribution: every UDP packet is one of ours; TCP is the health
    // checks of the server (host -> server:7000); no ICMP.
    let protocols = read("protocol_distribution.csv");
    let packets = |proto: &str| -> u64 {
        protocols
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{proto},")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(packets("UDP"), (N + M) as u64, "{protocols}");
    assert_eq!(packets("ICMP"), 0, "{protocols}");
    let all: u64 = ["TCP", "UDP", "ICMP", "other"]
        .iter()
        .map(|p| packets(p))
        .sum();
    assert_eq!(all, packets("UDP") + packets("TCP"), "{protocols}");
    for chart in ["protocol_distribution", "top_service_pairs", "top_talkers"] {
        assert!(
            read(&format!("{chart}.svg")).contains("<svg"),
            "{chart}.svg"
        );
        let png = std::fs::read(dir.path().join(format!("{chart}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{chart}.png");
    }

    // The page, as a browser sees it: it loads, with its three charts drawn.
    let profile = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .stderr(Stdio::null())
        .output()
        .expect("chromium (cargo xtask setup installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("Network traffic report"), "the page loaded");
    assert_eq!(dom.matches("<figure class=\"chart\"").count(), 3);
    assert_eq!(dom.matches("<svg").count(), 3, "three charts in the DOM");
    assert!(dom.matches("<rect").count() >= 6, "bars drawn");
    assert!(dom.contains("client") && dom.contains("server"));

    // --reset started a fresh window.
    let flows: Vec<Value> =
        serde_json::from_slice(&slot.netctl(&["flows", "--json"]).stdout).unwrap();
    assert!(
        !flows
            .iter()
            .any(|f| f["src_name"] == "client" && f["dst_port"] == 7100),
        "the reported flows were cleared"
    );
}

#[test]
fn the_topology_reads_from_the_kernel_and_its_dot_parses_with_graphviz() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, topology().port_forward(8080, "server", 7000));
    platform.up_ok();
    let host_port = platform.plan.port_forwards[0].host_port;
    // The controller writes the LB maps just after `up`: until then they are MISSING.
    let mut text = String::new();
    wait_for(
        "the VIP and host port in the LB maps",
        Duration::from_secs(10),
        || {
            let out = slot.netctl(&["topology"]);
            assert_success(&out, "netctl topology");
            text = String::from_utf8_lossy(&out.stdout).into_owned();
            !text.contains("MISSING")
        },
    );
    let server = platform.endpoint("server");
    assert!(
        text.contains(&server.netns) && text.contains(&format!("{}/24", server.address)),
        "{text}"
    );
    assert!(text.contains("bridge up"), "{text}");
    let vip = platform.plan.service("server").unwrap().vip;
    assert!(text.contains(&format!("server  VIP {vip}")), "{text}");
    assert!(
        text.contains(&format!("port {host_port}/tcp -> server:7000")),
        "{text}"
    );
    assert!(!text.contains("MISSING"), "{text}");

    let dot = slot.netctl(&["topology", "--format", "dot"]);
    assert_success(&dot, "netctl topology --format dot");
    let mut graphviz = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dot (graphviz)");
    graphviz
        .stdin
        .take()
        .unwrap()
        .write_all(&dot.stdout)
        .unwrap();
    let svg = graphviz.wait_with_output().unwrap();
    assert!(
        svg.status.success(),
        "dot rejected the graph: {}",
        String::from_utf8_lossy(&svg.stderr)
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    // (Graphviz writes '-' as "&#45;" in SVG text: look for the address.)
    assert!(
        svg.contains(&format!("{}/24", server.address)) && svg.contains("<svg"),
        "{svg}"
    );
    let direct = slot.netctl(&["topology", "--format", "svg"]);
    assert!(String::from_utf8_lossy(&direct.stdout).contains("<svg"));

    // Live, not from the file: with the controller stopped (it would put them back), the
    // VIP and the host port taken out of the LB map behind netctl's back show as missing,
    // and so does a namespace removed.
    common::kill_controller(&slot);
    let removed = remove_frontends(&slot, |k| {
        std::net::Ipv4Addr::from(k.addr) == vip || k.port == host_port
    });
    assert!(removed >= 2, "the VIP's and the host port's entries");
    let text = String::from_utf8_lossy(&slot.netctl(&["topology"]).stdout).into_owned();
    assert!(
        text.contains(&format!("(MISSING in the dataplane: {vip}:7000/tcp)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("port {host_port}/tcp -> server:7000"))
            && text.contains("(MISSING in the dataplane)"),
        "{text}"
    );
    assert!(!text.contains(&format!("server  VIP {vip}")), "{text}");
    netctl::net::netns::delete(&server.netns).unwrap();
    let text = slot.netctl(&["topology"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("namespace MISSING"));
}

/// Removes the entries of the slot's `LB_SERVICES` map whose key `drop` picks; how many.
fn remove_frontends(slot: &Slot, drop: impl Fn(&netctl_common::ServiceKey) -> bool) -> usize {
    use aya::maps::{HashMap, Map, MapData};
    let pins = netctl::dataplane::ebpf::Pins::for_instance(&slot.instance());
    let data = MapData::from_pin(pins.map(netctl_common::maps::LB_SERVICES)).unwrap();
    let mut map: HashMap<_, netctl_common::ServiceKey, netctl_common::ServiceValue> =
        HashMap::try_from(Map::HashMap(data)).unwrap();
    let keys: Vec<_> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| drop(k))
        .collect();
    for k in &keys {
        map.remove(k).unwrap();
    }
    keys.len()
}

/// Parses the Prometheus text format: every sample line is `name{labels} value`.
fn scrape(port: u16) -> Vec<(String, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut samples = Vec::new();
    // Chunked or not, the sample lines are what matters.
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.starts_with("netctl_") {
            continue; // chunk-size lines
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        if let Some(open) = series.find('{') {
            assert!(series.ends_with('}'), "labels closed: {line}");
            for pair in series[open + 1..series.len() - 1].split("\",") {
                assert!(pair.contains("=\""), "label form: {line}");
            }
        }
        samples.push((series.to_string(), value));
    }
    assert!(body.contains("# TYPE netctl_drops_total counter"));
    samples
}

#[test]
fn metrics_scrape_parses_and_tracks_drops_health_and_conntrack() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, topology());
    platform.up_ok();
    let server = platform.endpoint("server");
    let client = platform.endpoint("client");
    let vip = platform.plan.service("server").unwrap().vip;

    // No backend yet: a connection to the VIP is dropped for it.
    assert!(!traffic::probe(Some(&client.netns), vip, 7000, Duration::from_millis(300)).passed());
    let value = |samples: &[(String, f64)], series: &str| {
        samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
    };
    let mut samples = Vec::new();
    wait_for("the metrics endpoint", Duration::from_secs(10), || {
        samples = std::panic::catch_unwind(|| scrape(slot.metrics_port())).unwrap_or_default();
        !samples.is_empty()
    });
    assert!(value(&samples, "netctl_drops_total{reason=\"no-backend\"}").unwrap() >= 1.0);
    assert_eq!(
        value(&samples, "netctl_conntrack_capacity"),
        Some(f64::from(platform.plan.dataplane.conntrack_max))
    );

    let _up = NamedServer::start(&server.netns, server.address, 7000, "server");
    let backend = format!(
        "netctl_backend_up{{service=\"server\",instance=\"server\",address=\"{}\",port=\"7000\"}}",
        server.address
    );
    wait_for(
        "the backend to be up in the metrics",
        Duration::from_secs(10),
        || value(&scrape(slot.metrics_port()), &backend) == Some(1.0),
    );
    let _session = Session::open(&client.netns, vip, 7000);
    let samples = scrape(slot.metrics_port());
    assert!(
        value(
            &samples,
            "netctl_service_connections{service=\"server\",state=\"established\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{samples:?}"
    );
    assert!(value(&samples, "netctl_conntrack_entries").unwrap() >= 2.0);

    // Map pressure for every map: capacity, and entries of the hash maps.
    for map in [
        "FLOWS",
        "CT",
        "LB_SERVICES",
        "LB_BACKENDS",
        "SOCK_REVNAT",
        "IDENTITIES",
        "POLICY",
        "RATE_LIMITS",
        "RATE_BUCKETS",
        "DROP_PAIRS",
    ] {
        let entries = value(&samples, &format!("netctl_map_entries{{map=\"{map}\"}}"));
        let capacity = value(&samples, &format!("netctl_map_capacity{{map=\"{map}\"}}"));
        assert!(
            entries.is_some() && capacity.is_some_and(|c| c > 0.0),
            "{map}: {samples:?}"
        );
        assert!(entries <= capacity, "{map}");
    }
    // The server's frontend: one master entry and one slot.
    assert!(value(&samples, "netctl_map_entries{map=\"LB_SERVICES\"}").unwrap() >= 2.0);
    assert!(value(&samples, "netctl_map_entries{map=\"IDENTITIES\"}").unwrap() >= 2.0);
    assert!(value(&samples, "netctl_map_entries{map=\"DROP_PAIRS\"}").unwrap() >= 1.0);
    assert!(value(&samples, "netctl_map_fill_ratio{map=\"CT\"}").unwrap() > 0.0);

    // New connections per service, from the dataplane's flow events: three more to the
    // server show as three more.
    let new_conns = "netctl_service_new_connections_total{service=\"server\",protocol=\"tcp\"}";
    let before = value(&scrape(slot.metrics_port()), new_conns).unwrap_or(0.0);
    let _more: Vec<Session> = (0..3)
        .map(|_| Session::open(&client.netns, vip, 7000))
        .collect();
    wait_for(
        "three new connections counted",
        Duration::from_secs(10),
        || value(&scrape(slot.metrics_port()), new_conns).unwrap_or(0.0) >= before + 3.0,
    );

    // The iptables dataplane: conntrack fill from the kernel's own table.
    drop(_more);
    drop(_session);
    let file = platform.file.to_str().unwrap();
    assert_success(
        &slot.netctl(&["up", "-f", file, "--dataplane", "iptables"]),
        "up --dataplane iptables",
    );
    let max: f64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut samples = Vec::new();
    wait_for(
        "the iptables controller's metrics",
        Duration::from_secs(20),
        || {
            samples = std::panic::catch_unwind(|| scrape(slot.metrics_port())).unwrap_or_default();
            // The new controller's (no maps any more), from the kernel's table.
            !samples.is_empty() && !samples.iter().any(|(s, _)| s.starts_with("netctl_map_"))
        },
    );
    assert_eq!(value(&samples, "netctl_conntrack_capacity"), Some(max));
    let count: f64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let entries = value(&samples, "netctl_conntrack_entries").unwrap();
    // Host-wide and live: other connections come and go between the two reads.
    assert!(entries > 0.0 && (entries - count).abs() <= count.max(entries) * 0.5 + 50.0);
}

#[test]
fn health_once_flips_its_exit_code_when_a_service_dies_and_conntrack_summary_counts() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::build(&slot, topology());
    platform.up_ok();
    let server = platform.endpoint("server");
    let client = platform.endpoint("client");
    let alive = NamedServer::start(&server.netns, server.address, 7000, "server");
    wait_for("health --once to pass", Duration::from_secs(10), || {
        slot.netctl(&["health", "--once"]).status.success()
    });
    let json: Value = serde_json::from_slice(&slot.netctl(&["health", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["instance"], "server");
    assert_eq!(json[0]["status"], "UP");
    assert_eq!(json[0]["lb"], "active");

    let vip = platform.plan.service("server").unwrap().vip;
    let _a = Session::open(&client.netns, vip, 7000);
    let _b = Session::open(&client.netns, vip, 7000);
    let summary: Vec<Value> =
        serde_json::from_slice(&slot.netctl(&["conntrack", "--summary", "--json"]).stdout).unwrap();
    let row = summary
        .iter()
        .find(|r| r["service"] == "server")
        .expect("server row");
    assert!(row["established"].as_u64().unwrap() >= 2, "{row}");

    drop(alive);
    wait_for("health --once to fail", Duration::from_secs(10), || {
        slot.netctl(&["health", "--once"]).status.code() == Some(1)
    });
    let text = String::from_utf8_lossy(&slot.netctl(&["health", "--once"]).stdout).into_owned();
    assert!(
        text.contains("DOWN") && text.contains("0 up, 1 down"),
        "{text}"
    );
}
