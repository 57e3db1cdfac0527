//! The eBPF dataplane's [`LbWriter`]: the [`Reconciler`] of the LB maps.

use super::apply::Reconciler;
pub use crate::dataplane::lb::LbWriter;
use crate::dataplane::lb::{BackendKey, Changes, Desired, Refs};

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
