//! The eBPF side as the controller sees it: the embedded object, where an instance pins its
//! programs, maps and links, loading/attaching, and typed readers of the pinned maps.

pub mod bpf_sys;
pub mod clock;
pub mod conntrack;
pub mod events;
pub mod flows;
pub mod lb;
pub mod lb_writer;
pub mod loader;
pub mod maglev;
pub mod pins;
pub mod policy;
pub mod stats;
pub mod view;

pub use loader::{LoadOptions, SockProgram, TcProgram};
pub use pins::Pins;

/// The eBPF object built from `netctl-ebpf` by the build script, embedded so that the
/// `netctl` binary is all a user has to copy.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl.bpf.o"));
