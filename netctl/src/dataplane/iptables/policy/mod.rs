//! The network policy and rate limits as iptables rules, the way Calico's iptables
//! dataplane writes them: chains per destination identity that match source addresses,
//! `hashlimit`/`limit` for rate limits, and a `LOG` naming the rule before every `DROP`.
//! The rules are made from the same compiled entries ([`Compiled`]) the eBPF maps get,
//! and walk them in the eBPF lookup order, so both dataplanes give every connection the
//! same verdict. Pure functions of their inputs (unit-tested without root); the
//! controller applies the whole policy as one `iptables-restore` transaction.
//!
//! ```text
//! filter FORWARD/INPUT/OUTPUT (new) -> FIREWALL -i/-o bridge -> POLICY   (base, `up`)
//! POLICY     generation comment; -j VERDICT; -j LIMIT
//! VERDICT    by destination address (identity): -d A -g POL-<dst>; world: the rest
//! POL-<dst>  by source address: -s A -g SRC-<src,dst> (named sources), else -g ANY-<dst>
//! SRC-<s,d>  {s,d,port,proto} {s,d,*,proto} {s,d,*,*}, then -g ANY-<dst>
//! ANY-<dst>  {*,d,port,proto} {*,d,*,proto} {*,d,*,*}; the end: allowed (RETURN)
//! LIMIT      by destination address -> RL-<dst>
//! RL-<dst>   sources with a limit of their own: -s A -g RLF-<src,dst>; then the limit for
//!            any source: hashlimit --hashlimit-mode srcip (per source address) -> RETURN,
//!            else DENY-RL<n>; per = "service": -s A -g RLS-<src,dst> (one `limit` bucket
//!            each). When the world has a limit of its own, the general one is `RLA-<dst>`
//! RLF-<s,d>  one source's own limit: hashlimit srcip, or one `limit` bucket (per service)
//! DENY-…     LOG --log-prefix "NCTL-<tag> r<rule> deny: ", DROP
//! IDENTITIES never jumped to: address -> identity, for people and `netctl policy`
//! ```
//!
//! Differences from the eBPF dataplane, by construction of iptables: only new connections
//! are judged (conntrack `NEW`), so a policy change does not cut established connections
//! it now forbids; a connection to a VIP is judged after DNAT, on the backend's port
//! (which is the service port except for listed backends with a port of their own).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netctl_common::{
    maps::MARK_PROBE,
    policy::{
        ANY_PORT, ANY_PROTO, ID_ANY, ID_HOST, ID_WORLD, RL_BY_IDENTITY, RateLimit, VERDICT_DENY,
    },
};

mod drops;
mod read;

pub use drops::{Drops, drops};
pub use read::{Installed, read};

use super::names::Chains;
use crate::{
    policy::{
        compile::{Compiled, EntryKey, EntryValue},
        identity,
    },
    topology::{Plan, Proto},
};

/// Connections from loopback addresses come from the host (a host port reached through
/// `localhost` is DNATed before the filter sees it, and masqueraded only after).
const LOOPBACK: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8) {
    Ok(n) => n,
    Err(_) => panic!("valid loopback network"),
};
/// Log lines per second (the eBPF dataplane's drop log has the same budget).
const LOG_RATE: &str = "20/second";
const LOG_BURST: u32 = 40;
/// Longest `--log-prefix` iptables accepts.
const MAX_LOG_PREFIX: usize = 29;
/// Fastest rate and largest burst the `limit`/`hashlimit` matches take.
const MAX_RATE_MILLI: u32 = 10_000_000;
const MAX_BURST: u32 = 10_000;

/// What the policy is made from.
pub struct Input<'a> {
    pub plan: &'a Plan,
    pub compiled: &'a Compiled,
    /// Address -> identity, as the eBPF dataplane's `IDENTITIES` map has them: the plan's
    /// ([`identity::addresses`]) and the host's uplink addresses.
    pub identities: &'a [(Ipv4Addr, u32)],
    pub generation: u32,
}

/// The policy's chains and their rules (`-A` lines), `POLICY` always among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub chains: BTreeMap<String, Vec<String>>,
}

/// Addresses by identity, one identity per address (on a duplicate the larger identity
/// number wins, as the controller's in-order map writes do).
struct Identities {
    of: BTreeMap<Ipv4Addr, u32>,
}

