//! The default platform, brought up for real (in this test's own prefix and subnets):
//! its network checked over netlink, traffic sent between namespaces and counted by the
//! eBPF programs, NAT to a namespace playing the internet, and a clean `down`.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    Platform, Slot, assert_success, block_on, flows, internet::Internet, snapshot::Snapshot,
    traffic,
};
use ipnet::Ipv4Net;
use netctl::net::{netlink::Netlink, netns};
use serde_json::Value;

#[test]
fn default_platform_comes_up_complete_is_idempotent_and_goes_down_without_a_trace() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    {
        let platform = Platform::network_only(&slot);
        let out = platform.up_ok();
        assert!(out.contains("3 networks, 9 namespaces"), "{out}");
        check_network(&platform);

        let after_first = Snapshot::take(&slot.prefix());
        let again = platform.up_ok();
        assert!(again.contains("nothing to change"), "second up: {again}");
        after_first.assert_same(&Snapshot::take(&slot.prefix()));

        let status = slot.netctl(&["status", "--json"]);
        assert_success(&status, "netctl status");
        let status: Value = serde_json::from_slice(&status.stdout).expect("json");
        assert_eq!(status["healthy"], true);
        assert_eq!(status["instance"], slot.instance());

        let down = slot.netctl(&["down"]);
        assert_success(&down, "netctl down");
        let again = slot.netctl(&["down"]);
        assert_success(&again, "second netctl down");
        assert!(String::from_utf8_lossy(&again.stdout).contains("nothing is up"));
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

/// Bridges, veths, addresses, routes and TC programs, as the kernel reports them.
fn check_network(platform: &Platform) {
    let plan = &platform.plan;
    block_on(async {
        let host = Netlink::current().expect("netlink");
        let links = host.links().await.expect("links");
        for net in &plan.networks {
            let br = links
                .iter()
                .find(|l| l.name == net.bridge)
                .unwrap_or_else(|| panic!("bridge {} exists", net.bridge));
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            assert!(br.up, "bridge {} is up", net.bridge);
            let addrs = host.addresses(br.index).await.expect("addresses");
            let want = Ipv4Net::new(net.gateway, net.subnet.prefix_len()).expect("net");
            assert!(
                addrs.contains(&want),
                "{} has {want}: {addrs:?}",
                net.bridge
            );
        }
        for ep in &plan.endpoints {
            let veth = links
                .iter()
                .find(|l| l.name == ep.host_ifname)
                .unwrap_or_else(|| panic!("host veth {} exists", ep.host_ifname));
            let bridge = links.iter().find(|l| l.name == ep.bridge).expect("bridge");
            assert_eq!(veth.kind.as_deref(), Some("veth"));
            assert_eq!(
                veth.master,
                Some(bridge.index),
                "{} on {}",
                veth.name,
                bridge.name
            );
            assert!(veth.up);
            for (attach, prog) in [
                (TcAttachType::Ingress, "netctl_tc_ingre"),
                (TcAttachType::Egress, "netctl_tc_egres"),
            ] {
                let (_, progs) =
                    SchedClassifier::query_tcx(&ep.host_ifname, attach).expect("query tcx");
                let names: Vec<_> = progs.iter().filter_map(|p| p.name_as_str()).collect();
                assert_eq!(names, [prog], "{} {attach:?}", ep.host_ifname);
            }

            assert!(netns::exists(&ep.netns));
            let inside = Netlink::in_netns(&ep.netns).expect("netlink in namespace");
            let ns_links = inside.links().await.expect("links in namespace");
            let lo = ns_links.iter().find(|l| l.name == "lo").expect("lo");
            assert!(lo.up, "lo up in {}", ep.netns);
            let eth = ns_links.iter().find(|l| l.name == "eth0").expect("eth0");
            assert!(eth.up, "eth0 up in {}", ep.netns);
            let addrs = inside.addresses(eth.index).await.expect("addresses");
            assert_eq!(
                addrs,
                [Ipv4Net::new(ep.address, ep.prefix_len).expect("net")]
            );
            let routes = inside.routes().await.expect("routes");
            assert!(
                routes
                    .iter()
                    .any(|r| r.destination.prefix_len() == 0 && r.gateway == Some(ep.gateway)),
                "default route via {} in {}: {routes:?}",
                ep.gateway,
                ep.netns
            );
        }
    });
}

fn find<'a>(
    flows: &'a [Value],
    src: &str,
    dst: &str,
    proto: &str,
    dport: u16,
) -> Option<&'a Value> {
    flows.iter().find(|f| {
        f["src_name"] == src
            && f["dst_name"] == dst
            && f["protocol"] == proto
            && f["dst_port"] == dport
    })
}

