//! The one-shot reconcile of `up` and `down`: turns a [`Plan`](crate::topology::Plan) into
//! kernel objects and back.
//!
//! Everything `up` makes is a [`Resource`] recorded in the instance's state file *before* it
//! is created, so that a failure (or a crash) half-way leaves a record of exactly what may
//! exist, and `down` or the next `up` can remove it.

pub mod down;
pub mod preflight;
pub mod resource;
pub mod state;
pub mod up;

pub use resource::Resource;
pub use state::State;
