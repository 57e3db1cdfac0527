//! Connections through the pipeline: conntrack first; for a new connection, the policy
//! verdict and rate limit, then (to a service frontend) backend selection and the entry
//! pair that pins it; DNAT on the way to the backend, un-NAT on the way back. An
//! established connection is checked again only when the policy generation changed.
//!
//! Every function returns the tuple the flow counters record: the real endpoints of the
//! packet (after DNAT, before un-NAT), so `netctl flows` shows which backend served.

use aya_ebpf::programs::TcContext;
use netctl_common::{
    CtEntry, DropReason, FlowKey,
    ct::{CT_F_CLOSING, CT_F_DNAT, CT_F_HAIRPIN, CT_F_REVERSE, CT_F_SNAT, CT_F_UPLINK},
    flow::IPPROTO_UDP,
    lb::{SVC_F_HOST_PORT, tuple_hash},
    policy::ID_SERVICE_BASE,
    stats::{CNT_CT_MISS_ESTABLISHED, CNT_LB_TC, CNT_POLICY_RECHECKED, CNT_PROBE_EXEMPT},
};

use crate::{
    config,
    conntrack::{self, CreateError},
    events::{self, Drop},
    lb::{self, Frontend},
    nat::{self, Side},
    parse::Packet,
    policy, stats,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Where the packet is: for events and for which checks apply.
#[derive(Clone, Copy)]
pub struct At {
    pub ifindex: u32,
    pub hook: u8,
    pub now: u64,
}

/// Packets a namespace sends (ingress of its host-side veth).
#[inline(always)]
pub fn from_endpoint(ctx: &TcContext, pkt: &mut Packet, at: At) -> Result<FlowKey, Drop> {
    let key = pkt.key;
    let generation = config::policy_generation();
    if let Some(e) = conntrack::lookup(&key, at.now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if stale_udp_backend(&key, &entry) || reopened(pkt, &entry) {
            // The backend this UDP flow was pinned to is gone, or a closed TCP
            // connection's tuple is reused: a new connection, choose again.
            conntrack::remove_pair(&key, &entry);
        } else {
            recheck(&key, e, &entry, generation)?;
            conntrack::touch(&key, e, pkt, at.now);
            return established(ctx, pkt, &entry, false);
        }
    } else if lost_connection(pkt) {
        stats::count(CNT_CT_MISS_ESTABLISHED);
    }

    let src = policy::identity(key.src_addr, generation);
    if pkt.has_ports
        && let Some(fe) = lb::frontend(key.dst_addr, key.dst_port, key.proto)
        && fe.flags() & SVC_F_HOST_PORT == 0
    {
        return new_service_connection(ctx, pkt, &fe, src, generation, at, 0);
    }
    let dst = policy::identity(key.dst_addr, generation);
    admit(&key, src, dst, pkt.policy_port(), generation, at.now)?;
    track_plain(&key, pkt, src, dst, generation, at)?;
    Ok(key)
}

/// Packets delivered into a namespace that no netctl hook has tracked yet: from the host
/// itself or from outside. Judged by policy and tracked with the sender as client; a
/// `probe` (netctl's own health checks) is tracked unjudged.
#[inline(always)]
pub fn to_endpoint(pkt: &Packet, at: At, probe: bool) -> Result<(), Drop> {
    let key = pkt.key;
    let generation = config::policy_generation();
    if let Some(e) = conntrack::lookup(&key, at.now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if !probe {
            recheck(&key, e, &entry, generation)?;
        }
        conntrack::touch(&key, e, pkt, at.now);
        return Ok(());
    }
    let src = policy::identity(key.src_addr, generation);
    let dst = policy::identity(key.dst_addr, generation);
    if probe {
        stats::count(CNT_PROBE_EXEMPT);
    } else {
        admit(&key, src, dst, pkt.policy_port(), generation, at.now)?;
    }
    track_plain(&key, pkt, src, dst, generation, at)?;
    Ok(())
}

/// Packets arriving from outside on an uplink: only host ports are served here. Returns
/// whether the packet is now tracked (then the caller marks it).
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, pkt: &mut Packet, at: At) -> Result<bool, Drop> {
    let key = pkt.key;
    let generation = config::policy_generation();
    if let Some(e) = conntrack::lookup(&key, at.now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if entry.flags & CT_F_UPLINK != 0 && entry.flags & CT_F_REVERSE == 0 {
            recheck(&key, e, &entry, generation)?;
            conntrack::touch(&key, e, pkt, at.now);
            return established(ctx, pkt, &entry, true).map(|_| true);
        }
        return Ok(false);
    }
    match lb::frontend(key.dst_addr, key.dst_port, key.proto) {
        Some(fe) if fe.flags() & SVC_F_HOST_PORT != 0 => {
            let src = policy::identity(key.src_addr, generation);
            new_service_connection(ctx, pkt, &fe, src, generation, at, CT_F_UPLINK).map(|_| true)
        }
        _ => Ok(false),
    }
}

