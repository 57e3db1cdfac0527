//! Reading the per-CPU `DROPS` and `COUNTERS` maps, summed over CPUs.

use anyhow::Context;
use aya::maps::{Map, MapData, PerCpuArray};
use netctl_common::{
    DropReason,
    maps::{COUNTERS, DROPS},
    stats::{CNT_EVENTS_LOST, COUNTER_NAMES},
};

use super::Pins;

fn sum(pins: &Pins, name: &str, index: u32) -> anyhow::Result<u64> {
    let data = MapData::from_pin(pins.map(name))
        .with_context(|| format!("opening pinned map {name} (is the platform up?)"))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .with_context(|| format!("{name} is not a per-CPU array"))?;
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading {name}[{index}]"))?;
    Ok(values.iter().sum())
}

/// Packets dropped, by reason (every reason, zeros included).
pub fn drops(pins: &Pins) -> anyhow::Result<Vec<(DropReason, u64)>> {
    DropReason::ALL
        .into_iter()
        .map(|r| Ok((r, sum(pins, DROPS, r as u32)?)))
        .collect()
}

/// Dataplane event counters by name.
pub fn counters(pins: &Pins) -> anyhow::Result<Vec<(&'static str, u64)>> {
    COUNTER_NAMES
        .iter()
        .map(|(i, name)| Ok((*name, sum(pins, COUNTERS, *i)?)))
        .collect()
}

/// Events the dataplane could not put on the full `EVENTS` ring buffer, since load.
pub fn events_lost(pins: &Pins) -> anyhow::Result<u64> {
    sum(pins, COUNTERS, CNT_EVENTS_LOST)
}

/// Follows `COUNTERS[events_lost]`: how many more events the dataplane lost since the
/// last look.
pub struct LostEvents {
    pins: Pins,
    seen: u64,
}

impl LostEvents {
    /// Starts from the counter's current value.
    pub fn new(pins: &Pins) -> Self {
        Self {
            pins: pins.clone(),
            seen: events_lost(pins).unwrap_or(0),
        }
    }

    /// Events lost since the last call (0 when the counter cannot be read).
    pub fn more(&mut self) -> u64 {
        let Ok(now) = events_lost(&self.pins) else {
            return 0;
        };
        let more = now.saturating_sub(self.seen);
        self.seen = self.seen.max(now);
        more
    }
}
