//! The product service (`netctl serve product`): the catalog in PostgreSQL, read through
//! a Redis cache (cache-aside, with a TTL, dropped on every change), several replicas.

pub mod cache;
pub mod catalog;
pub mod handlers;
pub mod invalidate;

use std::sync::Arc;

use super::{
    db,
    env::{self, Identity},
    http,
    registry::client::{RegistryClient, serve_registered},
};

/// Database connections per product process (reads mostly come from Redis).
const POOL_SIZE: usize = 8;
/// Seconds a cached entry lives (changes drop it earlier).
const CACHE_TTL_SECS: u64 = 60;

pub async fn run() -> anyhow::Result<()> {
    let identity = Identity::from_env("product", 5000)?;
    let shutdown = http::shutdown_on_signals()?;
    let url = env::required(env::DATABASE_URL)?;
    let pool = db::pool(&url, env::parsed("DB_POOL_SIZE", POOL_SIZE)?)?;
    let cache = cache::Cache::new(
        &env::required(env::REDIS_URL)?,
        env::parsed("CACHE_TTL_SECS", CACHE_TTL_SECS)?,
    )?;
    db::wait_and_migrate(&pool, &shutdown).await?;
    let listener = http::bind(identity.listen).await?;
    tokio::spawn(invalidate::listen(
        url,
        pool.clone(),
        cache.clone(),
        shutdown.clone(),
    ));
    let svc = Arc::new(handlers::ProductService {
        pool,
        cache,
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