impl Identities {
    fn new(list: &[(Ipv4Addr, u32)]) -> Self {
        let mut sorted = list.to_vec();
        sorted.sort_unstable();
        Self {
            of: sorted.into_iter().collect(),
        }
    }

    /// Sorted identity numbers that have addresses.
    fn ids(&self) -> BTreeSet<u32> {
        self.of.values().copied().collect()
    }

    fn dst_nets(&self, id: u32) -> Vec<Ipv4Net> {
        self.of
            .iter()
            .filter(|(_, i)| **i == id)
            .map(|(a, _)| Ipv4Net::from(*a))
            .collect()
    }

    /// Where connections of `id` may come from: its addresses, and loopback for the host.
    fn src_nets(&self, id: u32) -> Vec<Ipv4Net> {
        let mut nets = self.dst_nets(id);
        if id == ID_HOST {
            nets.push(LOOPBACK);
        }
        nets
    }

    /// Every known source address not of an identity in `except`.
    fn src_nets_except(&self, except: &BTreeSet<u32>) -> Vec<Ipv4Net> {
        let mut ids = self.ids();
        ids.insert(ID_HOST);
        ids.difference(except)
            .flat_map(|id| self.src_nets(*id))
            .collect()
    }
}

/// The policy's chains for `input`. An empty policy is `POLICY` with its comment only.
pub fn render(c: &Chains, input: &Input) -> Rendered {
    let plan = input.plan;
    let compiled = input.compiled;
    let ids = Identities::new(input.identities);
    let mut out = Rendered::default();
    let policy = c.policy();
    let mut top = vec![format!(
        "-A {policy} -m comment --comment \"netctl policy generation {} identities {} entries {} limits {}\"",
        input.generation,
        if compiled.entries.is_empty() && compiled.rate_limits.is_empty() {
            0
        } else {
            ids.of.len()
        },
        compiled.entries.len(),
        compiled.rate_limits.len()
    )];
    if compiled.entries.is_empty() && compiled.rate_limits.is_empty() {
        out.chains.insert(policy, top);
        return out;
    }
    // netctl's own health probes are never judged (the eBPF dataplane: the same bit).
    top.push(format!(
        "-A {policy} -m mark --mark {MARK_PROBE:#x}/{MARK_PROBE:#x} -m comment --comment \"netctl probes: not judged\" -j RETURN"
    ));

    // The address table, for people and `netctl policy`.
    let table = c.identities();
    let rows = ids
        .of
        .iter()
        .map(|(a, id)| {
            format!(
                "-A {table} -s {a}/32 -m comment --comment \"identity {id} {}\"",
                clean(&identity::name(plan, *id))
            )
        })
        .collect();
    out.chains.insert(table, rows);

    // Connections DNATed to a listed backend are the service's (eBPF: the frontend's).
    let dnat: Vec<(Ipv4Addr, u16, Proto, u32)> = plan
        .services
        .iter()
        .flat_map(|s| {
            let id = identity::of(plan, &crate::topology::plan::Peer::Service(s.name.clone()));
            s.ports.iter().flat_map(move |p| {
                s.backends
                    .iter()
                    .map(move |b| (b.addr, b.port.unwrap_or(p.port), p.proto, id))
            })
        })
        .collect();

    // Verdicts.
    let mut by_dst: BTreeMap<u32, Vec<(&EntryKey, &EntryValue)>> = BTreeMap::new();
    for (k, v) in &compiled.entries {
        by_dst.entry(k.dst).or_default().push((k, v));
    }
    if !by_dst.is_empty() {
        let targets: BTreeMap<u32, String> = by_dst.keys().map(|d| (*d, c.pol(*d))).collect();
        out.chains
            .insert(c.verdict(), dispatch(&c.verdict(), &targets, &ids, &dnat));
        top.push(format!("-A {policy} -j {}", c.verdict()));
        let mut denies: BTreeSet<u16> = BTreeSet::new();
        for (dst, entries) in &by_dst {
            for (name, rules) in destination_chains(c, plan, &ids, *dst, entries) {
                out.chains.insert(name, rules);
            }
            denies.extend(
                entries
                    .iter()
                    .filter(|(_, v)| v.verdict == VERDICT_DENY)
                    .map(|(_, v)| v.rule),
            );
        }
        for rule in denies {
            let (chain, prefix) = if rule == 0 {
                (c.deny_default(), format!("NCTL-{} default deny: ", c.tag()))
            } else {
                (
                    c.deny_rule(rule),
                    format!("NCTL-{} r{rule} deny: ", c.tag()),
                )
            };
            let rules = log_and_drop(&chain, &prefix, &format!("policy-denied {rule}"));
            out.chains.insert(chain, rules);
        }
    }

    // Rate limits.
    if !compiled.rate_limits.is_empty() {
        let mut by_dst: BTreeMap<u32, Vec<(u32, &RateLimit)>> = BTreeMap::new();
        for (k, limit) in &compiled.rate_limits {
            by_dst.entry(k.dst).or_default().push((k.src, limit));
        }
        let targets: BTreeMap<u32, String> = by_dst.keys().map(|d| (*d, c.rl(*d))).collect();
        out.chains
            .insert(c.limit(), dispatch(&c.limit(), &targets, &ids, &dnat));
        top.push(format!("-A {policy} -j {}", c.limit()));
        for (dst, limits) in &by_dst {
            for (src, _) in limits {
                let n = limit_number(plan, *src, *dst);
                let deny = c.deny_rate(n);
                out.chains.insert(
                    deny.clone(),
                    log_and_drop(
                        &deny,
                        &format!("NCTL-{} rl{n} limit: ", c.tag()),
                        &format!("rate-limited {n}"),
                    ),
                );
            }
            for (name, rules) in destination_limits(c, plan, &ids, *dst, limits) {
                out.chains.insert(name, rules);
            }
        }
    }
    out.chains.insert(policy, top);
    out
}

