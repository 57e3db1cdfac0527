//! Connections through the pipeline: conntrack first, then, for a new connection to a
//! service frontend, backend selection and the entry pair that pins it; DNAT on the way to
//! the backend, un-NAT (SNAT back to the frontend) on the way back.
//!
//! Every function returns the tuple the flow counters record: the real endpoints of the
//! packet (after DNAT, before un-NAT), so `netctl flows` shows which backend served.

use netctl_common::{
    CtEntry, DropReason, FlowKey,
    ct::{CT_F_CLOSING, CT_F_DNAT, CT_F_REVERSE, CT_F_SNAT, CT_F_UPLINK},
    flow::IPPROTO_UDP,
    lb::{SVC_F_HOST_PORT, tuple_hash},
    stats::{CNT_CT_MISS_ESTABLISHED, CNT_LB_TC},
};

use crate::{
    conntrack,
    lb::{self, Frontend},
    nat::{self, Side},
    parse::Packet,
    stats,
};
use aya_ebpf::programs::TcContext;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Packets a namespace sends (ingress of its host-side veth).
#[inline(always)]
pub fn from_endpoint(ctx: &TcContext, pkt: &mut Packet, now: u64) -> Result<FlowKey, DropReason> {
    let key = pkt.key;
    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if stale_udp_backend(&key, &entry) || reopened(pkt, &entry) {
            // The backend this UDP flow was pinned to is gone, or a closed TCP
            // connection's tuple is reused: a new connection, choose again.
            conntrack::remove(&conntrack::peer_key(&key, &entry));
            conntrack::remove(&key);
        } else {
            conntrack::touch(&key, e, pkt, now);
            return established(ctx, pkt, &entry, false);
        }
    } else if pkt.is_tcp() && pkt.tcp_flags & TCP_SYN == 0 {
        // Mid-connection TCP without an entry: it was evicted (or predates netctl).
        stats::count(CNT_CT_MISS_ESTABLISHED);
    }

    if let Some(fe) = lb::frontend(key.dst_addr, key.dst_port, key.proto)
        && fe.flags() & SVC_F_HOST_PORT == 0
    {
        return new_service_connection(ctx, pkt, &fe, now, 0);
    }
    // A plain connection: tracked so that its replies are known, never rewritten.
    let mut fwd = entry(now, [0; 4], 0, 0, 0, 0);
    fwd.tcp_flags = pkt.tcp_flags;
    let rev = entry(now, [0; 4], 0, CT_F_REVERSE, 0, 0);
    let rev_key = FlowKey::new(
        key.dst_addr,
        key.src_addr,
        key.dst_port,
        key.src_port,
        key.proto,
    );
    // A full table only costs a plain connection its tracking, not its packets.
    let _ = conntrack::create(&key, &fwd, &rev_key, &rev);
    Ok(key)
}

/// Packets delivered into a namespace that no netctl hook has tracked yet: from the host
/// itself or from outside. Tracked as plain connections with the sender as client.
#[inline(always)]
pub fn to_endpoint(pkt: &Packet, now: u64) {
    let key = pkt.key;
    if let Some(e) = conntrack::lookup(&key, now) {
        conntrack::touch(&key, e, pkt, now);
        return;
    }
    let mut fwd = entry(now, [0; 4], 0, 0, 0, 0);
    fwd.tcp_flags = pkt.tcp_flags;
    let rev = entry(now, [0; 4], 0, CT_F_REVERSE, 0, 0);
    let rev_key = FlowKey::new(
        key.dst_addr,
        key.src_addr,
        key.dst_port,
        key.src_port,
        key.proto,
    );
    let _ = conntrack::create(&key, &fwd, &rev_key, &rev);
}

/// Packets arriving from outside on an uplink: only host ports are served here. Returns
/// whether the packet is now tracked (then the caller marks it).
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, pkt: &mut Packet, now: u64) -> Result<bool, DropReason> {
    let key = pkt.key;
    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if entry.flags & CT_F_UPLINK != 0 && entry.flags & CT_F_REVERSE == 0 {
            conntrack::touch(&key, e, pkt, now);
            return established(ctx, pkt, &entry, true).map(|_| true);
        }
        return Ok(false);
    }
    match lb::frontend(key.dst_addr, key.dst_port, key.proto) {
        Some(fe) if fe.flags() & SVC_F_HOST_PORT != 0 => {
            new_service_connection(ctx, pkt, &fe, now, CT_F_UPLINK).map(|_| true)
        }
        _ => Ok(false),
    }
}

