//! Policy and rate limits, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): each
//! kind of rule allows and denies what it should, with the right drop reason, a counter
//! and an event; the rate limiter lets the burst through and drops the rest.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use common::packets::{self, TCP_ACK, TCP_SYN};
use netctl::{
    dataplane::{
        loader::{self, LoadOptions},
        policy::PolicyMaps,
    },
    policy::{compile, identity},
    topology::{Plan, Source},
};
use netctl_common::{
    DropReason,
    event::{EVENT_DROP, Event},
    maps::{
        CONFIG, DROPS, EVENTS, IDENTITIES, POLICY, PROG_TC_EGRESS, PROG_TC_INGRESS, RATE_LIMITS,
    },
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

const TOPOLOGY: &str = r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
address = "10.9.0.10"
ports = [80]
[services.api]
network = "app"
address = "10.9.0.20"
ports = [3000]
[services.db]
network = "app"
address = "10.9.0.30"
ports = [5432]
[policy]
default_deny = ["db", "world"]
[[policy.rules]]
from = ["api"]
to = "db"
ports = [5432]
[[policy.rules]]
to = "world"
ports = [443]
[[policy.rules]]
from = ["web"]
to = "api"
ports = [9999]
action = "deny"
[[policy.rate_limits]]
to = "api"
rate = "60/minute"
burst = 20
"#;

struct Dp {
    ebpf: Ebpf,
    policy: PolicyMaps,
    events: RingBuf<MapData>,
    plan: Plan,
}

fn load(topology: &str) -> Dp {
    let mut ebpf = loader::load(None, LoadOptions::default()).expect("object loads");
    let mut policy = PolicyMaps::from_maps(
        ebpf.take_map(IDENTITIES).unwrap(),
        ebpf.take_map(POLICY).unwrap(),
        ebpf.take_map(RATE_LIMITS).unwrap(),
        ebpf.take_map(CONFIG).unwrap(),
    )
    .unwrap();
    let events = RingBuf::try_from(ebpf.take_map(EVENTS).unwrap()).unwrap();
    let plan = Source {
        name: "t".into(),
        text: topology.into(),
    }
    .plan(None)
    .expect("valid");
    policy
        .install(&identity::addresses(&plan), &compile::compile(&plan))
        .unwrap();
    Dp {
        ebpf,
        policy,
        events,
        plan,
    }
}

impl Dp {
    fn addr(&self, name: &str) -> Ipv4Addr {
        self.plan
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .address
    }

    fn run(&mut self, prog: &str, frame: &[u8]) -> u32 {
        let prog = loader::classifier(&mut self.ebpf, prog).unwrap();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    fn syn(&mut self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> u32 {
        self.run(
            PROG_TC_INGRESS,
            &packets::tcp(src, sport, dst, dport, TCP_SYN, 0),
        )
    }

    fn drops(&self, reason: DropReason) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(DROPS).unwrap()).unwrap();
        map.get(&(reason as u32), 0).unwrap().iter().sum()
    }

    fn drop_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            // SAFETY: the dataplane writes whole `Event`s.
            let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if e.kind == EVENT_DROP {
                out.push(e);
            }
        }
        out
    }
}

