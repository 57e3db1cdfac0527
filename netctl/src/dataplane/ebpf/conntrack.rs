//! Reading the `CT` map as connections (forward + reverse entry pairs), and garbage
//! collection of expired pairs. Works from the pin, without the controller.

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use netctl_common::{
    CtEntry, FlowKey,
    ct::{CT_F_CLOSING, CT_F_DNAT, CT_F_HAIRPIN, CT_F_REPLIED, CT_F_REVERSE, CT_F_UPLINK},
    flow::IPPROTO_TCP,
    maps::CT,
};
use serde::Serialize;

use super::{Pins, clock::BootClock};

pub type CtMap = HashMap<MapData, FlowKey, CtEntry>;

pub fn open(pins: &Pins) -> anyhow::Result<CtMap> {
    let path = pins.map(CT);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the platform up?)",
            path.display()
        )
    })?;
    HashMap::try_from(Map::LruHashMap(data)).context("CT is not the expected LRU hash map")
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connection {
    pub proto: u8,
    pub client: Ipv4Addr,
    pub client_port: u16,
    /// What the client addressed (a VIP, a host port, or the server itself).
    pub frontend: Ipv4Addr,
    pub frontend_port: u16,
    /// Who answers (the chosen backend, or the server).
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    /// `syn-sent`, `established`, `closing` (TCP), or the protocol of a connection that
    /// has no states: `udp`, `icmp`, `other` ([`stateless`]).
    pub state: &'static str,
    pub nat: bool,
    pub via_uplink: bool,
    pub service_id: u32,
    pub backend_id: u32,
    pub age_s: f64,
    pub idle_s: f64,
    /// Seconds until it expires if idle.
    pub expires_in_s: f64,
}

/// Every live connection, from its forward entry (a reverse entry without one is shown
/// as a connection of its own).
pub fn connections(map: &CtMap) -> anyhow::Result<Vec<Connection>> {
    connections_of(&entries(map))
}

/// Every entry of the map (one walk: callers that also want the count use its length).
pub fn entries(map: &CtMap) -> StdHashMap<FlowKey, CtEntry> {
    map.iter().filter_map(Result::ok).collect()
}

/// [`connections`] from entries already read.
pub fn connections_of(entries: &StdHashMap<FlowKey, CtEntry>) -> anyhow::Result<Vec<Connection>> {
    let clock = BootClock::now()?;
    let mut out = Vec::new();
    for (key, e) in entries {
        let peer = partner(entries, key, e);
        if e.flags & CT_F_REVERSE != 0 && peer.is_some() {
            continue;
        }
        out.push(connection(key, e, peer, &clock));
    }
    out.sort_by(|a, b| a.age_s.total_cmp(&b.age_s));
    Ok(out)
}

/// The other half of `key`'s connection in `entries`, if it is there.
fn partner<'a>(
    entries: &'a StdHashMap<FlowKey, CtEntry>,
    key: &FlowKey,
    e: &CtEntry,
) -> Option<&'a CtEntry> {
    let peer_key = e.peer_key(key);
    entries
        .get(&peer_key)
        .filter(|p| e.is_partner(key, &peer_key, p))
}

