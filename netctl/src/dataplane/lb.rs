//! The seam between the load-balancing component and a dataplane: the desired state of
//! the frontends ([`Desired`], computed once by the controller from the plan, health and
//! drains), and [`LbWriter`], which each dataplane implements to bring its kernel state
//! (eBPF maps, iptables rules) to it, writing only what changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    time::Instant,
};

use crate::topology::{Algorithm, Proto};

/// A backend as the dataplane addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl BackendKey {
    /// Stable name for Maglev.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.addr, self.port, self.proto.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub key: FrontendKey,
    pub service: String,
    pub service_id: u32,
    pub algorithm: Algorithm,
    pub flags: u8,
    /// Healthy, undrained backends with their weights, in a stable order.
    pub backends: Vec<(BackendKey, u32)>,
    /// A host port: the service frontend it forwards to.
    pub target: Option<FrontendKey>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// Backends of instances that failed their health check: out of the maps at once, so
    /// UDP flows choose again.
    pub dead: BTreeSet<BackendKey>,
    /// Backends drained on request: no new connections, established ones continue.
    pub drained: BTreeSet<BackendKey>,
}

/// Live connections per backend id, as of one conntrack pass.
#[derive(Debug, Clone)]
pub struct Refs {
    pub per_backend: HashMap<u32, usize>,
    /// When the pass started.
    pub taken: Instant,
}

/// What one pass changed, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    /// What could not be written this pass (each tried again on the next one).
    pub errors: Vec<String>,
}

impl Changes {
    /// Whether the pass wrote or removed anything.
    pub fn any(&self) -> bool {
        self.frontends_written
            + self.frontends_removed
            + self.backends_written
            + self.backends_removed
            > 0
    }
}

/// What one garbage-collection pass of a dataplane's own connection table found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub entries: usize,
    pub expired: usize,
    /// Expired in the snapshot but renewed before their turn to go (a new connection on
    /// the same tuple, or a late packet): kept.
    pub renewed: usize,
    /// Live entries per backend id (for draining backends).
    pub per_backend: HashMap<u32, usize>,
}

/// One garbage-collection pass, to run off the async threads (a full table is a lot of
/// syscalls).
pub type GcJob = Box<dyn FnOnce() -> anyhow::Result<GcReport> + Send>;

/// What the load-balancing component writes through; each dataplane implements it and
/// `dataplane::open_lb_writer` picks one, so the component never asks which it has.
pub trait LbWriter: Send {
    /// Brings the dataplane to `desired`. `refs` (live connections per backend id, from the
    /// last conntrack pass) lets draining backends go once idle where the dataplane keeps
    /// them (eBPF); others ignore it.
    fn apply(&mut self, desired: &Desired, refs: Option<&Refs>) -> anyhow::Result<Changes>;

    /// The dataplane's id of a backend, where it has ids.
    fn backend_id(&self, key: &BackendKey) -> Option<u32>;

    /// True while a removed backend still serves its established connections.
    fn is_draining(&self, key: &BackendKey) -> bool;

    /// True while some backend drains (a conntrack pass may let it go).
    fn any_draining(&self) -> bool {
        false
    }

    /// Addresses of the backends the dataplane served when this writer adopted it: a
    /// replaced controller keeps them until their first health check says otherwise.
    fn serving_addrs(&self) -> HashSet<Ipv4Addr> {
        HashSet::new()
    }

    /// The plan's dataplane flags (socket LB, flow events), where the kernel reads them.
    fn set_config_flags(&mut self, _flags: u32) -> anyhow::Result<()> {
        Ok(())
    }

    /// A pass over the dataplane's connection table, where the dataplane keeps its own
    /// (eBPF); `None` where the kernel's conntrack ages entries itself (iptables).
    fn conntrack_gc(&self) -> Option<GcJob> {
        None
    }
}
