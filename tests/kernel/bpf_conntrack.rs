//! Conntrack bookkeeping run by the kernel (BPF_PROG_TEST_RUN): flag updates from several
//! CPUs at once.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use aya::programs::{TestRun, TestRunOptions};
use netctl::dataplane::ebpf::loader;
use netctl_common::{
    ct::{CT_F_CLOSING, CT_F_REPLIED},
    flow::IPPROTO_TCP,
    lb::ALG_ROUND_ROBIN,
    maps::PROG_TC_INGRESS,
};

use crate::{
    bpf_lb::{BACKEND, CLIENT, TC_ACT_OK, VIP, key, load},
    common::packets::{self, TCP_ACK, TCP_RST, TCP_SYN},
};

/// Connections raced in [`concurrent_closing_and_replied_updates_are_never_lost`].
const RACED: u16 = 6000;

/// Two CPUs update the flags of one connection at once: the client resets while the
/// backend's SYN-ACK arrives. Each sets its flag on both entries (CLOSING from the RST,
/// REPLIED from the reply); with a plain read-modify-write one CPU's byte overwrites the
/// other's, and a connection loses CLOSING (it then lives 6 h instead of 10 s). Both
/// threads meet before each connection, so their updates overlap as often as the
/// scheduler lets them.
#[test]
fn concurrent_closing_and_replied_updates_are_never_lost() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    let base = 20000u16;
    for i in 0..RACED {
        let (v, _) = dp.ingress(&packets::tcp(CLIENT, base + i, VIP, 80, TCP_SYN, 0));
        assert_eq!(v, TC_ACT_OK);
    }
    let prog = &*loader::classifier(&mut dp.ebpf, PROG_TC_INGRESS).unwrap();
    let arrived = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let run = |me: usize, frame: &dyn Fn(u16) -> Vec<u8>| {
        for i in 0..RACED {
            let f = frame(base + i);
            arrived[me].store(i as usize + 1, Ordering::SeqCst);
            let mut spins = 0u32;
            while arrived[1 - me].load(Ordering::SeqCst) < i as usize + 1 {
                spins += 1;
                if spins > 10_000 {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&f),
                    ..TestRunOptions::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            assert_eq!(r.return_value, TC_ACT_OK);
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            run(0, &|sport| {
                packets::tcp(CLIENT, sport, VIP, 80, TCP_RST | TCP_ACK, 0)
            })
        });
        s.spawn(|| {
            run(1, &|sport| {
                packets::tcp(BACKEND, 8080, CLIENT, sport, TCP_SYN | TCP_ACK, 0)
            })
        });
    });
    let ct = dp.ct();
    let want = CT_F_CLOSING | CT_F_REPLIED;
    let lost: Vec<(u16, u8, u8)> = (0..RACED)
        .map(|i| base + i)
        .filter_map(|sport| {
            let f = ct[&key(CLIENT, sport, VIP, 80, IPPROTO_TCP)].flags;
            let r = ct[&key(BACKEND, 8080, CLIENT, sport, IPPROTO_TCP)].flags;
            (f & want != want || r & want != want).then_some((sport, f, r))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {RACED} connections lost a flag (port, forward, reverse flags): {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
