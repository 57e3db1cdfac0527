//! The platform's traffic through the host's own iptables FORWARD chain, whatever its
//! policy: Docker (and any host firewall) may set it to DROP, and with `br_netfilter`
//! loaded even frames between two namespaces of one bridge traverse it. Like CNIs do, the
//! instance gets a chain of its own that accepts what enters or leaves its bridges, jumped
//! from FORWARD ahead of everything but netctl's own jumps (the iptables dataplane's
//! policy judges first), and put back in that place by every `up` (Docker moves its jumps
//! to the top when it starts). An ACCEPT in the one chain with the DROP policy is what
//! counts: with iptables-nft, an accept in a table of ours would not stop the filter
//! table's FORWARD from dropping.
//!
//! [`diagnose`] says what outside netctl still drops the platform's traffic: the FORWARD
//! policy with our chain missing, a DROP or REJECT ahead of our jump.

use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;

use super::iptables::{self, Rule, Table};

const FORWARD: &str = "FORWARD";
/// `br_netfilter`'s switch for IPv4: bridged frames traverse iptables.
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// What the accept chain is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec<'a> {
    /// The chain's name (`NCTL-FWD-<tag>`).
    pub chain: &'a str,
    pub instance: &'a str,
    pub bridges: &'a [String],
}

/// Creates (or rewrites) the chain and puts its one jump right after netctl's own jumps in
/// FORWARD. `own` tells the instance's dataplane chains (which judge first).
pub fn install(spec: &Spec, own: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let filter = iptables::save("filter")?;
    iptables::restore(&install_script(spec, &filter, own))
        .with_context(|| format!("accepting {}'s traffic in FORWARD", spec.instance))
}

/// Removes the jumps and the chain; a no-op when they are gone.
pub fn remove(chain: &str) -> anyhow::Result<()> {
    let filter = iptables::save("filter")?;
    if let Some(script) = remove_script(chain, &filter) {
        iptables::restore(&script).with_context(|| format!("removing {chain}"))?;
    }
    Ok(())
}

/// True when the chain accepts every bridge and its jump is where `install` puts it.
pub fn in_place(spec: &Spec, own: &dyn Fn(&str) -> bool) -> anyhow::Result<bool> {
    Ok(placed(spec, &iptables::save("filter")?, own))
}

/// True when the chain accepts every bridge and FORWARD jumps to it (wherever: something
/// may have moved ahead of it since, which [`diagnose`] judges and `up` puts right).
pub fn present(spec: &Spec, _own: &dyn Fn(&str) -> bool) -> anyhow::Result<bool> {
    let filter = iptables::save("filter")?;
    Ok(accepts_every_bridge(spec, &filter)
        && filter
            .rules
            .iter()
            .any(|r| r.chain == FORWARD && jumps_to(r, spec.chain)))
}

pub fn install_script(spec: &Spec, filter: &Table, own: &dyn Fn(&str) -> bool) -> String {
    let chain = spec.chain;
    let inst = spec.instance;
    let mut out = format!("*filter\n:{chain} - [0:0]\n");
    for b in spec.bridges {
        let _ = writeln!(
            out,
            "-A {chain} -i {b} -m comment --comment \"netctl {inst}: from the platform\" -j ACCEPT"
        );
        let _ = writeln!(
            out,
            "-A {chain} -o {b} -m comment --comment \"netctl {inst}: to the platform\" -j ACCEPT"
        );
    }
    let forward: Vec<&Rule> = filter.rules.iter().filter(|r| r.chain == FORWARD).collect();
    for r in forward.iter().filter(|r| jumps_to(r, chain)) {
        let _ = writeln!(out, "-D {FORWARD} {}", r.spec);
    }
    let others: Vec<&&Rule> = forward.iter().filter(|r| !jumps_to(r, chain)).collect();
    let position = others
        .iter()
        .rposition(|r| r.target().is_some_and(|t| own(&t)))
        .map_or(1, |i| i + 2);
    let _ = writeln!(
        out,
        "-I {FORWARD} {position} -m comment --comment \"netctl {inst}: accept platform traffic\" -j {chain}"
    );
    out.push_str("COMMIT\n");
    out
}

