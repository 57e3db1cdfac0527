//! Policy and rate limits, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): each
//! kind of rule allows and denies what it should, with the right drop reason, a counter
//! and an event; the rate limiter lets the burst through and drops the rest.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{net::Ipv4Addr, os::fd::AsFd, time::Instant};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use common::packets::{
    self, ICMP_DEST_UNREACHABLE, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, TCP_ACK,
    TCP_SYN,
};
use netctl::{
    dataplane::ebpf::{
        lb::{Frontend, LbMaps},
        loader::{self, LoadOptions},
        policy::PolicyMaps,
    },
    policy::{compile, identity},
    topology::{Plan, Source, TopologyBuilder},
};
use netctl_common::{
    Backend, CtEntry, DropReason, FlowKey,
    event::{EVENT_DROP, Event},
    flow::IPPROTO_TCP,
    lb::{ALG_ROUND_ROBIN, BACKEND_ACTIVE},
    maps::{
        CONFIG, COUNTERS, CT, DROPS, EVENTS, IDENTITIES, MARK_PROBE, POLICY, PROG_TC_EGRESS,
        PROG_TC_INGRESS, RATE_LIMITS,
    },
    policy::{RateLimit, RateLimitKey},
    stats::CNT_PROBE_EXEMPT,
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
[services.cache]
network = "app"
address = "10.9.0.40"
ports = [6379]
[policy]
default_deny = ["db", "world", "cache"]
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
[[policy.rules]]
from = ["web"]
to = "db"
ports = ["53/udp"]
[[policy.rules]]
from = ["api"]
to = "db"
ports = ["6000-6010"]
[[policy.rules]]
from = ["api"]
to = "cache"
[[policy.rules]]
from = ["cache"]
to = "api"
action = "deny"
[[policy.rate_limits]]
to = "api"
rate = "60/minute"
burst = 20
"#;

struct Dp {
    ebpf: Ebpf,
    policy: PolicyMaps,
    rate_limits: HashMap<MapData, RateLimitKey, RateLimit>,
    lb: LbMaps,
    events: RingBuf<MapData>,
    plan: Plan,
}

fn load(topology: &str) -> Dp {
    let mut ebpf = loader::load(None, LoadOptions::default()).expect("object loads");
    // Policy and load balancing both write CONFIG: each gets its own fd of it.
    let config = match ebpf.map(CONFIG).unwrap() {
        Map::Array(data) => {
            MapData::from_fd(data.fd().as_fd().try_clone_to_owned().unwrap()).unwrap()
        }
        _ => panic!("CONFIG is an array"),
    };
    let lb = LbMaps::take_from(&mut ebpf).unwrap();
    // A second fd of RATE_LIMITS, to look at what the writer left.
    let rate_limits = match ebpf.map(RATE_LIMITS).unwrap() {
        Map::HashMap(data) => HashMap::try_from(Map::HashMap(
            MapData::from_fd(data.fd().as_fd().try_clone_to_owned().unwrap()).unwrap(),
        ))
        .unwrap(),
        _ => panic!("RATE_LIMITS is a hash"),
    };
    let mut policy = PolicyMaps::from_maps(
        ebpf.take_map(IDENTITIES).unwrap(),
        ebpf.take_map(POLICY).unwrap(),
        ebpf.take_map(RATE_LIMITS).unwrap(),
        Map::Array(config),
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
        rate_limits,
        lb,
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

    /// Runs `prog` on `frame` with `skb->mark` set to `mark` (a `__sk_buff` whose only
    /// non-zero field is `mark`, at offset 8).
    fn run_marked(&mut self, prog: &str, frame: &[u8], mark: u32) -> u32 {
        let mut ctx = [0u8; 12];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        let prog = loader::classifier(&mut self.ebpf, prog).unwrap();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    fn counter(&self, index: u32) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(COUNTERS).unwrap()).unwrap();
        map.get(&index, 0).unwrap().iter().sum()
    }

    fn syn(&mut self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> u32 {
        self.run(
            PROG_TC_INGRESS,
            &packets::tcp(src, sport, dst, dport, TCP_SYN, 0),
        )
    }

    fn udp(&mut self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> u32 {
        self.run(PROG_TC_INGRESS, &packets::udp(src, sport, dst, dport, 8))
    }

    fn icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, id: u16) -> u32 {
        self.run(
            PROG_TC_INGRESS,
            &packets::icmp(src, dst, icmp_type, id, &[0; 8]),
        )
    }

    /// Writes a frontend `vip:port` of service `name` with one backend `addr:backend_port`.
    fn frontend(&mut self, name: &str, port: u16, addr: Ipv4Addr, backend_port: u16) -> Ipv4Addr {
        let svc = self.plan.service(name).unwrap().clone();
        self.lb
            .set_backend(
                1,
                Backend {
                    addr: addr.octets(),
                    port: backend_port,
                    proto: 6,
                    state: BACKEND_ACTIVE,
                },
            )
            .unwrap();
        let fe = Frontend {
            addr: svc.vip,
            port,
            proto: 6,
            service_id: svc.id,
            algorithm: ALG_ROUND_ROBIN,
            flags: 0,
            slots: vec![1],
            maglev: None,
        };
        self.lb.write_frontend(&fe, None).unwrap();
        svc.vip
    }

    /// Installs `topology`'s policy as a new generation.
    fn reinstall(&mut self, topology: &str) -> u32 {
        let plan = Source {
            name: "t".into(),
            text: topology.into(),
        }
        .plan(None)
        .expect("valid");
        self.policy
            .install(&identity::addresses(&plan), &compile::compile(&plan))
            .unwrap()
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

/// netctl's own probes (`MARK_PROBE`) from the host pass the rate limit and a denying
/// rule, are counted as exempt and leave no drop; the same packets unmarked are judged.
#[test]
fn probes_with_the_probe_mark_are_never_judged() {
    require_root!();
    let topology = format!(
        "{TOPOLOGY}\n[[policy.rules]]\nfrom = [\"host\"]\nto = \"cache\"\naction = \"deny\"\n"
    );
    let mut dp = load(&topology);
    let (api, cache) = (dp.addr("api"), dp.addr("cache"));
    let host = dp.plan.networks[0].gateway;
    let marked = (0..50)
        .filter(|i| {
            let syn = packets::tcp(host, 21000 + i, api, 3000, TCP_SYN, 0);
            dp.run_marked(PROG_TC_EGRESS, &syn, MARK_PROBE) == TC_ACT_OK
        })
        .count();
    assert_eq!(marked, 50, "marked: no rate limit");
    let denied_probe = packets::tcp(host, 21100, cache, 6379, TCP_SYN, 0);
    assert_eq!(
        dp.run_marked(PROG_TC_EGRESS, &denied_probe, MARK_PROBE),
        TC_ACT_OK,
        "marked: no deny"
    );
    assert_eq!(dp.counter(CNT_PROBE_EXEMPT), 51);
    assert!(dp.drop_events().is_empty(), "no drop from a probe");
    // The same from an unmarked host socket: judged. The bucket is untouched by the
    // probes, so the burst of 20 is whole.
    let unmarked = (0..50)
        .filter(|i| {
            let syn = packets::tcp(host, 22000 + i, api, 3000, TCP_SYN, 0);
            dp.run(PROG_TC_EGRESS, &syn) == TC_ACT_OK
        })
        .count();
    assert_eq!(unmarked, 20, "unmarked: the burst");
    let denied = packets::tcp(host, 22100, cache, 6379, TCP_SYN, 0);
    assert_eq!(dp.run(PROG_TC_EGRESS, &denied), TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::PolicyDenied), 1);
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
        r#"default_deny = ["db", "world", "cache"]"#,
        r#"default_deny = ["db", "world", "cache", "web"]"#,
    );
    assert_ne!(changed, TOPOLOGY);
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

/// A revoked connection is removed with its own partner, never with a stranger that holds
/// the partner's key (a plain flow that reused the tuple after the reverse entry went).
#[test]
fn a_revoked_connection_removes_only_its_own_partner() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, db) = (dp.addr("web"), dp.addr("db"));
    assert_eq!(dp.syn(db, 41001, web, 80), TC_ACT_OK);
    let rev = FlowKey::new(web.octets(), db.octets(), 80, 41001, IPPROTO_TCP);
    let stranger = CtEntry {
        created_ns: 1,
        last_seen_ns: u64::MAX / 2,
        ..CtEntry::default()
    };
    {
        let mut ct: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(dp.ebpf.map_mut(CT).unwrap()).unwrap();
        ct.insert(rev, stranger, 0).unwrap();
    }
    let changed = TOPOLOGY.replace(
        r#"default_deny = ["db", "world", "cache"]"#,
        r#"default_deny = ["db", "world", "cache", "web"]"#,
    );
    assert_eq!(dp.reinstall(&changed), 2);
    let data = packets::tcp(db, 41001, web, 80, TCP_ACK, 10);
    assert_eq!(dp.run(PROG_TC_INGRESS, &data), TC_ACT_SHOT, "revoked");
    let ct: HashMap<_, FlowKey, CtEntry> = HashMap::try_from(dp.ebpf.map(CT).unwrap()).unwrap();
    assert!(
        ct.get(
            &FlowKey::new(db.octets(), web.octets(), 41001, 80, IPPROTO_TCP),
            0
        )
        .is_err(),
        "the revoked connection is gone"
    );
    assert_eq!(ct.get(&rev, 0).ok(), Some(stranger), "the stranger stays");
}

#[test]
fn udp_rules_port_ranges_and_rules_for_any_port_of_one_source() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db, cache) = (
        dp.addr("web"),
        dp.addr("api"),
        dp.addr("db"),
        dp.addr("cache"),
    );

    // A UDP rule allows UDP only, from its source only.
    assert_eq!(dp.udp(web, 41000, db, 53), TC_ACT_OK, "web -> db:53/udp");
    assert_eq!(
        dp.syn(web, 41001, db, 53),
        TC_ACT_SHOT,
        "53/tcp is not 53/udp"
    );
    assert_eq!(
        dp.udp(api, 41002, db, 53),
        TC_ACT_SHOT,
        "the rule names web"
    );
    // Its replies pass; a datagram the other way that opens a flow of its own does not.
    assert_eq!(dp.udp(db, 53, web, 41000), TC_ACT_OK, "the reply");

    // A port range: both ends and the middle, not one past either end.
    for port in [6000, 6005, 6010] {
        assert_eq!(
            dp.syn(api, 42000 + port, db, port),
            TC_ACT_OK,
            "api -> db:{port}"
        );
    }
    for port in [5999, 6011] {
        assert_eq!(
            dp.syn(api, 42000 + port, db, port),
            TC_ACT_SHOT,
            "api -> db:{port}"
        );
    }

    // A rule naming the source and no port: every port and protocol of that source.
    for port in [1, 6379, 65535] {
        assert_eq!(
            dp.syn(api, 43000, cache, port),
            TC_ACT_OK,
            "api -> cache:{port}"
        );
    }
    assert_eq!(dp.udp(api, 43001, cache, 5353), TC_ACT_OK);
    assert_eq!(
        dp.syn(web, 43002, cache, 6379),
        TC_ACT_SHOT,
        "web is not named"
    );
    // A deny for any port of one source beats the destination's default (allow).
    assert_eq!(dp.syn(cache, 43003, api, 3000), TC_ACT_SHOT);
    assert_eq!(dp.udp(cache, 43004, api, 3000), TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::PolicyDenied), 7);
}

