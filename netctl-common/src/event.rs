//! Events the dataplane streams to user space on the `EVENTS` ring buffer: every drop, and
//! every new connection.

use crate::FlowKey;

pub const EVENT_DROP: u8 = 1;
pub const EVENT_NEW_FLOW: u8 = 2;

/// One event (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// `CLOCK_BOOTTIME` ns.
    pub time_ns: u64,
    /// The packet's 5-tuple as the hook saw it (before NAT).
    pub tuple: FlowKey,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// `DropReason` number for drops; 0 for new flows.
    pub reason: u32,
    /// Interface the hook runs on.
    pub ifindex: u32,
    /// `EVENT_DROP` or `EVENT_NEW_FLOW`.
    pub kind: u8,
    /// `HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 6],
}
crate::assert_size!(Event, 48);

pub const HOOK_ENDPOINT_INGRESS: u8 = 1;
pub const HOOK_ENDPOINT_EGRESS: u8 = 2;
pub const HOOK_UPLINK_INGRESS: u8 = 3;
pub const HOOK_UPLINK_EGRESS: u8 = 4;

/// Size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// The dataplane wakes the ring buffer's reader only once this much is waiting; otherwise
/// the reader looks every [`EVENTS_POLL_MS`]. A wakeup per event (the ring buffer's
/// default) cost a fifth of the new-connection rate on two cores.
pub const EVENTS_WAKEUP_BYTES: u64 = 64 * 1024;
/// How often the reader drains the ring buffer without being woken (milliseconds).
pub const EVENTS_POLL_MS: u64 = 50;

/// Key of `DROP_PAIRS`: drops by (source identity, destination identity, reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DropPairKey {
    pub src_identity: u32,
    pub dst_identity: u32,
    pub reason: u32,
}
crate::assert_size!(DropPairKey, 12);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::DropPairKey {}
}
