//! netctl: an eBPF container-networking dataplane and its controller, for one Linux host.
//!
//! - [`topology`]: the topology file, validation and the resolved plan;
//! - [`net`]: namespaces, links, routes, sysctls, NAT (Linux primitives);
//! - [`dataplane`]: the two dataplanes, [`dataplane::ebpf`] (the embedded object, pins,
//!   attach, map readers) and [`dataplane::iptables`] (the kube-proxy-style baseline);
//! - [`instance`]: what the controller and the supervisor share about one instance (paths,
//!   logs, process identity, failpoints);
//! - [`controller`]: `up`/`down` as a journaled reconcile of resources;
//! - [`cli`]: the `netctl` command line.

pub mod cli;
pub mod connectivity;
pub mod controller;
pub mod dataplane;
pub mod instance;
pub mod net;
pub mod output;
pub mod policy;
pub mod report;
pub mod services;
pub mod supervisor;
pub mod topology;

/// `tcp`, `udp`, `icmp` or `other` for an IP protocol number.
pub fn cli_protocol_name(proto: u8) -> &'static str {
    match proto {
        netctl_common::flow::IPPROTO_TCP => "tcp",
        netctl_common::flow::IPPROTO_UDP => "udp",
        netctl_common::flow::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}