#[test]
fn icmp_and_other_protocols_are_judged_as_new_connections() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db, cache) = (
        dp.addr("web"),
        dp.addr("api"),
        dp.addr("db"),
        dp.addr("cache"),
    );

    // Port-less: only rules for any port decide, so a default deny refuses a ping even
    // from a source allowed to one of its ports, and the egress allow-list (ports) too.
    assert_eq!(dp.icmp(web, db, ICMP_ECHO_REQUEST, 1), TC_ACT_SHOT);
    assert_eq!(
        dp.icmp(api, db, ICMP_ECHO_REQUEST, 2),
        TC_ACT_SHOT,
        "api may reach db:5432 only"
    );
    assert_eq!(
        dp.icmp(web, WORLD, ICMP_ECHO_REQUEST, 3),
        TC_ACT_SHOT,
        "world: 443 only"
    );
    assert_eq!(
        dp.icmp(db, web, ICMP_ECHO_REQUEST, 4),
        TC_ACT_OK,
        "web denies nothing"
    );

    // An allowed ping (a rule for any port) is tracked by its identifier: its reply
    // passes although the policy denies cache -> api; an unsolicited reply is judged.
    assert_eq!(dp.icmp(api, cache, ICMP_ECHO_REQUEST, 77), TC_ACT_OK);
    assert_eq!(
        dp.icmp(cache, api, ICMP_ECHO_REPLY, 77),
        TC_ACT_OK,
        "the reply"
    );
    assert_eq!(
        dp.icmp(api, cache, ICMP_ECHO_REQUEST, 77),
        TC_ACT_OK,
        "the next ping"
    );
    assert_eq!(
        dp.icmp(cache, api, ICMP_ECHO_REPLY, 78),
        TC_ACT_SHOT,
        "unsolicited"
    );
    assert_eq!(dp.icmp(cache, api, ICMP_ECHO_REQUEST, 79), TC_ACT_SHOT);
    let shot = dp.drop_events();
    assert_eq!(shot.len(), 5);
    let unsolicited = shot[3];
    assert_eq!(unsolicited.tuple.proto, 1);
    assert_eq!(unsolicited.tuple.dst_port, 78, "the echo identifier");
    assert_eq!(unsolicited.reason, DropReason::PolicyDenied as u32);
    assert_eq!(identity::name(&dp.plan, unsolicited.src_identity), "cache");

    // Errors pass as related traffic, whoever sends them to whom.
    let quoted = packets::udp(db, 41000, web, 53, 0)[packets::ETH_LEN..].to_vec();
    let unreachable = packets::icmp(web, db, ICMP_DEST_UNREACHABLE, 0, &quoted);
    assert_eq!(dp.run(PROG_TC_INGRESS, &unreachable), TC_ACT_OK);
    let exceeded = packets::icmp(WORLD, db, ICMP_TIME_EXCEEDED, 0, &quoted);
    assert_eq!(dp.run(PROG_TC_EGRESS, &exceeded), TC_ACT_OK, "from outside");
    // A truncated ICMP header is malformed.
    let mut runt = packets::icmp(api, cache, ICMP_ECHO_REQUEST, 5, &[]);
    runt.truncate(packets::ETH_LEN + packets::IPV4_LEN + 4);
    runt[packets::ETH_LEN + 3] = (packets::IPV4_LEN + 4) as u8;
    assert_eq!(dp.run(PROG_TC_INGRESS, &runt), TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::Malformed), 1);

    // Any other protocol (GRE): judged by its protocol without ports, tracked by address.
    assert_eq!(
        dp.run(PROG_TC_INGRESS, &packets::ip_proto(web, db, 47, 24)),
        TC_ACT_SHOT
    );
    assert_eq!(
        dp.run(PROG_TC_INGRESS, &packets::ip_proto(api, cache, 47, 24)),
        TC_ACT_OK
    );
    assert_eq!(
        dp.run(PROG_TC_INGRESS, &packets::ip_proto(cache, api, 47, 24)),
        TC_ACT_OK,
        "the reply direction of a tracked flow"
    );
    // From the host's side (the egress hook) the same: the world may not ping the db.
    let ping = packets::icmp(WORLD, db, ICMP_ECHO_REQUEST, 9, &[0; 8]);
    assert_eq!(dp.run(PROG_TC_EGRESS, &ping), TC_ACT_SHOT);
    // A later fragment has no header of its own and passes; its first one was judged.
    let tail = packets::later_fragment(packets::tcp(web, 44000, db, 5432, TCP_ACK, 40));
    assert_eq!(dp.run(PROG_TC_INGRESS, &tail), TC_ACT_OK);
}