/// Packets leaving through an uplink: replies of host-port connections get the host's
/// address and port back as their source.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, pkt: &mut Packet, at: At) -> Result<(), Drop> {
    let key = pkt.key;
    if let Some(e) = conntrack::lookup(&key, at.now) {
        // SAFETY: `e` points into a map value valid for this program run.
        let entry = unsafe { *e };
        if entry.flags & CT_F_UPLINK != 0 && entry.flags & CT_F_REVERSE != 0 {
            conntrack::touch(&key, e, pkt, at.now);
            return established(ctx, pkt, &entry, true).map(drop);
        }
    }
    Ok(())
}

/// Policy and rate limit for a new connection.
#[inline(always)]
fn admit(
    key: &FlowKey,
    src: u32,
    dst: u32,
    port: u16,
    generation: u32,
    now: u64,
) -> Result<(), Drop> {
    let refuse = |reason| Drop {
        reason,
        src_identity: src,
        dst_identity: dst,
    };
    if !policy::allowed(generation, src, dst, port, key.proto) {
        return Err(refuse(DropReason::PolicyDenied));
    }
    if policy::rate_limited(generation, key.src_addr, src, dst, now) {
        return Err(refuse(DropReason::RateLimited));
    }
    Ok(())
}

/// After a policy change, the first packet of an established connection checks it again,
/// with identities resolved anew (addresses may have changed hands): still allowed, it
/// carries on; no longer allowed, it is cut.
#[inline(always)]
fn recheck(key: &FlowKey, e: *mut CtEntry, entry: &CtEntry, generation: u32) -> Result<(), Drop> {
    if entry.policy_gen == generation || entry.flags & CT_F_REVERSE != 0 {
        return Ok(());
    }
    stats::count(CNT_POLICY_RECHECKED);
    let src = policy::identity(key.src_addr, generation);
    let dst = if entry.service_id != 0 {
        ID_SERVICE_BASE + entry.service_id
    } else {
        policy::identity(key.dst_addr, generation)
    };
    if policy::allowed(generation, src, dst, entry.policy_port, key.proto) {
        // SAFETY: `e` points into a map value valid for this program run.
        unsafe {
            (*e).policy_gen = generation;
            (*e).src_identity = src;
            (*e).dst_identity = dst;
        }
        return Ok(());
    }
    conntrack::remove_pair(key, entry);
    Err(Drop {
        reason: DropReason::PolicyRevoked,
        src_identity: src,
        dst_identity: dst,
    })
}

