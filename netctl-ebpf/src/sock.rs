//! Socket-level load balancing (cgroup `connect4`/`sendmsg4`, attached to the cgroup v2
//! root): a process connecting to a service frontend is connected straight to a backend,
//! so its packets need no per-packet NAT. `recvmsg4`/`getpeername4` show the frontend
//! again as the peer, through `SOCK_REVNAT`.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::map,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use netctl_common::{
    lb::{SVC_F_HOST_PORT, tuple_hash},
    maps::{self, CFG_F_SOCKET_LB, CFG_HOST_NETNS_HI, CFG_HOST_NETNS_LO},
    sock::{SockRevNatKey, SockRevNatValue},
    stats::CNT_LB_SOCK,
};

use crate::{config, lb, stats};

#[map(name = "SOCK_REVNAT")]
static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::with_max_entries(maps::SOCK_REVNAT_MAX_ENTRIES, 0);

fn enabled() -> bool {
    config::flag(CFG_F_SOCKET_LB)
}

/// Whether the socket lives in the host's network namespace.
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    let (lo, hi) = (
        config::get(CFG_HOST_NETNS_LO),
        config::get(CFG_HOST_NETNS_HI),
    );
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    cookie == (u64::from(hi) << 32 | u64::from(lo))
}

/// connect()/sendmsg() to a frontend: point the socket at a backend instead.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) {
    if !enabled() {
        return;
    }
    // SAFETY: the context pointer the kernel handed to this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    let proto = sa.protocol as u8;
    let Some(fe) = lb::frontend(addr, port, proto) else {
        return;
    };
    if fe.flags() & SVC_F_HOST_PORT != 0 && !in_host_netns(ctx) {
        return;
    }
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let hash = tuple_hash(
        (cookie as u32).to_ne_bytes(),
        addr,
        (cookie >> 32) as u16,
        port,
        proto,
    );
    // No backend: leave the address alone; the TC path drops and counts the packet.
    let Some((_, backend)) = lb::select(&fe, hash) else {
        return;
    };
    sa.user_ip4 = u32::from_ne_bytes(backend.addr);
    sa.user_port = u32::from(backend.port.to_be());
    let key = SockRevNatKey {
        cookie,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: 0,
    };
    let value = SockRevNatValue {
        frontend_addr: addr,
        frontend_port: port,
        _pad: 0,
    };
    let _ = SOCK_REVNAT.insert(key, value, 0);
    stats::count(CNT_LB_SOCK);
}

/// recvmsg()/getpeername() of a socket sent to a backend: report the frontend.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) {
    // SAFETY: the context pointer the kernel handed to this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey {
        cookie,
        backend_addr: sa.user_ip4.to_ne_bytes(),
        backend_port: u16::from_be(sa.user_port as u16),
        _pad: 0,
    };
    // SAFETY: plain read of a map value.
    if let Some(v) = unsafe { SOCK_REVNAT.get(key) } {
        sa.user_ip4 = u32::from_ne_bytes(v.frontend_addr);
        sa.user_port = u32::from(v.frontend_port.to_be());
    }
}
