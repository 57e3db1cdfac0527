//! The rules themselves, as `iptables-restore` text. Pure functions of what to serve, so
//! that every rule is unit-tested without root.
//!
//! ```text
//! nat PREROUTING  -> NCTL-x-SERVICES   -d VIP -p tcp --dport P -> NCTL-x-SVC-…
//! nat OUTPUT      -> NCTL-x-SERVICES
//! nat PREROUTING -i UPLINK --dst-type LOCAL -> NCTL-x-HOSTPORTS --dport H -> NCTL-x-EXT-…
//! nat OUTPUT             --dst-type LOCAL -> NCTL-x-HOSTPORTS
//! NCTL-x-SVC-…   statistic random (or nth, round-robin) -> NCTL-x-SEP-… (one per backend)
//! NCTL-x-SEP-…   -s itself -> MARK-MASQ (hairpin); DNAT --to-destination ADDR:PORT
//! NCTL-x-EXT-…   -s 127.0.0.0/8 -> MARK-MASQ; -> the service's SVC chain
//! nat POSTROUTING -> NCTL-x-POSTROUTING  marked: MASQUERADE; leaving the platform: MASQUERADE
//! filter FORWARD/OUTPUT (new connections) -> NCTL-x-SERVICES  VIP:port without backend: REJECT
//! filter FORWARD/INPUT/OUTPUT (new) -> NCTL-x-FIREWALL  -i/-o a bridge -> NCTL-x-POLICY
//! filter FORWARD/INPUT/OUTPUT (untracked ICMP) -> NCTL-x-ICMP  errors: RETURN; else FIREWALL
//! ```
//!
//! The policy's chains below `NCTL-x-POLICY` are [`super::policy`]'s.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::names::Chains;
use crate::{
    dataplane::lb::{BackendKey, FrontendKey},
    net::iptables::Table,
    topology::{Algorithm, Proto},
};

/// `skb->mark` bit of connections to masquerade (kube-proxy uses 0x4000; this one sits
/// next to the eBPF dataplane's bits, see bpf-maps.md).
pub const MASQ_MARK: u32 = 0x0400_0000;

/// Built-in chains netctl jumps from, per table.
const NAT_HOOKS: [&str; 3] = ["PREROUTING", "OUTPUT", "POSTROUTING"];
const FILTER_HOOKS: [&str; 3] = ["FORWARD", "INPUT", "OUTPUT"];
/// Where new connections to frontends without backends are refused.
const REJECT_HOOKS: [&str; 2] = ["FORWARD", "OUTPUT"];
/// ICMP error types (`netctl_common::flow::icmp_is_error`), which pass unjudged.
const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

/// What the base rules (those `up` makes, before any service) depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSpec {
    pub bridges: Vec<String>,
    /// Bridge ports (host-side veths) of the platform's namespaces.
    pub ports: Vec<String>,
    pub subnets: Vec<Ipv4Net>,
    /// Masquerade traffic from the subnets that leaves by any interface but a bridge.
    pub masquerade: bool,
    /// Host ports are served for traffic arriving on these (and from the host itself).
    pub uplinks: Vec<String>,
    pub host_ports: bool,
}

