//! Policy compilation against the reference model, and validation errors.

use std::collections::BTreeSet;

use netctl_common::{
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{ID_ANY, ID_HOST, ID_WORLD, RL_BY_ADDRESS, RL_BY_IDENTITY, VERDICT_DENY},
};

use super::{compile, identity, model};
use crate::topology::{
    Plan, Source, TopologyError,
    plan::{Action, Peer, Per, Policy, PortMatch, RateLimit, Rule},
};

fn plan(policy: &str) -> Result<Plan, Vec<TopologyError>> {
    Source {
        name: "t".into(),
        text: format!(
            r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
ports = [80]
[services.api]
network = "app"
ports = [3000]
[services.db]
network = "app"
ports = [5432]
{policy}"#
        ),
    }
    .plan(None)
    .map_err(|e| e.errors)
}

fn peers() -> Vec<Peer> {
    let mut v: Vec<Peer> = ["web", "api", "db"]
        .iter()
        .map(|s| Peer::Service(s.to_string()))
        .collect();
    v.push(Peer::Host);
    v.push(Peer::World);
    v
}

/// What is asked of the policy: TCP and UDP ports, and ICMP (no port).
fn cells() -> Vec<(u16, u8)> {
    let mut v: Vec<(u16, u8)> = [22u16, 53, 80, 443, 3000, 5432, 8001]
        .iter()
        .flat_map(|p| [(*p, IPPROTO_TCP), (*p, IPPROTO_UDP)])
        .collect();
    v.push((0, IPPROTO_ICMP));
    v
}

/// Every (src, dst, port, proto) of a small universe: model and compiled entries agree,
/// and so do their rate limits.
fn assert_equivalent(plan: &Plan) {
    let compiled = compile::compile(plan);
    for src in peers() {
        for dst in peers() {
            let want = model::rate_limit(&plan.policy, &src, &dst).map(|l| {
                let by = match l.per {
                    Per::Source => RL_BY_ADDRESS,
                    Per::Service => RL_BY_IDENTITY,
                };
                (l.rate_milli, l.burst, by)
            });
            let got = compile::rate_limit(
                &compiled,
                identity::of(plan, &src),
                identity::of(plan, &dst),
            )
            .map(|l| (l.rate_milli, l.burst, l.by));
            assert_eq!(got, want, "rate limit {} -> {}", src.name(), dst.name());
            for (port, proto) in cells() {
                let want = model::verdict(&plan.policy, &src, &dst, port, proto);
                let (allow, _) = compile::lookup(
                    &compiled,
                    identity::of(plan, &src),
                    identity::of(plan, &dst),
                    port,
                    proto,
                );
                assert_eq!(
                    allow,
                    want.allow,
                    "{} -> {}:{port}/{proto}: compiled {allow}, model {want:?}\npolicy: {:#?}",
                    src.name(),
                    dst.name(),
                    plan.policy
                );
            }
        }
    }
}

#[test]
fn no_policy_allows_everything_and_compiles_to_nothing() {
    let p = plan("").expect("valid");
    assert!(compile::compile(&p).entries.is_empty());
    assert_equivalent(&p);
}

#[test]
fn the_seed_policies_compile_to_what_they_say() {
    let p = plan(
        r#"
[policy]
default_deny = ["db", "world"]
[[policy.rules]]
from = ["api"]
to = "db"
ports = [5432]
[[policy.rules]]
to = "world"
ports = [80, 443, 53, "53/udp"]
[[policy.rate_limits]]
to = "api"
rate = "100/minute"
burst = 20
"#,
    )
    .expect("valid");
    assert_equivalent(&p);
    let c = compile::compile(&p);
    let id = |n: &str| identity::of(&p, &Peer::Service(n.into()));
    let check =
        |src: u32, dst: u32, port: u16, proto: u8| compile::lookup(&c, src, dst, port, proto).0;
    assert!(check(id("api"), id("db"), 5432, IPPROTO_TCP));
    assert!(!check(id("web"), id("db"), 5432, IPPROTO_TCP));
    assert!(!check(id("api"), id("db"), 22, IPPROTO_TCP));
    assert!(
        check(ID_HOST, id("db"), 5432, IPPROTO_TCP),
        "the host checks health"
    );
    assert!(check(id("web"), ID_WORLD, 443, IPPROTO_TCP));
    assert!(check(id("web"), ID_WORLD, 53, IPPROTO_UDP));
    assert!(!check(id("web"), ID_WORLD, 25, IPPROTO_TCP));
    assert!(
        check(id("web"), id("api"), 3000, IPPROTO_TCP),
        "no default deny on api"
    );
    let api_limit = compile::rate_limit(&c, id("web"), id("api")).expect("limited");
    assert_eq!((api_limit.rate_milli, api_limit.burst), (1666, 20));
    // ICMP (no port): only rules for any port decide; the egress allow-list names ports.
    assert!(!check(id("web"), ID_WORLD, 0, IPPROTO_ICMP));
    assert!(!check(id("api"), id("db"), 0, IPPROTO_ICMP));
    assert!(check(id("web"), id("api"), 0, IPPROTO_ICMP));
    let default = c.entries[&compile::EntryKey {
        src: ID_ANY,
        dst: id("db"),
        port: 0,
        proto: 0,
    }];
    assert_eq!((default.verdict, default.rule), (VERDICT_DENY, 0));
}

