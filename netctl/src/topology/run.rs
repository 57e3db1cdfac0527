//! What runs in a service's namespaces: one of the built-in programs of the reference
//! platform (`kind = "product"`), or any command (`command = ["/usr/bin/python3", ...]`),
//! with extra environment variables.

use std::{fmt, str::FromStr};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::health::{HealthCheck, Probe};

/// The built-in programs. The reference services are `netctl serve <kind>`; the data
/// stores and the edge are the Debian programs, configured by netctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Service registry (`netctl serve registry`).
    Registry,
    /// API gateway (`netctl serve gateway`).
    Gateway,
    /// Product catalog (`netctl serve product`): PostgreSQL + Redis cache.
    Product,
    /// Orders (`netctl serve order`): PostgreSQL.
    Order,
    /// `redis-server`, bound to the namespace address.
    Redis,
    /// PostgreSQL, data under `/var/lib/netctl/<instance>/<name>`.
    Postgres,
    /// nginx as the edge load balancer in front of the gateway.
    Nginx,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Registry,
        Kind::Gateway,
        Kind::Product,
        Kind::Order,
        Kind::Redis,
        Kind::Postgres,
        Kind::Nginx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Registry => "registry",
            Kind::Gateway => "gateway",
            Kind::Product => "product",
            Kind::Order => "order",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Nginx => "nginx",
        }
    }

    /// The port it listens on when the service lists none.
    pub fn default_port(self) -> u16 {
        match self {
            Kind::Registry => 8500,
            Kind::Gateway => 3000,
            Kind::Product | Kind::Order => 5000,
            Kind::Redis => 6379,
            Kind::Postgres => 5432,
            Kind::Nginx => 80,
        }
    }

    /// The check used when the service gives none: HTTP `/health` for everything that
    /// speaks HTTP, the data stores' own protocols for them.
    pub fn default_health(self, port: u16) -> HealthCheck {
        match self {
            Kind::Redis => HealthCheck::new(Probe::Redis, port),
            Kind::Postgres => HealthCheck::new(Probe::Postgres, port),
            _ => HealthCheck::http(port),
        }
    }

    /// netctl's own services (`netctl serve <kind>`), as opposed to Debian programs.
    pub fn is_netctl_service(self) -> bool {
        matches!(
            self,
            Kind::Registry | Kind::Gateway | Kind::Product | Kind::Order
        )
    }

    /// The kinds this one needs elsewhere in the topology to work. Each needed kind must
    /// be unique, since built-in services find each other by kind.
    pub fn needs(self) -> &'static [Kind] {
        match self {
            Kind::Product => &[Kind::Postgres, Kind::Redis],
            Kind::Order => &[Kind::Postgres],
            Kind::Nginx => &[Kind::Gateway],
            _ => &[],
        }
    }

    /// Data stores hold state of their own: one namespace each.
    pub fn single_replica(self) -> bool {
        matches!(self, Kind::Redis | Kind::Postgres)
    }

    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// The program of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    Builtin(Kind),
    /// argv; the first element is looked up in PATH when it has no `/`.
    Command(Vec<String>),
}

/// What the supervisor runs in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub program: Program,
    /// Extra environment, in file order; for built-ins it overrides what netctl sets.
    #[serde(default)]
    pub env: IndexMap<String, String>,
}

impl Run {
    pub fn kind(&self) -> Option<Kind> {
        match self.program {
            Program::Builtin(k) => Some(k),
            Program::Command(_) => None,
        }
    }

    /// `product` or the command's program name, for tables.
    pub fn describe(&self) -> String {
        match &self.program {
            Program::Builtin(k) => k.to_string(),
            Program::Command(argv) => argv.first().cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.as_str());
        }
        assert!("mysql".parse::<Kind>().is_err());
    }
}