#[test]
fn a_vip_connection_is_judged_and_rejudged_on_the_service_port() {
    require_root!();
    let mut dp = load(TOPOLOGY);
    let (web, api, db) = (dp.addr("web"), dp.addr("api"), dp.addr("db"));
    // The VIP's port (the rule's 5432) is not the backend's.
    let vip = dp.frontend("db", 5432, db, 15432);
    assert_eq!(
        dp.syn(api, 45000, vip, 5432),
        TC_ACT_OK,
        "api -> db VIP:5432"
    );
    assert_eq!(dp.syn(web, 45001, vip, 5432), TC_ACT_SHOT, "web may not");
    let flow_events: Vec<Event> = std::iter::from_fn(|| {
        dp.events.next().map(|i| {
            // SAFETY: the dataplane writes whole `Event`s.
            unsafe { std::ptr::read_unaligned(i.as_ptr().cast::<Event>()) }
        })
    })
    .collect();
    let denied = flow_events.iter().find(|e| e.kind == EVENT_DROP).unwrap();
    assert_eq!(
        identity::name(&dp.plan, denied.dst_identity),
        "db",
        "the service's identity"
    );

    // A new policy generation (same rules): the connection is judged again, on the port
    // it was judged on first, and carries on.
    assert_eq!(dp.reinstall(TOPOLOGY), 2);
    let data = packets::tcp(api, 45000, vip, 5432, TCP_ACK, 10);
    assert_eq!(dp.run(PROG_TC_INGRESS, &data), TC_ACT_OK, "still allowed");
    assert_eq!(dp.drops(DropReason::PolicyRevoked), 0);
    // And a policy that revokes it cuts it.
    let revoked = TOPOLOGY.replace("ports = [5432]", "ports = [5433]");
    assert_eq!(dp.reinstall(&revoked), 3);
    assert_eq!(dp.run(PROG_TC_INGRESS, &data), TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::PolicyRevoked), 1);
}

