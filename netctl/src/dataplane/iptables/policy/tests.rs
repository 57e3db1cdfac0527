//! The policy's rules, rendered, read back and counted, against the model's verdicts.

use netctl_common::flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use super::*;
use crate::{
    net::iptables::parse_table,
    policy::compile,
    topology::{Source, plan::Peer},
};

fn plan(policy: &str) -> Plan {
    Source {
        name: "t".into(),
        text: format!(
            r#"
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
[services.legacy]
ports = [7000]
backends = ["10.9.0.50:7001"]
{policy}"#
        ),
    }
    .plan(None)
    .expect("valid")
}

fn rendered(p: &Plan) -> (Compiled, Rendered, Vec<(Ipv4Addr, u32)>) {
    let compiled = compile::compile(p);
    let ids = identity::addresses(p);
    let r = render(
        &Chains::for_instance("t1"),
        &Input {
            plan: p,
            compiled: &compiled,
            identities: &ids,
            generation: 7,
        },
    );
    (compiled, r, ids)
}

/// A packet walked through the rendered chains, as the kernel would: which verdict
/// (and whether a rate-limit chain was reached) for a new connection.
struct Walk<'a> {
    chains: &'a BTreeMap<String, Vec<String>>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    proto: u8,
    dnat: bool,
    /// Carries `MARK_PROBE` (one of netctl's own health probes).
    probe: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Return,
    Drop(String),
}

impl Walk<'_> {
    fn run(&self, chain: &str, limits: &mut Vec<String>) -> End {
        let Some(rules) = self.chains.get(chain) else {
            panic!("jump to missing chain {chain}");
        };
        for rule in rules {
            let words = crate::net::iptables::split_words(rule);
            if !self.matches(&words) {
                continue;
            }
            let at = |opt: &str| {
                words
                    .iter()
                    .position(|w| w == opt)
                    .and_then(|i| words.get(i + 1))
                    .cloned()
            };
            if words.iter().any(|w| w == "hashlimit" || w == "limit")
                && words.iter().any(|w| w == "RETURN")
            {
                limits.push(chain.to_string());
                return End::Return;
            }
            if let Some(t) = at("-g") {
                return self.run(&t, limits);
            }
            match at("-j").as_deref() {
                None | Some("LOG") => {}
                Some("RETURN") => return End::Return,
                Some("DROP") => return End::Drop(chain.to_string()),
                Some(t) => {
                    if let End::Drop(c) = self.run(t, limits) {
                        return End::Drop(c);
                    }
                }
            }
        }
        End::Return
    }

    fn matches(&self, words: &[String]) -> bool {
        let mut i = 2; // "-A CHAIN"
        while i < words.len() {
            let w = words[i].as_str();
            let v = words.get(i + 1).map(String::as_str).unwrap_or("");
            let ok = match w {
                "-s" => v.parse::<Ipv4Net>().is_ok_and(|n| n.contains(&self.src)),
                "-d" => v.parse::<Ipv4Net>().is_ok_and(|n| n.contains(&self.dst)),
                "-p" => Proto::from_number(self.proto).is_some_and(|p| p.name() == v),
                "--dport" => v.parse::<u16>() == Ok(self.port),
                "--ctstate" => v != "DNAT" || self.dnat,
                "--mark" => self.probe,
                _ => true,
            };
            if !ok {
                return false;
            }
            i += if w.starts_with('-') && !["-j", "-g"].contains(&w) {
                2
            } else {
                1
            };
            if w == "-j" || w == "-g" {
                break;
            }
        }
        true
    }
}

fn peers() -> Vec<(Peer, Ipv4Addr)> {
    vec![
        (Peer::Service("web".into()), Ipv4Addr::new(10, 9, 0, 11)),
        (Peer::Service("api".into()), Ipv4Addr::new(10, 9, 0, 20)),
        (Peer::Service("db".into()), Ipv4Addr::new(10, 9, 0, 30)),
        (Peer::Host, Ipv4Addr::new(10, 9, 0, 1)),
        (Peer::World, Ipv4Addr::new(192, 0, 2, 7)),
    ]
}