/// Packets leaving through an uplink: replies of host-port connections get the host's
/// address and port back as their source.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, pkt: &mut Packet, now: u64) -> Result<(), DropReason> {
    let key = pkt.key;
    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if entry.flags & CT_F_UPLINK != 0 && entry.flags & CT_F_REVERSE != 0 {
            conntrack::touch(&key, e, pkt, now);
            return established(ctx, pkt, &entry, true).map(drop);
        }
    }
    Ok(())
}

/// Applies an existing entry's NAT. Host-port replies are left for the uplink's egress
/// unless `at_uplink`.
#[inline(always)]
fn established(
    ctx: &TcContext,
    pkt: &mut Packet,
    entry: &CtEntry,
    at_uplink: bool,
) -> Result<FlowKey, DropReason> {
    let before = pkt.key;
    if entry.flags & CT_F_DNAT != 0 {
        nat::rewrite(ctx, pkt, Side::Destination, entry.nat_addr, entry.nat_port)
            .map_err(|_| DropReason::NatFailed)?;
        return Ok(pkt.key);
    }
    if entry.flags & CT_F_SNAT != 0 && (entry.flags & CT_F_UPLINK == 0 || at_uplink) {
        nat::rewrite(ctx, pkt, Side::Source, entry.nat_addr, entry.nat_port)
            .map_err(|_| DropReason::NatFailed)?;
    }
    Ok(before)
}

/// Chooses a backend for a new connection to `fe`, pins it in conntrack and DNATs.
#[inline(always)]
fn new_service_connection(
    ctx: &TcContext,
    pkt: &mut Packet,
    fe: &Frontend,
    now: u64,
    extra_flags: u8,
) -> Result<FlowKey, DropReason> {
    let key = pkt.key;
    let hash = tuple_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    let (backend_id, backend) = lb::select(fe, hash).ok_or(DropReason::NoBackend)?;
    let service_id = fe.service_id();
    let mut fwd = entry(
        now,
        backend.addr,
        backend.port,
        CT_F_DNAT | extra_flags,
        backend_id,
        service_id,
    );
    fwd.tcp_flags = pkt.tcp_flags;
    let rev = entry(
        now,
        key.dst_addr,
        key.dst_port,
        CT_F_REVERSE | CT_F_SNAT | extra_flags,
        backend_id,
        service_id,
    );
    let rev_key = FlowKey::new(
        backend.addr,
        key.src_addr,
        backend.port,
        key.src_port,
        key.proto,
    );
    conntrack::create(&key, &fwd, &rev_key, &rev).map_err(|_| DropReason::CtFull)?;
    stats::count(CNT_LB_TC);
    nat::rewrite(ctx, pkt, Side::Destination, backend.addr, backend.port)
        .map_err(|_| DropReason::NatFailed)?;
    Ok(pkt.key)
}

/// A SYN (without ACK) on the tuple of a connection that already closed: the client reuses
/// the port for a new connection, which must not inherit the old one's closing timeout.
#[inline(always)]
fn reopened(pkt: &Packet, e: &CtEntry) -> bool {
    pkt.is_tcp() && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && e.flags & CT_F_CLOSING != 0
}

/// A UDP flow pinned to a backend that no longer exists (kube-proxy's stale-UDP bug).
#[inline(always)]
fn stale_udp_backend(key: &FlowKey, e: &CtEntry) -> bool {
    key.proto == IPPROTO_UDP && e.flags & CT_F_DNAT != 0 && lb::backend(e.backend_id).is_none()
}

#[inline(always)]
fn entry(
    now: u64,
    addr: [u8; 4],
    port: u16,
    flags: u8,
    backend_id: u32,
    service_id: u32,
) -> CtEntry {
    CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr: addr,
        nat_port: port,
        flags,
        tcp_flags: 0,
        backend_id,
        service_id,
    }
}
