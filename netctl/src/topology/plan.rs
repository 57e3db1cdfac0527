//! The validated, fully resolved form of a topology: every name and address netctl will
//! create, computed once so that `up`, `down`, `status` and `flows` agree on them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{health::HealthCheck, run::Kind, run::Run};

/// Name of the namespace end of every veth, as Docker and Kubernetes do.
pub const ENDPOINT_IFNAME: &str = "eth0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub platform: String,
    pub prefix: String,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub masquerade: bool,
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
    pub ports: Vec<u16>,
    /// What the supervisor runs in the namespace; `None`: nothing, the namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// How to tell it serves (also for load balancing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl Plan {
    /// Instance name: the prefix without separators. Names the state file and pin dir.
    pub fn instance(&self) -> String {
        instance_name(&self.prefix)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
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

    /// A readable name for any address: endpoint, bridge gateway (`host`), or the address.
    pub fn name_of(&self, addr: Ipv4Addr) -> String {
        if let Some(ep) = self.endpoint_by_addr(addr) {
            return ep.display_name();
        }
        if self.networks.iter().any(|n| n.gateway == addr) {
            return "host".to_string();
        }
        addr.to_string()
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

    /// The first port: where a built-in listens.
    pub fn port(&self) -> Option<u16> {
        self.ports.first().copied()
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
