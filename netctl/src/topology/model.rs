//! The topology file as written: serde types that mirror the TOML, nothing derived.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{error::TopologyError, health::HealthSpec};

/// A whole topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub platform: PlatformSpec,
    /// Networks by name, in file order.
    #[serde(default)]
    pub networks: IndexMap<String, NetworkSpec>,
    /// Services by name, in file order (addresses are handed out in this order).
    #[serde(default)]
    pub services: IndexMap<String, ServiceSpec>,
    #[serde(default)]
    pub nat: NatConfig,
    #[serde(default)]
    pub dataplane: DataplaneSpec,
    /// Host ports forwarded to a service (the seed's 8080 -> edge:80).
    #[serde(default)]
    pub port_forwards: Vec<PortForwardSpec>,
    /// Network policy: allow/deny rules, default-deny destinations, rate limits.
    #[serde(default)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub metrics: MetricsSpec,
}

/// The controller's Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// `ADDRESS:PORT` to serve `/metrics` on; `""` turns it off.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9469".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSpec {
    /// Shown by `status`; no effect on names.
    #[serde(default = "default_platform_name")]
    pub name: String,
    /// Put in front of every namespace, bridge and veth name netctl creates, so that
    /// several platforms (or test runs) can share one host. Also names the instance.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Where service VIPs come from.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// Host interfaces through which outside traffic reaches port forwards; default: the
    /// interfaces of the host's default routes.
    pub uplinks: Option<Vec<String>>,
}

impl Default for PlatformSpec {
    fn default() -> Self {
        Self {
            name: default_platform_name(),
            prefix: default_prefix(),
            service_cidr: default_service_cidr(),
            uplinks: None,
        }
    }
}

fn default_service_cidr() -> String {
    "10.96.0.0/16".to_string()
}

fn default_platform_name() -> String {
    "netctl".to_string()
}

pub fn default_prefix() -> String {
    "nc-".to_string()
}

/// One bridge and its subnet. The host owns the gateway address on the bridge and routes
/// between networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// IPv4 CIDR, e.g. `172.20.0.0/24`.
    pub subnet: String,
    /// The bridge's address and every namespace's default route; default: first host.
    pub gateway: Option<String>,
    /// Bridge name; default: prefix + network name.
    pub bridge: Option<String>,
}

/// A service: one namespace per replica, each with one veth into `network`; or, with
/// `backends`, a VIP over addresses listed by hand (like a Kubernetes Service without a
/// selector and its Endpoints), with no namespace of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The network of the service's namespaces (not with `backends`).
    pub network: Option<String>,
    /// Address of the first replica; later replicas take the following addresses.
    /// Default: the next free addresses of the subnet.
    pub address: Option<String>,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Ports the service listens on: `80` (TCP) or `"53/udp"`. Each becomes a frontend
    /// `VIP:port` load-balanced over the replicas.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The service's virtual IP; default: the next free address of `platform.service_cidr`.
    pub vip: Option<String>,
    /// Backend selection: `round-robin` (default), `random` or `maglev`.
    pub lb: Option<String>,
    /// Namespace (and host-side veth) name; default: prefix + service name, with
    /// `-1`, `-2`, ... per replica when there are several.
    pub namespace: Option<String>,
    /// Backends listed by hand instead of namespaces: `"10.0.2.10"` (every service port
    /// on that address) or `"10.0.2.10:7000"` (the service's one port goes to 7000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// A built-in program to run in each namespace: `registry`, `gateway`, `product`,
    /// `order` (netctl's own services), `redis`, `postgres`, `nginx` (Debian programs).
    pub kind: Option<String>,
    /// Any other program to run in each namespace (argv). Not together with `kind`.
    pub command: Option<Vec<String>>,
    /// Extra environment for what runs (with `kind`, overrides what netctl sets).
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// How to tell that it serves; default for a `kind`: HTTP `/health`, or TCP for
    /// redis and postgres.
    pub health: Option<HealthSpec>,
}

fn one() -> u32 {
    1
}

/// Masquerade for traffic that leaves the platform through the host's uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    #[serde(default = "yes")]
    pub masquerade: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self { masquerade: true }
    }
}

fn yes() -> bool {
    true
}

/// A port as written: a number (TCP) or `"PORT/PROTO"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u32),
    Text(String),
}

/// How the eBPF dataplane is set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSpec {
    /// Socket-level load balancing: connect()/sendmsg() to a VIP go straight to a backend.
    #[serde(default = "yes")]
    pub socket_lb: bool,
    /// Capacity of the conntrack table in entries (two per connection).
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: u32,
    /// `ebpf` (default): TC and socket programs; `iptables`: kube-proxy-style rules, the
    /// baseline. `netctl up --dataplane` overrides it.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Send an event for every new connection (`netctl monitor`); drops always are.
    #[serde(default = "yes")]
    pub flow_events: bool,
}

impl Default for DataplaneSpec {
    fn default() -> Self {
        Self {
            socket_lb: true,
            conntrack_max: default_conntrack_max(),
            mode: default_mode(),
            flow_events: true,
        }
    }
}

fn default_mode() -> String {
    "ebpf".to_string()
}

fn default_conntrack_max() -> u32 {
    netctl_common::maps::CT_MAX_ENTRIES
}

/// `[[port_forwards]]`: traffic to the host's `host_port` goes to `service`'s `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForwardSpec {
    pub host_port: u32,
    pub service: String,
    /// The service port; default: the service's first port.
    pub port: Option<u32>,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
}

/// `[policy]` as written; the policy resolver turns it into the plan's `Policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub default_deny: Vec<String>,
    #[serde(default = "yes")]
    pub allow_host: bool,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            default_deny: Vec::new(),
            allow_host: true,
            rules: Vec::new(),
            rate_limits: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub from: Option<Vec<String>>,
    pub to: String,
    pub ports: Option<Vec<PortSpec>>,
    /// `allow` (default) or `deny`.
    pub action: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sources (services, "host", "world") this limit is for; omitted: any source without
    /// a limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    pub to: String,
    pub rate: String,
    pub burst: u32,
    /// `source` (address, default) or `service` (all replicas of the source share).
    pub per: Option<String>,
}

impl Topology {
    /// Parses TOML; unknown fields are errors so that typos do not pass silently.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        toml::from_str(text).map_err(|e| TopologyError::Syntax(e.to_string().trim().to_string()))
    }
}