/// Every (src, dst, port, proto) of a small universe: the rules walk to the model's
/// verdict.
fn assert_rules_follow_the_model(p: &Plan) {
    let (_, r, _) = rendered(p);
    let c = Chains::for_instance("t1");
    let mut cells: Vec<(u16, u8)> = [22u16, 53, 80, 443, 3000, 5432, 8001]
        .iter()
        .flat_map(|port| [(*port, IPPROTO_TCP), (*port, IPPROTO_UDP)])
        .collect();
    cells.push((0, IPPROTO_ICMP));
    for (src, saddr) in peers() {
        for (dst, daddr) in peers() {
            let limit_chain = expected_limit_chain(p, &c, &src, &dst);
            for (port, proto) in &cells {
                let (port, proto) = (*port, *proto);
                let want = crate::policy::model::verdict(&p.policy, &src, &dst, port, proto);
                let walk = Walk {
                    chains: &r.chains,
                    src: saddr,
                    dst: daddr,
                    port,
                    proto,
                    dnat: false,
                    probe: false,
                };
                let mut limits = Vec::new();
                let got = walk.run(&c.policy(), &mut limits);
                assert_eq!(
                    got == End::Return,
                    want.allow,
                    "{} -> {}:{port}/{proto}: rules {got:?}, model {want:?}\npolicy: {:#?}\nrules: {:#?}",
                    src.name(),
                    dst.name(),
                    p.policy,
                    r.chains
                );
                if want.allow {
                    assert_eq!(
                        limits.first(),
                        limit_chain.as_ref(),
                        "{} -> {}: rate limit\npolicy: {:#?}\nrules: {:#?}",
                        src.name(),
                        dst.name(),
                        p.policy,
                        r.chains
                    );
                }
            }
        }
    }
}

/// The chain whose `limit`/`hashlimit` rule a connection from `src` to `dst` meets,
/// given the limit the model says applies.
fn expected_limit_chain(p: &Plan, c: &Chains, src: &Peer, dst: &Peer) -> Option<String> {
    let l = crate::policy::model::rate_limit(&p.policy, src, dst)?;
    let (s, d) = (identity::of(p, src), identity::of(p, dst));
    if l.from.is_some() {
        return Some(c.rlf(s, d));
    }
    if l.per == crate::topology::plan::Per::Service {
        return Some(c.rls(s, d));
    }
    let world_has_own = p
        .policy
        .rate_limits
        .iter()
        .any(|r| r.to == *dst && r.from.as_ref().is_some_and(|f| f.contains(&Peer::World)));
    Some(if world_has_own { c.rla(d) } else { c.rl(d) })
}

#[test]
fn no_policy_is_one_comment_and_no_chain() {
    let p = plan("");
    let (_, r, _) = rendered(&p);
    assert_eq!(r.chains.len(), 1);
    let rules = &r.chains["NCTL-t1-POLICY"];
    assert_eq!(
        rules,
        &vec![
            "-A NCTL-t1-POLICY -m comment --comment \"netctl policy generation 7 identities 0 entries 0 limits 0\"".to_string()
        ]
    );
}

#[test]
fn the_seed_like_policy_walks_to_the_models_verdicts() {
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
ports = [80, 443, "53/udp"]
[[policy.rules]]
from = ["world"]
to = "web"
ports = [80]
action = "deny"
[[policy.rate_limits]]
to = "api"
rate = "100/minute"
burst = 20
"#,
    );
    assert_rules_follow_the_model(&p);
    let (_, r, _) = rendered(&p);
    let all: Vec<&String> = r.chains.values().flatten().collect();
    let has = |needle: &str| all.iter().any(|l| l.contains(needle));
    assert!(has("-j LOG --log-prefix \"NCTL-t1 default deny: \""));
    assert!(has("-j LOG --log-prefix \"NCTL-t1 r3 deny: \""));
    assert!(has(
        "--hashlimit-upto 100/minute --hashlimit-burst 20 --hashlimit-mode srcip"
    ));
    assert!(has("--hashlimit-htable-expire 12005"));
    assert!(has("-p udp -m udp --dport 53"));
}

