//! The parts of the agent's `GET /v1/status` answer that the command line reads, typed
//! once: the agent builds them, the CLI parses them, so a renamed field fails to compile
//! (or fails to parse, loudly) instead of showing blanks.
//!
//! The answer is `{..process facts.., "components": {NAME: STATUS, ...}}`; each component
//! publishes its own part. A component that failed publishes `{"error", "restarts"}`
//! instead, so each part is parsed on its own ([`component`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// One component's part of a status answer: `None` when it has not published (or the
/// answer has no components), an error naming the component when its shape differs.
pub fn component<T: DeserializeOwned>(
    status: &serde_json::Value,
    name: &str,
) -> Option<anyhow::Result<T>> {
    let part = status.get("components")?.get(name)?;
    Some(
        serde_json::from_value(part.clone())
            .map_err(|e| anyhow::anyhow!("the controller's {name:?} status: {e}")),
    )
}

/// The load balancer's part (`components.lb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    /// `ebpf` or `iptables`.
    pub dataplane: String,
    pub socket_lb: bool,
    /// One per (instance, port) of every service.
    pub backends: Vec<BackendStatus>,
    /// The last conntrack sweep (eBPF), or null.
    #[serde(default)]
    pub conntrack: serde_json::Value,
    /// The registry poller's view, or null.
    #[serde(default)]
    pub registry: serde_json::Value,
    /// What the last pass could not write.
    #[serde(default)]
    pub errors: serde_json::Value,
}

/// A backend as the load balancer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub service: String,
    pub instance: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    pub weight: u32,
    pub state: BackendState,
    /// Its id in the `BACKENDS` map (eBPF), once written.
    pub backend_id: Option<u32>,
    /// None: not checked yet.
    pub health: Option<Health>,
    /// Where it came from: `topology`, `registry` or `endpoint`.
    #[serde(default)]
    pub source: String,
}

/// Where a backend stands in the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// Takes none; established ones finish.
    Draining,
    /// Its health check fails.
    Down,
    /// Not in the maps and not checked yet.
    Unchecked,
}

impl BackendState {
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
            BackendState::Unchecked => "unchecked",
        }
    }
}

/// The latest result of a backend's health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub up: bool,
    /// Latency of the last successful check, milliseconds.
    pub latency_ms: Option<f64>,
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the last change between up and down.
    pub since: f64,
    pub checks: u64,
    /// The check, as `netctl health` shows it (`http :5000/health`).
    pub check: Option<String>,
}

/// The policy component's part (`components.policy`): the generation installed, or the
/// error of the last install (the generation in force stays).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    #[serde(default)]
    pub generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<usize>,
    /// The iptables dataplane: how many rules the policy is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_rules: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the install failed (unix ms); absent when the component itself ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_parses_on_its_own_and_a_wrong_shape_names_the_component() {
        let status = serde_json::json!({"components": {
            "lb": {"error": "crashed", "restarts": 2},
            "policy": {"generation": 3, "entries": 10, "identities": 4, "rate_limits": 1},
        }});
        let lb = component::<LbStatus>(&status, "lb").expect("published");
        assert!(format!("{:#}", lb.unwrap_err()).contains("\"lb\""));
        let policy = component::<PolicyStatus>(&status, "policy")
            .expect("published")
            .expect("parses");
        assert_eq!(policy.generation, Some(3));
        assert!(component::<PolicyStatus>(&status, "events").is_none());
        assert!(component::<PolicyStatus>(&serde_json::json!({}), "policy").is_none());
    }

    #[test]
    fn a_backend_round_trips_with_its_state_by_name() {
        let b = BackendStatus {
            service: "product".into(),
            instance: "product-1".into(),
            addr: Ipv4Addr::new(172, 21, 0, 10),
            port: 5000,
            proto: "tcp".into(),
            weight: 1,
            state: BackendState::Draining,
            backend_id: Some(7),
            health: None,
            source: "registry".into(),
        };
        let v = serde_json::to_value(&b).expect("serializes");
        assert_eq!(v["state"], "draining");
        assert_eq!(v["addr"], "172.21.0.10");
        let back: BackendStatus = serde_json::from_value(v).expect("parses");
        assert_eq!(back, b);
    }
}