/// A dispatch by destination address: `-d A -g target` for each address of an identity
/// with a target, the world's target for the rest. Connections DNATed to a listed backend
/// go by the service they were for.
fn dispatch(
    chain: &str,
    targets: &BTreeMap<u32, String>,
    ids: &Identities,
    dnat: &[(Ipv4Addr, u16, Proto, u32)],
) -> Vec<String> {
    let mut rules = Vec::new();
    for (addr, port, proto, id) in dnat {
        let p = proto.name();
        let to = targets
            .get(id)
            .map_or_else(|| "-j RETURN".to_string(), |t| format!("-g {t}"));
        rules.push(format!(
            "-A {chain} -d {addr}/32 -p {p} -m {p} --dport {port} -m conntrack --ctstate DNAT {to}"
        ));
    }
    for (id, target) in targets.iter().filter(|(id, _)| **id != ID_WORLD) {
        for net in ids.dst_nets(*id) {
            rules.push(format!("-A {chain} -d {net} -g {target}"));
        }
    }
    if let Some(world) = targets.get(&ID_WORLD) {
        for (addr, id) in &ids.of {
            if !targets.contains_key(id) {
                rules.push(format!("-A {chain} -d {addr}/32 -j RETURN"));
            }
        }
        rules.push(format!("-A {chain} -g {world}"));
    }
    rules
}

/// `POL-<dst>`, its `SRC-<src,dst>` chains and `ANY-<dst>`.
fn destination_chains(
    c: &Chains,
    plan: &Plan,
    ids: &Identities,
    dst: u32,
    entries: &[(&EntryKey, &EntryValue)],
) -> Vec<(String, Vec<String>)> {
    let mut by_src: BTreeMap<u32, Vec<(&EntryKey, &EntryValue)>> = BTreeMap::new();
    for (k, v) in entries {
        by_src.entry(k.src).or_default().push((k, v));
    }
    let any_entries = by_src.remove(&ID_ANY).unwrap_or_default();
    let any = (!any_entries.is_empty()).then(|| c.any(dst));
    let on_to_any = any
        .as_ref()
        .map_or_else(|| "-j RETURN".to_string(), |a| format!("-g {a}"));
    let mut out = Vec::new();

    let pol = c.pol(dst);
    let mut pol_rules = Vec::new();
    let named: BTreeSet<u32> = by_src.keys().copied().collect();
    for src in named.iter().filter(|s| **s != ID_WORLD) {
        for net in ids.src_nets(*src) {
            pol_rules.push(format!("-A {pol} -s {net} -g {}", c.src(*src, dst)));
        }
    }
    if named.contains(&ID_WORLD) {
        for net in ids.src_nets_except(&named) {
            pol_rules.push(format!("-A {pol} -s {net} {on_to_any}"));
        }
        pol_rules.push(format!("-A {pol} -g {}", c.src(ID_WORLD, dst)));
    } else if let Some(a) = &any {
        pol_rules.push(format!("-A {pol} -g {a}"));
    }
    out.push((pol, pol_rules));

    for (src, list) in &by_src {
        let chain = c.src(*src, dst);
        let mut rules = entry_rules(c, plan, &chain, list);
        if let Some(a) = &any {
            rules.push(format!("-A {chain} -g {a}"));
        }
        out.push((chain, rules));
    }
    if let Some(a) = any {
        let rules = entry_rules(c, plan, &a, &any_entries);
        out.push((a, rules));
    }
    out
}

