//! Load balancing and NAT, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): the
//! rewritten bytes, checksums, conntrack entries and drop reasons, without namespaces.
//! Connection lifecycles too: FIN and RST, a client port reused for a new connection,
//! expiry, stale UDP flows, hairpin, and the conntrack GC racing a reused tuple.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{HashMap, Map, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use common::packets::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use netctl::dataplane::ebpf::{
    clock::BootClock,
    conntrack::{self, CtMap},
    lb::{Frontend, LbMaps},
    loader::{self, LoadOptions},
    maglev::{self, Candidate},
};
use netctl_common::{
    Backend, CtEntry, DropReason, FlowKey, ServiceKey, ServiceValue,
    ct::{
        CT_F_CLOSING, CT_F_DNAT, CT_F_HAIRPIN, CT_F_REPLIED, CT_F_REVERSE, CT_F_SNAT,
        CT_TIMEOUT_UDP_NS,
    },
    flow::{IPPROTO_TCP, IPPROTO_UDP},
    lb::{ALG_MAGLEV, ALG_ROUND_ROBIN, BACKEND_ACTIVE, MAGLEV_M, tuple_hash},
    maps::{COUNTERS, CT, DROPS, PROG_TC_INGRESS},
    stats::{CNT_CT_EXPIRED, CNT_CT_MISS_ESTABLISHED},
};

pub(crate) const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 5);
pub(crate) const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 20);
const BACKEND_2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 21);
const BACKEND_3: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 22);
const THREE: [(u32, Ipv4Addr, u16); 3] = [(1, BACKEND, 80), (2, BACKEND_2, 80), (3, BACKEND_3, 80)];

pub(crate) struct Dp {
    pub(crate) ebpf: Ebpf,
    pub(crate) lb: LbMaps,
    pub(crate) ct: CtMap,
}

pub(crate) fn load() -> Dp {
    let mut ebpf = loader::load(None, LoadOptions::default()).expect("object loads");
    let lb = LbMaps::take_from(&mut ebpf).expect("lb maps");
    let ct = match ebpf.take_map(CT).expect("CT") {
        Map::LruHashMap(d) => HashMap::try_from(Map::LruHashMap(d)).expect("CT map"),
        other => panic!("CT is {other:?}"),
    };
    Dp { ebpf, lb, ct }
}

pub(crate) fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(src.octets(), dst.octets(), sport, dport, proto)
}

fn now_ns() -> u64 {
    BootClock::now().unwrap().boot_ns
}

impl Dp {
    pub(crate) fn service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(u32, Ipv4Addr, u16)],
        algorithm: u8,
    ) {
        for (id, addr, bport) in backends {
            self.lb
                .set_backend(
                    *id,
                    Backend {
                        addr: addr.octets(),
                        port: *bport,
                        proto,
                        state: BACKEND_ACTIVE,
                    },
                )
                .unwrap();
        }
        let ids: Vec<u32> = backends.iter().map(|b| b.0).collect();
        let maglev = (algorithm == ALG_MAGLEV).then(|| {
            let cands: Vec<Candidate> = backends
                .iter()
                .map(|(_, a, p)| Candidate {
                    name: format!("{a}:{p}"),
                    weight: 1,
                })
                .collect();
            let cells = maglev::table(&cands, MAGLEV_M)
                .into_iter()
                .map(|i| ids[i as usize])
                .collect();
            (0, cells)
        });
        let fe = Frontend {
            addr: vip,
            port,
            proto,
            service_id: 7,
            algorithm,
            flags: 0,
            slots: ids,
            maglev,
        };
        self.lb.write_frontend(&fe, None).unwrap();
    }

    /// Runs the endpoint ingress program; returns the verdict and the frame as it left.
    pub(crate) fn ingress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = loader::classifier(&mut self.ebpf, PROG_TC_INGRESS).unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub(crate) fn ct(&self) -> StdHashMap<FlowKey, CtEntry> {
        self.ct.iter().map(|r| r.unwrap()).collect()
    }

    /// The backend the dataplane sent a frame to.
    fn sent_to(&mut self, frame: &[u8]) -> Ipv4Addr {
        let (verdict, out) = self.ingress(frame);
        assert_eq!(verdict, TC_ACT_OK);
        packets::endpoints(&out).2
    }

    fn counter(&self, index: u32) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(COUNTERS).unwrap()).unwrap();
        map.get(&index, 0).unwrap().iter().sum()
    }

    /// The master entry of frontend `vip:port/proto`.
    fn master(&self, vip: Ipv4Addr, port: u16, proto: u8) -> ServiceValue {
        self.lb
            .master(&ServiceKey::new(vip.octets(), port, proto, 0))
            .expect("the frontend exists")
    }

    fn drops(&self, reason: DropReason) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(DROPS).unwrap()).unwrap();
        map.get(&(reason as u32), 0).unwrap().iter().sum()
    }
}