/// Limits of their own for named sources, per-service buckets and the refill.
const RATES: &str = r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
address = "10.9.0.10"
replicas = 2
ports = [80]
[services.api]
network = "app"
address = "10.9.0.20"
ports = [3000]
[services.db]
network = "app"
address = "10.9.0.30"
ports = [5432]
[[policy.rate_limits]]
to = "api"
rate = "2/second"
burst = 10
[[policy.rate_limits]]
from = ["db"]
to = "api"
rate = "1/minute"
burst = 3
[[policy.rate_limits]]
to = "db"
rate = "1/minute"
burst = 4
per = "service"
"#;

#[test]
fn a_sources_own_limit_beats_the_general_one_and_service_buckets_are_shared() {
    require_root!();
    let mut dp = load(RATES);
    let (web1, web2, api, db) = (
        dp.addr("web-1"),
        dp.addr("web-2"),
        dp.addr("api"),
        dp.addr("db"),
    );
    let burst = |dp: &mut Dp, src, dst, port, base: u16| {
        (0..12)
            .filter(|i| dp.syn(src, base + i, dst, port) == TC_ACT_OK)
            .count()
    };
    assert_eq!(burst(&mut dp, db, api, 3000, 20000), 3, "db's own limit");
    assert_eq!(
        burst(&mut dp, web1, api, 3000, 21000),
        10,
        "the general limit"
    );
    // Per service: both web replicas share one bucket of 4; api has its own.
    assert_eq!(burst(&mut dp, web1, db, 5432, 22000), 4);
    assert_eq!(
        burst(&mut dp, web2, db, 5432, 23000),
        0,
        "web-2 shares web-1's bucket"
    );
    assert_eq!(burst(&mut dp, api, db, 5432, 24000), 4);
    assert_eq!(dp.drops(DropReason::RateLimited), 9 + 2 + 8 + 12 + 8);
}