pub fn remove_script(chain: &str, filter: &Table) -> Option<String> {
    let jumps: Vec<&Rule> = filter.rules.iter().filter(|r| jumps_to(r, chain)).collect();
    let exists = filter.chains.iter().any(|c| c == chain);
    if jumps.is_empty() && !exists {
        return None;
    }
    let mut out = String::from("*filter\n");
    for r in jumps {
        let _ = writeln!(out, "-D {} {}", r.chain, r.spec);
    }
    if exists {
        let _ = writeln!(out, ":{chain} - [0:0]\n-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn accepts_every_bridge(spec: &Spec, filter: &Table) -> bool {
    let accepts = |flag: &str, b: &str| {
        filter.rules.iter().any(|r| {
            r.chain == spec.chain
                && r.value(flag).as_deref() == Some(b)
                && r.target().as_deref() == Some("ACCEPT")
        })
    };
    spec.bridges
        .iter()
        .all(|b| accepts("-i", b) && accepts("-o", b))
}

fn placed(spec: &Spec, filter: &Table, own: &dyn Fn(&str) -> bool) -> bool {
    let chain = spec.chain;
    if !accepts_every_bridge(spec, filter) {
        return false;
    }
    let forward: Vec<&Rule> = filter.rules.iter().filter(|r| r.chain == FORWARD).collect();
    let Some(at) = forward.iter().position(|r| jumps_to(r, chain)) else {
        return false;
    };
    // Nothing but netctl's own jumps ahead of ours, and none of them after it.
    forward[..at]
        .iter()
        .all(|r| r.target().is_some_and(|t| own(&t)))
        && !forward[at + 1..]
            .iter()
            .any(|r| r.target().is_some_and(|t| own(&t)))
}

fn jumps_to(r: &Rule, chain: &str) -> bool {
    r.target().as_deref() == Some(chain)
}

/// What the host's firewall does to the platform's forwarded traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// FORWARD's policy (`ACCEPT`, `DROP`).
    pub forward_policy: String,
    /// `br_netfilter` is loaded and bridged frames traverse iptables.
    pub br_netfilter: bool,
    /// netctl's accept chain is in place.
    pub accept_chain: bool,
    /// Things outside netctl that drop (or may drop) the platform's traffic.
    pub findings: Vec<String>,
    /// The platform's forwarded traffic is dropped outside netctl.
    pub blocked: bool,
}

impl Diagnosis {
    /// One line for people: what drops the traffic, or that nothing does.
    pub fn explain(&self) -> String {
        if self.findings.is_empty() {
            format!(
                "FORWARD policy {}, br_netfilter {}: the platform's traffic is accepted",
                self.forward_policy,
                if self.br_netfilter { "on" } else { "off" }
            )
        } else {
            self.findings.join("; ")
        }
    }
}

/// Reads the host's firewall as it applies to `spec`'s bridges.
pub fn diagnose(spec: &Spec, own: &dyn Fn(&str) -> bool) -> anyhow::Result<Diagnosis> {
    let filter = iptables::save("filter")?;
    let policy = iptables::policy("filter", FORWARD)?.unwrap_or_else(|| "ACCEPT".into());
    let br_netfilter = std::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES)
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Ok(judge(spec, &filter, &policy, br_netfilter, own))
}

pub fn judge(
    spec: &Spec,
    filter: &Table,
    policy: &str,
    br_netfilter: bool,
    own: &dyn Fn(&str) -> bool,
) -> Diagnosis {
    let accept_chain = placed(spec, filter, own);
    let mut findings = Vec::new();
    let mut blocked = false;
    let forward: Vec<&Rule> = filter.rules.iter().filter(|r| r.chain == FORWARD).collect();
    let ours = forward.iter().position(|r| jumps_to(r, spec.chain));
    let drops_policy = policy != "ACCEPT";
    if drops_policy && ours.is_none() {
        blocked = true;
        findings.push(format!(
            "the FORWARD policy is {policy} and netctl's accept chain {} is not jumped to \
             (run `netctl up` again)",
            spec.chain
        ));
    }
    let ahead = ours.map_or(&forward[..], |at| &forward[..at]);
    for (i, r) in ahead.iter().enumerate() {
        let target = r.target().unwrap_or_default();
        if own(&target) {
            continue;
        }
        if (target == "DROP" || target == "REJECT") && may_match(r, spec.bridges) {
            blocked = true;
            findings.push(format!(
                "FORWARD rule {} drops ahead of netctl's: -A FORWARD {}",
                i + 1,
                r.spec
            ));
        }
    }
    if blocked && br_netfilter {
        findings.push(
            "br_netfilter is on (bridge-nf-call-iptables=1): traffic within one bridge \
             traverses FORWARD too"
                .into(),
        );
    }
    Diagnosis {
        forward_policy: policy.to_string(),
        br_netfilter,
        accept_chain,
        findings,
        blocked,
    }
}