#[test]
fn a_syn_to_a_vip_is_dnated_with_valid_checksums_and_tracked_and_the_reply_is_un_nated() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);

    let syn = packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0);
    assert!(packets::checksums_valid(&syn), "test frame is valid");
    let (verdict, out) = dp.ingress(&syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        packets::endpoints(&out),
        (CLIENT, 40000, BACKEND, 8080),
        "DNAT to the backend"
    );
    assert!(packets::checksums_valid(&out), "IP and TCP checksums fixed");

    let ct = dp.ct();
    let fwd = ct[&FlowKey::new(CLIENT.octets(), VIP.octets(), 40000, 80, IPPROTO_TCP)];
    assert_eq!(fwd.flags & CT_F_DNAT, CT_F_DNAT);
    assert_eq!(
        (fwd.nat_addr, fwd.nat_port, fwd.backend_id, fwd.service_id),
        (BACKEND.octets(), 8080, 1, 7)
    );
    let rev = ct[&FlowKey::new(BACKEND.octets(), CLIENT.octets(), 8080, 40000, IPPROTO_TCP)];
    assert_eq!(
        rev.flags & (CT_F_REVERSE | CT_F_SNAT),
        CT_F_REVERSE | CT_F_SNAT
    );
    assert_eq!((rev.nat_addr, rev.nat_port), (VIP.octets(), 80));

    // The backend's answer leaves its veth with the VIP as source.
    let synack = packets::tcp(BACKEND, 8080, CLIENT, 40000, TCP_SYN | TCP_ACK, 0);
    let (verdict, out) = dp.ingress(&synack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        packets::endpoints(&out),
        (VIP, 80, CLIENT, 40000),
        "reverse NAT to the VIP"
    );
    assert!(packets::checksums_valid(&out));

    // Later packets of the connection keep the backend, with payload.
    let data = packets::tcp(CLIENT, 40000, VIP, 80, TCP_ACK, 300);
    let (_, out) = dp.ingress(&data);
    assert_eq!(packets::endpoints(&out), (CLIENT, 40000, BACKEND, 8080));
    assert!(packets::checksums_valid(&out));
}

#[test]
fn udp_is_nated_both_ways_and_a_missing_checksum_stays_missing() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 53, IPPROTO_UDP, &[(1, BACKEND, 5353)], ALG_ROUND_ROBIN);
    for (sport, frame) in [
        (41000, packets::udp_checked(CLIENT, 41000, VIP, 53, 40)),
        (41001, packets::udp(CLIENT, 41001, VIP, 53, 40)),
    ] {
        let had_checksum = packets::checksums_valid(&frame);
        let (verdict, out) = dp.ingress(&frame);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(packets::endpoints(&out), (CLIENT, sport, BACKEND, 5353));
        if had_checksum {
            assert!(packets::checksums_valid(&out), "checksum fixed");
        } else {
            assert!(
                packets::udp_checksum_absent(&out),
                "no checksum, still none"
            );
        }
        let reply = packets::udp_checked(BACKEND, 5353, CLIENT, sport, 40);
        let (_, back) = dp.ingress(&reply);
        assert_eq!(packets::endpoints(&back), (VIP, 53, CLIENT, sport));
        assert!(packets::checksums_valid(&back));
    }
}