#[test]
fn the_rate_limiter_refills_at_its_rate() {
    require_root!();
    let mut dp = load(RATES);
    let (web2, api) = (dp.addr("web-2"), dp.addr("api"));
    // Drain the burst of 10 (2 tokens a second refill meanwhile: a few thousandths).
    let drained = (0..15)
        .filter(|i| dp.syn(web2, 30000 + i, api, 3000) == TC_ACT_OK)
        .count();
    assert_eq!(drained, 10);
    let emptied = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(1250));
    let before = emptied.elapsed().as_secs_f64();
    let again = (0..10)
        .filter(|i| dp.syn(web2, 31000 + i, api, 3000) == TC_ACT_OK)
        .count();
    let after = emptied.elapsed().as_secs_f64();
    // Exactly the tokens refilled in the time that passed (measured around it).
    let (least, most) = ((2.0 * before) as usize, (2.0 * after + 0.01) as usize);
    assert!(
        (least..=most).contains(&again),
        "{again} passed after {before:.3}..{after:.3} s at 2/second"
    );
    assert!(again >= 2, "{again}");
}

/// A per-service limit from web and a per-address limit for everyone else, both to api.
fn same_value() -> TopologyBuilder {
    web_and_api()
        .rate_limit_per_service(&["web"], "api", "1/minute", 3)
        .rate_limit(&[], "api", "1/minute", 5)
}

