//! The validated, fully resolved form of a topology: every name and address netctl will
//! create, computed once so that `up`, `down`, `status` and `flows` agree on them.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{health::HealthCheck, run::Kind, run::Run};

/// Name of the namespace end of every veth, as Docker and Kubernetes do.
pub const ENDPOINT_IFNAME: &str = "eth0";

/// Fields added after the first release default when an older state file is read, so that
/// `down` can always remove what an older `up` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub platform: String,
    pub prefix: String,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub masquerade: bool,
    #[serde(default)]
    /// Services with ports, their VIPs and algorithms, in file order.
    pub services: Vec<Service>,
    #[serde(default)]
    pub service_cidr: Ipv4Net,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    /// Explicit uplinks; `None`: the interfaces of the host's default routes.
    #[serde(default)]
    pub uplinks: Option<Vec<String>>,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub policy: Policy,
    /// Where the controller serves Prometheus metrics (`None`: nowhere).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Names for addresses and identities, built on first use (`Plan::names`).
    #[serde(skip)]
    pub names: super::names::NamesCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => netctl_common::flow::IPPROTO_TCP,
            Proto::Udp => netctl_common::flow::IPPROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            netctl_common::flow::IPPROTO_TCP => Some(Proto::Tcp),
            netctl_common::flow::IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.name())
    }
}

/// Backend selection algorithm of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    RoundRobin,
    Random,
    Maglev,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
        }
    }

    /// `ServiceValue::algorithm` in the maps.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::RoundRobin => netctl_common::lb::ALG_ROUND_ROBIN,
            Algorithm::Random => netctl_common::lb::ALG_RANDOM,
            Algorithm::Maglev => netctl_common::lb::ALG_MAGLEV,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "round-robin" => Some(Algorithm::RoundRobin),
            "random" => Some(Algorithm::Random),
            "maglev" => Some(Algorithm::Maglev),
            _ => None,
        }
    }
}

/// A load-balanced service: `vip:port` for each port, over the service's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// Numeric id in the maps (1-based, file order).
    pub id: u32,
    pub vip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub algorithm: Algorithm,
    /// Backends listed by hand (`backends = [...]`); empty for a service of namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<ManualBackend>,
    /// The service's `health` setting (or its kind's default): how load balancing checks
    /// each backend, as the supervisor checks each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl Service {
    /// The service's first TCP port.
    pub fn first_tcp_port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.proto == Proto::Tcp)
            .map(|p| p.port)
    }

    /// How load balancing checks a backend of this service: the service's `health`, else
    /// a fast TCP connect to its first TCP port; `None`: nothing to check (UDP only).
    /// `target_port` is the port a listed backend (`"ADDR:PORT"`) serves on: it replaces
    /// the service's port in the check, unless the check names a port of its own.
    pub fn backend_check(&self, target_port: Option<u16>) -> Option<HealthCheck> {
        let first = self.first_tcp_port();
        match &self.health {
            Some(h) => Some(match target_port {
                Some(p) if Some(h.port) == first => h.on_port(p),
                _ => h.clone(),
            }),
            None => first.map(|p| HealthCheck::lb_default(target_port.unwrap_or(p))),
        }
    }
}

/// A backend listed by hand: an address, and the port every frontend port goes to
/// (`None`: the same port as the frontend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ManualBackend {
    pub addr: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl std::fmt::Display for ManualBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_port: u16,
    pub proto: Proto,
    pub service: String,
    /// The service port it forwards to.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataplane {
    pub socket_lb: bool,
    pub conntrack_max: u32,
    #[serde(default)]
    pub mode: DataplaneMode,
    pub flow_events: bool,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            socket_lb: true,
            conntrack_max: netctl_common::maps::CT_MAX_ENTRIES,
            mode: DataplaneMode::default(),
            flow_events: true,
        }
    }
}

impl Dataplane {
    /// Whether connections to VIPs are balanced at the socket (only eBPF has the hooks;
    /// the iptables dataplane ignores the setting).
    pub fn socket_lb_active(&self) -> bool {
        self.socket_lb && self.mode == DataplaneMode::Ebpf
    }

    /// `CONFIG[CFG_FLAGS]` for these settings.
    pub fn config_flags(&self) -> u32 {
        use netctl_common::maps::{CFG_F_FLOW_EVENTS, CFG_F_SOCKET_LB};
        (if self.socket_lb { CFG_F_SOCKET_LB } else { 0 })
            | (if self.flow_events {
                CFG_F_FLOW_EVENTS
            } else {
                0
            })
    }
}

/// Which dataplane programs the platform's services, NAT and port forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    /// eBPF TC programs on every veth and socket-level LB (netctl's own dataplane).
    #[default]
    Ebpf,
    /// kube-proxy-style iptables rules: the baseline.
    Iptables,
}