#[test]
fn a_new_connection_to_a_vip_without_backends_is_dropped_with_the_no_backend_reason() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[], ALG_ROUND_ROBIN);
    let (verdict, _) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::NoBackend), 1);
    assert!(
        dp.ct().is_empty(),
        "nothing tracked for a dropped connection"
    );
    // Traffic to a port the VIP does not serve is not ours to drop.
    let (verdict, _) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 81, TCP_SYN, 0));
    assert_eq!(verdict, TC_ACT_OK);
}

#[test]
fn round_robin_takes_turns_and_keeps_its_place_when_the_frontend_is_rewritten() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &THREE, ALG_ROUND_ROBIN);
    let seen: Vec<Ipv4Addr> = (50000..50006)
        .map(|sport| dp.sent_to(&packets::tcp(CLIENT, sport, VIP, 80, TCP_SYN, 0)))
        .collect();
    assert_eq!(
        &seen[..3],
        &seen[3..],
        "round-robin repeats every 3: {seen:?}"
    );
    assert_eq!(
        seen[..3]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );

    // One more turn (7 so far), then the controller rewrites the frontend with a fourth
    // backend: the next connection takes slot 7 % 4 + 1 = 4 (the new backend), where a
    // counter restarted at 0 would give slot 1 again.
    dp.sent_to(&packets::tcp(CLIENT, 50006, VIP, 80, TCP_SYN, 0));
    assert_eq!(dp.master(VIP, 80, IPPROTO_TCP).rr_next, 7);
    let four = [
        THREE[0],
        THREE[1],
        THREE[2],
        (4, Ipv4Addr::new(10, 2, 0, 23), 80),
    ];
    dp.service(VIP, 80, IPPROTO_TCP, &four, ALG_ROUND_ROBIN);
    assert_eq!(
        dp.master(VIP, 80, IPPROTO_TCP).rr_next,
        7,
        "kept on rewrite"
    );
    let next = dp.sent_to(&packets::tcp(CLIENT, 50007, VIP, 80, TCP_SYN, 0));
    assert_eq!(next, four[3].1, "slot 4 of 4");
}

#[test]
fn maglev_sends_each_tuple_to_its_table_cell_every_time() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &THREE, ALG_MAGLEV);
    let cands: Vec<Candidate> = THREE
        .iter()
        .map(|(_, a, p)| Candidate {
            name: format!("{a}:{p}"),
            weight: 1,
        })
        .collect();
    let table = maglev::table(&cands, MAGLEV_M);
    let expected = |sport: u16| {
        let h = tuple_hash(CLIENT.octets(), VIP.octets(), sport, 80, IPPROTO_TCP);
        THREE[table[(h % MAGLEV_M) as usize] as usize].1
    };
    let mut by_backend = StdHashMap::new();
    for sport in 30000..30300u16 {
        let to = dp.sent_to(&packets::tcp(CLIENT, sport, VIP, 80, TCP_SYN, 0));
        assert_eq!(to, expected(sport), "port {sport}: the tuple's cell");
        *by_backend.entry(to).or_insert(0) += 1;
    }
    assert_eq!(by_backend.len(), 3, "spread over all: {by_backend:?}");
    // The same tuples again as new connections (no conntrack to remember them): each goes
    // where it went before, by the table alone.
    let keys: Vec<FlowKey> = dp.ct().into_keys().collect();
    for k in &keys {
        dp.ct.remove(k).unwrap();
    }
    for sport in (30000..30300u16).step_by(7) {
        let to = dp.sent_to(&packets::tcp(CLIENT, sport, VIP, 80, TCP_SYN, 0));
        assert_eq!(to, expected(sport), "port {sport} again");
    }
}

