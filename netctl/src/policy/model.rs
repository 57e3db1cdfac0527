//! The reference semantics of a policy, evaluated from the rules themselves (not from the
//! compiled entries): what a new connection from `src` to `dst` on `port`/`proto` gets.
//!
//! 1. Rules for `dst` are taken by precedence: naming the source and the port, naming the
//!    source (any port), any source naming the port, any source and any port. The first
//!    level with a matching rule decides (validation refuses opposite actions on a level).
//! 2. With `allow_host`, the host is allowed unless a rule names the host as a source for
//!    `dst` (it sits at the "names the source, any port" level).
//! 3. Otherwise: denied if `dst` is a default-deny destination, allowed if not.
//!
//! A packet without ports (ICMP, other IP protocols) is asked about with port 0 and its
//! own protocol: only rules for any port can match it.
//!
//! The rate limit of a new connection ([`rate_limit`]): the limit of `dst` naming the
//! source, else the one for any source, else none.

use serde::Serialize;

use crate::topology::plan::{Action, Peer, Policy, PortMatch, RateLimit, Rule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allow: bool,
    /// The deciding rule's number; `None` for a default.
    pub rule: Option<u16>,
}

pub fn verdict(policy: &Policy, src: &Peer, dst: &Peer, port: u16, proto: u8) -> Verdict {
    let for_dst: Vec<&Rule> = policy.rules.iter().filter(|r| r.to == *dst).collect();
    let names_src = |r: &Rule| r.from.as_ref().is_some_and(|f| f.contains(src));
    let any_src = |r: &Rule| r.from.is_none();
    let names_port =
        |r: &Rule| matches!(&r.ports, PortMatch::Ports(p) if p.contains(&(port, proto)));
    let any_port = |r: &Rule| r.ports == PortMatch::Any;

    let levels: [&dyn Fn(&Rule) -> bool; 4] = [
        &|r| names_src(r) && names_port(r),
        &|r| names_src(r) && any_port(r),
        &|r| any_src(r) && names_port(r),
        &|r| any_src(r) && any_port(r),
    ];
    for (level, matches) in levels.iter().enumerate() {
        if let Some(r) = for_dst.iter().find(|r| matches(r)) {
            return Verdict {
                allow: r.action == Action::Allow,
                rule: Some(r.number),
            };
        }
        // The host's implicit allow sits at level 1 ("names the source, any port").
        if level == 1
            && *src == Peer::Host
            && policy.allow_host
            && !for_dst.iter().any(|r| names_src(r))
        {
            return Verdict {
                allow: true,
                rule: None,
            };
        }
    }
    Verdict {
        allow: !policy.default_deny.contains(dst),
        rule: None,
    }
}

/// The rate limit new connections from `src` to `dst` are held to.
pub fn rate_limit<'a>(policy: &'a Policy, src: &Peer, dst: &Peer) -> Option<&'a RateLimit> {
    let for_dst = || policy.rate_limits.iter().filter(|l| l.to == *dst);
    for_dst()
        .find(|l| l.from.as_ref().is_some_and(|f| f.contains(src)))
        .or_else(|| for_dst().find(|l| l.from.is_none()))
}
