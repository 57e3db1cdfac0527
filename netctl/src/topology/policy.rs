//! Resolves the `[policy]` section: allow/deny rules between services, the host and the world,
//! destinations that deny by default, and per-source rate limits of new connections.
//!
//! ```toml
//! [policy]
//! default_deny = ["postgres", "world"]   # refuse what no rule allows
//! allow_host = true                      # the host may connect anywhere (health checks)
//!
//! [[policy.rules]]
//! from = ["order", "product"]            # services, "host", "world"; omitted: any
//! to = "postgres"                        # a service, "host" or "world"
//! ports = [5432]                         # 5432 (TCP), "53/udp", "8000-8010/tcp"; omitted: any
//! action = "allow"                       # or "deny"
//!
//! [[policy.rate_limits]]
//! to = "gateway"
//! rate = "100/minute"                    # N/second, N/minute or N/hour
//! burst = 20
//! per = "source"                         # one bucket per source address; or "service"
//!
//! [[policy.rate_limits]]
//! from = ["edge"]                        # these sources get this limit instead
//! to = "gateway"
//! rate = "200/second"
//! burst = 2000
//! ```
//!
//! Precedence: a rule naming the source beats one for any source; then a rule naming ports
//! beats one naming only a protocol, which beats one for any port. Two rules at the same
//! level that match the same traffic with different actions are a conflict, refused. A
//! rate limit naming the source beats the one for any source, likewise; one destination
//! has at most one limit per source and one for any source.

use std::collections::BTreeSet;

use super::{
    error::TopologyError,
    model::{PortSpec, Topology},
};

// The section's types are plain data: as written in `model`, resolved in `plan`. They keep
// their old path here.
pub use super::{
    model::{PolicySpec, RateLimitSpec, RuleSpec},
    plan::{Action, Peer, Per, Policy, PortMatch, RateLimit, Rule},
};

/// Largest port range one rule may name (each port becomes map entries).
pub const MAX_RANGE: u32 = 1024;

/// A `from` list: `Some(None)` for any source (omitted, or naming "any"), `Some(Some(set))`
/// for the named ones, `None` when it is wrong (the errors say why).
fn sources(
    field: &str,
    from: Option<&[String]>,
    peer: &impl Fn(&str, &str, &mut Vec<TopologyError>) -> Option<Peer>,
    errors: &mut Vec<TopologyError>,
) -> Option<Option<BTreeSet<Peer>>> {
    match from {
        None => Some(None),
        Some(list) if list.iter().any(|s| s == "any") => Some(None),
        Some([]) => {
            errors.push(TopologyError::BadPolicy {
                field: format!("{field}.from"),
                message: "empty: omit it to mean any source".into(),
            });
            None
        }
        Some(list) => {
            let mut set = BTreeSet::new();
            let mut ok = true;
            for (j, name) in list.iter().enumerate() {
                match peer(&format!("{field}.from[{j}]"), name, errors) {
                    Some(p) => {
                        set.insert(p);
                    }
                    None => ok = false,
                }
            }
            ok.then_some(Some(set))
        }
    }
}

/// Validates `[policy]` against the topology's services; every problem is reported.
pub fn plan(spec: &PolicySpec, topology: &Topology, errors: &mut Vec<TopologyError>) -> Policy {
    let peer = |field: &str, name: &str, errors: &mut Vec<TopologyError>| -> Option<Peer> {
        match name {
            "host" => Some(Peer::Host),
            "world" => Some(Peer::World),
            s if topology.services.contains_key(s) => Some(Peer::Service(s.to_string())),
            _ => {
                errors.push(TopologyError::UnknownPeer {
                    field: field.into(),
                    name: name.into(),
                });
                None
            }
        }
    };
    let mut policy = Policy {
        allow_host: spec.allow_host,
        ..Policy::default()
    };
    for (i, name) in spec.default_deny.iter().enumerate() {
        if let Some(p) = peer(&format!("policy.default_deny[{i}]"), name, errors) {
            policy.default_deny.insert(p);
        }
    }
    policy.rules = spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(i, r, &peer, errors))
        .collect();
    conflicts(&policy.rules, errors);
    // (source, destination) pairs that have a limit; `None`: any source.
    let mut limited: BTreeSet<(Option<Peer>, Peer)> = BTreeSet::new();
    for (i, r) in spec.rate_limits.iter().enumerate() {
        if let Some(limit) = rate_limit(i, r, &peer, &mut limited, errors) {
            policy.rate_limits.push(limit);
        }
    }
    policy
}