#[test]
fn a_fin_puts_both_entries_in_the_closing_state() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    dp.ingress(&packets::tcp(
        BACKEND,
        8080,
        CLIENT,
        40000,
        TCP_SYN | TCP_ACK,
        0,
    ));
    let fwd = key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
    let rev = key(BACKEND, 8080, CLIENT, 40000, IPPROTO_TCP);
    let ct = dp.ct();
    for k in [&fwd, &rev] {
        assert_eq!(
            ct[k].flags & (CT_F_REPLIED | CT_F_CLOSING),
            CT_F_REPLIED,
            "established"
        );
    }
    // The server closes first: its FIN marks both directions.
    dp.ingress(&packets::tcp(
        BACKEND,
        8080,
        CLIENT,
        40000,
        TCP_FIN | TCP_ACK,
        0,
    ));
    let ct = dp.ct();
    for k in [&fwd, &rev] {
        assert_eq!(ct[k].flags & CT_F_CLOSING, CT_F_CLOSING, "closing: {k:?}");
    }
    assert_eq!(ct[&rev].tcp_flags & TCP_FIN, TCP_FIN);
    // The client's last ACK still reaches the backend.
    let (_, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_ACK, 0));
    assert_eq!(packets::endpoints(&out), (CLIENT, 40000, BACKEND, 8080));
}

#[test]
fn a_reused_client_port_is_a_new_connection_to_the_next_backend() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &THREE, ALG_ROUND_ROBIN);
    let fwd = key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
    let first = dp.sent_to(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    dp.ingress(&packets::tcp(
        first,
        80,
        CLIENT,
        40000,
        TCP_SYN | TCP_ACK,
        0,
    ));
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_ACK, 64));
    // Zero-linger close: the client resets, and connects again from the same port.
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_RST | TCP_ACK, 0));
    assert_eq!(dp.ct()[&fwd].flags & CT_F_CLOSING, CT_F_CLOSING);
    let second = dp.sent_to(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    assert_ne!(second, first, "round-robin chose again");
    let ct = dp.ct();
    assert_eq!(ct[&fwd].nat_addr, second.octets());
    assert_eq!(
        ct[&fwd].flags & CT_F_CLOSING,
        0,
        "a new connection, not closing"
    );
    assert!(
        !ct.contains_key(&key(first, 80, CLIENT, 40000, IPPROTO_TCP)),
        "the old connection's reverse entry went with it"
    );
    // The new backend's answer is un-NATed; a late packet of the old one is not.
    let (_, out) = dp.ingress(&packets::tcp(
        second,
        80,
        CLIENT,
        40000,
        TCP_SYN | TCP_ACK,
        0,
    ));
    assert_eq!(packets::endpoints(&out), (VIP, 80, CLIENT, 40000));
    let (_, out) = dp.ingress(&packets::tcp(first, 80, CLIENT, 40000, TCP_ACK, 0));
    assert_eq!(packets::endpoints(&out).0, first, "not the VIP");
    // Data of the new connection goes to the new backend.
    let (_, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_ACK, 64));
    assert_eq!(packets::endpoints(&out).2, second);
    // A SYN with ACK (not a new connection) on a closing tuple keeps the entry.
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_FIN | TCP_ACK, 0));
    let (_, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN | TCP_ACK, 0));
    assert_eq!(packets::endpoints(&out).2, second);
}

