//! Reading the per-CPU `DROPS` and `COUNTERS` maps, summed over CPUs.

use anyhow::Context;
use aya::maps::{Map, MapData, PerCpuArray};
use netctl_common::{
    DropReason,
    maps::{COUNTERS, DROPS},
    stats::COUNTER_NAMES,
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