/// Tracks a plain (un-NATed) connection. A full table only costs it its tracking; a
/// tuple that collides with a NATed connection's reverse is refused (its replies would
/// be taken for that connection's).
#[inline(always)]
fn track_plain(
    key: &FlowKey,
    pkt: &Packet,
    src: u32,
    dst: u32,
    generation: u32,
    at: At,
) -> Result<(), Drop> {
    let mut fwd = entry(at.now, [0; 4], 0, 0, 0, 0);
    fwd.tcp_flags = pkt.tcp_flags;
    fwd.src_identity = src;
    fwd.dst_identity = dst;
    fwd.policy_port = pkt.policy_port();
    fwd.policy_gen = generation;
    let rev = entry(at.now, [0; 4], 0, CT_F_REVERSE, 0, 0);
    let rev_key = FlowKey::new(
        key.dst_addr,
        key.src_addr,
        key.dst_port,
        key.src_port,
        key.proto,
    );
    match conntrack::create(key, &fwd, &rev_key, &rev, at.now) {
        Ok(()) => events::new_flow(key, src, dst, at.ifindex, at.hook, at.now),
        Err(CreateError::Full) => {}
        Err(CreateError::Collision) => {
            return Err(Drop {
                reason: DropReason::NatCollision,
                src_identity: src,
                dst_identity: dst,
            });
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
) -> Result<FlowKey, Drop> {
    let before = pkt.key;
    let hairpin = entry.flags & CT_F_HAIRPIN != 0;
    if entry.flags & CT_F_DNAT != 0 {
        nat::rewrite(ctx, pkt, Side::Destination, entry.nat_addr, entry.nat_port)
            .map_err(|_| Drop::new(DropReason::NatFailed))?;
        let real = pkt.key;
        if hairpin {
            // From the frontend's address, so it does not come back from its own.
            nat::rewrite(ctx, pkt, Side::Source, before.dst_addr, before.src_port)
                .map_err(|_| Drop::new(DropReason::NatFailed))?;
        }
        return Ok(real);
    }
    if entry.flags & CT_F_SNAT != 0 && (entry.flags & CT_F_UPLINK == 0 || at_uplink) {
        nat::rewrite(ctx, pkt, Side::Source, entry.nat_addr, entry.nat_port)
            .map_err(|_| Drop::new(DropReason::NatFailed))?;
        if hairpin {
            // Back to the backend itself, which is the client.
            nat::rewrite(
                ctx,
                pkt,
                Side::Destination,
                before.src_addr,
                before.dst_port,
            )
            .map_err(|_| Drop::new(DropReason::NatFailed))?;
            let mut real = before;
            real.dst_addr = before.src_addr;
            return Ok(real);
        }
    }
    Ok(before)
}

/// Judges, load-balances and pins a new connection to `fe`, then DNATs it. The policy
/// sees the service's identity and the service port (for a host port, the backend's);
/// the entry keeps that same port for the re-check after a policy change.
#[inline(always)]
fn new_service_connection(
    ctx: &TcContext,
    pkt: &mut Packet,
    fe: &Frontend,
    src: u32,
    generation: u32,
    at: At,
    extra_flags: u8,
) -> Result<FlowKey, Drop> {
    let key = pkt.key;
    let service_id = fe.service_id();
    let dst = ID_SERVICE_BASE + service_id;
    let host_port = fe.flags() & SVC_F_HOST_PORT != 0;
    let mut policy_port = key.dst_port;
    if !host_port {
        admit(&key, src, dst, policy_port, generation, at.now)?;
    }
    let hash = tuple_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    let (backend_id, backend) = lb::select(fe, hash).ok_or(Drop {
        reason: DropReason::NoBackend,
        src_identity: src,
        dst_identity: dst,
    })?;
    if host_port {
        policy_port = backend.port;
        admit(&key, src, dst, policy_port, generation, at.now)?;
    }
    // A backend connecting to its own service and chosen for itself (hairpin).
    let hairpin = if backend.addr == key.src_addr {
        CT_F_HAIRPIN
    } else {
        0
    };
    let mut fwd = entry(
        at.now,
        backend.addr,
        backend.port,
        CT_F_DNAT | hairpin | extra_flags,
        backend_id,
        service_id,
    );
    fwd.tcp_flags = pkt.tcp_flags;
    fwd.src_identity = src;
    fwd.dst_identity = dst;
    fwd.policy_port = policy_port;
    fwd.policy_gen = generation;
    let rev = entry(
        at.now,
        key.dst_addr,
        key.dst_port,
        CT_F_REVERSE | CT_F_SNAT | hairpin | extra_flags,
        backend_id,
        service_id,
    );
    let rev_key = fwd.peer_key(&key);
    conntrack::create(&key, &fwd, &rev_key, &rev, at.now).map_err(|e| Drop {
        reason: match e {
            CreateError::Full => DropReason::CtFull,
            CreateError::Collision => DropReason::NatCollision,
        },
        src_identity: src,
        dst_identity: dst,
    })?;
    stats::count(CNT_LB_TC);
    events::new_flow(&key, src, dst, at.ifindex, at.hook, at.now);
    nat::rewrite(ctx, pkt, Side::Destination, backend.addr, backend.port)
        .map_err(|_| Drop::new(DropReason::NatFailed))?;
    let real = pkt.key;
    if hairpin != 0 {
        nat::rewrite(ctx, pkt, Side::Source, key.dst_addr, key.src_port)
            .map_err(|_| Drop::new(DropReason::NatFailed))?;
    }
    Ok(real)
}

/// A packet without an entry that belongs to a connection already under way: TCP without
/// SYN, or UDP from a service backend's address and port (a reply whose NATed flow lost
/// its entry: it leaves un-NATed). Counted, so a full table shows.
#[inline(always)]
fn lost_connection(pkt: &Packet) -> bool {
    if pkt.is_tcp() {
        return pkt.tcp_flags & TCP_SYN == 0;
    }
    let key = &pkt.key;
    key.proto == IPPROTO_UDP && lb::is_backend_addr(key.src_addr, key.src_port, key.proto)
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
        backend_id,
        service_id,
        ..CtEntry::default()
    }
}