/// The base chains and the jumps into them from the built-in chains, as one transaction
/// per table. The per-service chains are the controller's ([`render`]).
pub fn base_script(c: &Chains, spec: &BaseSpec) -> String {
    let inst = c.instance();
    let mut nat = String::new();
    for chain in [c.services(), c.host_ports(), c.mark_masq(), c.postrouting()] {
        let _ = writeln!(nat, ":{chain} - [0:0]");
    }
    let _ = writeln!(nat, "-A {} -j MARK --or-mark {MASQ_MARK:#x}", c.mark_masq());
    let post = c.postrouting();
    let _ = writeln!(
        nat,
        "-A {post} -m mark --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -m comment --comment \"netctl {inst}: marked for masquerade\" -j MASQUERADE"
    );
    if spec.masquerade {
        for b in &spec.bridges {
            let _ = writeln!(nat, "-A {post} -o {b} -j RETURN");
        }
        for s in &spec.subnets {
            let _ = writeln!(
                nat,
                "-A {post} -s {s} -m comment --comment \"netctl {inst}: platform -> uplink\" -j MASQUERADE"
            );
        }
    }
    let services = c.services();
    let _ = writeln!(
        nat,
        "-I PREROUTING -m comment --comment \"netctl {inst}: services\" -j {services}"
    );
    let _ = writeln!(
        nat,
        "-I OUTPUT -m comment --comment \"netctl {inst}: services\" -j {services}"
    );
    if spec.host_ports {
        let hp = c.host_ports();
        for uplink in &spec.uplinks {
            let _ = writeln!(
                nat,
                "-I PREROUTING -i {uplink} -m addrtype --dst-type LOCAL -m comment --comment \"netctl {inst}: host ports\" -j {hp}"
            );
        }
        let _ = writeln!(
            nat,
            "-I OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"netctl {inst}: host ports\" -j {hp}"
        );
    }
    let _ = writeln!(
        nat,
        "-I POSTROUTING -m comment --comment \"netctl {inst}: masquerade\" -j {post}"
    );

    let (firewall, policy, icmp) = (c.firewall(), c.policy(), c.icmp());
    let mut filter =
        format!(":{services} - [0:0]\n:{firewall} - [0:0]\n:{policy} - [0:0]\n:{icmp} - [0:0]\n");
    for hook in REJECT_HOOKS {
        let _ = writeln!(
            filter,
            "-I {hook} -m conntrack --ctstate NEW -m comment --comment \"netctl {inst}: services without backends\" -j {services}"
        );
    }
    // Inserted after the rejects, so first: the policy judges a connection before
    // anything else, as the eBPF dataplane does. Only traffic into or out of one of the
    // platform's bridges is the platform's (the policy chains are the controller's).
    for hook in FILTER_HOOKS {
        let _ = writeln!(
            filter,
            "-I {hook} -m conntrack --ctstate NEW -m comment --comment \"netctl {inst}: policy\" -j {firewall}"
        );
        // ICMP conntrack cannot track (an echo reply without its request, an error about
        // no known connection) is not NEW, yet the eBPF dataplane judges such a reply.
        let _ = writeln!(
            filter,
            "-I {hook} -p icmp -m conntrack --ctstate INVALID -m comment --comment \"netctl {inst}: untracked icmp\" -j {icmp}"
        );
    }
    // Errors pass as related traffic, as on the eBPF dataplane; the rest is judged.
    for error in ICMP_ERRORS {
        let _ = writeln!(
            filter,
            "-A {icmp} -p icmp -m icmp --icmp-type {error} -j RETURN"
        );
    }
    let _ = writeln!(filter, "-A {icmp} -g {firewall}");
    for b in &spec.bridges {
        let _ = writeln!(filter, "-A {firewall} -i {b} -g {policy}");
    }
    for b in &spec.bridges {
        let _ = writeln!(filter, "-A {firewall} -o {b} -g {policy}");
    }
    format!("*nat\n{nat}COMMIT\n*filter\n{filter}COMMIT\n")
}

