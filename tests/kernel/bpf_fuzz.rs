//! Random and malformed frames through every TC program (BPF_PROG_TEST_RUN): the
//! programs take whatever comes, answer OK or SHOT, and every SHOT is counted with a
//! reason. CI runs a few thousand frames; `NETCTL_FUZZ_FRAMES=1000000` runs more.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::net::Ipv4Addr;

use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunOptions},
};
use common::packets;
use netctl::dataplane::ebpf::{
    lb::{Frontend, LbMaps},
    loader::{self, LoadOptions},
};
use netctl_common::{
    Backend, DropReason,
    lb::{ALG_ROUND_ROBIN, BACKEND_ACTIVE},
    maps::{DROPS, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A frame that is sometimes valid, often nearly valid, sometimes noise.
fn frame(r: &mut Rng) -> Vec<u8> {
    let addrs = [
        Ipv4Addr::new(10, 1, 0, 10),
        Ipv4Addr::new(10, 96, 0, 5),
        Ipv4Addr::new(10, 2, 0, 20),
    ];
    let a = addrs[r.below(3) as usize];
    let b = addrs[r.below(3) as usize];
    let mut f = match r.below(6) {
        0 => packets::tcp(
            a,
            r.next() as u16,
            b,
            80,
            r.next() as u8,
            r.below(64) as usize,
        ),
        1 => packets::udp(a, r.next() as u16, b, 53, r.below(64) as usize),
        2 => packets::udp_checked(a, r.next() as u16, b, 80, r.below(64) as usize),
        3 => {
            // IPv4 with a random protocol number and payload.
            let mut f = packets::udp(a, 1, b, 2, r.below(40) as usize);
            f[packets::ETH_LEN + 9] = r.next() as u8;
            f
        }
        4 => {
            let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
            let n = 20 + r.below(80) as usize;
            f.extend(r.bytes(n));
            f
        }
        _ => {
            let n = 14 + r.below(120) as usize;
            r.bytes(n)
        }
    };
    // Damage: flip bytes of the headers, or cut the frame short.
    for _ in 0..r.below(4) {
        let i = r.below(f.len().min(60) as u64) as usize;
        f[i] ^= r.next() as u8;
    }
    if r.below(4) == 0 {
        let keep = 14 + r.below((f.len() - 13) as u64) as usize;
        f.truncate(keep.max(14));
    }
    f
}

#[test]
fn random_and_malformed_frames_get_a_verdict_and_every_drop_is_counted() {
    require_root!();
    let frames: usize = std::env::var("NETCTL_FUZZ_FRAMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let mut ebpf = loader::load(None, LoadOptions::default()).expect("the object verifies");
    let mut lb = LbMaps::take_from(&mut ebpf).unwrap();
    // A service to hit (and one without backends) so NAT and no-backend paths run too.
    lb.set_backend(
        1,
        Backend {
            addr: [10, 2, 0, 20],
            port: 8080,
            proto: 6,
            state: BACKEND_ACTIVE,
        },
    )
    .unwrap();
    for (port, slots) in [(80u16, vec![1u32]), (81, vec![])] {
        let fe = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 5),
            port,
            proto: 6,
            service_id: 1,
            algorithm: ALG_ROUND_ROBIN,
            flags: 0,
            slots,
            maglev: None,
        };
        lb.write_frontend(&fe, None).unwrap();
    }
    let programs = [
        PROG_TC_INGRESS,
        PROG_TC_EGRESS,
        PROG_UPLINK_INGRESS,
        PROG_UPLINK_EGRESS,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut shot = 0u64;
    let mut rejected_by_runner = 0;
    for i in 0..frames {
        let f = frame(&mut rng);
        let prog = loader::classifier(&mut ebpf, programs[i % programs.len()]).unwrap();
        match prog.test_run(TestRunOptions {
            data_in: Some(&f),
            ..TestRunOptions::default()
        }) {
            Ok(r) => {
                assert!(
                    r.return_value == TC_ACT_OK || r.return_value == TC_ACT_SHOT,
                    "frame {i}: verdict {} for {f:02x?}",
                    r.return_value
                );
                if r.return_value == TC_ACT_SHOT {
                    shot += 1;
                }
            }
            // The kernel's test runner refuses some frames (e.g. IPv4 shorter than its
            // header) before any program runs: not the dataplane's business.
            Err(_) => rejected_by_runner += 1,
        }
    }
    let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(DROPS).unwrap()).unwrap();
    let counted: u64 = DropReason::ALL
        .iter()
        .map(|r| drops.get(&(*r as u32), 0).unwrap().iter().sum::<u64>())
        .sum();
    assert_eq!(counted, shot, "every drop has a reason");
    assert!(shot > 0, "the fuzz reaches the drop paths");
    assert!(
        rejected_by_runner < frames / 2,
        "{rejected_by_runner} of {frames} never ran"
    );
}
