//! The API gateway (`netctl serve gateway`): the platform's public API, forwarding to the
//! product and order services over pooled keep-alive connections, with timeouts.
//!
//! Upstreams are discovered through the registry (`REGISTRY_URL`, services
//! `PRODUCT_SERVICE`/`ORDER_SERVICE`, default `product`/`order`) unless `PRODUCT_URL` /
//! `ORDER_URL` give a fixed base URL (e.g. a load-balanced service VIP).

pub mod handlers;
pub mod proxy;
pub mod upstream;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use anyhow::bail;

use super::{
    client,
    env::{self, Identity},
    http,
    registry::client::{RegistryClient, serve_registered},
};
use upstream::{Source, Upstream};

/// Whole exchange with an upstream (connect, request, answer); longer than the services'
/// own bounds on database work (`db::MAX_DATABASE_TIME`), so that they answer first.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// A read waits this long on one instance before trying the next (a hung replica, e.g.
/// stopped, is not seen as refusing: its kernel still accepts connections).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// `TRUSTED_PROXIES`: the edge's addresses (comma-separated), whose `X-Real-IP` and
/// `X-Forwarded-For` the gateway passes on; the supervisor sets it to the nginx endpoints.
pub use netctl_shop_contract::env::TRUSTED_PROXIES;

fn trusted_proxies() -> anyhow::Result<Vec<std::net::IpAddr>> {
    let Some(list) = env::var(TRUSTED_PROXIES) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|e| anyhow::anyhow!("{TRUSTED_PROXIES}: {a:?} is not an IP address: {e}"))
        })
        .collect()
}

pub async fn run() -> anyhow::Result<()> {
    let identity = Identity::from_env("gateway", 3000)?;
    let shutdown = http::shutdown_on_signals()?;
    let registry = identity.registry.as_deref().map(RegistryClient::new);
    let source = |url_var: &str, service_var: &str, default: &str| -> anyhow::Result<Source> {
        if let Some(url) = env::var(url_var) {
            return Ok(Source::Fixed(url));
        }
        let Some(client) = registry.clone() else {
            bail!(
                "set {url_var} or {} so that the gateway finds its upstreams",
                env::REGISTRY_URL
            );
        };
        Ok(Source::Registry {
            client,
            service: env::var(service_var).unwrap_or_else(|| default.to_string()),
        })
    };
    let product = Upstream::new(
        "product",
        source("PRODUCT_URL", "PRODUCT_SERVICE", "product")?,
    )?;
    let order = Upstream::new("order", source("ORDER_URL", "ORDER_SERVICE", "order")?)?;
    let interval = env::millis("DISCOVERY_INTERVAL_MS", DISCOVERY_INTERVAL)?;
    for u in [&product, &order] {
        tracing::info!(upstream = u.name, "{}", u.describe_source());
        tokio::spawn(u.clone().keep_fresh(interval, shutdown.clone()));
    }
    let gw = Arc::new(handlers::Gateway {
        client: client::pooled(env::millis("CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT)?),
        product,
        order,
        timeout: env::millis("UPSTREAM_TIMEOUT_MS", UPSTREAM_TIMEOUT)?,
        attempt_timeout: env::millis("UPSTREAM_ATTEMPT_TIMEOUT_MS", ATTEMPT_TIMEOUT)?,
        instance_id: identity.instance_id.clone(),
        trusted_proxies: trusted_proxies()?,
    });
    let listener = http::bind(identity.listen).await?;
    serve_registered(
        &identity,
        registry,
        listener,
        move |req, peer| {
            let gw = gw.clone();
            async move { handlers::handle(&gw, req, peer).await }
        },
        shutdown,
    )
    .await;
    Ok(())
}
