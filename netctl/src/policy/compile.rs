//! Compiling a policy into `POLICY` entries `(src, dst, port, proto) -> verdict` and
//! `RATE_LIMITS` entries. The dataplane looks entries up most specific first (see
//! `netctl_common::policy`), which is the precedence of [`super::model`]:
//!
//! - a rule emits one entry per (named source or `*`) x (named port or `*`);
//! - a default-deny destination gets `{*, dst, *, *} = deny` unless a rule for any source
//!   and any port already decides that level;
//! - the host's implicit allow is `{host, dst, *, *} = allow`, for destinations that can
//!   deny and whose rules do not name the host;
//! - a rate limit is one `RATE_LIMITS` entry per named source (or `*`) and destination.

use std::collections::{BTreeMap, BTreeSet};

use netctl_common::policy::{
    ANY_PORT, ANY_PROTO, ID_ANY, ID_HOST, RL_BY_ADDRESS, RL_BY_IDENTITY, RateLimit, VERDICT_ALLOW,
    VERDICT_DENY,
};
use serde::Serialize;

use super::identity;
use crate::topology::{
    Plan,
    plan::{Action, Peer, Per, PortMatch},
};

/// One compiled entry (the generation is added when written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EntryKey {
    pub src: u32,
    pub dst: u32,
    pub port: u16,
    pub proto: u8,
}

/// One compiled rate limit's pair: source identity (or `ID_ANY`) and destination identity
/// (the generation is added when written, as for [`EntryKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LimitKey {
    pub src: u32,
    pub dst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EntryValue {
    pub verdict: u8,
    /// Rule number; 0 for a default.
    pub rule: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub entries: BTreeMap<EntryKey, EntryValue>,
    /// (source identity or `ID_ANY`, destination identity) -> limit; the dataplane takes
    /// the source's own limit before the one for any source.
    pub rate_limits: BTreeMap<LimitKey, RateLimit>,
}

pub fn compile(plan: &Plan) -> Compiled {
    let policy = &plan.policy;
    let mut entries = BTreeMap::new();
    for rule in &policy.rules {
        let dst = identity::of(plan, &rule.to);
        let verdict = match rule.action {
            Action::Allow => VERDICT_ALLOW,
            Action::Deny => VERDICT_DENY,
        };
        let sources: Vec<u32> = match &rule.from {
            None => vec![ID_ANY],
            Some(set) => set.iter().map(|p| identity::of(plan, p)).collect(),
        };
        let ports: Vec<(u16, u8)> = match &rule.ports {
            PortMatch::Any => vec![(ANY_PORT, ANY_PROTO)],
            PortMatch::Ports(p) => p.clone(),
        };
        for src in &sources {
            for (port, proto) in &ports {
                // The first rule of a level wins, as in the model (only same-action
                // duplicates can remain after validation).
                entries
                    .entry(EntryKey {
                        src: *src,
                        dst,
                        port: *port,
                        proto: *proto,
                    })
                    .or_insert(EntryValue {
                        verdict,
                        rule: rule.number,
                    });
            }
        }
    }
    let can_deny: BTreeSet<&Peer> = policy
        .default_deny
        .iter()
        .chain(
            policy
                .rules
                .iter()
                .filter(|r| r.action == Action::Deny)
                .map(|r| &r.to),
        )
        .collect();
    for dst in &policy.default_deny {
        let key = EntryKey {
            src: ID_ANY,
            dst: identity::of(plan, dst),
            port: ANY_PORT,
            proto: ANY_PROTO,
        };
        entries.entry(key).or_insert(EntryValue {
            verdict: VERDICT_DENY,
            rule: 0,
        });
    }
    if policy.allow_host {
        for dst in can_deny {
            let names_host = policy
                .rules
                .iter()
                .any(|r| r.to == *dst && r.from.as_ref().is_some_and(|f| f.contains(&Peer::Host)));
            if !names_host {
                let key = EntryKey {
                    src: ID_HOST,
                    dst: identity::of(plan, dst),
                    port: ANY_PORT,
                    proto: ANY_PROTO,
                };
                entries.insert(
                    key,
                    EntryValue {
                        verdict: VERDICT_ALLOW,
                        rule: 0,
                    },
                );
            }
        }
    }
    let mut rate_limits = BTreeMap::new();
    for r in &policy.rate_limits {
        let dst = identity::of(plan, &r.to);
        let limit = RateLimit {
            rate_milli: r.rate_milli,
            burst: r.burst,
            by: match r.per {
                Per::Source => RL_BY_ADDRESS,
                Per::Service => RL_BY_IDENTITY,
            },
            _pad: [0; 3],
        };
        let sources: Vec<u32> = match &r.from {
            None => vec![ID_ANY],
            Some(set) => set.iter().map(|p| identity::of(plan, p)).collect(),
        };
        for src in sources {
            rate_limits.entry(LimitKey { src, dst }).or_insert(limit);
        }
    }
    Compiled {
        entries,
        rate_limits,
    }
}

/// The dataplane's rate-limit lookup over compiled limits: the source's own, else the one
/// for any source.
pub fn rate_limit(c: &Compiled, src: u32, dst: u32) -> Option<&RateLimit> {
    c.rate_limits
        .get(&LimitKey { src, dst })
        .or_else(|| c.rate_limits.get(&LimitKey { src: ID_ANY, dst }))
}

/// The dataplane's lookup over compiled entries, in user space (for tests and `netctl
/// policy --check`): most specific entry first, no entry allows.
pub fn lookup(c: &Compiled, src: u32, dst: u32, port: u16, proto: u8) -> (bool, u16) {
    let keys = [
        EntryKey {
            src,
            dst,
            port,
            proto,
        },
        EntryKey {
            src,
            dst,
            port: ANY_PORT,
            proto,
        },
        EntryKey {
            src,
            dst,
            port: ANY_PORT,
            proto: ANY_PROTO,
        },
        EntryKey {
            src: ID_ANY,
            dst,
            port,
            proto,
        },
        EntryKey {
            src: ID_ANY,
            dst,
            port: ANY_PORT,
            proto,
        },
        EntryKey {
            src: ID_ANY,
            dst,
            port: ANY_PORT,
            proto: ANY_PROTO,
        },
    ];
    keys.iter()
        .find_map(|k| c.entries.get(k))
        .map_or((true, 0), |v| (v.verdict != VERDICT_DENY, v.rule))
}
