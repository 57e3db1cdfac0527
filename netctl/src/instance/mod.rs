//! What everyone needs to know about one instance, and nothing else: where its files live
//! ([`paths`]), how its logs are opened ([`logs`]), how its processes are told apart from
//! a recycled pid ([`ProcessId`]), the board its controller's components publish their
//! status on ([`StatusBoard`]), and its test hooks ([`failpoint`]).
//!
//! It exists so that the controller and the supervisor can share these without importing
//! each other: it stands below both and imports neither (nor the command line).

pub mod failpoint;
pub mod logs;
pub mod paths;
mod process_id;
mod status_board;

pub use process_id::ProcessId;
pub use status_board::{StatusBoard, StatusRequest};