#[test]
fn a_udp_flow_whose_backend_is_gone_chooses_again_and_one_only_the_backend_speaks_in_lives() {
    require_root!();
    let mut dp = load();
    dp.service(
        VIP,
        53,
        IPPROTO_UDP,
        &[(1, BACKEND, 53), (2, BACKEND_2, 53)],
        ALG_ROUND_ROBIN,
    );
    let datagram = || packets::udp_checked(CLIENT, 41000, VIP, 53, 20);
    let first = dp.sent_to(&datagram());
    assert_eq!(dp.sent_to(&datagram()), first, "the flow keeps its backend");

    // Its backend leaves (killed: out of the frontend and of LB_BACKENDS).
    let (gone, rest) = if first == BACKEND {
        (1, (2, BACKEND_2, 53))
    } else {
        (2, (1, BACKEND, 53))
    };
    dp.service(VIP, 53, IPPROTO_UDP, &[rest], ALG_ROUND_ROBIN);
    dp.lb.remove_backend(gone).unwrap();
    assert_eq!(
        dp.sent_to(&datagram()),
        rest.1,
        "the next datagram chooses again"
    );

    // Only the backend speaks for longer than the UDP timeout: the client's direction is
    // idle past it, the flow is not, and the client's next datagram keeps the backend.
    let fwd = key(CLIENT, 41000, VIP, 53, IPPROTO_UDP);
    let rev = key(rest.1, 53, CLIENT, 41000, IPPROTO_UDP);
    let now = now_ns();
    let mut f = dp.ct()[&fwd];
    f.last_seen_ns = now - CT_TIMEOUT_UDP_NS - 5_000_000_000;
    dp.ct.insert(fwd, f, 0).unwrap();
    dp.ingress(&packets::udp_checked(rest.1, 53, CLIENT, 41000, 20));
    let expired_before = dp.counter(CNT_CT_EXPIRED);
    assert_eq!(dp.sent_to(&datagram()), rest.1);
    assert_eq!(dp.counter(CNT_CT_EXPIRED), expired_before, "not expired");
    assert_eq!(dp.ct()[&fwd].nat_addr, rest.1.octets());

    // Both directions idle: the pair expires together and the flow starts over.
    for (k, mut e) in [(fwd, dp.ct()[&fwd]), (rev, dp.ct()[&rev])] {
        e.last_seen_ns = now - CT_TIMEOUT_UDP_NS - 5_000_000_000;
        e.created_ns = e.last_seen_ns;
        dp.ct.insert(k, e, 0).unwrap();
    }
    dp.sent_to(&datagram());
    assert_eq!(dp.counter(CNT_CT_EXPIRED), expired_before + 1);
    let ct = dp.ct();
    assert!(ct[&fwd].created_ns > now - 1_000_000_000, "a fresh entry");
    assert!(
        ct[&rev].created_ns > now - 1_000_000_000,
        "its reverse entry too"
    );
}

#[test]
fn a_reply_from_a_backend_without_an_entry_is_counted() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 53, IPPROTO_UDP, &[(1, BACKEND, 5353)], ALG_ROUND_ROBIN);
    let before = dp.counter(CNT_CT_MISS_ESTABLISHED);
    // A UDP flow's entries are gone (evicted): the backend's reply finds none.
    dp.ingress(&packets::udp_checked(BACKEND, 5353, CLIENT, 41000, 20));
    assert_eq!(dp.counter(CNT_CT_MISS_ESTABLISHED), before + 1);
    // A datagram from an address:port that is no backend is a new flow, not a loss.
    dp.ingress(&packets::udp_checked(BACKEND, 5354, CLIENT, 41001, 20));
    dp.ingress(&packets::udp_checked(CLIENT, 41002, BACKEND, 5353, 20));
    assert_eq!(dp.counter(CNT_CT_MISS_ESTABLISHED), before + 1);
    // Nor is a removed backend one.
    dp.lb.remove_backend(1).unwrap();
    dp.ingress(&packets::udp_checked(BACKEND, 5353, CLIENT, 41003, 20));
    assert_eq!(dp.counter(CNT_CT_MISS_ESTABLISHED), before + 1);
}