/// web and api on one network, no policy yet.
fn web_and_api() -> TopologyBuilder {
    TopologyBuilder::new()
        .network("app", "10.9.0.0/24")
        .service("web", |s| s.network("app").address("10.9.0.10").tcp(80))
        .service("api", |s| s.network("app").address("10.9.0.20").tcp(3000))
}

/// The topology as `load` takes it.
fn text(b: &TopologyBuilder) -> String {
    b.to_toml().expect("a built topology serializes")
}

/// Bucket keys hold either a source address or a source identity: an address whose 32
/// bits equal an identity's must still get a bucket of its own.
#[test]
fn an_address_and_an_identity_with_the_same_value_have_separate_buckets() {
    require_root!();
    let mut dp = load(&text(&same_value()));
    let (web, api) = (dp.addr("web"), dp.addr("api"));
    let web_id = identity::of(
        &dp.plan,
        &netctl::topology::plan::Peer::Service("web".into()),
    );
    // The world address whose bucket value (its wire bytes as a u32) is web's identity.
    let twin = Ipv4Addr::from(web_id.to_ne_bytes());
    assert_eq!(u32::from_ne_bytes(twin.octets()), web_id);
    let burst = |dp: &mut Dp, src, base: u16| {
        (0..8)
            .filter(|i| dp.syn(src, base + i, api, 3000) == TC_ACT_OK)
            .count()
    };
    assert_eq!(burst(&mut dp, web, 20000), 3, "web's per-service bucket");
    assert_eq!(
        burst(&mut dp, twin, 21000),
        5,
        "{twin} (per address) does not share web's (identity {web_id}) bucket"
    );
    assert_eq!(burst(&mut dp, web, 22000), 0, "web's bucket stays empty");
}

/// Rules and limits for the race below: P1 limits web -> api (per service, one token a
/// minute) and has no rule; P2 denies web -> api and has no limit. Once web's bucket is
/// empty, a whole policy drops every new connection from web to api (P1: rate-limited,
/// P2: denied); only a half-written one (P1's rules without its limit) lets one through.
fn race_p1() -> TopologyBuilder {
    web_and_api().rate_limit_per_service(&["web"], "api", "1/minute", 1)
}

fn race_p2() -> TopologyBuilder {
    web_and_api().deny(&["web"], "api", &[])
}

