//! The topology file: networks (one bridge + subnet each) and the services that live in
//! namespaces on them, with what runs there and how to check it. Parsing is pure;
//! [`validate`] turns a parsed file into a [`Plan`] of concrete names and addresses, or into
//! every error it contains, before anything is touched.

pub mod builder;
mod endpoints;
mod error;
pub mod fuzz;
pub mod health;
mod model;
pub mod names;
pub mod plan;
pub mod policy;
mod ports;
pub mod run;
mod services;
mod validate;
mod validate_run;

pub use builder::{ServiceBuilder, TopologyBuilder};
pub use error::{TopologyError, ValidationErrors};
pub use health::{HealthCheck, HealthSpec, Probe};
pub use model::{
    DataplaneSpec, NatConfig, NetworkSpec, PlatformSpec, PortForwardSpec, PortSpec, ServiceSpec,
    Topology, default_prefix,
};
pub use names::Names;
pub use plan::{
    Algorithm, DataplaneMode, Endpoint, ManualBackend, Network, Plan, Port, PortForward, Proto,
    Service,
};
pub use run::{Kind, Program, Run};
pub use validate_run::GATEWAY_UPSTREAM_ENV;

use std::path::Path;

use anyhow::Context;

/// The reference e-commerce platform on three tiers, used when no file is given.
pub const DEFAULT_TOPOLOGY: &str = include_str!("default.toml");
/// Where the embedded default says it comes from in error messages.
pub const DEFAULT_SOURCE: &str = "<embedded default topology>";

/// A topology together with where it was read from, for error messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn embedded_default() -> Self {
        Self {
            name: DEFAULT_SOURCE.to_string(),
            text: DEFAULT_TOPOLOGY.to_string(),
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading topology file {}", path.display()))?;
        Ok(Self {
            name: path.display().to_string(),
            text,
        })
    }

    /// Parses and validates: the only way to get a [`Plan`].
    pub fn plan(&self, prefix_override: Option<&str>) -> Result<Plan, ValidationErrors> {
        let mut topology = Topology::parse(&self.text).map_err(|e| ValidationErrors {
            source_name: self.name.clone(),
            errors: vec![e],
        })?;
        if let Some(prefix) = prefix_override {
            topology.platform.prefix = prefix.to_string();
        }
        validate::validate(&topology).map_err(|errors| ValidationErrors {
            source_name: self.name.clone(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests;
