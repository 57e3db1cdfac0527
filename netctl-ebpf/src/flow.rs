//! Per-flow accounting into the pinned `FLOWS` LRU map.
//!
//! A packet between two namespaces crosses two host-side veths (ingress of the sender's,
//! egress of the receiver's). It is counted at the first hook and marked
//! (`MARK_COUNTED`); the second hook sees the mark and skips it. Packets that only reach
//! an egress hook (from the host itself or from outside) are unmarked and counted there.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_or, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::LruHashMap, programs::TcContext};
use netctl_common::{FlowKey, FlowStats, maps};

use crate::Hook;

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(maps::FLOWS_MAX_ENTRIES, 0);

/// Counts one packet under `key` (the real endpoints: after DNAT, before un-NAT).
#[inline(always)]
pub fn account(ctx: &TcContext, key: &FlowKey, tcp_flags: u8, hook: Hook, now: u64) {
    // SAFETY: `skb` is the context pointer the kernel handed to this program.
    let skb = unsafe { &mut *ctx.skb.skb };
    match hook {
        Hook::FromEndpoint => skb.mark |= maps::MARK_COUNTED,
        Hook::ToEndpoint => {
            if skb.mark & maps::MARK_COUNTED != 0 {
                return;
            }
        }
    }
    let segments = skb.gso_segs.max(1) as u64;
    let bytes = skb.len as u64;

    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        add(stats, segments, bytes, tcp_flags, now);
        return;
    }
    let fresh = FlowStats {
        packets: segments,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: tcp_flags as u32,
        _pad: 0,
    };
    // Another CPU may have created the entry since our lookup: then add to its entry.
    if FLOWS.insert(key, fresh, BPF_NOEXIST as u64).is_err()
        && let Some(stats) = FLOWS.get_ptr_mut(key)
    {
        add(stats, segments, bytes, tcp_flags, now);
    }
}

/// Adds one packet to an existing entry; counters use eBPF atomic instructions because every CPU may
/// update the same flow at once.
#[inline(always)]
fn add(stats: *mut FlowStats, segments: u64, bytes: u64, tcp_flags: u8, now: u64) {
    // SAFETY: `stats` points into a map value that stays valid for this program run;
    // the fields are naturally aligned.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*stats).packets, segments);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*stats).bytes, bytes);
        // Flags rarely change after the handshake: skip the locked OR when nothing is new.
        let flags = tcp_flags as u32;
        if (*stats).tcp_flags & flags != flags {
            atomic_or::<u32, u32, { Relaxed }>(&raw mut (*stats).tcp_flags, flags);
        }
        (*stats).last_seen_ns = now;
    }
}