/// Packets judged while the policy switches back and forth between P1 and P2 never see
/// half of one: no new connection from web to api passes once web's bucket is empty.
#[test]
fn packets_never_see_a_half_installed_rate_limit() {
    require_root!();
    let mut dp = load(&text(&race_p1()));
    let (web, api) = (dp.addr("web"), dp.addr("api"));
    assert_eq!(dp.syn(web, 1, api, 3000), TC_ACT_OK, "the one token");
    assert_eq!(dp.syn(web, 2, api, 3000), TC_ACT_SHOT, "then none");
    let plans: Vec<_> = [race_p1(), race_p2()]
        .iter()
        .map(|b| {
            let plan = b.plan().expect("valid");
            (identity::addresses(&plan), compile::compile(&plan))
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let Dp { ebpf, policy, .. } = &mut dp;
    let passed = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            // Pairs of installs (P2, then P1 again) for 1000 pairs or 10 s.
            let until = Instant::now() + std::time::Duration::from_secs(10);
            let mut pairs = 0;
            while pairs < 1000 && Instant::now() < until {
                for (ids, compiled) in [&plans[1], &plans[0]] {
                    policy.install(ids, compiled).unwrap();
                }
                pairs += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            pairs
        });
        let prog = loader::classifier(ebpf, PROG_TC_INGRESS).unwrap();
        let (mut passed, mut packets) = (Vec::new(), 0u64);
        let mut port = 3u16;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let frame = packets::tcp(web, port, api, 3000, TCP_SYN, 0);
            let verdict = prog
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::default()
                })
                .expect("BPF_PROG_TEST_RUN")
                .return_value;
            if verdict == TC_ACT_OK {
                passed.push(port);
            }
            packets += 1;
            port = port.wrapping_add(1).max(3);
        }
        let pairs = writer.join().unwrap();
        eprintln!("{pairs} pairs of policy changes, {packets} packets");
        assert!(pairs >= 100, "only {pairs} pairs of policy changes in 10 s");
        passed
    });
    assert!(
        passed.is_empty(),
        "{} new connections passed a policy that drops every one of them (ports {:?})",
        passed.len(),
        &passed[..passed.len().min(10)]
    );
    assert_eq!(
        dp.syn(web, 2, api, 3000),
        TC_ACT_SHOT,
        "P1 in force, bucket empty"
    );
}

/// After a policy change only the new generation's limits are in `RATE_LIMITS`, and they
/// are what applies: a bucket whose limit is unchanged keeps its tokens (a reload is no
/// fresh burst), a changed limit applies at once, a removed one no longer limits.
#[test]
fn a_policy_change_switches_rate_limits_with_the_rules_and_keeps_unchanged_buckets() {
    require_root!();
    let mut dp = load(RATES);
    let (web1, api, db) = (dp.addr("web-1"), dp.addr("api"), dp.addr("db"));
    let burst = |dp: &mut Dp, src, dst, port, base: u16| {
        (0..12)
            .filter(|i| dp.syn(src, base + i, dst, port) == TC_ACT_OK)
            .count()
    };
    assert_eq!(
        burst(&mut dp, web1, db, 5432, 20000),
        4,
        "web -> db: burst 4"
    );
    for i in 0..5 {
        assert_eq!(dp.syn(web1, 21000 + i, api, 3000), TC_ACT_OK, "5 of 10");
    }

    // New policy: the limit to db is unchanged, the general one to api shrinks to a burst
    // of 2, db's own limit to api goes.
    let changed = RATES
        .replace(
            "rate = \"2/second\"\nburst = 10\n",
            "rate = \"2/second\"\nburst = 2\n",
        )
        .replace(
            "[[policy.rate_limits]]\nfrom = [\"db\"]\nto = \"api\"\nrate = \"1/minute\"\nburst = 3\n",
            "",
        );
    assert_eq!(changed.matches("[[policy.rate_limits]]").count(), 2);
    assert!(changed.contains("burst = 2\n"));
    let generation = dp.reinstall(&changed);
    assert_eq!(generation, 2);
    let keys: Vec<RateLimitKey> = dp.rate_limits.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.generation == generation),
        "only generation {generation}'s limits stay: {keys:?}"
    );

    assert_eq!(
        burst(&mut dp, web1, db, 5432, 22000),
        0,
        "the unchanged limit's bucket kept its (no) tokens"
    );
    assert_eq!(
        burst(&mut dp, web1, api, 3000, 23000),
        2,
        "the changed limit: 5 tokens left, capped at the new burst"
    );
    assert_eq!(
        burst(&mut dp, db, api, 3000, 24000),
        2,
        "db's own limit (3) is gone: the general one (2) applies"
    );
}
