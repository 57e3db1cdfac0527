//! The two dataplanes a platform can run on: [`ebpf`] (the embedded object, its pins,
//! loading and attaching, typed readers of the pinned maps) and [`iptables`] (the
//! kube-proxy-style baseline: chains, rules, the compiled policy as filter chains), and
//! what the controller hands both: [`lb`], the desired frontends and the writer seam; and
//! [`host_facts`], what of the host a plan's dataplane uses.

pub mod ebpf;
pub mod host_facts;
pub mod iptables;
pub mod lb;

use std::net::Ipv4Addr;

use crate::{
    policy::compile::Compiled,
    topology::{DataplaneMode, Plan},
};
pub use ebpf::conntrack::Connection;

/// What the CLI reads back from the kernel, whichever dataplane an instance runs: the same
/// types from both, so that a command opens the dataplane, asks and renders.
pub trait Dataplane: Send + Sync {
    /// The frontends (VIPs and host ports) the kernel serves now.
    fn frontends(&self) -> anyhow::Result<Vec<ServedFrontend>>;
    /// The tracked connections (eBPF conntrack, or the kernel's for iptables).
    fn connections(&self) -> anyhow::Result<Vec<Connection>>;
    /// The policy in force; `None` where the dataplane holds none yet (iptables before the
    /// controller wrote its chains; the eBPF maps always hold a generation, 0 at first).
    fn policy(&self) -> anyhow::Result<Option<InstalledPolicy>>;
    /// Packets dropped per (source identity, destination identity, reason); the iptables
    /// dataplane gives `ID_ANY` as the source of drops by entries and limits for any source.
    fn drop_pairs(&self) -> anyhow::Result<Vec<DropPair>>;
    /// Only the generation of the policy in force (0 before any), which `policy apply`
    /// polls for.
    fn policy_generation(&self) -> anyhow::Result<u32> {
        Ok(self.policy()?.map_or(0, |p| p.generation))
    }

    /// Whether the policy in force gives `addr` the identity `identity` (what a new
    /// endpoint waits for before it is served).
    fn has_identity(&self, addr: Ipv4Addr, identity: u32) -> anyhow::Result<bool> {
        Ok(self
            .policy()?
            .is_some_and(|p| p.identities.contains(&(addr, identity))))
    }

    /// Hooks an endpoint's host-side interface (a bridge port) into the dataplane: the
    /// TC programs (eBPF), hairpin mode (iptables). Idempotent.
    fn attach_endpoint(&self, host_ifname: &str) -> anyhow::Result<()>;
    /// Undoes [`Self::attach_endpoint`]; succeeds when there is nothing to undo (the
    /// interface may be gone already).
    fn detach_endpoint(&self, host_ifname: &str) -> anyhow::Result<()>;
}

/// The dataplane `plan` runs, for `instance`: the one place that chooses by mode (as
/// netavark's `get_supported_firewall_driver`).
pub fn open<'a>(plan: &'a Plan, instance: &str) -> Box<dyn Dataplane + 'a> {
    match plan.dataplane.mode {
        DataplaneMode::Ebpf => Box::new(ebpf::view::EbpfView::new(plan, instance)),
        DataplaneMode::Iptables => Box::new(iptables::view::IptablesView::new(plan, instance)),
    }
}

/// The load balancer's writer for `instance`'s dataplane, adopting what the kernel holds
/// (the other place that chooses by mode: writes, where [`open`] reads).
pub fn open_lb_writer(plan: &Plan, instance: &str) -> anyhow::Result<Box<dyn lb::LbWriter>> {
    Ok(match plan.dataplane.mode {
        DataplaneMode::Ebpf => Box::new(ebpf::lb_writer::Reconciler::for_instance(
            ebpf::Pins::for_instance(instance),
        )?),
        DataplaneMode::Iptables => Box::new(iptables::IptablesWriter::new(instance)),
    })
}

/// Packets one (source identity, destination identity) pair had dropped for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropPair {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// [`netctl_common::DropReason::name`].
    pub reason: &'static str,
    pub packets: u64,
}

/// A frontend as the kernel serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServedFrontend {
    pub service: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: &'static str,
    pub host_port: bool,
}

/// The policy as the kernel has it: its generation, the compiled entries and limits, and
/// the address -> identity table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPolicy {
    pub generation: u32,
    pub compiled: Compiled,
    pub identities: Vec<(Ipv4Addr, u32)>,
}
