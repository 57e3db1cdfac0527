//! The service registry (`netctl serve registry`): instances of services announce
//! themselves with heartbeats; clients discover the live ones. Several instances per
//! service; an instance belongs to its address. In memory: instances register again by
//! themselves when a restarted registry does not know them.

pub mod client;
pub mod handlers;
pub mod model;
pub mod store;

use std::sync::Arc;

use super::{env::Identity, http};

pub async fn run() -> anyhow::Result<()> {
    let identity = Identity::from_env("registry", 8500)?;
    let registry = Arc::new(handlers::Registry::default());
    let listener = http::bind(identity.listen).await?;
    let shutdown = http::shutdown_on_signals()?;
    tracing::info!(listen = %identity.listen, "registry serving");
    http::serve(
        listener,
        move |req, peer| {
            let registry = registry.clone();
            async move { handlers::handle(&registry, req, peer).await }
        },
        shutdown,
    )
    .await;
    Ok(())
}
