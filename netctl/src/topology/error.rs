//! What can be wrong with a topology, and the limits that several sections check: the
//! bottom of `topology`, so that every resolver can report without importing another.

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::run::Kind;

/// Linux limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Replicas per service; far above what one host runs, low enough to catch typos.
pub const MAX_REPLICAS: u32 = 256;
/// Smallest conntrack table `up` accepts (entries).
pub const MIN_CONNTRACK: u32 = 1024;

/// One problem with a topology. `field` is the TOML path, e.g. `services.edge.address`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    Syntax(String),
    #[error("the topology has no services: nothing to bring up")]
    Empty,
    #[error("{field}: {value:?} is not an IPv4 CIDR ({reason})")]
    BadCidr {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field}: {value} has host bits set; the network is {network}")]
    SubnetHostBits {
        field: String,
        value: String,
        network: String,
    },
    #[error("{field}: {value} is too small for a network (at most /30)")]
    SubnetTooSmall { field: String, value: String },
    #[error("{field}: {value:?} is not an IPv4 address")]
    BadAddress { field: String, value: String },
    #[error("{field}: gateway {gateway} is not a host address of subnet {subnet}")]
    GatewayNotInSubnet {
        field: String,
        gateway: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("networks.{a}.subnet ({subnet_a}) overlaps networks.{b}.subnet ({subnet_b})")]
    OverlappingSubnets {
        a: String,
        subnet_a: Ipv4Net,
        b: String,
        subnet_b: Ipv4Net,
    },
    #[error("platform.service_cidr: {cidr} overlaps networks.{network}.subnet ({subnet})")]
    ServiceCidrOverlapsNetwork {
        cidr: Ipv4Net,
        network: String,
        subnet: Ipv4Net,
    },
    #[error("{field}: {address} is outside network {network:?} ({subnet})")]
    AddressOutsideSubnet {
        field: String,
        address: Ipv4Addr,
        network: String,
        subnet: Ipv4Net,
    },
    #[error("{field}: {address} is the {what} of network {network:?}")]
    AddressReserved {
        field: String,
        address: Ipv4Addr,
        what: &'static str,
        network: String,
    },
    #[error("{field}: address {address} is already used by {other}")]
    DuplicateAddress {
        field: String,
        address: Ipv4Addr,
        other: String,
    },
    #[error("{field}: {kind} name {name:?} is already used by {other}")]
    DuplicateName {
        field: String,
        kind: &'static str,
        name: String,
        other: String,
    },
    #[error(
        "{field}: interface name {name:?} is {len} bytes; Linux allows at most 15 \
         (shorten the name or the prefix)"
    )]
    NameTooLong {
        field: String,
        name: String,
        len: usize,
    },
    #[error("{field}: {name:?} is not a valid name ({reason})")]
    InvalidName {
        field: String,
        name: String,
        reason: &'static str,
    },
    #[error("{field}: unknown network {network:?} (known: {known})")]
    UnknownNetwork {
        field: String,
        network: String,
        known: String,
    },
    #[error("{field}: {value} is not a port (1-65535)")]
    BadPort { field: String, value: u32 },
    #[error(
        "{field}: missing (a service runs on a network, or lists backends = [\"ADDR:PORT\", ...])"
    )]
    MissingNetwork { field: String },
    #[error("{field}: a service that lists backends has no {what} of its own")]
    BackendsWithNamespaces { field: String, what: &'static str },
    #[error("{field}: {value:?} is not a backend (write \"10.0.2.10\" or \"10.0.2.10:7000\")")]
    BadBackend { field: String, value: String },
    #[error("{field}: {what}")]
    BadBackends { field: String, what: String },
    #[error("{field}: {value:?} is not a dataplane (ebpf or iptables)")]
    BadDataplane { field: String, value: String },
    #[error("{field}: {value} replicas (must be 1-{MAX_REPLICAS})")]
    BadReplicas { field: String, value: u32 },
    #[error("{field}: {value:?} is not a kind (known: {known})")]
    UnknownKind {
        field: String,
        value: String,
        known: String,
    },
    #[error("{field}: give either kind (a built-in program) or command, not both")]
    KindAndCommand { field: String },
    #[error("{field}: {reason}")]
    BadCommand { field: String, reason: &'static str },
    #[error("{field}: {reason}")]
    BadEnv { field: String, reason: &'static str },
    #[error("{field}: {reason}")]
    BadHealth { field: String, reason: String },
    #[error("{field}: {value:?} is not a duration ({reason}; e.g. \"500ms\", \"2s\", \"1m\")")]
    BadDuration {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("{field}: a {kind} service needs {needs} in the topology")]
    MissingDependency {
        field: String,
        kind: Kind,
        needs: String,
    },
    #[error(
        "{field}: {other} is already of kind {kind:?}; built-in services find each other by \
         kind, so each kind can appear once (use replicas for more instances)"
    )]
    DuplicateKind {
        field: String,
        kind: Kind,
        other: String,
    },
    #[error("{field}: {kind} keeps its own data and runs once; {replicas} replicas asked")]
    KindSingleReplica {
        field: String,
        kind: Kind,
        replicas: u32,
    },
    #[error("{field}: {value:?} is not a port (write 80, \"80/tcp\" or \"53/udp\")")]
    BadPortSpec { field: String, value: String },
    #[error("{field}: port {port} is listed twice")]
    DuplicatePort { field: String, port: String },
    #[error("{field}: {value:?} is not a load-balancing algorithm (round-robin, random, maglev)")]
    BadAlgorithm { field: String, value: String },
    #[error("{field}: VIP {vip} is not a host address of platform.service_cidr ({cidr})")]
    VipOutsideServiceCidr {
        field: String,
        vip: Ipv4Addr,
        cidr: Ipv4Net,
    },
    #[error("{field}: a VIP needs ports to balance")]
    VipWithoutPorts { field: String },
    #[error("{field}: platform.service_cidr ({cidr}) has no free address for another VIP")]
    ServiceCidrExhausted { field: String, cidr: Ipv4Net },
    #[error("{field}: unknown service {service:?} (services with ports: {known})")]
    UnknownService {
        field: String,
        service: String,
        known: String,
    },
    #[error("{field}: service {service:?} has no port {port}")]
    PortForwardToUnknownPort {
        field: String,
        service: String,
        port: String,
    },
    #[error(
        "{field}: {count} ports of services with lb = \"maglev\", but the dataplane has \
         {max} Maglev tables (one per port of a Maglev service): use round-robin or random \
         for some", max = netctl_common::lb::MAGLEV_TABLES
    )]
    TooManyMaglevPorts { field: String, count: usize },
    #[error(
        "the services need {entries} entries of the LB_SERVICES map (a master and a slot per \
         backend for every port and port forward), more than its {max}"
    )]
    TooManyFrontendEntries { entries: usize, max: usize },
    #[error("{field}: {message}")]
    BadPolicy { field: String, message: String },
    #[error("{field}: unknown peer {name:?} (services, \"host\", \"world\" or \"any\")")]
    UnknownPeer { field: String, name: String },
    #[error("policy.rules[{a}] and policy.rules[{b}] conflict: {what}")]
    ConflictingRules { a: usize, b: usize, what: String },
    #[error("dataplane.conntrack_max: {value} entries is too small (at least {min})", min = MIN_CONNTRACK)]
    ConntrackTooSmall { value: u32 },
    #[error("network {network:?} ({subnet}) has no free address left for {field}")]
    SubnetExhausted {
        field: String,
        network: String,
        subnet: Ipv4Net,
    },
}

/// All the problems of one topology source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    pub source_name: String,
    pub errors: Vec<TopologyError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {} problem{} in the topology",
            self.source_name,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