fn connection(key: &FlowKey, e: &CtEntry, peer: Option<&CtEntry>, clock: &BootClock) -> Connection {
    let reverse = e.flags & CT_F_REVERSE != 0;
    let (client, client_port, frontend, frontend_port, backend, backend_port) = if reverse {
        // backend -> client (hairpin: backend -> frontend:client port), nat = frontend
        let fe = if e.nat_addr != [0; 4] {
            (e.nat_addr, e.nat_port)
        } else {
            (key.src_addr, key.src_port)
        };
        let client = if e.flags & CT_F_HAIRPIN != 0 {
            key.src_addr
        } else {
            key.dst_addr
        };
        (client, key.dst_port, fe.0, fe.1, key.src_addr, key.src_port)
    } else {
        let be = if e.flags & CT_F_DNAT != 0 {
            (e.nat_addr, e.nat_port)
        } else {
            (key.dst_addr, key.dst_port)
        };
        (
            key.src_addr,
            key.src_port,
            key.dst_addr,
            key.dst_port,
            be.0,
            be.1,
        )
    };
    let flags = e.flags | peer.map_or(0, |p| p.flags);
    let last = peer.map_or(e.last_seen_ns, |p| p.last_seen_ns.max(e.last_seen_ns));
    let state = if key.proto != IPPROTO_TCP {
        stateless(key.proto)
    } else if flags & CT_F_CLOSING != 0 {
        "closing"
    } else if flags & CT_F_REPLIED != 0 {
        "established"
    } else {
        "syn-sent"
    };
    let merged = CtEntry {
        flags,
        last_seen_ns: last,
        ..*e
    };
    let idle = clock.age_s(last);
    Connection {
        proto: key.proto,
        client: client.into(),
        client_port,
        frontend: frontend.into(),
        frontend_port,
        backend: backend.into(),
        backend_port,
        state,
        nat: e.flags & (CT_F_DNAT | netctl_common::ct::CT_F_SNAT) != 0,
        via_uplink: flags & CT_F_UPLINK != 0,
        service_id: e.service_id,
        backend_id: e.backend_id,
        age_s: clock.age_s(e.created_ns),
        idle_s: idle,
        expires_in_s: (merged.timeout_ns(key.proto) as f64 / 1e9 - idle).max(0.0),
    }
}

/// The state shown for a connection of a protocol without TCP's states: its protocol.
pub fn stateless(proto: u8) -> &'static str {
    match proto {
        netctl_common::flow::IPPROTO_UDP => "udp",
        netctl_common::flow::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

pub use crate::dataplane::lb::GcReport;

/// The first half of a pass: what a snapshot of the map says is expired.
#[derive(Debug, Default)]
pub struct GcPlan {
    /// Expired entries, as the snapshot saw them.
    expired: Vec<(FlowKey, CtEntry)>,
    report: GcReport,
}

impl GcPlan {
    /// The keys the sweep will look at.
    pub fn expired_keys(&self) -> impl Iterator<Item = &FlowKey> {
        self.expired.iter().map(|(k, _)| k)
    }
}

/// Deletes expired entries (both of a pair expire together: a pair is as old as its most
/// recent direction) and counts the live ones per backend.
pub fn gc(map: &mut CtMap) -> anyhow::Result<GcReport> {
    let plan = gc_plan(map)?;
    Ok(gc_sweep(map, plan))
}

/// Reads the whole map and judges every entry with its partner.
pub fn gc_plan(map: &CtMap) -> anyhow::Result<GcPlan> {
    let clock = BootClock::now()?;
    let entries: StdHashMap<FlowKey, CtEntry> = map.iter().filter_map(Result::ok).collect();
    let mut plan = GcPlan {
        report: GcReport {
            entries: entries.len(),
            ..GcReport::default()
        },
        ..GcPlan::default()
    };
    for (key, e) in &entries {
        if e.pair_expired(partner(&entries, key, e), key.proto, clock.boot_ns) {
            plan.expired.push((*key, *e));
        } else if e.backend_id != 0 && e.flags & CT_F_REVERSE == 0 {
            *plan.report.per_backend.entry(e.backend_id).or_default() += 1;
        }
    }
    Ok(plan)
}

/// Deletes what the plan found expired, each entry only if it is still the one the
/// snapshot judged. Reading a large table takes long enough for the dataplane to reuse a
/// tuple meanwhile (a client port freed by an RST comes back within seconds): deleting
/// by the snapshot alone would remove the new connection's fresh entry, and its replies
/// would leave un-NATed (the `bench lb` stall).
pub fn gc_sweep(map: &mut CtMap, plan: GcPlan) -> GcReport {
    let mut report = plan.report;
    for (key, seen) in &plan.expired {
        match map.get(key, 0) {
            Ok(now)
                if now.created_ns == seen.created_ns && now.last_seen_ns == seen.last_seen_ns =>
            {
                let _ = map.remove(key);
                report.expired += 1;
            }
            Ok(_) => report.renewed += 1,
            Err(_) => {} // gone already (the dataplane removed it, or LRU eviction)
        }
    }
    report
}
