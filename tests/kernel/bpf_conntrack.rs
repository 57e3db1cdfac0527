//! Conntrack bookkeeping run by the kernel (BPF_PROG_TEST_RUN): flag updates from several
//! CPUs at once, and the partner check on every path that writes or removes the other
//! entry of a connection (touch, a reused tuple, a stale UDP backend).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::programs::{TestRun, TestRunOptions};
use netctl::dataplane::ebpf::loader;
use netctl_common::{
    CtEntry,
    ct::{CT_F_CLOSING, CT_F_REPLIED},
    flow::{IPPROTO_TCP, IPPROTO_UDP},
    lb::ALG_ROUND_ROBIN,
    maps::PROG_TC_INGRESS,
};

use crate::{
    bpf_lb::{BACKEND, CLIENT, Dp, TC_ACT_OK, VIP, key, load},
    common::packets::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
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

/// An unrelated plain connection that holds the key where `fwd`'s partner would be: the
/// backend itself connected from 8080 to the client's port after the NATed connection's
/// reverse entry went (evicted).
fn stranger_at_the_reverse_key(dp: &mut Dp, proto: u8, sport: u16) -> CtEntry {
    let rev = key(BACKEND, 8080, CLIENT, sport, proto);
    dp.ct.remove(&rev).unwrap();
    let frame = if proto == IPPROTO_TCP {
        packets::tcp(BACKEND, 8080, CLIENT, sport, TCP_SYN, 0)
    } else {
        packets::udp_checked(BACKEND, 8080, CLIENT, sport, 20)
    };
    let (v, out) = dp.ingress(&frame);
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(
        packets::endpoints(&out).0,
        BACKEND,
        "a plain flow, not un-NATed"
    );
    let stranger = dp.ct()[&rev];
    assert_eq!(stranger.flags, 0, "a plain forward entry");
    stranger
}

/// touch: a FIN of the NATed connection marks its own partner closing, never a stranger
/// that holds the partner's key.
#[test]
fn touch_leaves_an_entry_that_is_not_the_partner_alone() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    let stranger = stranger_at_the_reverse_key(&mut dp, IPPROTO_TCP, 40000);
    let (v, _) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_FIN | TCP_ACK, 0));
    assert_eq!(v, TC_ACT_OK);
    let ct = dp.ct();
    assert_eq!(
        ct[&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)].flags & CT_F_CLOSING,
        CT_F_CLOSING,
        "the connection that saw the FIN is closing"
    );
    assert_eq!(
        ct[&key(BACKEND, 8080, CLIENT, 40000, IPPROTO_TCP)].flags,
        stranger.flags,
        "the stranger's flags are its own"
    );
}

/// A SYN on a closed connection's tuple removes that connection: its own partner, not a
/// stranger at the partner's key.
#[test]
fn a_reused_tuple_removes_only_its_own_partner() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 80, IPPROTO_TCP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_RST | TCP_ACK, 0));
    let stranger = stranger_at_the_reverse_key(&mut dp, IPPROTO_TCP, 40000);
    let rev = key(BACKEND, 8080, CLIENT, 40000, IPPROTO_TCP);
    // The client reuses the port; the frontend now has another backend, so the new
    // connection's reverse entry has a key of its own and only the removal of the old
    // connection can touch the stranger.
    dp.service(
        VIP,
        80,
        IPPROTO_TCP,
        &[(2, Ipv4Addr::new(10, 2, 0, 30), 8080)],
        ALG_ROUND_ROBIN,
    );
    let (v, out) = dp.ingress(&packets::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, 0));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(packets::endpoints(&out).2, Ipv4Addr::new(10, 2, 0, 30));
    assert_eq!(
        dp.ct().get(&rev).copied(),
        Some(stranger),
        "the stranger stays"
    );
}

/// A UDP flow whose backend is gone chooses again and removes its old pair: its own
/// partner, not a stranger at the partner's key.
#[test]
fn a_stale_udp_flow_removes_only_its_own_partner() {
    require_root!();
    let mut dp = load();
    dp.service(VIP, 53, IPPROTO_UDP, &[(1, BACKEND, 8080)], ALG_ROUND_ROBIN);
    dp.ingress(&packets::udp_checked(CLIENT, 41000, VIP, 53, 20));
    let stranger = stranger_at_the_reverse_key(&mut dp, IPPROTO_UDP, 41000);
    let other = Ipv4Addr::new(10, 2, 0, 30);
    dp.service(VIP, 53, IPPROTO_UDP, &[(2, other, 5353)], ALG_ROUND_ROBIN);
    dp.lb.remove_backend(1).unwrap();
    let (v, out) = dp.ingress(&packets::udp_checked(CLIENT, 41000, VIP, 53, 20));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(packets::endpoints(&out).2, other, "chose again");
    assert_eq!(
        dp.ct()
            .get(&key(BACKEND, 8080, CLIENT, 41000, IPPROTO_UDP))
            .copied(),
        Some(stranger),
        "the stranger stays"
    );
}
