//! Drop and new-flow events on the `EVENTS` ring buffer, and drop counters by reason and
//! by identity pair. A full ring buffer is counted (`events_lost`), never silent.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{LruHashMap, RingBuf},
};
use netctl_common::{
    DropReason, FlowKey,
    event::{DropPairKey, EVENT_DROP, EVENT_NEW_FLOW, EVENTS_BYTES, EVENTS_WAKEUP_BYTES, Event},
    maps::{self, CFG_F_FLOW_EVENTS},
    stats::CNT_EVENTS_LOST,
};

use crate::{config, stats};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "DROP_PAIRS")]
static DROP_PAIRS: LruHashMap<DropPairKey, u64> =
    LruHashMap::with_max_entries(maps::DROP_PAIRS_MAX_ENTRIES, 0);

/// Why and between whom a packet is dropped.
#[derive(Clone, Copy)]
pub struct Drop {
    pub reason: DropReason,
    pub src_identity: u32,
    pub dst_identity: u32,
}

impl Drop {
    pub const fn new(reason: DropReason) -> Self {
        Self {
            reason,
            src_identity: 0,
            dst_identity: 0,
        }
    }
}

/// Counts a drop (by reason, by identity pair) and sends its event.
#[inline(always)]
pub fn dropped(d: &Drop, tuple: &FlowKey, ifindex: u32, hook: u8, now: u64) {
    stats::drop(d.reason);
    let key = DropPairKey {
        src_identity: d.src_identity,
        dst_identity: d.dst_identity,
        reason: d.reason as u32,
    };
    match DROP_PAIRS.get_ptr_mut(key) {
        // SAFETY: `n` points into a map value valid for this program run.
        Some(n) => unsafe {
            atomic_xadd::<u64, u64, { Relaxed }>(n, 1);
        },
        None => {
            let _ = DROP_PAIRS.insert(key, 1, 0);
        }
    }
    send(
        EVENT_DROP,
        d.reason as u32,
        tuple,
        d.src_identity,
        d.dst_identity,
        ifindex,
        hook,
        now,
    );
}

/// Announces a new connection (when `CFG_F_FLOW_EVENTS` is on).
#[inline(always)]
pub fn new_flow(
    tuple: &FlowKey,
    src_identity: u32,
    dst_identity: u32,
    ifindex: u32,
    hook: u8,
    now: u64,
) {
    if config::flag(CFG_F_FLOW_EVENTS) {
        send(
            EVENT_NEW_FLOW,
            0,
            tuple,
            src_identity,
            dst_identity,
            ifindex,
            hook,
            now,
        );
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send(
    kind: u8,
    reason: u32,
    tuple: &FlowKey,
    src: u32,
    dst: u32,
    ifindex: u32,
    hook: u8,
    now: u64,
) {
    let event = Event {
        time_ns: now,
        tuple: *tuple,
        src_identity: src,
        dst_identity: dst,
        reason,
        ifindex,
        kind,
        hook,
        _pad: [0; 6],
    };
    // No wakeup per event: the reader drains on a timer, and is woken when events pile up.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<Event>(&event, u64::from(flags)).is_err() {
        stats::count(CNT_EVENTS_LOST);
    }
}