/// A rule limited to interfaces that are none of the bridges cannot match their traffic.
fn may_match(r: &Rule, bridges: &[String]) -> bool {
    let limited_elsewhere = |flag: &str| {
        r.value(flag)
            .is_some_and(|i| !bridges.iter().any(|b| *b == i || i.ends_with('+')))
    };
    !(limited_elsewhere("-i") || limited_elsewhere("-o"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::iptables::parse_table;

    const CHAIN: &str = "NCTL-FWD-t1";

    fn own(t: &str) -> bool {
        t.starts_with("NCTL-t1-")
    }

    fn spec(bridges: &[String]) -> Spec<'_> {
        Spec {
            chain: CHAIN,
            instance: "t1",
            bridges,
        }
    }

    fn bridges() -> Vec<String> {
        vec!["t1-a".into(), "t1-b".into()]
    }

    /// Applies an install script's FORWARD edits to a saved table, as iptables would.
    fn applied(filter: &str, script: &str) -> Table {
        let mut t = parse_table(filter);
        let mut forward: Vec<String> = t
            .rules
            .iter()
            .filter(|r| r.chain == FORWARD)
            .map(|r| r.spec.clone())
            .collect();
        let mut chain_rules = Vec::new();
        for line in script.lines() {
            if let Some(spec) = line.strip_prefix("-D FORWARD ") {
                forward.retain(|s| s != spec);
            } else if let Some(rest) = line.strip_prefix("-I FORWARD ") {
                let (pos, spec) = rest.split_once(' ').unwrap();
                forward.insert(pos.parse::<usize>().unwrap() - 1, spec.replace('"', ""));
            } else if let Some(spec) = line.strip_prefix(&format!("-A {CHAIN} ")) {
                chain_rules.push(spec.replace('"', ""));
            }
        }
        t.rules.retain(|r| r.chain != FORWARD && r.chain != CHAIN);
        for spec in forward {
            t.rules.push(Rule {
                chain: FORWARD.into(),
                spec,
                packets: 0,
            });
        }
        for spec in chain_rules {
            t.rules.push(Rule {
                chain: CHAIN.into(),
                spec,
                packets: 0,
            });
        }
        if !t.chains.iter().any(|c| c == CHAIN) {
            t.chains.push(CHAIN.into());
        }
        t
    }

    const DOCKER: &str = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
        -A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n-A DOCKER-USER -j RETURN\nCOMMIT\n";

    #[test]
    fn the_jump_goes_first_on_the_ebpf_dataplane_and_after_netctls_own_on_iptables() {
        let b = bridges();
        let s = spec(&b);
        let script = install_script(&s, &parse_table(DOCKER), &own);
        assert!(script.contains("-I FORWARD 1 "), "{script}");
        assert!(script.contains(&format!("-A {CHAIN} -i t1-a ")));
        assert!(script.contains(&format!("-A {CHAIN} -o t1-b ")));
        let t = applied(DOCKER, &script);
        assert!(placed(&s, &t, &own));

        let with_own = "*filter\n:FORWARD DROP [0:0]\n\
            -A FORWARD -m conntrack --ctstate NEW -j NCTL-t1-FIREWALL\n\
            -A FORWARD -j DOCKER-USER\nCOMMIT\n";
        let script = install_script(&s, &parse_table(with_own), &own);
        assert!(script.contains("-I FORWARD 2 "), "{script}");
        assert!(placed(&s, &applied(with_own, &script), &own));
    }

    #[test]
    fn a_jump_docker_moved_below_its_own_is_put_back_in_place() {
        let b = bridges();
        let s = spec(&b);
        let moved = format!(
            "*filter\n:FORWARD DROP [0:0]\n:{CHAIN} - [0:0]\n-A FORWARD -j DOCKER-USER\n\
             -A FORWARD -j {CHAIN}\n-A {CHAIN} -i t1-a -j ACCEPT\n-A {CHAIN} -o t1-a -j ACCEPT\n\
             -A {CHAIN} -i t1-b -j ACCEPT\n-A {CHAIN} -o t1-b -j ACCEPT\nCOMMIT\n"
        );
        let t = parse_table(&moved);
        assert!(!placed(&s, &t, &own), "not first any more");
        let script = install_script(&s, &t, &own);
        assert!(
            script.contains(&format!("-D FORWARD -j {CHAIN}")),
            "{script}"
        );
        let again = applied(&moved, &script);
        assert!(placed(&s, &again, &own));
        let rm = remove_script(CHAIN, &again).unwrap();
        assert!(rm.contains(&format!("-X {CHAIN}")));
        assert!(rm.contains("-D FORWARD "));
        assert_eq!(remove_script(CHAIN, &parse_table(DOCKER)), None);
    }

    #[test]
    fn the_diagnosis_names_the_policy_and_rules_that_drop_ahead_of_ours() {
        let b = bridges();
        let s = spec(&b);
        // Docker's DROP policy without our chain: blocked.
        let d = judge(&s, &parse_table(DOCKER), "DROP", true, &own);
        assert!(d.blocked);
        assert!(
            d.explain().contains("FORWARD policy is DROP"),
            "{}",
            d.explain()
        );
        assert!(d.explain().contains("br_netfilter"));
        // Installed: nothing found.
        let t = applied(DOCKER, &install_script(&s, &parse_table(DOCKER), &own));
        let d = judge(&s, &t, "DROP", true, &own);
        assert!(!d.blocked && d.findings.is_empty(), "{d:?}");
        assert!(d.accept_chain);
        // A DROP put ahead of ours, and one for another interface only.
        let mut t = t;
        t.rules.insert(
            0,
            Rule {
                chain: FORWARD.into(),
                spec: "-s 10.0.0.0/8 -j DROP".into(),
                packets: 0,
            },
        );
        t.rules.insert(
            0,
            Rule {
                chain: FORWARD.into(),
                spec: "-i eth9 -j DROP".into(),
                packets: 0,
            },
        );
        let d = judge(&s, &t, "ACCEPT", false, &own);
        assert!(d.blocked);
        assert_eq!(d.findings.len(), 1, "{d:?}");
        assert!(d.findings[0].contains("-s 10.0.0.0/8 -j DROP"));
    }
}