/// Everything of this instance in the saved tables: the jumps from built-in chains are
/// deleted, every own chain flushed and then deleted. `None` when nothing is there.
pub fn remove_script(c: &Chains, nat: &Table, filter: &Table) -> Option<String> {
    let mut out = String::new();
    for (name, table, hooks) in [
        ("nat", nat, &NAT_HOOKS[..]),
        ("filter", filter, &FILTER_HOOKS[..]),
    ] {
        let own: Vec<&String> = table.chains.iter().filter(|ch| c.owns(ch)).collect();
        let jumps: Vec<String> = table
            .rules
            .iter()
            .filter(|r| hooks.contains(&r.chain.as_str()) && r.target().is_some_and(|t| c.owns(&t)))
            .map(|r| format!("-D {} {}", r.chain, r.spec))
            .collect();
        if own.is_empty() && jumps.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{name}");
        for ch in &own {
            let _ = writeln!(out, ":{ch} - [0:0]");
        }
        for j in &jumps {
            let _ = writeln!(out, "{j}");
        }
        for ch in &own {
            let _ = writeln!(out, "-X {ch}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    (!out.is_empty()).then_some(out)
}

/// True when the base is in place: the services chain and the jump from PREROUTING, the
/// policy's chains and the jumps from FORWARD (a base from before the ICMP chain is not:
/// `up` makes it again).
pub fn base_present(c: &Chains, nat: &Table, filter: &Table) -> bool {
    let jumps = |t: &Table, hook: &str, chain: &str| {
        t.chains.iter().any(|ch| ch == chain)
            && t.rules
                .iter()
                .any(|r| r.chain == hook && r.target().as_deref() == Some(chain))
    };
    jumps(nat, "PREROUTING", &c.services())
        && jumps(filter, "FORWARD", &c.firewall())
        && jumps(filter, "FORWARD", &c.icmp())
        && filter.chains.contains(&c.policy())
}

/// One frontend as iptables serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    pub service: String,
    pub algorithm: Algorithm,
    /// Healthy, undrained backends and their weights.
    pub backends: Vec<(BackendKey, u32)>,
}

/// Everything the controller serves: frontends (VIP:port) and host ports, each host port
/// pointing at a frontend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// (host port, protocol) -> the frontend it forwards to.
    pub host_ports: BTreeMap<(u16, Proto), FrontendKey>,
}

impl View {
    fn served(&self, fe: &FrontendKey) -> bool {
        self.frontends
            .get(fe)
            .is_some_and(|f| !f.backends.is_empty())
    }
}

/// The nat `SERVICES` chain: one jump per frontend with backends, in frontend order.
pub fn services_rules(c: &Chains, view: &View) -> Vec<String> {
    let chain = c.services();
    view.frontends
        .values()
        .filter(|f| !f.backends.is_empty())
        .map(|f| {
            let k = f.key;
            let p = k.proto.name();
            format!(
                "-A {chain} -d {}/32 -p {p} -m comment --comment \"{}:{}/{p}\" -m {p} --dport {} -j {}",
                k.addr,
                f.service,
                k.port,
                k.port,
                c.svc(&k)
            )
        })
        .collect()
}

/// The filter `SERVICES` chain: new connections to a frontend without backends are
/// refused at once (kube-proxy does the same), not left to time out.
pub fn reject_rules(c: &Chains, view: &View) -> Vec<String> {
    let chain = c.services();
    view.frontends
        .values()
        .filter(|f| f.backends.is_empty())
        .map(|f| {
            let k = f.key;
            let p = k.proto.name();
            format!(
                "-A {chain} -d {}/32 -p {p} -m comment --comment \"{}:{}/{p} has no backend\" -m {p} --dport {} -j REJECT",
                k.addr, f.service, k.port, k.port
            )
        })
        .collect()
}

/// The `HOSTPORTS` chain and one `EXT` chain per host port whose frontend has backends.
pub fn host_port_rules(c: &Chains, view: &View) -> Vec<(String, Vec<String>)> {
    let hp = c.host_ports();
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    for ((port, proto), fe) in &view.host_ports {
        if !view.served(fe) {
            continue;
        }
        let ext = c.ext(*port, *proto);
        let p = proto.name();
        let service = view.frontends.get(fe).map_or("", |f| f.service.as_str());
        jumps.push(format!(
            "-A {hp} -p {p} -m comment --comment \"{service}: host port {port}/{p}\" -m {p} --dport {port} -j {ext}"
        ));
        chains.push((
            ext.clone(),
            vec![
                format!(
                    "-A {ext} -s 127.0.0.0/8 -m comment --comment \"from localhost: masquerade\" -j {}",
                    c.mark_masq()
                ),
                format!("-A {ext} -j {}", c.svc(fe)),
            ],
        ));
    }
    let mut out = vec![(hp, jumps)];
    out.extend(chains);
    out
}

/// A frontend's `SVC` chain: the choice among its backends. Random: `statistic --mode
/// random` with probabilities weight / (weight of this and the later backends), the last
/// one unconditional (kube-proxy's scheme). Round-robin: `--mode nth`, rule i taking every
/// (n - i)-th connection that reaches it. iptables has no consistent hashing: Maglev
/// frontends are served at random (conntrack still keeps each connection on its backend).
pub fn svc_rules(c: &Chains, fe: &Frontend) -> Vec<String> {
    let chain = c.svc(&fe.key);
    let mut out = Vec::new();
    match fe.algorithm {
        Algorithm::RoundRobin => {
            let slots: Vec<String> = fe
                .backends
                .iter()
                .flat_map(|(b, w)| std::iter::repeat_n(c.sep(&fe.key, b), *w as usize))
                .collect();
            let n = slots.len();
            for (i, sep) in slots.iter().enumerate() {
                if i + 1 < n {
                    out.push(format!(
                        "-A {chain} -m statistic --mode nth --every {} --packet 0 -j {sep}",
                        n - i
                    ));
                } else {
                    out.push(format!("-A {chain} -j {sep}"));
                }
            }
        }
        Algorithm::Random | Algorithm::Maglev => {
            let mut remaining: u64 = fe.backends.iter().map(|(_, w)| u64::from(*w)).sum();
            let n = fe.backends.len();
            for (i, (b, w)) in fe.backends.iter().enumerate() {
                let sep = c.sep(&fe.key, b);
                if i + 1 < n && remaining > 0 {
                    let p = f64::from(*w) / remaining as f64;
                    out.push(format!(
                        "-A {chain} -m statistic --mode random --probability {p:.10} -j {sep}"
                    ));
                } else {
                    out.push(format!("-A {chain} -j {sep}"));
                }
                remaining = remaining.saturating_sub(u64::from(*w));
            }
        }
    }
    out
}

/// A backend's `SEP` chain: hairpin masquerade (a backend reaching its own service), DNAT.
pub fn sep_rules(c: &Chains, fe: &FrontendKey, be: &BackendKey) -> Vec<String> {
    let chain = c.sep(fe, be);
    let p = be.proto.name();
    vec![
        format!("-A {chain} -s {}/32 -j {}", be.addr, c.mark_masq()),
        format!(
            "-A {chain} -p {p} -m {p} -j DNAT --to-destination {}:{}",
            be.addr, be.port
        ),
    ]
}

/// A frontend parsed back from the rules (`netctl services` in iptables mode).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadFrontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// From the rule's comment.
    pub service: String,
    pub host_port: bool,
    /// `random` or `round-robin`, from the statistic mode.
    pub algorithm: &'static str,
    /// Backends with the share of new connections each gets.
    pub backends: Shares,
}

