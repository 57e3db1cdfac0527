//! The gateway's public API, in front of the product and order services.
//!
//! | request | upstream |
//! |---|---|
//! | `GET /health` | (the gateway itself, with what it knows of its upstreams) |
//! | `GET /api/products` | product `GET /products` |
//! | `GET /api/products/{id}` | product `GET /products/{id}` |
//! | `POST /api/orders` | order `POST /orders` |
//! | `GET /api/orders/{id}` | order `GET /orders/{id}` |
//!
//! Upstream answers pass through (status, JSON body, `X-Instance-Id`, `X-Cache`), with
//! `X-Upstream` naming the instance. Upstream failures: 502/503/504 with a JSON error.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{
    proxy::{Forward, Timeouts, forward},
    upstream::Upstream,
};
use crate::{
    client::HttpClient,
    http::{self, Resp},
};

pub struct Gateway {
    pub client: HttpClient,
    pub product: Arc<Upstream>,
    pub order: Arc<Upstream>,
    pub timeout: Duration,
    /// One instance's share of `timeout` for a read that another instance could answer.
    pub attempt_timeout: Duration,
    pub instance_id: String,
    /// The edge's addresses: only their `X-Real-IP` / `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Ids in paths are short words: nothing that could change the upstream path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub async fn handle<B>(gw: &Gateway, req: Request<B>, peer: SocketAddr) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let (upstream, upstream_path) = match (segments.as_slice(), &method) {
        (["health"], &Method::GET) => return health(gw),
        (["health"], _) => return http::method_not_allowed("GET"),
        (["api", "products"], &Method::GET) => (&gw.product, "/products".to_string()),
        (["api", "products"], _) => return http::method_not_allowed("GET"),
        (["api", "products", id], &Method::GET) => {
            if !valid_id(id) {
                return http::not_found(format!("no product {id:?}"));
            }
            (&gw.product, format!("/products/{id}"))
        }
        (["api", "products", _], _) => return http::method_not_allowed("GET"),
        (["api", "orders"], &Method::POST) => (&gw.order, "/orders".to_string()),
        (["api", "orders"], _) => return http::method_not_allowed("POST"),
        (["api", "orders", id], &Method::GET) => {
            if !valid_id(id) {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    format!("order id {id:?} is not a positive integer"),
                );
            }
            (&gw.order, format!("/orders/{id}"))
        }
        (["api", "orders", _], _) => return http::method_not_allowed("GET"),
        _ => return http::not_found(format!("no such endpoint: {method} {path}")),
    };
    let (parts, body) = req.into_parts();
    let body = if method == Method::POST {
        if let Err(r) = http::require_json(&parts.headers) {
            return *r;
        }
        match http::read_body(&parts.headers, body, http::MAX_BODY).await {
            Ok(b) => b,
            Err(r) => return *r,
        }
    } else {
        Bytes::new()
    };
    forward(
        &gw.client,
        upstream,
        Timeouts {
            total: gw.timeout,
            attempt: gw.attempt_timeout,
        },
        Forward {
            method,
            path: upstream_path,
            headers: &parts.headers,
            body,
            peer,
            from_proxy: gw.trusted_proxies.contains(&peer.ip().to_canonical()),
        },
    )
    .await
}

/// Healthy once it knows an instance of every upstream (until then, and whenever an
/// upstream has none, it could only answer 503).
fn health(gw: &Gateway) -> Resp {
    let describe = |u: &Upstream| {
        json!({
            "source": u.describe_source(),
            "instances": u.targets(),
            "discovery_error": u.discovery_error(),
        })
    };
    let missing: Vec<&str> = [&gw.product, &gw.order]
        .iter()
        .filter(|u| u.targets().is_empty())
        .map(|u| u.name)
        .collect();
    let (code, status) = if missing.is_empty() {
        (StatusCode::OK, "healthy".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no instance of {} known", missing.join(", ")),
        )
    };
    http::json(
        code,
        &json!({
            "status": status,
            "service": "gateway",
            "instance": gw.instance_id,
            "upstreams": {
                "product": describe(&gw.product),
                "order": describe(&gw.order),
            },
        }),
    )
}
