//! The installed policy read back from the filter table: what `netctl policy` shows in
//! iptables mode, and the generation `policy apply` waits for.

use std::net::Ipv4Addr;

use netctl_common::policy::{
    RL_BY_ADDRESS, RL_BY_IDENTITY, RateLimit, VERDICT_ALLOW, VERDICT_DENY,
};

use super::owned;
use crate::{
    dataplane::iptables::names::Chains,
    net::iptables::Table,
    policy::compile::{Compiled, EntryKey, EntryValue, LimitKey},
};

/// The policy as the rules have it (`netctl policy` in iptables mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub generation: u32,
    pub compiled: Compiled,
    pub identities: Vec<(Ipv4Addr, u32)>,
}

/// Reads the installed policy back from the filter table; `None` before the controller
/// installed one.
pub fn read(c: &Chains, filter: &Table) -> Option<Installed> {
    let policy = c.policy();
    let generation = filter
        .rules
        .iter()
        .filter(|r| r.chain == policy)
        .find_map(|r| {
            let comment = r.value("--comment")?;
            let rest = comment.strip_prefix("netctl policy generation ")?;
            rest.split_whitespace().next()?.parse::<u32>().ok()
        })?;
    let mut compiled = Compiled::default();
    let mut identities = Vec::new();
    let table = c.identities();
    for r in filter.rules.iter().filter(|r| owned(c, &r.chain)) {
        let Some(comment) = r.value("--comment") else {
            continue;
        };
        let words: Vec<&str> = comment
            .split(':')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        match words.as_slice() {
            ["entry", src, dst, port, proto, verdict, rule] => {
                let (Ok(src), Ok(dst), Ok(port), Ok(proto), Ok(rule)) = (
                    src.parse(),
                    dst.parse(),
                    port.parse(),
                    proto.parse(),
                    rule.parse(),
                ) else {
                    continue;
                };
                compiled.entries.insert(
                    EntryKey {
                        src,
                        dst,
                        port,
                        proto,
                    },
                    EntryValue {
                        verdict: if *verdict == "deny" {
                            VERDICT_DENY
                        } else {
                            VERDICT_ALLOW
                        },
                        rule,
                    },
                );
            }
            ["limit", src, dst, rate, burst, by, _n] => {
                let (Ok(src), Ok(dst), Ok(rate_milli), Ok(burst)) =
                    (src.parse(), dst.parse(), rate.parse(), burst.parse())
                else {
                    continue;
                };
                compiled.rate_limits.insert(
                    LimitKey { src, dst },
                    RateLimit {
                        rate_milli,
                        burst,
                        by: if *by == "service" {
                            RL_BY_IDENTITY
                        } else {
                            RL_BY_ADDRESS
                        },
                        _pad: [0; 3],
                    },
                );
            }
            ["identity", id, ..] if r.chain == table => {
                let addr = r
                    .value("-s")
                    .and_then(|s| s.trim_end_matches("/32").parse::<Ipv4Addr>().ok());
                if let (Some(addr), Ok(id)) = (addr, id.parse()) {
                    identities.push((addr, id));
                }
            }
            _ => {}
        }
    }
    Some(Installed {
        generation,
        compiled,
        identities,
    })
}