#[test]
fn each_kind_of_rule_allows_and_denies_what_it_says() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db) = (dp.addr("web"), dp.addr("api"), dp.addr("db"));

    // A rule naming source and port allows exactly that; the default deny takes the rest.
    assert_eq!(
        dp.syn(api, 40000, db, 5432),
        TC_ACT_OK,
        "api -> db:5432 allowed by rule 1"
    );
    assert_eq!(
        dp.syn(web, 40001, db, 5432),
        TC_ACT_SHOT,
        "web -> db denied by default"
    );
    assert_eq!(
        dp.syn(api, 40002, db, 22),
        TC_ACT_SHOT,
        "api -> db:22 denied by default"
    );
    // Egress allow-list to the world.
    assert_eq!(dp.syn(web, 40003, WORLD, 443), TC_ACT_OK);
    assert_eq!(dp.syn(web, 40004, WORLD, 25), TC_ACT_SHOT);
    // An explicit deny on a destination that otherwise allows.
    assert_eq!(dp.syn(web, 40005, api, 9999), TC_ACT_SHOT);
    assert_eq!(
        dp.syn(db, 40006, api, 9999),
        TC_ACT_OK,
        "the deny names web only"
    );
    // No rule and no default deny: allowed.
    assert_eq!(dp.syn(db, 40007, web, 80), TC_ACT_OK);
    assert_eq!(dp.drops(DropReason::PolicyDenied), 4);

    // The host (a bridge gateway) may reach the database: its implicit allow. It arrives
    // at the destination's egress hook.
    let gateway = dp.plan.networks[0].gateway;
    let from_host = packets::tcp(gateway, 45000, db, 5432, TCP_SYN, 0);
    assert_eq!(dp.run(PROG_TC_EGRESS, &from_host), TC_ACT_OK);
    // The world may not.
    let from_world = packets::tcp(WORLD, 45001, db, 5432, TCP_SYN, 0);
    assert_eq!(dp.run(PROG_TC_EGRESS, &from_world), TC_ACT_SHOT);

    // An allowed connection's later packets and replies pass.
    assert_eq!(
        dp.run(
            PROG_TC_INGRESS,
            &packets::tcp(api, 40000, db, 5432, TCP_ACK, 10)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        dp.run(
            PROG_TC_INGRESS,
            &packets::tcp(db, 5432, api, 40000, TCP_ACK, 10)
        ),
        TC_ACT_OK
    );

    // Every drop came as an event with its reason and identities.
    let events = dp.drop_events();
    assert_eq!(events.len(), 5);
    let first = events[0];
    assert_eq!(first.reason, DropReason::PolicyDenied as u32);
    assert_eq!(
        (Ipv4Addr::from(first.tuple.src_addr), first.tuple.dst_port),
        (web, 5432)
    );
    assert_eq!(identity::name(&dp.plan, first.src_identity), "web");
    assert_eq!(identity::name(&dp.plan, first.dst_identity), "db");
    assert_eq!(identity::name(&dp.plan, events[4].src_identity), "world");
}

#[test]
fn the_rate_limiter_lets_the_burst_through_per_source_and_drops_the_rest() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db) = (dp.addr("web"), dp.addr("api"), dp.addr("db"));
    // 200 new connections at once (well under the 1 token/second refill).
    let allowed = (0..200)
        .filter(|i| dp.syn(web, 20000 + i, api, 3000) == TC_ACT_OK)
        .count();
    assert_eq!(allowed, 20, "the burst");
    assert_eq!(dp.drops(DropReason::RateLimited), 180);
    // Another source has its own bucket.
    let other = (0..30)
        .filter(|i| dp.syn(db, 30000 + i, api, 3000) == TC_ACT_OK)
        .count();
    assert_eq!(other, 20);
    // Established connections are not rate limited.
    for _ in 0..50 {
        assert_eq!(
            dp.run(
                PROG_TC_INGRESS,
                &packets::tcp(web, 20000, api, 3000, TCP_ACK, 10)
            ),
            TC_ACT_OK
        );
    }
    let events = dp.drop_events();
    assert!(
        events
            .iter()
            .all(|e| e.reason == DropReason::RateLimited as u32)
    );
    assert_eq!(events.len(), 190);
}

#[test]
fn a_policy_change_keeps_allowed_connections_and_cuts_revoked_ones() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db) = (dp.addr("web"), dp.addr("api"), dp.addr("db"));
    assert_eq!(dp.syn(api, 41000, db, 5432), TC_ACT_OK);
    assert_eq!(dp.syn(db, 41001, web, 80), TC_ACT_OK);

    // New policy: web also denies by default now; api -> db still allowed.
    let changed = TOPOLOGY.replace(
        r#"default_deny = ["db", "world"]"#,
        r#"default_deny = ["db", "world", "web"]"#,
    );
    let plan = Source {
        name: "t".into(),
        text: changed,
    }
    .plan(None)
    .expect("valid");
    let generation = dp
        .policy
        .install(&identity::addresses(&plan), &compile::compile(&plan))
        .unwrap();
    assert_eq!(generation, 2);

    let data = |src, sport, dst, dport| packets::tcp(src, sport, dst, dport, TCP_ACK, 10);
    assert_eq!(
        dp.run(PROG_TC_INGRESS, &data(api, 41000, db, 5432)),
        TC_ACT_OK,
        "still allowed"
    );
    assert_eq!(
        dp.run(PROG_TC_INGRESS, &data(db, 41001, web, 80)),
        TC_ACT_SHOT,
        "revoked"
    );
    assert_eq!(dp.drops(DropReason::PolicyRevoked), 1);
    assert_eq!(
        dp.syn(db, 41002, web, 80),
        TC_ACT_SHOT,
        "and new ones denied"
    );
}
