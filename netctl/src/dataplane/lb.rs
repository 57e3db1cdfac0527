//! The seam between the load-balancing component and a dataplane: the desired state of
//! the frontends ([`Desired`], computed once by the controller from the plan, health and
//! drains), and [`LbWriter`], which each dataplane implements to bring its kernel state
//! (eBPF maps, iptables rules) to it, writing only what changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
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

pub trait LbWriter: Send {
    /// Brings the dataplane to `desired`. `refs` (live connections per backend id, from the
    /// last conntrack pass) lets draining backends go once idle where the dataplane keeps
    /// them (eBPF); others ignore it.
    fn apply(&mut self, desired: &Desired, refs: Option<&Refs>) -> anyhow::Result<Changes>;

    /// The dataplane's id of a backend, where it has ids.
    fn backend_id(&self, key: &BackendKey) -> Option<u32>;

    /// True while a removed backend still serves its established connections.
    fn is_draining(&self, key: &BackendKey) -> bool;
}
