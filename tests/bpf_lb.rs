//! Load balancing and NAT, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): the
//! rewritten bytes, checksums, conntrack entries and drop reasons, without namespaces.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use common::packets::{self, TCP_ACK, TCP_SYN};
use netctl::dataplane::{
    lb::{Frontend, LbMaps},
    loader::{self, LoadOptions},
    maglev::{self, Candidate},
};
use netctl_common::{
    Backend, CtEntry, DropReason, FlowKey,
    ct::{CT_F_DNAT, CT_F_REVERSE, CT_F_SNAT},
    flow::{IPPROTO_TCP, IPPROTO_UDP},
    lb::{ALG_MAGLEV, ALG_ROUND_ROBIN, BACKEND_ACTIVE, MAGLEV_M},
    maps::{CONFIG, CT, DROPS, LB_BACKENDS, LB_MAGLEV, LB_SERVICES, PROG_TC_INGRESS},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 5);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 20);

struct Dp {
    ebpf: Ebpf,
    lb: LbMaps,
}

fn load() -> Dp {
    let mut ebpf = loader::load(None, LoadOptions::default()).expect("object loads");
    let lb = LbMaps::from_maps(
        ebpf.take_map(LB_SERVICES).unwrap(),
        ebpf.take_map(LB_BACKENDS).unwrap(),
        ebpf.take_map(LB_MAGLEV).unwrap(),
        ebpf.take_map(CONFIG).unwrap(),
    )
    .expect("lb maps");
    Dp { ebpf, lb }
}

impl Dp {
    fn service(
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
    fn ingress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
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

    fn ct(&self) -> StdHashMap<FlowKey, CtEntry> {
        let map: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(CT).unwrap()).unwrap();
        map.iter().map(|r| r.unwrap()).collect()
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
        let (verdict, out) = dp.ingress(&frame);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(packets::endpoints(&out), (CLIENT, sport, BACKEND, 5353));
        assert!(packets::checksums_valid(&out));
        let reply = packets::udp_checked(BACKEND, 5353, CLIENT, sport, 40);
        let (_, back) = dp.ingress(&reply);
        assert_eq!(packets::endpoints(&back), (VIP, 53, CLIENT, sport));
        assert!(packets::checksums_valid(&back));
    }
    let (_, out) = dp.ingress(&packets::udp(CLIENT, 41002, VIP, 53, 40));
    let at = packets::ETH_LEN + packets::IPV4_LEN + 6;
    assert_eq!(&out[at..at + 2], &[0, 0], "UDP without checksum keeps none");
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
fn round_robin_takes_turns_and_maglev_keeps_a_tuple_on_one_backend() {
    require_root!();
    let mut dp = load();
    let backends = [
        (1, BACKEND, 80),
        (2, Ipv4Addr::new(10, 2, 0, 21), 80),
        (3, Ipv4Addr::new(10, 2, 0, 22), 80),
    ];
    dp.service(VIP, 80, IPPROTO_TCP, &backends, ALG_ROUND_ROBIN);
    let mut seen = Vec::new();
    for sport in 50000..50006 {
        let (_, out) = dp.ingress(&packets::tcp(CLIENT, sport, VIP, 80, TCP_SYN, 0));
        seen.push(packets::endpoints(&out).2);
    }
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

    let vip2 = Ipv4Addr::new(10, 96, 0, 6);
    dp.service(vip2, 80, IPPROTO_TCP, &backends, ALG_MAGLEV);
    let mut by_backend = StdHashMap::new();
    for sport in 30000..30300u16 {
        let (_, out) = dp.ingress(&packets::tcp(CLIENT, sport, vip2, 80, TCP_SYN, 0));
        *by_backend.entry(packets::endpoints(&out).2).or_insert(0) += 1;
    }
    assert_eq!(
        by_backend.len(),
        3,
        "Maglev spreads different tuples: {by_backend:?}"
    );
}
