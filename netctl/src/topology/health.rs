//! Health checks: how to tell that what runs in a namespace is serving. The supervisor
//! probes every supervised process with its check (and `netctl up` waits for them); load
//! balancing uses the same checks to keep dead backends out of its maps.
//!
//! Written in a topology as
//! `health = { check = "http", port = 5000, path = "/health", interval = "2s", timeout = "1s", retries = 3 }`.
//! Checks: `http` (a GET that must answer 2xx), `tcp` (the port accepts a connection),
//! `redis` (`PING` answered `+PONG`: a stopped or loading server fails it) and `postgres`
//! (a startup message answered by the server's authentication request: a server still
//! starting up, or shutting down, fails it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `health` as written in the file; see [`HealthCheck`] for the resolved form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// `"http"` (a GET that must answer 2xx), `"tcp"` (a connection that must open),
    /// `"redis"` (PING -> +PONG) or `"postgres"` (the server answers a startup message).
    pub check: String,
    /// Default: the service's first port.
    pub port: Option<u32>,
    /// HTTP only; default `/health`.
    pub path: Option<String>,
    /// Time between checks, e.g. `"2s"`, `"500ms"`; default 2s.
    pub interval: Option<String>,
    /// How long one check may take; default 1s, at most the interval.
    pub timeout: Option<String>,
    /// Consecutive failures before a healthy service counts as unhealthy; default 3.
    pub retries: Option<u32>,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum Probe {
    /// The port accepts a TCP connection.
    Tcp,
    /// `GET path` on the port answers 2xx.
    Http { path: String },
    /// Redis answers `PING` with `+PONG` (or says it wants a password: it serves).
    Redis,
    /// PostgreSQL answers a startup message with an authentication request (or refuses
    /// the role: it serves), not with "the database system is starting up".
    Postgres,
}

impl Probe {
    pub fn name(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http { .. } => "http",
            Probe::Redis => "redis",
            Probe::Postgres => "postgres",
        }
    }
}

/// A validated health check of one endpoint: probe `address:port` every `interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: Probe,
    pub port: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures before healthy turns unhealthy.
    pub retries: u32,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_HTTP_PATH: &str = "/health";
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_RETRIES: u32 = 100;
/// Load balancing's own check of a backend whose service gives none: a TCP connect to
/// its first TCP port, every 500 ms, down after 2 failures (a killed backend leaves the
/// maps within about a second).
pub const LB_DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
pub const LB_DEFAULT_TIMEOUT: Duration = Duration::from_millis(400);
pub const LB_DEFAULT_RETRIES: u32 = 2;

impl HealthCheck {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// A check with the default timing.
    pub fn new(probe: Probe, port: u16) -> Self {
        Self {
            probe,
            port,
            interval_ms: DEFAULT_INTERVAL.as_millis() as u64,
            timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
            retries: DEFAULT_RETRIES,
        }
    }

    pub fn http(port: u16) -> Self {
        Self::new(
            Probe::Http {
                path: DEFAULT_HTTP_PATH.to_string(),
            },
            port,
        )
    }

    pub fn tcp(port: u16) -> Self {
        Self::new(Probe::Tcp, port)
    }

    /// What load balancing checks on a backend of a service without a `health` setting.
    pub fn lb_default(port: u16) -> Self {
        Self {
            probe: Probe::Tcp,
            port,
            interval_ms: LB_DEFAULT_INTERVAL.as_millis() as u64,
            timeout_ms: LB_DEFAULT_TIMEOUT.as_millis() as u64,
            retries: LB_DEFAULT_RETRIES,
        }
    }

    /// The same check on another port.
    pub fn on_port(&self, port: u16) -> Self {
        Self {
            port,
            ..self.clone()
        }
    }

    /// `http :5000/health`, `tcp :6379`, `redis :6379`, for tables.
    pub fn describe(&self) -> String {
        match &self.probe {
            Probe::Http { path } => format!("http :{}{path}", self.port),
            other => format!("{} :{}", other.name(), self.port),
        }
    }
}

/// Parses `"250ms"`, `"2s"`, `"1m"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("add a unit: ms, s or m")?;
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err("start with a whole number, e.g. \"2s\"");
    }
    let n: u64 = number.parse().map_err(|_| "the number is too large")?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or("the number is too large"),
        _ => Err("the unit must be ms, s or m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(" 1m "), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn checks_serialize_flat() {
        let c = HealthCheck::http(5000);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["check"], "http");
        assert_eq!(v["path"], "/health");
        assert_eq!(v["port"], 5000);
        let back: HealthCheck = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        assert_eq!(HealthCheck::tcp(6379).describe(), "tcp :6379");
        let redis = HealthCheck::new(Probe::Redis, 6379);
        assert_eq!(redis.describe(), "redis :6379");
        assert_eq!(serde_json::to_value(&redis).unwrap()["check"], "redis");
        let pg = HealthCheck::new(Probe::Postgres, 5432);
        let back: HealthCheck = serde_json::from_value(serde_json::to_value(&pg).unwrap()).unwrap();
        assert_eq!(back, pg);
        assert_eq!(c.describe(), "http :5000/health");
    }
}
