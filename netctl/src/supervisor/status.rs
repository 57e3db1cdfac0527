//! What the supervisor tells about each process, on the controller's status board
//! (`GET /v1/status`, component `services`): read by `netctl up` to wait for health and
//! print its summary, and by anything that wants to show service health.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Preparing (data directory, configuration) or started and not healthy yet.
    Starting,
    /// Its health check passes.
    Healthy,
    /// Running without a health check.
    Running,
    /// Was healthy, now fails `retries` checks in a row.
    Unhealthy,
    /// Exited or could not start; restarting after a delay.
    Backoff,
    Stopping,
}

impl ServiceState {
    /// Up and serving as far as netctl can tell.
    pub fn is_ready(self) -> bool {
        matches!(self, ServiceState::Healthy | ServiceState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Healthy => "healthy",
            ServiceState::Running => "running",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Backoff => "backoff",
            ServiceState::Stopping => "stopping",
        }
    }
}

/// The last health check of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResult {
    pub ok: bool,
    pub latency_ms: f64,
    /// Unix time, milliseconds.
    pub checked_at_ms: u64,
    pub detail: String,
    /// Failures in a row (0 after a success).
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The endpoint: `product-2`.
    pub name: String,
    pub service: String,
    pub netns: String,
    pub address: Ipv4Addr,
    pub port: Option<u16>,
    /// `product`, `redis`, or the command's program.
    pub program: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Restarts since the controller started (or adopted it).
    pub restarts: u32,
    /// Unix ms of the last state change.
    pub since_ms: u64,
    /// The check, e.g. `http :5000/health`.
    pub check: Option<String>,
    pub health: Option<HealthResult>,
    /// How the last run ended, or why it could not start.
    pub last_error: Option<String>,
    pub url: Option<String>,
    pub log: String,
}

/// The fingerprint of the plan the supervisor has applied, from a `/v1/status` answer.
pub fn applied_plan(status: &serde_json::Value) -> Option<&str> {
    status
        .get("components")?
        .get("supervisor")?
        .get("plan")?
        .as_str()
}

/// The services component of a `/v1/status` answer, in plan order.
pub fn from_status(status: &serde_json::Value) -> Option<Vec<ServiceStatus>> {
    serde_json::from_value(status.get("components")?.get("services")?.clone()).ok()
}
