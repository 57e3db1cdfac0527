//! Per-CPU counters: drops by reason (`DROPS`) and dataplane events (`COUNTERS`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netctl_common::{
    DropReason,
    stats::{COUNTERS_MAX, DROP_REASONS_MAX},
};

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS_MAX, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_MAX, 0);

#[inline(always)]
pub fn drop(reason: DropReason) {
    bump(&DROPS, reason as u32);
}

#[inline(always)]
pub fn count(counter: u32) {
    bump(&COUNTERS, counter);
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(v) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: nothing else writes it while this program runs here.
        unsafe { *v += 1 };
    }
}
