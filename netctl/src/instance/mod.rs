//! What everyone needs to know about one instance, and nothing else: where its files live
//! ([`paths`], [`private_file`]), how its logs are opened ([`logs`]), how its processes are
//! told apart from a recycled pid ([`ProcessId`]), its controller process ([`daemon`]) and
//! how to ask it ([`agent_client`]) and read its answers ([`agent_status`]), the plan it runs with ([`recorded_plan`]), the board
//! its controller's components publish their status on ([`StatusBoard`]), and its test
//! hooks ([`failpoint`]).
//!
//! It exists so that the one-shot reconcile, the long-running agent and the supervisor can
//! share these without importing each other: it stands below all three and imports none
//! of them (nor the command line).

pub mod agent_client;
pub mod agent_status;
pub mod daemon;
pub mod failpoint;
pub mod logs;
pub mod paths;
pub mod private_file;
mod process_id;
pub mod recorded_plan;
mod status_board;

pub use process_id::ProcessId;
pub use status_board::{StatusBoard, StatusRequest};
