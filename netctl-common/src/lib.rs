//! Types shared by the eBPF dataplane (`netctl-ebpf`) and the user-space controller.
//!
//! Everything here is `#[repr(C)]`, `Copy` and has its size pinned by a compile-time
//! assertion, because the same bytes are written by one side and read by the other.
//! Every map is described in `bpf-maps.md` at the repository root; change both together.
#![cfg_attr(not(test), no_std)]

pub mod ct;
pub mod event;
pub mod flow;
pub mod lb;
pub mod maps;
pub mod policy;
pub mod sock;
pub mod stats;

pub use ct::CtEntry;
pub use flow::{FlowKey, FlowStats};
pub use lb::{Backend, ServiceKey, ServiceValue};
pub use stats::DropReason;

/// Asserts at compile time that a map type has the layout `bpf-maps.md` documents.
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