#[test]
fn traffic_between_namespaces_is_counted_once_per_packet_with_names() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let order = platform.endpoint("order");
    let postgres = platform.endpoint("postgres");
    let edge = platform.endpoint("edge");
    let p1 = platform.endpoint("product-1");
    let p2 = platform.endpoint("product-2");

    // TCP across tiers (backend -> database, routed by the host; the policy allows order
    // to reach postgres), not masqueraded.
    let sink = traffic::tcp_sink(&postgres.netns, postgres.address, 5432);
    traffic::tcp_send(&order.netns, postgres.address, 5432, 200_000);
    let got = sink.join().expect("sink thread");
    assert_eq!(got.bytes, 200_000);
    assert_eq!(
        got.peer.ip(),
        order.address,
        "traffic between tiers keeps its source"
    );

    // UDP, exact counts: across tiers, on one bridge, and from the host.
    const N: usize = 10;
    const PAYLOAD: usize = 100;
    let frame = 14 + 20 + 8 + PAYLOAD;
    let sinks = [
        traffic::udp_sink(&edge.netns, edge.address, 7000, N),
        traffic::udp_sink(&p2.netns, p2.address, 7001, N),
        traffic::udp_sink(&postgres.netns, postgres.address, 7002, N),
    ];
    traffic::udp_send(Some(&p1.netns), 17000, edge.address, 7000, N, PAYLOAD);
    traffic::udp_send(Some(&p1.netns), 17001, p2.address, 7001, N, PAYLOAD);
    traffic::udp_send(None, 0, postgres.address, 7002, N, PAYLOAD);
    for s in sinks {
        assert_eq!(s.join().expect("udp sink"), N, "every datagram arrived");
    }

    let flows = flows(&slot);
    let tcp = find(&flows, "order", "postgres", "tcp", 5432).expect("order -> postgres tcp flow");
    assert!(tcp["bytes"].as_u64().expect("bytes") > 200_000, "{tcp}");
    assert_eq!(
        tcp["tcp_flags"].as_u64().expect("flags") & 0x02,
        0x02,
        "SYN seen"
    );
    let back = find(
        &flows,
        "postgres",
        "order",
        "tcp",
        tcp["src_port"].as_u64().expect("port") as u16,
    )
    .expect("reply direction");
    assert!(back["packets"].as_u64().expect("packets") > 0);

    for (src, dst, port) in [
        ("product-1", "edge", 7000),
        ("product-1", "product-2", 7001),
    ] {
        let f = find(&flows, src, dst, "udp", port).unwrap_or_else(|| panic!("{src} -> {dst}"));
        assert_eq!(
            f["packets"], N as u64,
            "{src} -> {dst} counted once per packet: {f}"
        );
        assert_eq!(f["bytes"], (N * frame) as u64, "{f}");
    }
    let from_host = flows
        .iter()
        .find(|f| f["dst_port"] == 7002 && f["protocol"] == "udp")
        .expect("host -> postgres flow");
    assert_eq!(from_host["dst_name"], "postgres");
    assert_eq!(from_host["packets"], N as u64, "{from_host}");

    // The table for people names services too.
    let table = slot.netctl(&["flows", "--service", "product"]);
    assert_success(&table, "netctl flows --service product");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("product-1:17001") && text.contains("product-2:7001"),
        "{text}"
    );
    assert!(!text.contains("order"), "filtered to product: {text}");
}

#[test]
fn traffic_leaving_through_the_uplink_is_masqueraded() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    platform.up_ok();
    let internet = Internet::create(&slot);
    let order = platform.endpoint("order");

    let sink = traffic::tcp_sink(&internet.name, internet.addr, 443);
    traffic::tcp_send(&order.netns, internet.addr, 443, 1000);
    let got = sink.join().expect("sink");
    assert_eq!(got.bytes, 1000);
    assert_eq!(
        got.peer.ip(),
        internet.host_addr,
        "the outside sees the host's address, not the namespace's"
    );
}

/// The flat example (one /16 bridge, examples/flat.toml) moved into the slot (its /16
/// narrowed to the slot's /17): up, traffic between two of its namespaces on the one
/// bridge, `netctl flows` with the controller stopped, and a `down` that leaves nothing.
#[test]
fn the_flat_example_comes_up_counts_flows_without_a_controller_and_goes_down_clean() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    {
        let mut topology =
            netctl::topology::Topology::parse(include_str!("../../examples/flat.toml"))
                .expect("the flat example parses");
        common::relocate(&mut topology, slot.block());
        common::run_nothing(&mut topology);
        let platform = Platform::from_topology(&slot, &topology);
        assert_eq!(platform.plan.networks.len(), 1);
        assert_eq!(platform.plan.networks[0].subnet.prefix_len(), 17);
        let out = platform.up_ok();
        assert!(out.contains("1 networks, 9 namespaces"), "{out}");

        // TCP and exact UDP between namespaces on the one bridge.
        let order = platform.endpoint("order");
        let postgres = platform.endpoint("postgres");
        let p1 = platform.endpoint("product-1");
        let redis = platform.endpoint("redis");
        let sink = traffic::tcp_sink(&postgres.netns, postgres.address, 5432);
        traffic::tcp_send(&order.netns, postgres.address, 5432, 50_000);
        assert_eq!(sink.join().expect("sink").bytes, 50_000);
        const N: usize = 10;
        let sink = traffic::udp_sink(&redis.netns, redis.address, 7000, N);
        traffic::udp_send(Some(&p1.netns), 17000, redis.address, 7000, N, 100);
        assert_eq!(sink.join().expect("udp sink"), N);

        // The flow map is pinned: it answers with no netctl process running.
        common::kill_controller(&slot);
        let flows = flows(&slot);
        let tcp = find(&flows, "order", "postgres", "tcp", 5432).expect("order -> postgres");
        assert!(tcp["bytes"].as_u64().expect("bytes") > 50_000, "{tcp}");
        let udp = find(&flows, "product-1", "redis", "udp", 7000).expect("product-1 -> redis");
        assert_eq!(udp["packets"], N as u64, "{udp}");
        let table = slot.netctl(&["flows", "--service", "redis"]);
        assert_success(&table, "netctl flows");
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains("FIRST SEEN") && text.contains("product-1:17000"),
            "{text}"
        );

        assert_success(&slot.netctl(&["down"]), "netctl down");
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
    assert!(
        !netctl::instance::paths::run_dir(&slot.instance()).exists(),
        "no state left in /run/netctl"
    );
}
