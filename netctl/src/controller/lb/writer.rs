//! The one seam between the load-balancing component and a dataplane: whatever programs
//! the frontends (eBPF maps, iptables rules) takes the same [`Desired`] state, computed
//! once by [`super::desired`], and writes only what changed.

use super::{
    apply::{Changes, Reconciler, Refs},
    desired::{BackendKey, Desired},
};

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

impl LbWriter for Reconciler {
    fn apply(&mut self, desired: &Desired, refs: Option<&Refs>) -> anyhow::Result<Changes> {
        Reconciler::apply(self, desired, refs)
    }

    fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        Reconciler::backend_id(self, key)
    }

    fn is_draining(&self, key: &BackendKey) -> bool {
        Reconciler::is_draining(self, key)
    }
}