#[test]
fn random_policies_walk_to_the_models_verdicts() {
    let names = ["web", "api", "db", "host", "world"];
    let ports = ["22", "80", "53/udp", "5432", "3000", "8000-8002"];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut checked = 0;
    for _ in 0..150 {
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
        for _ in 0..next(8) + 1 {
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
        let full = Source {
            name: "t".into(),
            text: format!(
                "[networks.app]\nsubnet = \"10.9.0.0/24\"\n[services.web]\nnetwork = \"app\"\naddress = \"10.9.0.10\"\nreplicas = 2\nports = [80]\n[services.api]\nnetwork = \"app\"\naddress = \"10.9.0.20\"\nports = [3000]\n[services.db]\nnetwork = \"app\"\naddress = \"10.9.0.30\"\nports = [5432]\n{text}"
            ),
        }
        .plan(None);
        if let Ok(p) = full {
            assert_rules_follow_the_model(&p);
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} random policies were valid");
}

#[test]
fn a_connection_dnated_to_a_listed_backend_is_judged_as_its_service() {
    let p = plan(
        r#"
[policy]
default_deny = ["legacy"]
[[policy.rules]]
from = ["api"]
to = "legacy"
"#,
    );
    let (_, r, _) = rendered(&p);
    let walk = |src: Ipv4Addr, dnat: bool| {
        Walk {
            chains: &r.chains,
            src,
            dst: Ipv4Addr::new(10, 9, 0, 50),
            port: 7001,
            proto: IPPROTO_TCP,
            dnat,
            probe: false,
        }
        .run("NCTL-t1-POLICY", &mut Vec::new())
    };
    assert_eq!(walk(Ipv4Addr::new(10, 9, 0, 20), true), End::Return);
    assert!(matches!(
        walk(Ipv4Addr::new(10, 9, 0, 10), true),
        End::Drop(_)
    ));
    // Straight to the backend's address (no DNAT): that address is the world's.
    assert_eq!(walk(Ipv4Addr::new(10, 9, 0, 10), false), End::Return);
}

/// A probe of netctl's own (`MARK_PROBE`) from the host passes a deny and a rate limit
/// untouched; the same connection unmarked is judged.
#[test]
fn the_probe_mark_skips_the_policy_and_its_limits() {
    let p = plan(
        r#"
[[policy.rules]]
from = ["host"]
to = "db"
action = "deny"
[[policy.rate_limits]]
to = "api"
rate = "1/minute"
burst = 1
"#,
    );
    let (_, r, _) = rendered(&p);
    let host = Ipv4Addr::new(10, 9, 0, 1);
    let walk = |dst: Ipv4Addr, probe: bool| {
        let mut limits = Vec::new();
        let end = Walk {
            chains: &r.chains,
            src: host,
            dst,
            port: 5432,
            proto: IPPROTO_TCP,
            dnat: false,
            probe,
        }
        .run("NCTL-t1-POLICY", &mut limits);
        (end, limits)
    };
    let (db, api) = (Ipv4Addr::new(10, 9, 0, 30), Ipv4Addr::new(10, 9, 0, 20));
    assert!(matches!(walk(db, false).0, End::Drop(_)));
    assert_eq!(walk(db, true), (End::Return, vec![]));
    assert_eq!(
        walk(api, false).1.len(),
        1,
        "unmarked: the limit is reached"
    );
    assert_eq!(walk(api, true), (End::Return, vec![]), "marked: no limit");
}

#[test]
fn rate_limits_go_per_address_or_per_identity() {
    let p = plan(
        r#"
[[policy.rate_limits]]
to = "api"
rate = "5/second"
burst = 3
[[policy.rate_limits]]
to = "db"
rate = "100/minute"
burst = 20
per = "service"
"#,
    );
    let (_, r, _) = rendered(&p);
    let c = Chains::for_instance("t1");
    let api = identity::of(&p, &Peer::Service("api".into()));
    let db = identity::of(&p, &Peer::Service("db".into()));
    let web = identity::of(&p, &Peer::Service("web".into()));
    assert!(r.chains[&c.rl(api)][0].contains("--hashlimit-upto 5/second --hashlimit-burst 3"));
    let walk = |src: Ipv4Addr, dst: Ipv4Addr| {
        let mut limits = Vec::new();
        let end = Walk {
            chains: &r.chains,
            src,
            dst,
            port: 1,
            proto: IPPROTO_TCP,
            dnat: false,
            probe: false,
        }
        .run("NCTL-t1-POLICY", &mut limits);
        (end, limits)
    };
    let (end, limits) = walk(Ipv4Addr::new(10, 9, 0, 10), Ipv4Addr::new(10, 9, 0, 20));
    assert_eq!((end, limits), (End::Return, vec![c.rl(api)]));
    // Both web replicas share one bucket for the db; the world has its own.
    for replica in [10, 11] {
        let (_, limits) = walk(
            Ipv4Addr::new(10, 9, 0, replica),
            Ipv4Addr::new(10, 9, 0, 30),
        );
        assert_eq!(limits, vec![c.rls(web, db)]);
    }
    let (_, limits) = walk(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 9, 0, 30));
    assert_eq!(limits, vec![c.rls(ID_WORLD, db)]);
    let (_, limits) = walk(Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(10, 9, 0, 30));
    assert_eq!(limits, vec![c.rls(ID_HOST, db)]);
    assert!(r.chains[&c.rls(web, db)][0].contains("-m limit --limit 100/minute --limit-burst 20"));
}

#[test]
fn a_sources_own_limit_is_met_before_the_general_one() {
    let p = plan(
        r#"
[[policy.rate_limits]]
to = "api"
rate = "100/minute"
burst = 20
[[policy.rate_limits]]
from = ["web"]
to = "api"
rate = "200/second"
burst = 2000
[[policy.rate_limits]]
from = ["world", "db"]
to = "web"
rate = "1/second"
burst = 2
per = "service"
[[policy.rate_limits]]
to = "web"
rate = "5/second"
burst = 5
"#,
    );
    assert_rules_follow_the_model(&p);
    let (_, r, _) = rendered(&p);
    let c = Chains::for_instance("t1");
    let id = |n: &str| identity::of(&p, &Peer::Service(n.into()));
    let rl = &r.chains[&c.rl(id("api"))];
    // Both web replicas go to web's own limit, then the general one takes the rest.
    assert_eq!(
        rl[0],
        format!(
            "-A {} -s 10.9.0.10/32 -g {}",
            c.rl(id("api")),
            c.rlf(id("web"), id("api"))
        )
    );
    let general = rl
        .iter()
        .position(|l| l.contains("--hashlimit-upto 100/minute --hashlimit-burst 20"))
        .expect("the general limit");
    assert!(
        rl[..general]
            .iter()
            .all(|l| l.ends_with(&c.rlf(id("web"), id("api"))))
    );
    assert!(rl[..general].iter().any(|l| l.contains("-s 10.9.0.11/32")));
    let own = &r.chains[&c.rlf(id("web"), id("api"))];
    assert!(own[0].contains("--hashlimit-upto 200/second --hashlimit-burst 2000"));
    assert!(own[1].contains(&format!("over {} {}", id("web"), id("api"))));
    // The world's own limit comes last, after every known address.
    let web = &r.chains[&c.rl(id("web"))];
    assert_eq!(
        web.last().expect("rules"),
        &format!("-A {} -g {}", c.rl(id("web")), c.rlf(ID_WORLD, id("web")))
    );
    assert!(r.chains[&c.rla(id("web"))][0].contains("--hashlimit-upto 5/second"));
    assert!(
        r.chains[&c.rlf(ID_WORLD, id("web"))][0]
            .contains("-m limit --limit 1/second --limit-burst 2")
    );
}

#[test]
fn rates_are_written_in_the_unit_that_says_them() {
    assert_eq!(rate_text(1666), "100/minute");
    assert_eq!(rate_text(5000), "5/second");
    assert_eq!(rate_text(10), "36/hour");
    assert_eq!(rate_text(1), "86/day");
}

#[test]
fn the_installed_policy_reads_back_as_compiled_and_drops_count() {
    let p = plan(
        r#"
[policy]
default_deny = ["db"]
[[policy.rules]]
from = ["api", "host"]
to = "db"
ports = [5432]
[[policy.rate_limits]]
to = "web"
rate = "100/minute"
burst = 20
per = "service"
[[policy.rate_limits]]
from = ["api"]
to = "web"
rate = "5/second"
burst = 50
"#,
    );
    let (compiled, r, ids) = rendered(&p);
    assert_eq!(compiled.rate_limits.len(), 2);
    let c = Chains::for_instance("t1");
    let text = script(&c, &r, &[]);
    assert!(text.starts_with("*filter\n") && text.ends_with("COMMIT\n"));
    // iptables-save prints the rules as written, with counters when asked.
    let mut saved = String::from("*filter\n");
    for (ch, rules) in &r.chains {
        saved.push_str(&format!(":{ch} - [0:0]\n"));
        for rule in rules {
            let n = if rule.contains("drop policy-denied") {
                4
            } else {
                0
            };
            saved.push_str(&format!("[{n}:240] {rule}\n"));
        }
    }
    saved.push_str("COMMIT\n");
    let table = parse_table(&saved);
    let back = read(&c, &table).expect("installed");
    assert_eq!(back.generation, 7);
    assert_eq!(back.compiled, compiled);
    let mut want_ids = ids.clone();
    want_ids.sort_unstable();
    let mut got_ids = back.identities.clone();
    got_ids.sort_unstable();
    assert_eq!(got_ids, want_ids);
    let d = drops(&c, &table);
    assert_eq!(d.by_reason.get("policy-denied"), Some(&4));
    // An earlier install's chains that are not wanted any more are removed.
    let again = script(&c, &Rendered::default(), &table.chains);
    assert!(again.contains(&format!("-X {}", c.deny_default())));
    assert!(!again.contains("-X NCTL-t1-SERVICES"));
}
