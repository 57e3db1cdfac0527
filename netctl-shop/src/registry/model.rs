//! The registry's data as it goes over the wire. Public so that clients (the gateway, the
//! services registering themselves, the controller filling load-balancing maps) share one
//! definition.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Seconds an instance stays alive without a heartbeat, unless it asks otherwise.
pub const DEFAULT_TTL_SECS: u64 = 10;
pub const MAX_TTL_SECS: u64 = 300;

/// `POST /v1/instances`: an instance announcing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub service: String,
    pub id: String,
    /// Must be the address the request comes from; default: that address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    pub port: u16,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Seconds without heartbeat after which the instance is dead; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// One registered instance of a service, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub metadata: BTreeMap<String, String>,
    pub ttl_secs: u64,
    /// Unix time, milliseconds.
    pub registered_at_ms: u64,
    pub last_heartbeat_ms: u64,
    /// A heartbeat came within the TTL. Dead instances are listed by `/v1/instances` for a
    /// while (so a watcher sees them go), never by discovery.
    pub alive: bool,
    /// Milliseconds until the instance dies without a heartbeat (0 when dead).
    pub expires_in_ms: u64,
}

impl Instance {
    /// `http://address:port`
    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.address, self.port)
    }
}

/// `GET /v1/services/{service}`: the live instances of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub service: String,
    pub instances: Vec<Instance>,
}

/// `GET /v1/instances`: every instance of every service, alive or recently dead, sorted
/// by service and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
}

/// One line of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub service: String,
    pub alive: usize,
    pub dead: usize,
}