#[test]
fn a_backend_connecting_to_its_own_service_comes_back_from_the_vip() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    for (proto, out) in [
        (
            IPPROTO_TCP,
            dp.ingress(&packets::tcp(BACKEND, 40000, VIP, 80, TCP_SYN, 0))
                .1,
        ),
        (IPPROTO_UDP, {
            dp.service(VIP, 80, IPPROTO_UDP, &[(2, BACKEND, 8080)], ALG_ROUND_ROBIN);
            dp.ingress(&packets::udp_checked(BACKEND, 40000, VIP, 80, 20))
                .1
        }),
    ] {
        // DNAT to itself, and from the VIP (same port), so it is no martian.
        assert_eq!(
            packets::endpoints(&out),
            (VIP, 40000, BACKEND, 8080),
            "{proto}"
        );
        assert!(packets::checksums_valid(&out));
        let ct = dp.ct();
        let fwd = ct[&key(BACKEND, 40000, VIP, 80, proto)];
        assert_eq!(
            fwd.flags & (CT_F_DNAT | CT_F_HAIRPIN),
            CT_F_DNAT | CT_F_HAIRPIN
        );
        let rev = ct[&key(BACKEND, 8080, VIP, 40000, proto)];
        assert_eq!(
            rev.flags & (CT_F_REVERSE | CT_F_SNAT | CT_F_HAIRPIN),
            CT_F_REVERSE | CT_F_SNAT | CT_F_HAIRPIN
        );
        // The server's answer goes back to the client socket: VIP:80 -> itself.
        let reply = if proto == IPPROTO_TCP {
            packets::tcp(BACKEND, 8080, VIP, 40000, TCP_SYN | TCP_ACK, 0)
        } else {
            packets::udp_checked(BACKEND, 8080, VIP, 40000, 20)
        };
        let (verdict, back) = dp.ingress(&reply);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            packets::endpoints(&back),
            (VIP, 80, BACKEND, 40000),
            "{proto}"
        );
        assert!(packets::checksums_valid(&back));
    }
    // Established: the client's next segment is rewritten the same way.
    let (_, out) = dp.ingress(&packets::tcp(BACKEND, 40000, VIP, 80, TCP_ACK, 100));
    assert_eq!(packets::endpoints(&out), (VIP, 40000, BACKEND, 8080));
    assert!(packets::checksums_valid(&out));
    // Another client of the same service is not rewritten at its source.
    let (_, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    assert_eq!(packets::endpoints(&out), (CLIENT, 40000, BACKEND, 8080));
}

/// The `bench lb` stall: the GC reads the table, a client reuses a tuple whose old entries
/// the snapshot saw expired, the dataplane writes the new connection's entries under the
/// same keys, then the GC deletes by its snapshot. It must not take the new ones.
#[test]
fn the_gc_keeps_entries_renewed_after_its_snapshot() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    let fwd = key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
    let rev = key(BACKEND, 8080, CLIENT, 40000, IPPROTO_TCP);
    // An old connection on the tuple, closed long ago (the previous round of a benchmark).
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    dp.ingress(&packets::tcp(
        BACKEND,
        8080,
        CLIENT,
        40000,
        TCP_SYN | TCP_ACK,
        0,
    ));
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_RST | TCP_ACK, 0));
    let long_ago = now_ns() - 60_000_000_000;
    for (k, mut e) in [(fwd, dp.ct()[&fwd]), (rev, dp.ct()[&rev])] {
        e.created_ns = long_ago;
        e.last_seen_ns = long_ago;
        dp.ct.insert(k, e, 0).unwrap();
    }
    // An unrelated expired pair the pass must still delete.
    let other = key(CLIENT, 40001, Ipv4Addr::new(10, 2, 0, 99), 9, IPPROTO_TCP);
    dp.ct
        .insert(
            other,
            CtEntry {
                created_ns: long_ago,
                last_seen_ns: long_ago,
                ..CtEntry::default()
            },
            0,
        )
        .unwrap();

    let plan = conntrack::gc_plan(&dp.ct).unwrap();
    let doomed: Vec<FlowKey> = plan.expired_keys().copied().collect();
    assert!(doomed.contains(&fwd) && doomed.contains(&rev) && doomed.contains(&other));

    // Meanwhile the port is reused: a new connection to the same backend.
    let (_, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    assert_eq!(packets::endpoints(&out), (CLIENT, 40000, BACKEND, 8080));

    let report = conntrack::gc_sweep(&mut dp.ct, plan);
    assert_eq!(report.renewed, 2, "{report:?}");
    let ct = dp.ct();
    assert!(!ct.contains_key(&other), "the stale pair went");
    assert!(
        ct.contains_key(&fwd) && ct.contains_key(&rev),
        "the new connection stays"
    );
    let (_, back) = dp.ingress(&packets::tcp(
        BACKEND,
        8080,
        CLIENT,
        40000,
        TCP_SYN | TCP_ACK,
        0,
    ));
    assert_eq!(
        packets::endpoints(&back),
        (VIP, 80, CLIENT, 40000),
        "its replies un-NATed"
    );
}

