//! Map names, capacities and pinning layout: the one place both sides take them from.
//!
//! Maps are pinned by name under `<pin root>/<instance>/maps/`, links under
//! `<pin root>/<instance>/links/`; see `bpf-maps.md`.

/// bpffs directory under which every netctl instance keeps its pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netctl";

/// `FLOWS`: LRU hash, [`crate::FlowKey`] -> [`crate::FlowStats`].
pub const FLOWS: &str = "FLOWS";
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;

/// Every map of the eBPF object. The loader pins exactly these (the object declares no
/// pinning itself, so tests can load it without bpffs) and refuses an object with others.
pub const ALL: &[&str] = &[FLOWS];

/// Bit of `skb->mark` the TC program sets on a packet it counted at the ingress of a
/// host-side veth, so that the egress hook of the destination veth does not count it again.
/// Chosen clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0F00 ranges.
pub const MARK_COUNTED: u32 = 0x0100_0000;

/// Names of the TC programs in the eBPF object.
pub const PROG_TC_INGRESS: &str = "netctl_tc_ingress";
pub const PROG_TC_EGRESS: &str = "netctl_tc_egress";
