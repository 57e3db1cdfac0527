//! Reading the pinned `FLOWS` map: works without a running controller.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use netctl_common::{FlowKey, FlowStats, maps::FLOWS};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

use super::Pins;

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
    let clock = Clock::now()?;
    let mut flows: Vec<Flow> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| clock.flow(&k, &v))
        .collect();
    flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.src.cmp(&b.src)));
    Ok(flows)
}

/// Converts the kernel's boot-time nanoseconds into wall-clock time.
struct Clock {
    boot_ns: u64,
    wall: SystemTime,
}

impl Clock {
    fn now() -> anyhow::Result<Self> {
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).context("clock_gettime(BOOTTIME)")?;
        let boot_ns = (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64);
        Ok(Self {
            boot_ns,
            wall: SystemTime::now(),
        })
    }

    fn unix(&self, boot_ns: u64) -> f64 {
        let age = Duration::from_nanos(self.boot_ns.saturating_sub(boot_ns));
        self.wall
            .checked_sub(age)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn flow(&self, k: &FlowKey, v: &FlowStats) -> Flow {
        Flow {
            src: Ipv4Addr::from(k.src_addr),
            dst: Ipv4Addr::from(k.dst_addr),
            src_port: k.src_port,
            dst_port: k.dst_port,
            proto: k.proto,
            packets: v.packets,
            bytes: v.bytes,
            first_seen: self.unix(v.first_seen_ns),
            last_seen: self.unix(v.last_seen_ns),
            tcp_flags: (v.tcp_flags & 0xff) as u8,
        }
    }
}
