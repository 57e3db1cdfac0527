//! Service settings come from the environment (the supervisor sets them from the
//! topology); every variable is read here, with errors that name it.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use anyhow::{Context, anyhow};

// The names are the supervisor's as much as ours: written once, in the contract.
pub use netctl_shop_contract::env::{
    DATABASE_URL, INSTANCE_ID, LISTEN, REDIS_URL, REGISTRY_URL, SERVICE_NAME,
};

pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn required(name: &str) -> anyhow::Result<String> {
    var(name).ok_or_else(|| anyhow!("{name} is not set"))
}

/// A variable parsed as `T`, or `default` when unset.
pub fn parsed<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow!("{name}={v:?} is not valid: {e}")),
    }
}

/// Milliseconds from a variable, e.g. `UPSTREAM_TIMEOUT_MS=5000`.
pub fn millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    parsed(name, default.as_millis() as u64).map(Duration::from_millis)
}

/// What every service needs: where to listen and who it is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub listen: SocketAddr,
    pub instance_id: String,
    pub service: String,
    pub registry: Option<String>,
}

impl Identity {
    pub fn from_env(kind: &str, default_port: u16) -> anyhow::Result<Self> {
        let listen = match var(LISTEN) {
            Some(v) => v
                .parse()
                .with_context(|| format!("{LISTEN}={v:?} is not address:port"))?,
            None => SocketAddr::from(([0, 0, 0, 0], default_port)),
        };
        Ok(Self {
            listen,
            instance_id: var(INSTANCE_ID)
                .unwrap_or_else(|| format!("{kind}-{}", std::process::id())),
            service: var(SERVICE_NAME).unwrap_or_else(|| kind.to_string()),
            registry: var(REGISTRY_URL).map(|u| u.trim_end_matches('/').to_string()),
        })
    }
}
