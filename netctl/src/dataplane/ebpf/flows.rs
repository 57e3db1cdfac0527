//! Reading the pinned `FLOWS` map: works without a running controller.

use std::net::Ipv4Addr;

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use netctl_common::{FlowKey, FlowStats, maps::FLOWS};
use serde::Serialize;

use super::{Pins, clock::BootClock};

/// One flow direction with its counters, in user-facing units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub packets: u64,
    pub bytes: u64,
    /// Unix time (seconds, fractional) of the first and last packet.
    pub first_seen: f64,
    pub last_seen: f64,
    pub tcp_flags: u8,
}

/// Opens the pinned flow map of an instance.
pub fn open(pins: &Pins) -> anyhow::Result<HashMap<MapData, FlowKey, FlowStats>> {
    let path = pins.map(FLOWS);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the platform up?)",
            path.display()
        )
    })?;
    HashMap::try_from(Map::LruHashMap(data)).context("FLOWS is not the expected LRU hash map")
}

/// Every flow in the map. Entries evicted while we iterate are skipped.
pub fn read(pins: &Pins) -> anyhow::Result<Vec<Flow>> {
    let map = open(pins)?;
    let clock = BootClock::now()?;
    let mut flows: Vec<Flow> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| flow(&clock, &k, &v))
        .collect();
    flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.src.cmp(&b.src)));
    Ok(flows)
}

fn flow(clock: &BootClock, k: &FlowKey, v: &FlowStats) -> Flow {
    Flow {
        src: Ipv4Addr::from(k.src_addr),
        dst: Ipv4Addr::from(k.dst_addr),
        src_port: k.src_port,
        dst_port: k.dst_port,
        proto: k.proto,
        packets: v.packets,
        bytes: v.bytes,
        first_seen: clock.unix(v.first_seen_ns),
        last_seen: clock.unix(v.last_seen_ns),
        tcp_flags: (v.tcp_flags & 0xff) as u8,
    }
}

/// Deletes every flow entry (a new counting window); returns how many there were.
pub fn clear(pins: &Pins) -> anyhow::Result<usize> {
    let mut map = open(pins)?;
    let keys: Vec<FlowKey> = map.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    Ok(keys.len())
}