/// One rule per entry, most specific first (the eBPF lookup order within a source level):
/// `{port, proto}`, `{*, proto}`, `{*, *}`. An allowed connection returns (to the rate
/// limits); a denied one is logged and dropped.
fn entry_rules(
    c: &Chains,
    plan: &Plan,
    chain: &str,
    entries: &[(&EntryKey, &EntryValue)],
) -> Vec<String> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|(k, _)| (k.port == ANY_PORT, k.proto == ANY_PROTO, k.port, k.proto));
    let mut rules = Vec::new();
    for (k, v) in sorted {
        let allow = v.verdict != VERDICT_DENY;
        let target = if allow {
            "-j RETURN".to_string()
        } else if v.rule == 0 {
            format!("-j {}", c.deny_default())
        } else {
            format!("-j {}", c.deny_rule(v.rule))
        };
        let comment = format!(
            "entry {} {} {} {} {} {}: {} -> {}",
            k.src,
            k.dst,
            k.port,
            k.proto,
            if allow { "allow" } else { "deny" },
            v.rule,
            clean(&identity::name(plan, k.src)),
            clean(&identity::name(plan, k.dst)),
        );
        for m in port_matches(k.port, k.proto) {
            rules.push(format!(
                "-A {chain} {m}-m comment --comment \"{comment}\" {target}"
            ));
        }
    }
    rules
}

/// The match of an entry's port and protocol (one per protocol for a port of any
/// protocol, which the compiler never makes but the lookup would find).
fn port_matches(port: u16, proto: u8) -> Vec<String> {
    let name = |p: u8| match Proto::from_number(p) {
        Some(p) => p.name().to_string(),
        None => p.to_string(),
    };
    match (port, proto) {
        (ANY_PORT, ANY_PROTO) => vec![String::new()],
        (ANY_PORT, p) => vec![format!("-p {} ", name(p))],
        (port, ANY_PROTO) => ["tcp", "udp"]
            .iter()
            .map(|p| format!("-p {p} -m {p} --dport {port} "))
            .collect(),
        (port, p) => match Proto::from_number(p) {
            Some(pr) => {
                let n = pr.name();
                vec![format!("-p {n} -m {n} --dport {port} ")]
            }
            None => vec![format!("-p {p} ")],
        },
    }
}

/// Number (1-based, file order) of the `[[policy.rate_limits]]` entry that made the
/// compiled limit `{src, dst}`; 0 if none did.
fn limit_number(plan: &Plan, src: u32, dst: u32) -> usize {
    plan.policy
        .rate_limits
        .iter()
        .position(|r| {
            identity::of(plan, &r.to) == dst
                && match &r.from {
                    None => src == ID_ANY,
                    Some(set) => set.iter().any(|p| identity::of(plan, p) == src),
                }
        })
        .map_or(0, |i| i + 1)
}

