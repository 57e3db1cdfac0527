//! Linux networking primitives netctl builds with: named network namespaces, links,
//! addresses and routes over rtnetlink, sysctls, the bpffs mount, the nftables NAT table and
//! the iptables tools.
//! Nothing here knows about topologies; the controller composes these pieces.

pub mod bpffs;
pub mod cgroup;
pub mod conntrack;
pub mod host_firewall;
pub mod iptables;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod sysctl;
