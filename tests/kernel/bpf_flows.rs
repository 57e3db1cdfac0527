//! The flow counter, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): no
//! namespaces, no bpffs; each test loads its own copy of the object with private maps.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use common::packets::{self, TCP_ACK, TCP_SYN};
use netctl::dataplane::ebpf::loader;
use netctl_common::{
    DropReason, FlowKey, FlowStats,
    flow::{IPPROTO_TCP, IPPROTO_UDP},
    maps::{DROPS, FLOWS, MARK_COUNTED, PROG_TC_EGRESS, PROG_TC_INGRESS},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 20);

fn load() -> Ebpf {
    loader::load(None, loader::LoadOptions::default()).expect("the eBPF object loads and verifies")
}

/// Runs `prog` once on `frame` with an optional `__sk_buff` context.
fn run(ebpf: &mut Ebpf, prog: &str, frame: &[u8], ctx: Option<&[u8]>) -> u32 {
    let prog = loader::classifier(ebpf, prog).expect("program exists");
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        &out[..result.data_size_out as usize],
        frame,
        "the flow counter must not change packets"
    );
    result.return_value
}

fn flows(ebpf: &Ebpf) -> Vec<(FlowKey, FlowStats)> {
    let map: HashMap<_, FlowKey, FlowStats> =
        HashMap::try_from(ebpf.map(FLOWS).expect("FLOWS map")).expect("hash map");
    map.iter().map(|r| r.expect("entry")).collect()
}

fn stats(ebpf: &Ebpf, key: FlowKey) -> Option<FlowStats> {
    flows(ebpf)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[test]
fn tcp_frame_is_counted_under_its_five_tuple() {
    require_root!();
    let mut ebpf = load();
    let syn = packets::tcp(A, 40000, B, 5432, TCP_SYN, 0);
    let data = packets::tcp(A, 40000, B, 5432, TCP_ACK, 100);
    assert_eq!(run(&mut ebpf, PROG_TC_INGRESS, &syn, None), TC_ACT_OK);
    assert_eq!(run(&mut ebpf, PROG_TC_INGRESS, &data, None), TC_ACT_OK);

    let key = FlowKey::new(A.octets(), B.octets(), 40000, 5432, IPPROTO_TCP);
    let s = stats(&ebpf, key).expect("flow recorded under the TCP 5-tuple");
    assert_eq!(s.packets, 2);
    assert_eq!(s.bytes, (syn.len() + data.len()) as u64);
    assert_eq!(s.tcp_flags, u32::from(TCP_SYN | TCP_ACK));
    assert!(s.first_seen_ns > 0 && s.first_seen_ns <= s.last_seen_ns);
    assert_eq!(flows(&ebpf).len(), 1, "nothing else recorded");
}

#[test]
fn udp_frame_is_counted_under_its_five_tuple() {
    require_root!();
    let mut ebpf = load();
    let frame = packets::udp(B, 5353, A, 53, 60);
    for _ in 0..3 {
        assert_eq!(run(&mut ebpf, PROG_TC_INGRESS, &frame, None), TC_ACT_OK);
    }
    let key = FlowKey::new(B.octets(), A.octets(), 5353, 53, IPPROTO_UDP);
    let s = stats(&ebpf, key).expect("flow recorded under the UDP 5-tuple");
    assert_eq!(s.packets, 3);
    assert_eq!(s.bytes, 3 * frame.len() as u64);
    assert_eq!(s.tcp_flags, 0);
}

#[test]
fn a_packet_counted_at_ingress_is_not_counted_again_at_egress() {
    require_root!();
    let mut ebpf = load();
    let frame = packets::udp(A, 1000, B, 2000, 10);
    let key = FlowKey::new(A.octets(), B.octets(), 1000, 2000, IPPROTO_UDP);

    // Marked as counted by the sender's ingress hook: the egress hook skips it.
    run(
        &mut ebpf,
        PROG_TC_EGRESS,
        &frame,
        Some(&packets::skb_ctx(MARK_COUNTED, 0)),
    );
    assert_eq!(stats(&ebpf, key), None);

    // Unmarked (from the host or from outside): egress counts it.
    run(
        &mut ebpf,
        PROG_TC_EGRESS,
        &frame,
        Some(&packets::skb_ctx(0, 0)),
    );
    assert_eq!(stats(&ebpf, key).map(|s| s.packets), Some(1));
}

#[test]
fn a_gso_super_packet_counts_as_its_segments() {
    require_root!();
    let mut ebpf = load();
    let frame = packets::tcp(A, 40001, B, 80, TCP_ACK, 1000);
    run(
        &mut ebpf,
        PROG_TC_INGRESS,
        &frame,
        Some(&packets::skb_ctx(0, 7)),
    );
    let key = FlowKey::new(A.octets(), B.octets(), 40001, 80, IPPROTO_TCP);
    assert_eq!(stats(&ebpf, key).map(|s| s.packets), Some(7));
}

#[test]
fn frames_that_are_not_ipv4_pass_and_malformed_ones_are_dropped_uncounted() {
    require_root!();
    let mut ebpf = load();
    // ARP passes: not ours to judge.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run(&mut ebpf, PROG_TC_INGRESS, &arp, None), TC_ACT_OK);
    // IPv4 claiming a 16-byte header, and UDP cut off before its ports, are dropped as
    // malformed. (The kernel's test runner itself refuses IPv4 frames shorter than an IP
    // header.)
    let mut bad_ihl = packets::udp(A, 1, B, 2, 10);
    bad_ihl[packets::ETH_LEN] = 0x44;
    let mut no_ports = packets::udp(A, 1, B, 2, 0);
    no_ports.truncate(packets::ETH_LEN + packets::IPV4_LEN + 2);
    for frame in [&bad_ihl, &no_ports] {
        assert_eq!(run_verdict(&mut ebpf, PROG_TC_INGRESS, frame), TC_ACT_SHOT);
    }
    assert!(flows(&ebpf).is_empty());
    let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(DROPS).unwrap()).unwrap();
    let malformed: u64 = drops
        .get(&(DropReason::Malformed as u32), 0)
        .unwrap()
        .iter()
        .sum();
    assert_eq!(malformed, 2);
}

/// Runs a program that may drop the frame (then nothing comes back to compare).
fn run_verdict(ebpf: &mut Ebpf, prog: &str, frame: &[u8]) -> u32 {
    let prog = loader::classifier(ebpf, prog).expect("program exists");
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    })
    .expect("BPF_PROG_TEST_RUN")
    .return_value
}