/// `RL-<dst>`: connections from a source with a limit of its own go to that limit's
/// `RLF-<src,dst>`, the rest to the limit for any source (written in `RL-<dst>` itself,
/// or, when the world has a limit of its own, in `RLA-<dst>`); none: not limited.
fn destination_limits(
    c: &Chains,
    plan: &Plan,
    ids: &Identities,
    dst: u32,
    limits: &[(u32, &RateLimit)],
) -> Vec<(String, Vec<String>)> {
    let rl = c.rl(dst);
    let mut out = Vec::new();
    let mut dispatch = Vec::new();
    let named: BTreeSet<u32> = limits
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != ID_ANY)
        .collect();
    for (src, limit) in limits.iter().filter(|(s, _)| *s != ID_ANY) {
        let chain = c.rlf(*src, dst);
        if *src != ID_WORLD {
            for net in ids.src_nets(*src) {
                dispatch.push(format!("-A {rl} -s {net} -g {chain}"));
            }
        }
        let n = limit_number(plan, *src, dst);
        out.extend(limit_chains(c, plan, ids, &chain, *src, dst, limit, n));
    }
    let general = limits.iter().find(|(s, _)| *s == ID_ANY).map(|(_, l)| *l);
    if named.contains(&ID_WORLD) {
        // Every known address without a limit of its own takes the general one; the
        // world is every other address.
        let rest = general.map(|_| c.rla(dst));
        for net in ids.src_nets_except(&named) {
            dispatch.push(match &rest {
                Some(rla) => format!("-A {rl} -s {net} -g {rla}"),
                None => format!("-A {rl} -s {net} -j RETURN"),
            });
        }
        dispatch.push(format!("-A {rl} -g {}", c.rlf(ID_WORLD, dst)));
        out.push((rl, dispatch));
        if let (Some(rla), Some(limit)) = (rest, general) {
            let n = limit_number(plan, ID_ANY, dst);
            out.extend(limit_chains(c, plan, ids, &rla, ID_ANY, dst, limit, n));
        }
        return out;
    }
    match general {
        Some(limit) => {
            let n = limit_number(plan, ID_ANY, dst);
            let mut chains = limit_chains(c, plan, ids, &rl, ID_ANY, dst, limit, n);
            // The general limit's rules follow the dispatch of the named sources.
            if let Some((_, rules)) = chains.iter_mut().find(|(name, _)| *name == rl) {
                dispatch.append(rules);
                *rules = dispatch;
            }
            out.extend(chains);
        }
        None => out.push((rl, dispatch)),
    }
    out
}

/// The chain `chain` enforcing `limit` for connections from `src` (`ID_ANY`: every source
/// that reaches it) to `dst`, and the `RLS-<src,dst>` buckets of a per-service limit for
/// any source.
#[allow(clippy::too_many_arguments)]
fn limit_chains(
    c: &Chains,
    plan: &Plan,
    ids: &Identities,
    chain: &str,
    src: u32,
    dst: u32,
    limit: &RateLimit,
    n: usize,
) -> Vec<(String, Vec<String>)> {
    let rate_milli = limit.rate_milli.clamp(1, MAX_RATE_MILLI);
    let burst = limit.burst.clamp(1, MAX_BURST);
    if rate_milli != limit.rate_milli || burst != limit.burst {
        tracing::warn!(
            destination = %identity::name(plan, dst),
            "rate limit beyond what iptables takes: {} per second, burst {}",
            f64::from(rate_milli) / 1000.0,
            burst
        );
    }
    let rate = rate_text(rate_milli);
    let deny = c.deny_rate(n);
    let by_identity = limit.by == RL_BY_IDENTITY;
    let head = format!(
        "limit {src} {dst} {} {} {} {n}: {} -> {}",
        limit.rate_milli,
        limit.burst,
        if by_identity { "service" } else { "source" },
        clean(&identity::name(plan, src)),
        clean(&identity::name(plan, dst))
    );
    let chain = chain.to_string();
    if by_identity && src != ID_ANY {
        // The named source's addresses share one bucket.
        return vec![(
            chain.clone(),
            vec![
                format!(
                    "-A {chain} -m limit --limit {rate} --limit-burst {burst} -m comment --comment \"{head}\" -j RETURN"
                ),
                format!("-A {chain} -m comment --comment \"over {src} {dst}\" -j {deny}"),
            ],
        )];
    }
    if !by_identity {
        // A full bucket is what an expired one would be again: buckets idle for as long
        // as a refill takes are forgotten, no sooner (hashlimit's default is 10 s).
        let expire_ms = (u64::from(burst) * 1_000_000).div_ceil(u64::from(rate_milli));
        let expire_ms = expire_ms.clamp(1_000, u64::from(u32::MAX));
        let from = if src == ID_ANY {
            String::new()
        } else {
            format!(" from {src}")
        };
        let name = format!(
            "nctl-{}-{}",
            c.tag(),
            &super::names::hash32(&format!(
                "{} {dst} {rate_milli} {burst} {expire_ms}{from}",
                c.instance()
            ))[..8]
        );
        let over = if src == ID_ANY { 0 } else { src };
        return vec![(
            chain.clone(),
            vec![
                format!(
                    "-A {chain} -m hashlimit --hashlimit-upto {rate} --hashlimit-burst {burst} --hashlimit-mode srcip --hashlimit-name {name} --hashlimit-htable-expire {expire_ms} -m comment --comment \"{head}\" -j RETURN"
                ),
                format!("-A {chain} -m comment --comment \"over {over} {dst}\" -j {deny}"),
            ],
        )];
    }
    // One bucket per source identity: every address of it goes to the same `limit` rule.
    let mut out = Vec::new();
    let mut rules = vec![format!("-A {chain} -m comment --comment \"{head}\"")];
    let mut sources = ids.ids();
    sources.insert(ID_HOST);
    sources.remove(&ID_WORLD);
    for src in &sources {
        let rls = c.rls(*src, dst);
        for net in ids.src_nets(*src) {
            rules.push(format!("-A {chain} -s {net} -g {rls}"));
        }
    }
    rules.push(format!("-A {chain} -g {}", c.rls(ID_WORLD, dst)));
    out.push((chain, rules));
    sources.insert(ID_WORLD);
    for src in sources {
        let rls = c.rls(src, dst);
        out.push((
            rls.clone(),
            vec![
                format!("-A {rls} -m limit --limit {rate} --limit-burst {burst} -j RETURN"),
                format!("-A {rls} -m comment --comment \"over {src} {dst}\" -j {deny}"),
            ],
        ));
    }
    out
}

