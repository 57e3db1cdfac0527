//! netctl's eBPF dataplane: the TC pipeline attached to both directions of every host-side
//! veth. One parse, then each stage in turn; today the only stage is per-flow accounting.
//!
//! Entry points stay thin (`tc_ingress` -> `try_pipeline`) so that the verifier-facing code
//! lives in small, separately readable modules.
#![no_std]
#![no_main]
// eBPF has atomic add/or instructions but `core::sync::atomic` is not available for
// bpfel-unknown-none, so the flow counters use the intrinsics directly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod flow;
mod parse;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

/// Which hook of the host-side veth the program runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress of the host-side end: packets the namespace sends.
    FromEndpoint,
    /// Egress of the host-side end: packets delivered into the namespace.
    ToEndpoint,
}

#[classifier]
pub fn netctl_tc_ingress(ctx: TcContext) -> i32 {
    pipeline(&ctx, Hook::FromEndpoint)
}

#[classifier]
pub fn netctl_tc_egress(ctx: TcContext) -> i32 {
    pipeline(&ctx, Hook::ToEndpoint)
}

#[inline(always)]
fn pipeline(ctx: &TcContext, hook: Hook) -> i32 {
    // Anything we cannot parse (ARP, IPv6, truncated frames) passes untouched: accounting
    // must never change what the network does.
    if let Some(pkt) = parse::parse_ipv4(ctx) {
        flow::account(ctx, &pkt, hook);
    }
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
