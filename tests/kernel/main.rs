//! The eBPF programs in the real kernel, without namespaces: verdicts, NAT, conntrack and
//! flow counters checked packet by packet with BPF_PROG_TEST_RUN (as root).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod bpf_flows;
mod bpf_fuzz;
mod bpf_lb;
mod bpf_policy;
