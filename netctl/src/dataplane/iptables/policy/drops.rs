//! The policy's drop counters read from a filter table saved with counters: what `netctl
//! drops` shows in iptables mode.

use std::collections::BTreeMap;

use netctl_common::DropReason;

use super::owned;
use crate::{
    dataplane::{DropPair, iptables::names::Chains},
    net::iptables::Table,
};

/// Drops the policy's rules counted (`iptables-save -c`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    /// Reason name ([`DropReason::name`]) -> packets.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// `(source identity, destination identity, reason) -> packets`; `ID_ANY` as the
    /// source of entries and limits for any source.
    pub by_pair: BTreeMap<(u32, u32, &'static str), u64>,
}

impl Drops {
    /// The per-pair counters as the [`crate::dataplane::Dataplane`] seam gives them.
    pub fn pairs(&self) -> impl Iterator<Item = DropPair> + '_ {
        self.by_pair.iter().map(
            |(&(src_identity, dst_identity, reason), &packets)| DropPair {
                src_identity,
                dst_identity,
                reason,
                packets,
            },
        )
    }
}

/// Reads the drop counters from a filter table saved with counters.
pub fn drops(c: &Chains, filter: &Table) -> Drops {
    let mut d = Drops::default();
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
            ["drop", reason, _] => {
                if let Some(reason) = DropReason::from_name(reason) {
                    *d.by_reason.entry(reason.name()).or_default() += r.packets;
                }
            }
            ["entry", src, dst, _, _, "deny", _] if r.packets > 0 => {
                if let (Ok(src), Ok(dst)) = (src.parse(), dst.parse()) {
                    *d.by_pair
                        .entry((src, dst, DropReason::PolicyDenied.name()))
                        .or_default() += r.packets;
                }
            }
            ["over", src, dst] if r.packets > 0 => {
                if let (Ok(src), Ok(dst)) = (src.parse(), dst.parse()) {
                    *d.by_pair
                        .entry((src, dst, DropReason::RateLimited.name()))
                        .or_default() += r.packets;
                }
            }
            _ => {}
        }
    }
    d
}
