//! The service registry's list of instances as the load balancer reads it: `GET
//! /v1/instances` answers `{"instances": [...]}`, and of each instance only the fields
//! below are read (any others are ignored). This JSON shape is the contract, documented in
//! docs/load-balancing.md; any registry that answers it can feed the load balancer, not
//! only the shop's.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use serde::Deserialize;

/// Connecting, asking and reading the whole answer: at most this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A larger list is refused rather than read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// `weight` (1..=1000) is the backend's weight; other keys are ignored.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Heartbeats arrive within its TTL. Dead instances stay listed for a while.
    pub alive: bool,
}

#[derive(Debug, Deserialize)]
struct InstanceList {
    instances: Vec<Instance>,
}

/// The instances of a `GET /v1/instances` answer body.
pub fn parse(body: &[u8]) -> anyhow::Result<Vec<Instance>> {
    let list: InstanceList = serde_json::from_slice(body)?;
    Ok(list.instances)
}

/// Asks one registry for its list, keeping its connection open between polls.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl RegistryClient {
    /// `base` like `http://172.21.0.5:8500`.
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// Every instance, alive or recently dead.
    pub async fn list(&self) -> anyhow::Result<Vec<Instance>> {
        let url = format!("{}/v1/instances", self.base);
        let req = Request::get(&url).body(Full::new(Bytes::new()))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("GET {url}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))?;
        if status != StatusCode::OK {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
        parse(&body).with_context(|| format!("GET {url}: the answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_shape_parses_and_other_fields_are_ignored() {
        let body = br#"{"instances": [
            {"service": "product", "id": "product-1", "address": "172.21.0.10", "port": 5000,
             "metadata": {"weight": "3", "version": "0.1.0"}, "ttl_secs": 10,
             "registered_at_ms": 1, "last_heartbeat_ms": 2, "alive": true,
             "expires_in_ms": 9000},
            {"service": "order", "id": "o", "address": "172.21.0.30", "port": 5000,
             "alive": false}
        ]}"#;
        let list = parse(body).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].service, "product");
        assert_eq!(list[0].address, Ipv4Addr::new(172, 21, 0, 10));
        assert_eq!(
            list[0].metadata.get("weight").map(String::as_str),
            Some("3")
        );
        assert!(list[0].alive);
        assert!(list[1].metadata.is_empty());
        assert!(!list[1].alive);
        assert!(parse(br#"{"instances": [{"service": "x"}]}"#).is_err());
    }
}
