//! The reference e-commerce shop netctl runs on its platforms, as `netctl serve <kind>`
//! inside their namespaces (started by the supervisor): the service registry, the API
//! gateway, the product catalog (PostgreSQL + Redis cache) and the order service
//! (PostgreSQL). All are hyper 1 servers on tokio, configured through the environment
//! ([`env`]).
//!
//! Not part of the networking core: this crate does not depend on `netctl`, and `netctl`
//! reaches it only through [`serve`] (behind its `shop` feature). What the two agree on,
//! the variables the supervisor sets and the body limit its nginx edge shares, lives in
//! netctl-shop-contract.

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

/// One of the shop's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Registry,
    Gateway,
    Product,
    Order,
}

/// Runs `service` until SIGTERM/SIGINT.
pub async fn serve(service: Service) -> anyhow::Result<()> {
    http::Limits::init_from_env()?;
    match service {
        Service::Registry => registry::run().await,
        Service::Gateway => gateway::run().await,
        Service::Product => product::run().await,
        Service::Order => order::run().await,
    }
}
