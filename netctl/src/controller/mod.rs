//! The controller: turns a [`Plan`](crate::topology::Plan) into kernel objects and back.
//!
//! Everything `up` makes is a [`Resource`] recorded in the instance's state file *before* it
//! is created, so that a failure (or a crash) half-way leaves a record of exactly what may
//! exist, and `down` or the next `up` can remove it.

pub mod agent;
pub mod api;
pub mod component;
pub mod daemon;
pub mod down;
pub mod events;
pub mod host_facts;
pub mod lb;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod resource;
pub mod state;
pub mod up;

pub use resource::Resource;
pub use state::State;
