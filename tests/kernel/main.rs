//! The eBPF programs in the real kernel, without namespaces: verdicts, NAT, conntrack and
//! flow counters checked packet by packet with BPF_PROG_TEST_RUN (as root).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod bpf_conntrack;
mod bpf_flows;
mod bpf_fuzz;
mod bpf_lb;
mod bpf_policy;
