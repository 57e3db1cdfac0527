//! netctl for real: namespaces, bridges, veths, the eBPF programs or the iptables
//! dataplane, the controller and the reference services, driven through the `netctl`
//! binary with real traffic (as root). Each module is one area; every test takes its own
//! slot (prefix and subnets), so they run in parallel and after a crashed run.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod api_schema;
mod app;
mod cli;
mod controller;
mod endpoints;
mod faults;
mod iptables;
mod lb;
mod observe;
mod operations;
mod orders;
mod platform;
mod policy;
mod policy_diff;
mod resilience;
mod soak;
mod supervision;
