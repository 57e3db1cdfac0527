//! The reference platform's own services, run as `netctl serve <kind>` inside their
//! namespaces by the supervisor: the service registry, the API gateway, the product
//! catalog (PostgreSQL + Redis cache) and the order service (PostgreSQL). All are hyper 1
//! servers on tokio, configured through the environment ([`env`]).

pub mod client;
pub mod db;
pub mod env;
pub mod fields;
pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod order;
pub mod product;
pub mod registry;

use crate::topology::Kind;

/// Runs the service of `kind` until SIGTERM/SIGINT.
pub async fn serve(kind: Kind) -> anyhow::Result<()> {
    http::Limits::init_from_env()?;
    match kind {
        Kind::Registry => registry::run().await,
        Kind::Gateway => gateway::run().await,
        Kind::Product => product::run().await,
        Kind::Order => order::run().await,
        other => anyhow::bail!("{other} is not a netctl service (it is a Debian program)"),
    }
}
