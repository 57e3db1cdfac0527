//! The long-running controller of one instance (`netctl controller`, or `up --foreground`):
//! the [`runtime`] runs the components (endpoints, load balancing, policy, events, metrics
//! and the supervisor) as tasks and serves the [`api`]; [`component`] is the contract
//! between them.
//! It reads only the plan the reconcile recorded, never the reconcile itself.

pub mod api;
pub mod component;
pub mod endpoints;
pub mod events;
pub mod lb;
pub mod metrics;
pub mod policy;
pub mod runtime;
