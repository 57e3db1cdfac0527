//! Talking to the registry: services keep themselves registered (register, heartbeat,
//! register again when the registry forgot them, deregister when stopping), and the
//! gateway discovers live instances.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use tokio_util::sync::CancellationToken;

use super::model::{Discovery, Instance, InstanceList, Registration};
use crate::client::{self, HttpClient};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: HttpClient,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .finish()
    }
}

impl RegistryClient {
    /// `base` like `http://172.21.0.5:8500`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: client::pooled(Duration::from_secs(1)),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = client::call(&self.http, req, CALL_TIMEOUT)
            .await
            .with_context(|| format!("registry {}", self.base))?;
        Ok((resp.status(), resp.into_body()))
    }

    pub async fn register(&self, reg: &Registration) -> anyhow::Result<Instance> {
        let body = serde_json::to_vec(reg)?;
        let (status, body) = self.send(Method::POST, "/v1/instances", Some(body)).await?;
        if !status.is_success() {
            bail!(
                "registering {}/{}: {status} {}",
                reg.service,
                reg.id,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// `Ok(false)` when the registry does not know the instance (it restarted, or the
    /// instance was dead long enough to be forgotten).
    pub async fn heartbeat(&self, service: &str, id: &str) -> anyhow::Result<bool> {
        let path = format!("/v1/instances/{service}/{id}/heartbeat");
        let (status, body) = self.send(Method::PUT, &path, None).await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => bail!(
                "heartbeat {service}/{id}: {s} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    pub async fn deregister(&self, service: &str, id: &str) -> anyhow::Result<()> {
        let path = format!("/v1/instances/{service}/{id}");
        let (status, body) = self.send(Method::DELETE, &path, None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            bail!(
                "deregister {service}/{id}: {status} {}",
                String::from_utf8_lossy(&body)
            )
        }
    }

    /// The live instances of `service`.
    pub async fn discover(&self, service: &str) -> anyhow::Result<Vec<Instance>> {
        let url = format!("{}/v1/services/{service}", self.base);
        let d: Discovery = client::get_json(&self.http, &url, CALL_TIMEOUT).await?;
        Ok(d.instances)
    }

    /// Every instance, alive or recently dead.
    pub async fn list(&self) -> anyhow::Result<Vec<Instance>> {
        let url = format!("{}/v1/instances", self.base);
        let l: InstanceList = client::get_json(&self.http, &url, CALL_TIMEOUT).await?;
        Ok(l.instances)
    }
}

/// Keeps `reg` registered until `shutdown`, then deregisters it. Heartbeats at a third
/// of the TTL; registers again whenever the registry does not know the instance.
pub async fn keep_registered(
    client: RegistryClient,
    reg: Registration,
    shutdown: CancellationToken,
) {
    let ttl = Duration::from_secs(reg.ttl_secs.unwrap_or(super::model::DEFAULT_TTL_SECS));
    let beat = (ttl / 3).max(Duration::from_millis(200));
    let mut registered = false;
    let mut warned = false;
    loop {
        let outcome = if registered {
            client.heartbeat(&reg.service, &reg.id).await
        } else {
            client.register(&reg).await.map(|_| true)
        };
        match outcome {
            Ok(true) => {
                if !registered {
                    tracing::info!(
                        registry = client.base(),
                        service = reg.service,
                        id = reg.id,
                        "registered"
                    );
                }
                registered = true;
                warned = false;
            }
            Ok(false) => {
                tracing::info!("the registry forgot this instance; registering again");
                registered = false;
                continue;
            }
            Err(e) => {
                registered = false;
                if !warned {
                    tracing::warn!("registry: {e:#} (retrying)");
                    warned = true;
                }
            }
        }
        let wait = if registered {
            beat
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if registered {
        match client.deregister(&reg.service, &reg.id).await {
            Ok(()) => tracing::info!("deregistered"),
            Err(e) => tracing::warn!("deregistering: {e:#}"),
        }
    }
}

/// The registration of a service listening on `listen` (its namespace address).
pub fn registration(identity: &crate::env::Identity) -> Option<Registration> {
    let IpAddr::V4(address) = identity.listen.ip() else {
        return None;
    };
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    Some(Registration {
        service: identity.service.clone(),
        id: identity.instance_id.clone(),
        address: (!address.is_unspecified()).then_some(address),
        port: identity.listen.port(),
        metadata,
        ttl_secs: None,
    })
}

/// The life of a registering service: serves `handler` on `listener` while keeping the
/// instance registered (when `registry` and the identity allow a registration), and on
/// shutdown stops serving, then deregisters.
pub async fn serve_registered<F, Fut>(
    identity: &crate::env::Identity,
    registry: Option<RegistryClient>,
    listener: tokio::net::TcpListener,
    handler: F,
    shutdown: CancellationToken,
) where
    F: Fn(hyper::Request<crate::http::Body>, std::net::SocketAddr) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = crate::http::Resp> + Send + 'static,
{
    let registered = match (registry, registration(identity)) {
        (Some(client), Some(reg)) => {
            Some(tokio::spawn(keep_registered(client, reg, shutdown.clone())))
        }
        _ => None,
    };
    tracing::info!(listen = %identity.listen, "{} service serving", identity.service);
    crate::http::serve(listener, handler, shutdown).await;
    if let Some(task) = registered {
        let _ = task.await;
    }
}
