//! The `CT` map: lookups with expiry, per-direction bookkeeping, and creation of the
//! forward/reverse entry pair of a new connection. See `netctl_common::ct`.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_or};

use aya_ebpf::{macros::map, maps::LruHashMap};
use netctl_common::{
    CtEntry, FlowKey,
    ct::{CT_F_CLOSING, CT_F_REPLIED, CT_F_REVERSE, CT_FLAGS_WORD_OFFSET},
    maps,
    stats::{CNT_CT_CREATED, CNT_CT_EXPIRED},
};

use crate::{parse::Packet, stats};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

#[map(name = "CT")]
static CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(maps::CT_MAX_ENTRIES, 0);

/// The live entry for `key`. An entry idle past its timeout still lives while the other
/// direction of its connection is active (a UDP flow where only the backend speaks);
/// otherwise both entries of the connection are removed and this is a miss.
#[inline(always)]
pub fn lookup(key: &FlowKey, now: u64) -> Option<*mut CtEntry> {
    let e = CT.get_ptr_mut(key)?;
    // SAFETY: `e` points into a map value valid for this program run.
    let entry = unsafe { *e };
    if !entry.is_expired(key.proto, now) {
        return Some(e);
    }
    if let Some((peer_key, p)) = partner(key, &entry) {
        // SAFETY: as above.
        let peer = unsafe { *p };
        if !entry.pair_expired(Some(&peer), key.proto, now) {
            return Some(e);
        }
        let _ = CT.remove(peer_key);
    }
    let _ = CT.remove(key);
    stats::count(CNT_CT_EXPIRED);
    None
}

/// The other entry of the connection `key`/`entry` belongs to: the entry at its peer key,
/// if that one points back (`CtEntry::is_partner`). Another entry can hold that key: a
/// plain flow that reused the tuple after this connection's reverse entry went (evicted or
/// expired). Every path that writes or removes the other direction goes through here, as
/// the controller's garbage collector does, so that it never changes a stranger.
#[inline(always)]
fn partner(key: &FlowKey, entry: &CtEntry) -> Option<(FlowKey, *mut CtEntry)> {
    let peer_key = entry.peer_key(key);
    let p = CT.get_ptr_mut(peer_key)?;
    // SAFETY: `p` points into a map value valid for this program run.
    let peer = unsafe { *p };
    if entry.is_partner(key, &peer_key, &peer) {
        Some((peer_key, p))
    } else {
        None
    }
}

/// Removes the connection `key`/`entry` belongs to: this entry and its partner (not a
/// stranger at the partner's key).
#[inline(always)]
pub fn remove_pair(key: &FlowKey, entry: &CtEntry) {
    if let Some((peer_key, _)) = partner(key, entry) {
        let _ = CT.remove(peer_key);
    }
    let _ = CT.remove(key);
}

/// Records a packet of this direction: last seen, TCP flags; a FIN or RST puts both
/// directions in the short closing timeout, the first reply marks both established.
/// Flag bits are set with atomic ORs ([`or_flags`]): the two directions of a connection
/// are handled by different CPUs at once, and a plain read-modify-write of one lost the
/// other's bit (a CLOSING lost kept a closed connection 6 h instead of 10 s).
#[inline(always)]
pub fn touch(key: &FlowKey, e: *mut CtEntry, pkt: &Packet, now: u64) {
    // SAFETY: `e` points into a map value valid for this program run. The copy only
    // decides what to set: bits are never cleared in place, so a bit it shows is set, and
    // one it misses is OR-ed again, which changes nothing.
    let entry = unsafe { *e };
    // SAFETY: as above; a timestamp races benignly (the latest writer wins).
    unsafe { (*e).last_seen_ns = now };
    let mut own = 0;
    let mut peer_flags = 0;
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & CT_F_CLOSING == 0 {
        own |= CT_F_CLOSING;
        peer_flags |= CT_F_CLOSING;
    }
    if entry.flags & CT_F_REVERSE != 0 && entry.flags & CT_F_REPLIED == 0 {
        own |= CT_F_REPLIED;
        peer_flags |= CT_F_REPLIED;
    }
    let new_tcp = pkt.tcp_flags & !entry.tcp_flags;
    if own | new_tcp != 0 {
        or_flags(e, own, new_tcp);
    }
    if peer_flags != 0
        && let Some((_, p)) = partner(key, &entry)
    {
        or_flags(p, peer_flags, 0);
    }
}

/// Sets `flags` and `tcp_flags` bits of the entry at `e` with one BPF atomic OR on the
/// aligned word that holds both (`CT_FLAGS_WORD_OFFSET`; eBPF atomics are 32 or 64 bits).
#[inline(always)]
fn or_flags(e: *mut CtEntry, flags: u8, tcp_flags: u8) {
    // SAFETY: `e` points into a map value valid for this program run; the word lies
    // inside it and is 4-byte aligned (offsets asserted in `netctl_common::ct`).
    unsafe {
        let word = e.cast::<u8>().add(CT_FLAGS_WORD_OFFSET).cast::<u32>();
        atomic_or::<u32, u32, { Relaxed }>(word, CtEntry::flags_word_bits(flags, tcp_flags));
    }
}

/// Why a new connection got no entries.
pub enum CreateError {
    /// The kernel could not allocate an entry.
    Full,
    /// Its reverse key is the reverse key of another live connection: one client port
    /// used both through a VIP and straight to that VIP's backend makes two connections
    /// that look the same from the backend. Tracking the second would hand its replies
    /// the first one's NAT (or take the first one's away), so it is refused.
    Collision,
}

/// Creates both entries of a new connection. Fails when another live connection holds
/// the reverse key (see [`CreateError::Collision`]; one that is closing gives it up, as a
/// reused port does, and an orphan whose partner went is overwritten), or when the kernel
/// cannot allocate an entry (the LRU map otherwise makes room by evicting the least
/// recently used).
#[inline(always)]
pub fn create(
    fwd_key: &FlowKey,
    fwd: &CtEntry,
    rev_key: &FlowKey,
    rev: &CtEntry,
    now: u64,
) -> Result<(), CreateError> {
    if let Some(e) = lookup(rev_key, now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let held = unsafe { *e };
        if held.flags & CT_F_CLOSING == 0 && partner(rev_key, &held).is_some() {
            return Err(CreateError::Collision);
        }
    }
    CT.insert(rev_key, rev, 0).map_err(|_| CreateError::Full)?;
    if CT.insert(fwd_key, fwd, 0).is_err() {
        let _ = CT.remove(rev_key);
        return Err(CreateError::Full);
    }
    stats::count(CNT_CT_CREATED);
    Ok(())
}