type PeerOf<'a> = dyn Fn(&str, &str, &mut Vec<TopologyError>) -> Option<Peer> + 'a;

/// `policy.rules[i]`, or `None` with its errors reported.
fn rule(i: usize, r: &RuleSpec, peer: &PeerOf, errors: &mut Vec<TopologyError>) -> Option<Rule> {
    let field = format!("policy.rules[{i}]");
    let to = peer(&format!("{field}.to"), &r.to, errors);
    let from = sources(&field, r.from.as_deref(), &peer, errors);
    let action = match r.action.as_deref() {
        None | Some("allow") => Some(Action::Allow),
        Some("deny") => Some(Action::Deny),
        Some(other) => {
            errors.push(TopologyError::BadPolicy {
                field: format!("{field}.action"),
                message: format!("{other:?} is not an action (allow or deny)"),
            });
            None
        }
    };
    let ports = match &r.ports {
        None => Some(PortMatch::Any),
        Some(list) => ports(&format!("{field}.ports"), list, errors).map(PortMatch::Ports),
    };
    Some(Rule {
        number: i as u16 + 1,
        action: action?,
        from: from?,
        to: to?,
        ports: ports?,
    })
}

/// `policy.rate_limits[i]`, or `None` with its errors reported; `limited` holds the
/// (source, destination) pairs limited already (one limit per pair).
fn rate_limit(
    i: usize,
    r: &RateLimitSpec,
    peer: &PeerOf,
    limited: &mut BTreeSet<(Option<Peer>, Peer)>,
    errors: &mut Vec<TopologyError>,
) -> Option<RateLimit> {
    let field = format!("policy.rate_limits[{i}]");
    let to = peer(&format!("{field}.to"), &r.to, errors);
    let from = sources(&field, r.from.as_deref(), &peer, errors);
    let rate = parse_rate(&r.rate);
    if rate.is_none() {
        errors.push(TopologyError::BadPolicy {
            field: format!("{field}.rate"),
            message: format!(
                "{:?} is not a rate (e.g. \"100/minute\", \"5/second\")",
                r.rate
            ),
        });
    }
    if r.burst == 0 {
        errors.push(TopologyError::BadPolicy {
            field: format!("{field}.burst"),
            message: "must be at least 1".into(),
        });
    }
    let per = match r.per.as_deref() {
        None | Some("source") => Some(Per::Source),
        Some("service") => Some(Per::Service),
        Some(other) => {
            errors.push(TopologyError::BadPolicy {
                field: format!("{field}.per"),
                message: format!("{other:?} is not \"source\" or \"service\""),
            });
            None
        }
    };
    let (to, from, rate_milli, per) = (to?, from?, rate?, per?);
    let sources: Vec<Option<Peer>> = match &from {
        None => vec![None],
        Some(set) => set.iter().cloned().map(Some).collect(),
    };
    if let Some(source) = sources
        .iter()
        .find(|s| limited.contains(&((*s).clone(), to.clone())))
    {
        errors.push(TopologyError::BadPolicy {
            field: format!("{field}.to"),
            message: match source {
                None => format!("{} already has a rate limit", to.name()),
                Some(s) => format!(
                    "{} already has a rate limit for connections from {}",
                    to.name(),
                    s.name()
                ),
            },
        });
        return None;
    }
    limited.extend(sources.into_iter().map(|s| (s, to.clone())));
    Some(RateLimit {
        from,
        to,
        rate_milli,
        burst: r.burst,
        per,
    })
}