impl DataplaneMode {
    pub fn name(self) -> &'static str {
        match self {
            DataplaneMode::Ebpf => "ebpf",
            DataplaneMode::Iptables => "iptables",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ebpf" => Some(DataplaneMode::Ebpf),
            "iptables" => Some(DataplaneMode::Iptables),
            _ => None,
        }
    }
}

impl std::fmt::Display for DataplaneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataplaneMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a dataplane (ebpf or iptables)"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// One namespace: a replica of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `product-2` for a replica of a replicated service, `edge` otherwise (no prefix).
    pub name: String,
    pub service: String,
    /// The service's number (topology order, 1-based): its map id and identity.
    #[serde(default)]
    pub service_id: u32,
    /// 1-based replica number.
    pub replica: u32,
    pub netns: String,
    /// Host-side end of the veth (the namespace side is [`ENDPOINT_IFNAME`]).
    pub host_ifname: String,
    pub network: String,
    pub bridge: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub ports: Vec<Port>,
    /// What the supervisor runs in the namespace; `None`: nothing, the namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// How to tell it serves (also for load balancing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// A party to a connection, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Service(String),
    Host,
    World,
}

impl Peer {
    pub fn name(&self) -> &str {
        match self {
            Peer::Service(s) => s,
            Peer::Host => "host",
            Peer::World => "world",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

/// Which ports a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMatch {
    Any,
    /// `(port, protocol number)` pairs.
    Ports(Vec<(u16, u8)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// 1-based number in the file (`policy.rules[number - 1]`).
    pub number: u16,
    pub action: Action,
    /// `None`: any source.
    pub from: Option<BTreeSet<Peer>>,
    pub to: Peer,
    pub ports: PortMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Source,
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `None`: any source (that no other limit of `to` names).
    pub from: Option<BTreeSet<Peer>>,
    pub to: Peer,
    /// Tokens per second, in thousandths.
    pub rate_milli: u32,
    pub burst: u32,
    pub per: Per,
}

/// The validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub default_deny: BTreeSet<Peer>,
    pub allow_host: bool,
    pub rules: Vec<Rule>,
    pub rate_limits: Vec<RateLimit>,
}

/// The resolved run, health check and ports of one service, which each of its endpoints
/// carries.
pub struct ResolvedRun {
    pub run: Option<Run>,
    pub health: Option<HealthCheck>,
    /// The service's ports, with the kind's default port when it lists none.
    pub ports: Vec<Port>,
}

impl Plan {
    /// Instance name: the prefix without separators. Names the state file and pin dir.
    pub fn instance(&self) -> String {
        instance_name(&self.prefix)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The endpoint (replica) named `name`, e.g. `product-2`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The endpoint that owns `addr`, for naming flows.
    pub fn endpoint_by_addr(&self, addr: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == addr)
    }

    /// A digest of the whole plan: the controller reports the plan it has applied, so that
    /// `up` can wait for its own.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Endpoints that run something, in plan order.
    pub fn supervised(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.run.is_some())
    }

    /// Every replica of the service of built-in `kind`, in replica order.
    pub fn endpoints_of_kind(&self, kind: Kind) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.kind() == Some(kind))
            .collect()
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn service_by_id(&self, id: u32) -> Option<&Service> {
        // Ids grow in file order: a binary search, for platforms of 10,000 services.
        self.services
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.services.get(i))
    }

    /// What is valid but probably not meant, for `up` and `validate` to print: each names
    /// the field it is about.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.dataplane.mode == DataplaneMode::Ebpf
            && !self.dataplane.socket_lb
            && !self.services.is_empty()
        {
            let host_ports = match self.port_forwards.first() {
                Some(pf) => format!(
                    " nor the port forwards on the host's own addresses (curl localhost:{})",
                    pf.host_port
                ),
                None => String::new(),
            };
            out.push(format!(
                "dataplane.socket_lb = false: processes on the host reach neither service \
                 VIPs{host_ports}; the TC programs only balance what namespaces send and \
                 what arrives on an uplink. Leave socket_lb on (the default) for the host."
            ));
        }
        out
    }

    /// A readable name for any address: endpoint, service VIP, bridge gateway (`host`),
    /// or the address.
    pub fn name_of(&self, addr: Ipv4Addr) -> String {
        self.names().addr(addr)
    }
}

impl Endpoint {
    pub fn display_name(&self) -> String {
        self.name.clone()
    }

    /// The built-in program of this endpoint, if it runs one.
    pub fn kind(&self) -> Option<Kind> {
        self.run.as_ref().and_then(Run::kind)
    }

    /// The first TCP port: where a built-in listens.
    pub fn port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.proto == Proto::Tcp)
            .map(|p| p.port)
    }
}

/// `nc-` -> `nc`; an empty prefix is the instance `default`.
pub fn instance_name(prefix: &str) -> String {
    let trimmed = prefix.trim_matches(|c: char| c == '-' || c == '_' || c == '.');
    if trimmed.is_empty() {
        "default".to_string()
    } else {
        trimmed.to_string()
    }
}