/// A log line (rate-limited), then the drop, counted by the rule's comment.
fn log_and_drop(chain: &str, prefix: &str, reason: &str) -> Vec<String> {
    let prefix: String = prefix.chars().take(MAX_LOG_PREFIX).collect();
    vec![
        format!(
            "-A {chain} -m limit --limit {LOG_RATE} --limit-burst {LOG_BURST} -j LOG --log-prefix \"{prefix}\""
        ),
        format!("-A {chain} -m comment --comment \"drop {reason}\" -j DROP"),
    ]
}

/// `rate_milli` (thousandths of a connection per second) in the unit that says it best:
/// 1666 is `100/minute`.
fn rate_text(rate_milli: u32) -> String {
    let mut best: Option<(f64, String)> = None;
    for (unit, secs) in [
        ("second", 1u64),
        ("minute", 60),
        ("hour", 3600),
        ("day", 86_400),
    ] {
        let n = (u64::from(rate_milli) * secs + 500) / 1000;
        if n == 0 {
            continue;
        }
        let back = n as f64 * 1000.0 / secs as f64;
        let err = (back - f64::from(rate_milli)).abs() / f64::from(rate_milli);
        if err <= 0.001 {
            return format!("{n}/{unit}");
        }
        if best.as_ref().is_none_or(|(e, _)| err < *e) {
            best = Some((err, format!("{n}/{unit}")));
        }
    }
    best.map_or_else(|| "1/day".to_string(), |(_, t)| t)
}

/// Names in comments: what a quoted iptables word can hold.
fn clean(name: &str) -> String {
    name.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.*#".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

/// True for the chains the policy writer owns (rewritten or removed by each install).
pub fn owned(c: &Chains, chain: &str) -> bool {
    c.owns(chain) && chain != c.services() && chain != c.firewall() && chain != c.icmp()
}

/// The `iptables-restore` script installing `rendered`: every chain it names written
/// anew, every other policy chain in `existing` (the filter table's chains) removed, in
/// one transaction.
pub fn script(c: &Chains, rendered: &Rendered, existing: &[String]) -> String {
    let stale: Vec<&String> = existing
        .iter()
        .filter(|ch| owned(c, ch) && !rendered.chains.contains_key(*ch))
        .collect();
    let mut s = String::from("*filter\n");
    for ch in rendered.chains.keys().chain(stale.iter().copied()) {
        let _ = writeln!(s, ":{ch} - [0:0]");
    }
    for rules in rendered.chains.values() {
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
    }
    for ch in stale {
        let _ = writeln!(s, "-X {ch}");
    }
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests;
