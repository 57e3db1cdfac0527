//! netctl's eBPF dataplane: one TC pipeline attached to both directions of every host-side
//! veth (and to the uplinks, for host ports), plus cgroup socket programs for socket-level
//! load balancing. One parse, then each stage in turn: conntrack, service load balancing
//! and NAT, per-flow accounting.
//!
//! Entry points stay thin (`tc_ingress` -> `try_pipeline`) so that the verifier-facing code
//! lives in small, separately readable modules.
#![no_std]
#![no_main]
// eBPF has atomic add/or instructions but `core::sync::atomic` is not available for
// bpfel-unknown-none, so the flow counters use the intrinsics directly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod config;
mod conntrack;
mod events;
mod flow;
mod lb;
mod nat;
mod parse;
mod policy;
mod service;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_boot_ns,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use events::Drop;
use netctl_common::{
    FlowKey,
    event::{HOOK_ENDPOINT_EGRESS, HOOK_ENDPOINT_INGRESS, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS},
    maps::{MARK_PROBE, MARK_TRACKED},
};
use service::At;

/// Which hook of the host-side veth the program runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress of the host-side end: packets the namespace sends.
    FromEndpoint,
    /// Egress of the host-side end: packets delivered into the namespace.
    ToEndpoint,
}

/// Packets a namespace sends: conntrack, policy, load balancing, NAT, accounting. Packets
/// without ports (ICMP, other protocols) get conntrack and policy too.
#[classifier]
pub fn netctl_tc_ingress(ctx: TcContext) -> i32 {
    let at = at(&ctx, HOOK_ENDPOINT_INGRESS);
    let mut pkt = match parse::parse_ipv4(&ctx) {
        Ok(Some(pkt)) => pkt,
        // Not IPv4 (ARP, IPv6): not ours to judge.
        Ok(None) => return TC_ACT_OK,
        Err(reason) => return drop(&Drop::new(reason), &FlowKey::default(), at),
    };
    let mut key = pkt.key;
    if pkt.tracked {
        match service::from_endpoint(&ctx, &mut pkt, at) {
            Ok(k) => key = k,
            Err(d) => return drop(&d, &pkt.key, at),
        }
        set_mark(&ctx, MARK_TRACKED);
    }
    flow::account(&ctx, &key, pkt.tcp_flags, Hook::FromEndpoint, at.now);
    TC_ACT_OK
}

/// Packets delivered into a namespace: policy and conntrack for what comes from the host
/// or outside (the rest was judged at the sender's hook), accounting (each packet once).
/// netctl's own probes (`MARK_PROBE`) are tracked but not judged.
#[classifier]
pub fn netctl_tc_egress(ctx: TcContext) -> i32 {
    let at = at(&ctx, HOOK_ENDPOINT_EGRESS);
    let pkt = match parse::parse_ipv4(&ctx) {
        Ok(Some(pkt)) => pkt,
        Ok(None) => return TC_ACT_OK,
        Err(reason) => return drop(&Drop::new(reason), &FlowKey::default(), at),
    };
    let mark = mark(&ctx);
    if pkt.tracked
        && mark & MARK_TRACKED == 0
        && let Err(d) = service::to_endpoint(&pkt, at, mark & MARK_PROBE != 0)
    {
        return drop(&d, &pkt.key, at);
    }
    flow::account(&ctx, &pkt.key, pkt.tcp_flags, Hook::ToEndpoint, at.now);
    TC_ACT_OK
}

/// Packets arriving on an uplink: host ports (port forwards) are load-balanced here.
/// Everything else belongs to the host and passes untouched, malformed or not.
#[classifier]
pub fn netctl_uplink_ingress(ctx: TcContext) -> i32 {
    let at = at(&ctx, HOOK_UPLINK_INGRESS);
    if let Ok(Some(mut pkt)) = parse::parse_ipv4(&ctx)
        && pkt.has_ports
    {
        match service::from_uplink(&ctx, &mut pkt, at) {
            Ok(true) => set_mark(&ctx, MARK_TRACKED),
            Ok(false) => {}
            Err(d) => return drop(&d, &pkt.key, at),
        }
    }
    TC_ACT_OK
}

/// Packets leaving through an uplink: host-port replies get the host's address back.
#[classifier]
pub fn netctl_uplink_egress(ctx: TcContext) -> i32 {
    let at = at(&ctx, HOOK_UPLINK_EGRESS);
    if let Ok(Some(mut pkt)) = parse::parse_ipv4(&ctx)
        && pkt.has_ports
        && let Err(d) = service::to_uplink(&ctx, &mut pkt, at)
    {
        return drop(&d, &pkt.key, at);
    }
    TC_ACT_OK
}

#[cgroup_sock_addr(connect4)]
pub fn netctl_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netctl_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn netctl_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn netctl_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx);
    1
}

#[inline(always)]
fn drop(d: &Drop, tuple: &FlowKey, at: At) -> i32 {
    events::dropped(d, tuple, at.ifindex, at.hook, at.now);
    TC_ACT_SHOT
}

#[inline(always)]
fn at(ctx: &TcContext, hook: u8) -> At {
    At {
        // SAFETY: the context pointer the kernel handed to this program.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        hook,
        now: now(),
    }
}

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel handed to this program.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn set_mark(ctx: &TcContext, bit: u32) {
    // SAFETY: as above; `mark` is writable from TC programs.
    unsafe { (*ctx.skb.skb).mark |= bit };
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