/// One client port used through a VIP and straight to the VIP's backend: from the backend
/// both connections are `BACKEND:80 -> CLIENT:40000`. Whichever comes second is refused
/// with its own drop reason, and the first keeps its NAT (before, the second overwrote
/// the first's reverse entry: the VIP connection's replies lost their un-NAT, or the
/// direct connection's replies came back from the VIP).
#[test]
fn one_client_port_through_a_vip_and_straight_to_its_backend_is_refused_not_mixed() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 80)], ALG_ROUND_ROBIN);

    // Through the VIP first, then straight to the backend from the same port.
    assert_eq!(
        dp.sent_to(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0)),
        BACKEND
    );
    let (verdict, _) = dp.ingress(&packets::tcp(CLIENT, 40000, BACKEND, 80, TCP_SYN, 0));
    assert_eq!(verdict, TC_ACT_SHOT, "the direct connection is refused");
    assert_eq!(dp.drops(DropReason::NatCollision), 1);
    assert_eq!(
        syn_ack_from_backend(&mut dp, 40000),
        (VIP, 80, CLIENT, 40000),
        "the VIP connection's reply is still un-NATed"
    );

    // Straight to the backend first, then through the VIP from the same port.
    assert_eq!(
        dp.ingress(&packets::tcp(CLIENT, 40001, BACKEND, 80, TCP_SYN, 0))
            .0,
        TC_ACT_OK
    );
    let (verdict, _) = dp.ingress(&packets::tcp(CLIENT, 40001, VIP, 80, TCP_SYN, 0));
    assert_eq!(verdict, TC_ACT_SHOT, "the VIP connection is refused");
    assert_eq!(dp.drops(DropReason::NatCollision), 2);
    assert!(
        !dp.ct()
            .contains_key(&key(CLIENT, 40001, VIP, 80, IPPROTO_TCP))
    );
    assert_eq!(
        syn_ack_from_backend(&mut dp, 40001),
        (BACKEND, 80, CLIENT, 40001),
        "the direct connection's reply is left alone"
    );

    // A closed connection gives its tuple up, as a reused port does.
    dp.ingress(&packets::tcp(
        CLIENT,
        40001,
        BACKEND,
        80,
        TCP_RST | TCP_ACK,
        0,
    ));
    assert_eq!(
        dp.sent_to(&packets::tcp(CLIENT, 40001, VIP, 80, TCP_SYN, 0)),
        BACKEND
    );
    assert_eq!(
        syn_ack_from_backend(&mut dp, 40001),
        (VIP, 80, CLIENT, 40001)
    );
}

/// The backend's SYN-ACK to `CLIENT:port`, as it leaves the dataplane.
fn syn_ack_from_backend(dp: &mut Dp, port: u16) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let (_, out) = dp.ingress(&packets::tcp(
        BACKEND,
        80,
        CLIENT,
        port,
        TCP_SYN | TCP_ACK,
        0,
    ));
    packets::endpoints(&out)
}