/// `5432`, `"53/udp"`, `"8000-8010/tcp"` -> `(port, protocol number)` pairs.
fn ports(
    field: &str,
    list: &[PortSpec],
    errors: &mut Vec<TopologyError>,
) -> Option<Vec<(u16, u8)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let text = match p {
            PortSpec::Number(n) => n.to_string(),
            PortSpec::Text(t) => t.clone(),
        };
        match parse_port_range(&text) {
            Ok(mut v) => out.append(&mut v),
            Err(message) => {
                errors.push(TopologyError::BadPolicy { field: f, message });
                ok = false;
            }
        }
    }
    if out.is_empty() && ok {
        errors.push(TopologyError::BadPolicy {
            field: field.into(),
            message: "empty: omit it to mean any port".into(),
        });
        ok = false;
    }
    out.sort_unstable();
    out.dedup();
    ok.then_some(out)
}

fn parse_port_range(text: &str) -> Result<Vec<(u16, u8)>, String> {
    let (range, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let proto = match proto.trim() {
        "tcp" => netctl_common::flow::IPPROTO_TCP,
        "udp" => netctl_common::flow::IPPROTO_UDP,
        other => return Err(format!("{other:?} is not a protocol (tcp or udp)")),
    };
    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
    let parse = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!("{text:?}: {s:?} is not a port (1-65535)")),
        }
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo > hi {
        return Err(format!("{text:?}: the range runs backwards"));
    }
    if u32::from(hi - lo) + 1 > MAX_RANGE {
        return Err(format!(
            "{text:?}: a range may span at most {MAX_RANGE} ports"
        ));
    }
    Ok((lo..=hi).map(|p| (p, proto)).collect())
}

/// `"100/minute"` -> thousandths of a token per second.
fn parse_rate(text: &str) -> Option<u32> {
    let (n, unit) = text.split_once('/')?;
    let n: u64 = n.trim().parse().ok()?;
    let per_seconds: u64 = match unit.trim() {
        "second" | "s" => 1,
        "minute" | "m" => 60,
        "hour" | "h" => 3600,
        _ => return None,
    };
    let milli = n * 1000 / per_seconds;
    (n > 0 && milli > 0)
        .then(|| u32::try_from(milli).ok())
        .flatten()
}

/// Two rules at the same precedence level that match common traffic with different actions.
fn conflicts(rules: &[Rule], errors: &mut Vec<TopologyError>) {
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.action == b.action || a.to != b.to {
                continue;
            }
            let sources = match (&a.from, &b.from) {
                (None, None) => Some("any source".to_string()),
                (Some(x), Some(y)) => x
                    .intersection(y)
                    .next()
                    .map(|p| format!("from {}", p.name())),
                _ => None,
            };
            let ports = match (&a.ports, &b.ports) {
                (PortMatch::Any, PortMatch::Any) => Some("any port".to_string()),
                (PortMatch::Ports(x), PortMatch::Ports(y)) => {
                    x.iter().find(|p| y.contains(p)).map(|(port, proto)| {
                        format!("port {port}/{}", if *proto == 6 { "tcp" } else { "udp" })
                    })
                }
                _ => None,
            };
            if let (Some(s), Some(p)) = (sources, ports) {
                errors.push(TopologyError::ConflictingRules {
                    a: a.number as usize - 1,
                    b: b.number as usize - 1,
                    what: format!("one allows and one denies {s} to {}, {p}", a.to.name()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_port_ranges_parse() {
        assert_eq!(parse_rate("100/minute"), Some(1666));
        assert_eq!(parse_rate("5/second"), Some(5000));
        assert_eq!(parse_rate("36/hour"), Some(10));
        assert_eq!(parse_rate("0/second"), None);
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_port_range("53/udp"), Ok(vec![(53, 17)]));
        assert_eq!(
            parse_port_range("8000-8002"),
            Ok(vec![(8000, 6), (8001, 6), (8002, 6)])
        );
        assert!(parse_port_range("10-5").is_err());
        assert!(parse_port_range("1-5000").is_err());
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("80/sctp").is_err());
    }
}