#[test]
fn specific_sources_and_ports_beat_general_rules() {
    let p = plan(
        r#"
[policy]
allow_host = false
[[policy.rules]]
to = "db"
action = "deny"
[[policy.rules]]
from = ["api"]
to = "db"
[[policy.rules]]
from = ["api"]
to = "db"
ports = [22]
action = "deny"
[[policy.rules]]
to = "web"
ports = [8001]
action = "deny"
"#,
    )
    .expect("valid");
    assert_equivalent(&p);
    let db = Peer::Service("db".into());
    let api = Peer::Service("api".into());
    let v = |src: &Peer, dst: &Peer, port| model::verdict(&p.policy, src, dst, port, IPPROTO_TCP);
    assert!(v(&api, &db, 5432).allow, "api named: beats deny-any");
    assert!(!v(&api, &db, 22).allow, "api + port 22 beats api any port");
    assert!(!v(&Peer::Host, &db, 5432).allow, "allow_host off");
    assert_eq!(v(&api, &db, 22).rule, Some(3));
}

/// Random policies over the small universe: compile and model never disagree.
#[test]
fn random_policies_compile_to_the_models_verdicts() {
    let names = ["web", "api", "db", "host", "world"];
    let ports = ["22", "80", "53/udp", "5432", "3000", "8000-8002"];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut checked = 0;
    for _ in 0..300 {
        let mut text = String::from("[policy]\n");
        let deny: Vec<String> = names
            .iter()
            .filter(|_| next(3) == 0)
            .map(|n| format!("{n:?}"))
            .collect();
        text.push_str(&format!(
            "default_deny = [{}]\nallow_host = {}\n",
            deny.join(", "),
            next(2) == 0
        ));
        for _ in 0..next(6) + 1 {
            text.push_str("[[policy.rules]]\n");
            if next(2) == 0 {
                let from: BTreeSet<&str> =
                    (0..next(3) + 1).map(|_| names[next(names.len())]).collect();
                let from: Vec<String> = from.iter().map(|n| format!("{n:?}")).collect();
                text.push_str(&format!("from = [{}]\n", from.join(", ")));
            }
            text.push_str(&format!("to = {:?}\n", names[next(names.len())]));
            if next(2) == 0 {
                let ps: BTreeSet<&str> =
                    (0..next(2) + 1).map(|_| ports[next(ports.len())]).collect();
                let ps: Vec<String> = ps.iter().map(|p| format!("{p:?}")).collect();
                text.push_str(&format!("ports = [{}]\n", ps.join(", ")));
            }
            if next(2) == 0 {
                text.push_str("action = \"deny\"\n");
            }
        }
        // Rate limits, some naming their sources.
        for _ in 0..next(3) {
            text.push_str("[[policy.rate_limits]]\n");
            if next(2) == 0 {
                let from: BTreeSet<&str> =
                    (0..next(2) + 1).map(|_| names[next(names.len())]).collect();
                let from: Vec<String> = from.iter().map(|n| format!("{n:?}")).collect();
                text.push_str(&format!("from = [{}]\n", from.join(", ")));
            }
            text.push_str(&format!(
                "to = {:?}\nrate = \"{}/minute\"\nburst = {}\n",
                names[next(names.len())],
                next(100) + 1,
                next(20) + 1
            ));
            if next(2) == 0 {
                text.push_str("per = \"service\"\n");
            }
        }
        // Conflicting draws are refused by validation (tested below); skip them here.
        if let Ok(p) = plan(&text) {
            assert_equivalent(&p);
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} random policies were valid");
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    let errs = |text: &str| plan(text).expect_err("must be refused");
    let e = errs("[policy]\ndefault_deny = [\"nope\"]\n");
    assert!(
        matches!(&e[0], TopologyError::UnknownPeer { field, name } if field == "policy.default_deny[0]" && name == "nope")
    );
    let e = errs("[[policy.rules]]\nfrom = [\"web\", \"ghost\"]\nto = \"db\"\n");
    assert!(
        matches!(&e[0], TopologyError::UnknownPeer { field, .. } if field == "policy.rules[0].from[1]"),
        "{e:?}"
    );
    for bad in [
        "\"9000-8000\"",
        "\"1-5000\"",
        "70000",
        "\"80/sctp\"",
        "\"eighty\"",
    ] {
        let e = errs(&format!("[[policy.rules]]\nto = \"db\"\nports = [{bad}]\n"));
        assert!(
            matches!(&e[0], TopologyError::BadPolicy { field, .. } if field == "policy.rules[0].ports[0]"),
            "{bad}: {e:?}"
        );
    }
    let e = errs("[[policy.rules]]\nto = \"db\"\naction = \"maybe\"\n");
    assert!(e[0].to_string().contains("policy.rules[0].action"));
    let e = errs(
        "[[policy.rules]]\nfrom = [\"web\", \"api\"]\nto = \"db\"\nports = [5432]\n\
         [[policy.rules]]\nfrom = [\"api\"]\nto = \"db\"\nports = [\"5430-5440\"]\naction = \"deny\"\n",
    );
    assert!(
        matches!(&e[0], TopologyError::ConflictingRules { a: 0, b: 1, what } if what.contains("from api") && what.contains("5432")),
        "{e:?}"
    );
    let e = errs("[[policy.rate_limits]]\nto = \"api\"\nrate = \"lots\"\nburst = 0\n");
    assert_eq!(e.len(), 2, "{e:?}");
    let e = errs(
        "[[policy.rate_limits]]\nto = \"api\"\nrate = \"1/second\"\nburst = 1\n\
         [[policy.rate_limits]]\nto = \"api\"\nrate = \"2/second\"\nburst = 1\n",
    );
    assert!(e[0].to_string().contains("already has a rate limit"));
    // A source may have one limit of its own per destination, besides the general one.
    let e = errs(
        "[[policy.rate_limits]]\nfrom = [\"web\", \"db\"]\nto = \"api\"\nrate = \"1/second\"\nburst = 1\n\
         [[policy.rate_limits]]\nfrom = [\"db\"]\nto = \"api\"\nrate = \"2/second\"\nburst = 1\n",
    );
    assert!(
        matches!(&e[0], TopologyError::BadPolicy { field, message } if field == "policy.rate_limits[1].to" && message.contains("from db")),
        "{e:?}"
    );
    let e = errs(
        "[[policy.rate_limits]]\nfrom = [\"ghost\"]\nto = \"api\"\nrate = \"1/second\"\nburst = 1\n",
    );
    assert!(
        matches!(&e[0], TopologyError::UnknownPeer { field, .. } if field == "policy.rate_limits[0].from[0]"),
        "{e:?}"
    );
    let e =
        errs("[[policy.rate_limits]]\nfrom = []\nto = \"api\"\nrate = \"1/second\"\nburst = 1\n");
    assert!(
        e[0].to_string().contains("policy.rate_limits[0].from"),
        "{e:?}"
    );
}

/// A limit naming the source beats the one for any source, for that source only.
#[test]
fn a_sources_own_rate_limit_beats_the_general_one() {
    let p = plan(
        r#"
[[policy.rate_limits]]
to = "api"
rate = "100/minute"
burst = 20
[[policy.rate_limits]]
from = ["web", "host"]
to = "api"
rate = "200/second"
burst = 2000
[[policy.rate_limits]]
from = ["world"]
to = "db"
rate = "1/second"
burst = 1
per = "service"
"#,
    )
    .expect("valid");
    assert_equivalent(&p);
    let c = compile::compile(&p);
    let id = |n: &str| identity::of(&p, &Peer::Service(n.into()));
    let limit = |src, dst| compile::rate_limit(&c, src, dst).map(|l| (l.rate_milli, l.burst));
    assert_eq!(limit(id("web"), id("api")), Some((200_000, 2000)));
    assert_eq!(limit(ID_HOST, id("api")), Some((200_000, 2000)));
    assert_eq!(limit(id("db"), id("api")), Some((1666, 20)));
    assert_eq!(limit(ID_WORLD, id("api")), Some((1666, 20)));
    assert_eq!(limit(ID_WORLD, id("db")), Some((1000, 1)));
    assert_eq!(
        limit(id("web"), id("db")),
        None,
        "only the world is limited"
    );
    assert_eq!(c.rate_limits.len(), 4);
}

/// The embedded default platform carries the seed's policies: nothing else checks the
/// `[policy]` of default.toml.
#[test]
fn the_embedded_default_policy_is_the_seeds() {
    let p = Source::embedded_default().plan(None).expect("valid");
    let svc = |n: &str| Peer::Service(n.into());
    let set = |names: &[&str]| Some(names.iter().map(|n| svc(n)).collect());
    let rule = |number, from, to, ports: &[(u16, u8)]| Rule {
        number,
        action: Action::Allow,
        from,
        to,
        ports: PortMatch::Ports(ports.to_vec()),
    };
    let expected = Policy {
        default_deny: [svc("postgres"), svc("redis"), svc("registry"), Peer::World]
            .into_iter()
            .collect(),
        allow_host: true,
        rules: vec![
            rule(
                1,
                set(&["gateway", "order", "product"]),
                svc("registry"),
                &[(8500, IPPROTO_TCP)],
            ),
            rule(
                2,
                set(&["order", "product"]),
                svc("postgres"),
                &[(5432, IPPROTO_TCP)],
            ),
            rule(3, set(&["product"]), svc("redis"), &[(6379, IPPROTO_TCP)]),
            rule(
                4,
                None,
                Peer::World,
                &[
                    (53, IPPROTO_TCP),
                    (53, IPPROTO_UDP),
                    (80, IPPROTO_TCP),
                    (443, IPPROTO_TCP),
                ],
            ),
        ],
        rate_limits: vec![
            // The seed's: 100 a minute, burst 20, per source address.
            RateLimit {
                from: None,
                to: svc("gateway"),
                rate_milli: 1666,
                burst: 20,
                per: Per::Source,
            },
            // The edge multiplexes every outside client (see default.toml).
            RateLimit {
                from: set(&["edge"]),
                to: svc("gateway"),
                rate_milli: 200_000,
                burst: 2000,
                per: Per::Source,
            },
        ],
    };
    assert_eq!(p.policy, expected);
    let v = |src: &str, dst: &str, port| {
        model::verdict(&p.policy, &svc(src), &svc(dst), port, IPPROTO_TCP).allow
    };
    assert!(v("order", "postgres", 5432) && !v("edge", "postgres", 5432));
    assert!(v("product", "redis", 6379) && !v("order", "redis", 6379));
    assert!(!v("edge", "registry", 8500));
    let c = compile::compile(&p);
    let gw = identity::of(&p, &svc("gateway"));
    let limit = |src: &str| {
        compile::rate_limit(&c, identity::of(&p, &svc(src)), gw).map(|l| (l.rate_milli, l.burst))
    };
    assert_eq!(limit("order"), Some((1666, 20)));
    assert_eq!(limit("edge"), Some((200_000, 2000)));
}

/// A service of listed backends has no namespace, only its VIP: it still has an identity
/// of its own (never the wildcard), so rules naming it mean it.
#[test]
fn a_service_of_listed_backends_has_its_own_identity() {
    let p = plan(
        r#"
[services.legacy]
ports = [7000]
backends = ["10.9.0.50"]
[[policy.rules]]
from = ["legacy"]
to = "db"
action = "deny"
"#,
    )
    .expect("valid");
    let legacy = Peer::Service("legacy".into());
    let id = identity::of(&p, &legacy);
    assert_ne!(id, ID_ANY);
    assert_eq!(identity::peer(&p, id), Some(legacy.clone()));
    let vip = p
        .services
        .iter()
        .find(|s| s.name == "legacy")
        .expect("svc")
        .vip;
    assert!(identity::addresses(&p).contains(&(vip, id)));
    let web = Peer::Service("web".into());
    let db = Peer::Service("db".into());
    assert!(!model::verdict(&p.policy, &legacy, &db, 5432, IPPROTO_TCP).allow);
    let compiled = compile::compile(&p);
    let from = |peer: &Peer| {
        compile::lookup(
            &compiled,
            identity::of(&p, peer),
            identity::of(&p, &db),
            5432,
            IPPROTO_TCP,
        )
        .0
    };
    assert!(!from(&legacy));
    assert!(from(&web), "the rule is not one for any source");
}
