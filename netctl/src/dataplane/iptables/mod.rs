//! The iptables dataplane (`netctl up --dataplane iptables`): the same services, VIPs, port
//! forwards and masquerade as the eBPF dataplane, programmed the way kube-proxy does, as
//! the baseline every benchmark compares against.
//!
//! - [`names`]: the instance's chain names (`NCTL-<tag>-…`);
//! - [`rules`]: the rules as `iptables-restore` text (pure, unit-tested), and reading them
//!   back for `netctl services`;
//! - [`base`]: the base chains and jumps `up` makes and `down` removes (a journaled
//!   resource);
//! - [`writer`]: the controller's writer of per-service chains;
//! - [`policy`]: the network policy and rate limits (Calico-iptables style), from the
//!   same compiled entries as the eBPF maps;
//! - [`conntrack`]: the kernel's conntrack table, for `netctl conntrack` in this mode.

pub mod base;
pub mod conntrack;
pub mod names;
pub mod policy;
pub mod rules;
pub mod view;
pub mod writer;

pub use names::Chains;
pub use writer::IptablesWriter;