/// Backends and their shares of new connections.
type Shares = Vec<(Ipv4Addr, u16, f64)>;

/// Reads the frontends back from saved tables: the nat SERVICES jumps with their SVC and
/// SEP chains, host ports, and the filter REJECTs of frontends without backends.
pub fn read_frontends(c: &Chains, nat: &Table, filter: &Table) -> Vec<ReadFrontend> {
    let mut by_chain: BTreeMap<&str, Vec<&crate::net::iptables::Rule>> = BTreeMap::new();
    for r in &nat.rules {
        if c.owns(&r.chain) {
            by_chain.entry(r.chain.as_str()).or_default().push(r);
        }
    }
    let backends_of = |svc: &str| -> (&'static str, Shares) {
        let rules = by_chain.get(svc).cloned().unwrap_or_default();
        let nth = rules
            .iter()
            .any(|r| r.value("--mode").as_deref() == Some("nth"));
        let mut left = 1.0;
        let mut out: Shares = Vec::new();
        let n = rules.len();
        for r in &rules {
            let share = if nth {
                1.0 / n as f64
            } else {
                let p = r
                    .value("--probability")
                    .and_then(|p| p.parse::<f64>().ok())
                    .unwrap_or(1.0);
                let s = left * p;
                left -= s;
                s
            };
            let Some(sep) = r.target() else { continue };
            let dest = by_chain
                .get(sep.as_str())
                .and_then(|rs| rs.iter().find_map(|r| r.value("--to-destination")));
            let Some((a, p)) = dest.as_deref().and_then(|d| d.split_once(':')) else {
                continue;
            };
            let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u16>()) else {
                continue;
            };
            match out.iter_mut().find(|(oa, op, _)| *oa == a && *op == p) {
                Some(e) => e.2 += share,
                None => out.push((a, p, share)),
            }
        }
        (if nth { "round-robin" } else { "random" }, out)
    };
    let parse_fe = |r: &crate::net::iptables::Rule| -> Option<(Ipv4Addr, u16, Proto, String)> {
        let addr = r.value("-d")?.trim_end_matches("/32").parse().ok()?;
        let port = r.value("--dport")?.parse().ok()?;
        let proto = match r.value("-p")?.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return None,
        };
        let comment = r.value("--comment").unwrap_or_default();
        let service = comment.split(':').next().unwrap_or("").to_string();
        Some((addr, port, proto, service))
    };
    let mut out = Vec::new();
    let services = c.services();
    let mut svc_of: BTreeMap<String, (String, &'static str, Shares)> = BTreeMap::new();
    for r in by_chain.get(services.as_str()).cloned().unwrap_or_default() {
        let Some((addr, port, proto, service)) = parse_fe(r) else {
            continue;
        };
        let Some(svc) = r.target() else { continue };
        let (algorithm, backends) = backends_of(&svc);
        svc_of.insert(svc.clone(), (service.clone(), algorithm, backends.clone()));
        out.push(ReadFrontend {
            addr,
            port,
            proto,
            service,
            host_port: false,
            algorithm,
            backends,
        });
    }
    for r in &filter.rules {
        if r.chain != services || r.target().as_deref() != Some("REJECT") {
            continue;
        }
        if let Some((addr, port, proto, service)) = parse_fe(r) {
            out.push(ReadFrontend {
                addr,
                port,
                proto,
                service,
                host_port: false,
                algorithm: "-",
                backends: Vec::new(),
            });
        }
    }
    for r in by_chain
        .get(c.host_ports().as_str())
        .cloned()
        .unwrap_or_default()
    {
        let (Some(port), Some(ext)) = (
            r.value("--dport").and_then(|p| p.parse::<u16>().ok()),
            r.target(),
        ) else {
            continue;
        };
        let proto = if r.value("-p").as_deref() == Some("udp") {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        let target = by_chain.get(ext.as_str()).and_then(|rs| {
            rs.iter()
                .filter_map(|r| r.target())
                .find(|t| svc_of.contains_key(t))
        });
        if let Some((service, algorithm, backends)) = target.and_then(|t| svc_of.get(&t)) {
            out.push(ReadFrontend {
                addr: Ipv4Addr::UNSPECIFIED,
                port,
                proto,
                service: service.clone(),
                host_port: true,
                algorithm,
                backends: backends.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::iptables::parse_table;

    fn be(last: u8) -> BackendKey {
        BackendKey {
            addr: Ipv4Addr::new(10, 0, 2, last),
            port: 7000,
            proto: Proto::Tcp,
        }
    }

    fn fe_key() -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    fn web(algorithm: Algorithm, n: u8) -> Frontend {
        Frontend {
            key: fe_key(),
            service: "web".into(),
            algorithm,
            backends: (0..n).map(|i| (be(10 + i), 1)).collect(),
        }
    }

    #[test]
    fn random_choice_uses_kube_proxy_probabilities() {
        let c = Chains::for_instance("t1");
        let rules = svc_rules(&c, &web(Algorithm::Random, 3));
        assert_eq!(rules.len(), 3);
        assert!(rules[0].contains("--mode random --probability 0.3333333333"));
        assert!(rules[1].contains("--mode random --probability 0.5000000000"));
        assert!(
            !rules[2].contains("statistic"),
            "the last one takes the rest"
        );
        assert!(rules[0].ends_with(&c.sep(&fe_key(), &be(10))));
    }

    #[test]
    fn round_robin_uses_nth_counters() {
        let c = Chains::for_instance("t1");
        let rules = svc_rules(&c, &web(Algorithm::RoundRobin, 3));
        assert!(rules[0].contains("--mode nth --every 3 --packet 0"));
        assert!(rules[1].contains("--mode nth --every 2 --packet 0"));
        assert!(!rules[2].contains("statistic"));
    }

    #[test]
    fn a_backend_is_a_dnat_with_hairpin_masquerade() {
        let c = Chains::for_instance("t1");
        let rules = sep_rules(&c, &fe_key(), &be(10));
        assert!(rules[0].contains("-s 10.0.2.10/32 -j NCTL-t1-MARK-MASQ"));
        assert!(rules[1].ends_with("-j DNAT --to-destination 10.0.2.10:7000"));
    }

    #[test]
    fn frontends_without_backends_are_rejected_not_jumped_to() {
        let c = Chains::for_instance("t1");
        let mut view = View::default();
        view.frontends.insert(fe_key(), web(Algorithm::Random, 0));
        assert!(services_rules(&c, &view).is_empty());
        let rejects = reject_rules(&c, &view);
        assert_eq!(rejects.len(), 1);
        assert!(rejects[0].contains("-d 10.96.0.1/32 -p tcp"));
        assert!(rejects[0].ends_with("-j REJECT"));
        view.host_ports.insert((8080, Proto::Tcp), fe_key());
        let hp = host_port_rules(&c, &view);
        assert_eq!(hp.len(), 1, "no EXT chain for a frontend without backends");
        assert!(hp[0].1.is_empty());
    }

    #[test]
    fn base_jumps_from_the_hooks_and_masquerades_what_leaves() {
        let c = Chains::for_instance("t1");
        let text = base_script(
            &c,
            &BaseSpec {
                bridges: vec!["t1-a".into()],
                ports: vec!["t1-x".into()],
                subnets: vec!["10.1.0.0/24".parse().unwrap()],
                masquerade: true,
                uplinks: vec!["eth9".into()],
                host_ports: true,
            },
        );
        for line in [
            "-I PREROUTING -m comment --comment \"netctl t1: services\" -j NCTL-t1-SERVICES",
            "-I OUTPUT -m comment --comment \"netctl t1: services\" -j NCTL-t1-SERVICES",
            "-I PREROUTING -i eth9 -m addrtype --dst-type LOCAL",
            "-A NCTL-t1-POSTROUTING -o t1-a -j RETURN",
            "-A NCTL-t1-POSTROUTING -s 10.1.0.0/24",
            "-A NCTL-t1-MARK-MASQ -j MARK --or-mark 0x4000000",
            "-I FORWARD -m conntrack --ctstate NEW",
            "-I INPUT -m conntrack --ctstate NEW -m comment --comment \"netctl t1: policy\" -j NCTL-t1-FIREWALL",
            "-A NCTL-t1-FIREWALL -i t1-a -g NCTL-t1-POLICY",
            "-A NCTL-t1-FIREWALL -o t1-a -g NCTL-t1-POLICY",
            "-I FORWARD -p icmp -m conntrack --ctstate INVALID -m comment --comment \"netctl t1: untracked icmp\" -j NCTL-t1-ICMP",
            "-A NCTL-t1-ICMP -p icmp -m icmp --icmp-type 3 -j RETURN",
            "-A NCTL-t1-ICMP -p icmp -m icmp --icmp-type 11 -j RETURN",
            "-A NCTL-t1-ICMP -g NCTL-t1-FIREWALL",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        for t in ICMP_ERRORS {
            assert!(
                netctl_common::flow::icmp_is_error(t),
                "the eBPF side agrees on {t}"
            );
        }
        assert!(!netctl_common::flow::icmp_is_error(0) && !netctl_common::flow::icmp_is_error(8));
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
    }

    #[test]
    fn the_base_is_present_only_with_every_jump() {
        let c = Chains::for_instance("t1");
        let nat = parse_table(
            "*nat\n:NCTL-t1-SERVICES - [0:0]\n-A PREROUTING -j NCTL-t1-SERVICES\nCOMMIT\n",
        );
        let filter = |icmp: bool| {
            let mut t = String::from(
                "*filter\n:NCTL-t1-FIREWALL - [0:0]\n:NCTL-t1-POLICY - [0:0]\n:NCTL-t1-ICMP - [0:0]\n\
                 -A FORWARD -m conntrack --ctstate NEW -j NCTL-t1-FIREWALL\n",
            );
            if icmp {
                t.push_str("-A FORWARD -p icmp -m conntrack --ctstate INVALID -j NCTL-t1-ICMP\n");
            }
            t.push_str("COMMIT\n");
            parse_table(&t)
        };
        assert!(base_present(&c, &nat, &filter(true)));
        assert!(!base_present(&c, &nat, &filter(false)), "an older base");
    }

    #[test]
    fn remove_takes_own_chains_and_jumps_and_nothing_else() {
        let c = Chains::for_instance("t1");
        let nat = parse_table(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:NCTL-t1-SERVICES - [0:0]\n:NCTL-t2-SERVICES - [0:0]\n:KUBE-X - [0:0]\n\
             -A PREROUTING -m comment --comment \"netctl t1: services\" -j NCTL-t1-SERVICES\n\
             -A PREROUTING -j NCTL-t2-SERVICES\n-A PREROUTING -j KUBE-X\n\
             -A NCTL-t1-SERVICES -d 10.96.0.1/32 -j NCTL-t1-SVC-A\nCOMMIT\n",
        );
        let filter = parse_table("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        let script = remove_script(&c, &nat, &filter).expect("something to remove");
        assert_eq!(
            script,
            "*nat\n:NCTL-t1-SERVICES - [0:0]\n\
             -D PREROUTING -m comment --comment \"netctl t1: services\" -j NCTL-t1-SERVICES\n\
             -X NCTL-t1-SERVICES\nCOMMIT\n"
        );
        assert!(remove_script(&Chains::for_instance("t3"), &nat, &filter).is_none());
    }

    #[test]
    fn frontends_read_back_from_saved_rules() {
        let c = Chains::for_instance("t1");
        let mut view = View::default();
        view.frontends.insert(fe_key(), web(Algorithm::Random, 2));
        view.host_ports.insert((8080, Proto::Tcp), fe_key());
        let mut nat = String::from("*nat\n");
        for line in services_rules(&c, &view)
            .into_iter()
            .chain(svc_rules(&c, &view.frontends[&fe_key()]))
            .chain(
                view.frontends[&fe_key()]
                    .backends
                    .iter()
                    .flat_map(|(b, _)| sep_rules(&c, &fe_key(), b)),
            )
            .chain(host_port_rules(&c, &view).into_iter().flat_map(|(_, r)| r))
        {
            // iptables-save prints -A lines as they were added.
            nat.push_str(&line);
            nat.push('\n');
        }
        let nat = parse_table(&nat);
        let read = read_frontends(&c, &nat, &parse_table(""));
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].service, "web");
        assert_eq!(read[0].addr, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(read[0].algorithm, "random");
        let shares: Vec<f64> = read[0].backends.iter().map(|b| b.2).collect();
        assert!((shares[0] - 0.5).abs() < 1e-6 && (shares[1] - 0.5).abs() < 1e-6);
        assert!(read[1].host_port);
        assert_eq!(read[1].port, 8080);
        assert_eq!(read[1].backends.len(), 2);
    }
}
