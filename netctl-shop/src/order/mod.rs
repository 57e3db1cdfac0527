//! The order service (`netctl serve order`): orders in PostgreSQL, validated, priced on
//! the server from the catalog, answered 201 only once committed.

pub mod handlers;
pub mod store;
pub mod validate;

use std::sync::Arc;

use super::{
    db,
    env::{self, Identity},
    http,
    registry::client::{RegistryClient, serve_registered},
};

/// Database connections per order process.
const POOL_SIZE: usize = 24;

pub async fn run() -> anyhow::Result<()> {
    let identity = Identity::from_env("order", 5000)?;
    let shutdown = http::shutdown_on_signals()?;
    let pool = db::pool(
        &env::required(env::DATABASE_URL)?,
        env::parsed("DB_POOL_SIZE", POOL_SIZE)?,
    )?;
    db::wait_and_migrate(&pool, &shutdown).await?;
    let listener = http::bind(identity.listen).await?;
    let svc = Arc::new(handlers::OrderService {
        pool,
        instance_id: identity.instance_id.clone(),
    });
    serve_registered(
        &identity,
        identity.registry.as_deref().map(RegistryClient::new),
        listener,
        move |req, _peer| {
            let svc = svc.clone();
            async move { handlers::handle(&svc, req).await }
        },
        shutdown,
    )
    .await;
    Ok(())
}
