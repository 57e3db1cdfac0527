//! What to run for one endpoint: program and arguments, environment, user, stop signal,
//! health check. Secrets (the database password) are referenced, not included, and read
//! only when starting. Plain data: [`super::specs`] works it out from the plan.

use std::net::Ipv4Addr;

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::topology::{HealthCheck, Kind};

/// A value read at start time rather than kept in the spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Secret {
    /// `DATABASE_URL` with the generated password of the PostgreSQL endpoint `name`.
    DatabaseUrl {
        name: String,
        address: Ipv4Addr,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSpec {
    /// The endpoint: `product-2`, `edge`.
    pub name: String,
    pub service: String,
    pub netns: String,
    pub address: Ipv4Addr,
    pub port: Option<u16>,
    pub kind: Option<Kind>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub secret_env: Vec<(String, Secret)>,
    /// Run as this user (with its primary group); `None`: root.
    pub user: Option<String>,
    #[serde(serialize_with = "signal_name")]
    pub stop_signal: Signal,
    pub health: Option<HealthCheck>,
    /// Where people reach it, for the summary.
    pub url: Option<String>,
    /// Configuration files netctl generates for it: (path, content), written at start.
    pub files: Vec<(String, String)>,
}

fn signal_name<S: serde::Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// The environment every process starts from (nothing of the controller's leaks in).
pub const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
    ("HOME", "/"),
];

impl ProcessSpec {
    /// A digest of everything that makes the process what it is: a running process
    /// whose fingerprint differs from its spec's is restarted.
    pub fn fingerprint(&self) -> String {
        // FNV-1a over the JSON form: stable across builds, unlike std's hasher.
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Sets `key` in an ordered environment, replacing an earlier value.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}
