//! netctl: an eBPF container-networking dataplane and its controller, for one Linux host.
//!
//! - [`topology`]: the topology file, validation and the resolved plan;
//! - [`net`]: namespaces, links, routes, sysctls, NAT (Linux primitives);
//! - [`dataplane`]: the two dataplanes, [`dataplane::ebpf`] (the embedded object, pins,
//!   attach, map readers) and [`dataplane::iptables`] (the kube-proxy-style baseline);
//! - [`instance`]: what the reconcile, the agent and the supervisor share about one
//!   instance (paths, logs, process identity, the controller process and its API client,
//!   failpoints);
//! - [`supervisor`]: the processes that run in the namespaces;
//! - [`reconcile`]: `up`/`down`, run once, as a journaled reconcile of resources;
//! - [`agent`]: the long-running controller and its components (load balancing, policy,
//!   events, metrics, supervision) behind its API;
//! - [`cli`]: the `netctl` command line.
//!
//! Arrows run one way: cli -> reconcile | agent -> components -> dataplane, net, topology.

pub mod agent;
pub mod cli;
pub mod connectivity;
pub mod dataplane;
pub mod endpoint;
pub mod instance;
pub mod net;
pub mod output;
pub mod policy;
pub mod reconcile;
pub mod report;
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
