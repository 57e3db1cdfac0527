//! The registry's HTTP API. Reads are open to every client (the host's controller fills
//! load-balancing maps from them); changes are accepted only from the instance's own
//! address.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `{"status":"healthy",...}` |
//! | `POST /v1/instances` | 201 new / 200 refreshed `Instance`; 400, 403, 409, 413, 429 |
//! | `PUT /v1/instances/{service}/{id}/heartbeat` | 200 `Instance`; 403, 404 |
//! | `DELETE /v1/instances/{service}/{id}` | 200 `Instance`; 403, 404 |
//! | `GET /v1/instances` | 200 `InstanceList` (all, with `alive`) |
//! | `GET /v1/services` | 200 `[ServiceSummary]` |
//! | `GET /v1/services/{service}` | 200 `Discovery` (live instances only) |

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Mutex,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{
    model::{DEFAULT_TTL_SECS, Discovery, InstanceList, MAX_TTL_SECS, Registration},
    store::{Now, Registered, Store, StoreError},
};
use crate::{
    fields::{Fields, NOT_AN_OBJECT},
    http::{self, Rejected, Resp},
};

/// The registry's state: the table and the clock it runs on.
pub struct Registry {
    store: Mutex<Store>,
    started: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            store: Mutex::new(Store::default()),
            started: Instant::now(),
        }
    }
}

impl Registry {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the table half-changed (each
        // operation is one insert or remove), so a poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers one request from `peer`.
pub async fn handle<B>(registry: &Registry, req: Request<B>, peer: SocketAddr) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["health"], &Method::GET) => http::json(
            StatusCode::OK,
            &json!({
                "status": "healthy",
                "service": "registry",
                "instances": registry.store().len(),
            }),
        ),
        (["health"], _) => http::method_not_allowed("GET"),
        (["v1", "instances"], &Method::GET) => {
            let instances = registry.store().list(registry.now());
            http::json(StatusCode::OK, &InstanceList { instances })
        }
        (["v1", "instances"], &Method::POST) => register(registry, req, peer).await,
        (["v1", "instances"], _) => http::method_not_allowed("GET, POST"),
        (["v1", "instances", service, id, "heartbeat"], &Method::PUT) => {
            let result = owner(peer).and_then(|p| {
                registry
                    .store()
                    .heartbeat(service, id, p, registry.now())
                    .map_err(store_error)
            });
            match result {
                Ok(i) => http::json(StatusCode::OK, &i),
                Err(r) => *r,
            }
        }
        (["v1", "instances", _, _, "heartbeat"], _) => http::method_not_allowed("PUT"),
        (["v1", "instances", service, id], &Method::DELETE) => {
            let result = owner(peer).and_then(|p| {
                registry
                    .store()
                    .deregister(service, id, p, registry.now())
                    .map_err(store_error)
            });
            match result {
                Ok(i) => http::json(StatusCode::OK, &i),
                Err(r) => *r,
            }
        }
        (["v1", "instances", _, _], _) => http::method_not_allowed("DELETE"),
        (["v1", "services"], &Method::GET) => {
            http::json(StatusCode::OK, &registry.store().summary(registry.now()))
        }
        (["v1", "services", service], &Method::GET) => {
            let instances = registry.store().discover(service, registry.now());
            http::json(
                StatusCode::OK,
                &Discovery {
                    service: (*service).to_string(),
                    instances,
                },
            )
        }
        (["v1", "services", ..], _) => http::method_not_allowed("GET"),
        _ => http::not_found(format!("no such endpoint: {method} {path}")),
    }
}

async fn register<B>(registry: &Registry, req: Request<B>, peer: SocketAddr) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = match owner(peer) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let value = match http::json_body(req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (reg, ttl) = match parse_registration(&value) {
        Ok(r) => r,
        Err(details) => return http::invalid("invalid registration", &details),
    };
    match registry.store().register(reg, peer, ttl, registry.now()) {
        Ok(Registered::Created(i)) => http::json(StatusCode::CREATED, &i),
        Ok(Registered::Refreshed(i)) => http::json(StatusCode::OK, &i),
        Err(e) => answer_store_error(e),
    }
}

/// The registration in a body, every bad field named.
pub fn parse_registration(
    value: &serde_json::Value,
) -> Result<(Registration, u64), Vec<http::FieldError>> {
    let Some(mut f) = Fields::of(value) else {
        return Err(vec![http::FieldError::new("", NOT_AN_OBJECT)]);
    };
    let service = f.string("service", true, 63);
    if let Some(s) = &service
        && !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
    {
        f.add_error("service", "use lowercase letters, digits, '-', '_' and '.'");
    }
    let id = f.string("id", true, 128);
    if let Some(s) = &id
        && !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        f.add_error("id", "use letters, digits, '-', '_', '.' and ':'");
    }
    let address = f.string("address", false, 15);
    let address = match address.map(|a| a.parse::<Ipv4Addr>()) {
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            f.add_error("address", "must be an IPv4 address");
            None
        }
        None => None,
    };
    let port = f.integer("port", true, 1, 65535);
    let metadata = f.string_map("metadata", 32, 256);
    let ttl = f
        .integer("ttl_secs", false, 1, MAX_TTL_SECS as i64)
        .map_or(DEFAULT_TTL_SECS, |t| t as u64);
    f.reject_unknown(
        &["service", "id", "address", "port", "metadata", "ttl_secs"],
        &[],
    );
    f.finish()?;
    match (service, id, port) {
        (Some(service), Some(id), Some(port)) => Ok((
            Registration {
                service,
                id,
                address,
                port: port as u16,
                metadata: metadata
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
                ttl_secs: Some(ttl),
            },
            ttl,
        )),
        // finish() reported why.
        _ => Err(vec![http::FieldError::new("", "incomplete registration")]),
    }
}

/// The IPv4 address a change comes from; other clients may only read.
fn owner(peer: SocketAddr) -> Result<Ipv4Addr, Rejected> {
    match peer.ip().to_canonical() {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => Err(Box::new(http::error(
            StatusCode::FORBIDDEN,
            format!("{a}: instances register over IPv4 from their own address"),
        ))),
    }
}

fn store_error(e: StoreError) -> Rejected {
    Box::new(answer_store_error(e))
}

fn answer_store_error(e: StoreError) -> Resp {
    let status = match e {
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        StoreError::Forbidden { .. } => StatusCode::FORBIDDEN,
        StoreError::Taken { .. } => StatusCode::CONFLICT,
        StoreError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    http::error(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};

    use super::*;

    const P1: &str = "10.0.0.10:40000";
    const P2: &str = "10.0.0.11:40000";

    fn call(r: &Registry, method: &str, path: &str, body: &str, peer: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        futures::executor::block_on(async {
            let resp = handle(r, req, peer).await;
            assert_eq!(resp.headers()["content-type"], "application/json");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap())
        })
    }

    fn product(id: &str) -> String {
        json!({"service": "product", "id": id, "port": 5000, "metadata": {"zone": "a"}}).to_string()
    }

    #[test]
    fn register_discover_heartbeat_deregister() {
        let r = Registry::default();
        let (s, v) = call(&r, "POST", "/v1/instances", &product("p1"), P1);
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["address"], "10.0.0.10");
        assert_eq!(v["alive"], true);
        assert_eq!(v["ttl_secs"], DEFAULT_TTL_SECS);
        assert_eq!(v["metadata"]["zone"], "a");
        let (s, _) = call(&r, "POST", "/v1/instances", &product("p2"), P2);
        assert_eq!(s, 201);
        // The same instance again: refreshed, not duplicated.
        let (s, _) = call(&r, "POST", "/v1/instances", &product("p1"), P1);
        assert_eq!(s, 200);

        let (s, v) = call(&r, "GET", "/v1/services/product", "", "172.21.0.1:1");
        assert_eq!(s, 200);
        let ids: Vec<&str> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["p1", "p2"]);
        let (s, v) = call(&r, "GET", "/v1/services/order", "", "172.21.0.1:1");
        assert_eq!(
            (s, v["instances"].as_array().unwrap().len()),
            (StatusCode::OK, 0)
        );
        let (s, v) = call(&r, "GET", "/v1/instances", "", "172.21.0.1:1");
        assert_eq!(s, 200);
        assert_eq!(v["instances"].as_array().unwrap().len(), 2);
        let (s, v) = call(&r, "GET", "/v1/services", "", "172.21.0.1:1");
        assert_eq!(s, 200);
        assert_eq!(v, json!([{"service": "product", "alive": 2, "dead": 0}]));

        let (s, _) = call(&r, "PUT", "/v1/instances/product/p1/heartbeat", "", P1);
        assert_eq!(s, 200);
        let (s, v) = call(&r, "PUT", "/v1/instances/product/nope/heartbeat", "", P1);
        assert_eq!(s, 404, "{v}");
        let (s, _) = call(&r, "DELETE", "/v1/instances/product/p1", "", P1);
        assert_eq!(s, 200);
        let (s, _) = call(&r, "DELETE", "/v1/instances/product/p1", "", P1);
        assert_eq!(s, 404);
        let (s, v) = call(&r, "GET", "/health", "", P1);
        assert_eq!((s, v["instances"].clone()), (StatusCode::OK, json!(1)));
    }

    #[test]
    fn changes_from_another_address_are_403_and_takeovers_409() {
        let r = Registry::default();
        // Claiming another address.
        let body = json!({"service": "product", "id": "p9", "address": "10.0.0.11", "port": 5000});
        let (s, v) = call(&r, "POST", "/v1/instances", &body.to_string(), P1);
        assert_eq!(s, 403, "{v}");
        assert!(v["error"].as_str().unwrap().contains("10.0.0.10"));
        call(&r, "POST", "/v1/instances", &product("p1"), P1);
        let (s, _) = call(&r, "PUT", "/v1/instances/product/p1/heartbeat", "", P2);
        assert_eq!(s, 403);
        let (s, _) = call(&r, "DELETE", "/v1/instances/product/p1", "", P2);
        assert_eq!(s, 403);
        let (s, v) = call(&r, "POST", "/v1/instances", &product("p1"), P2);
        assert_eq!(s, 409, "{v}");
        let (s, _) = call(&r, "POST", "/v1/instances", &product("p1"), "[::1]:5");
        assert_eq!(s, 403);
    }

    #[test]
    fn bad_registrations_are_400_naming_every_field() {
        let r = Registry::default();
        let (s, v) = call(&r, "POST", "/v1/instances", "{\"service\": ", P1);
        assert_eq!(s, 400);
        assert!(v["error"].as_str().unwrap().contains("not valid JSON"));
        let (s, v) = call(&r, "POST", "/v1/instances", "[]", P1);
        assert_eq!(s, 400, "{v}");
        let body = json!({
            "service": "Product!", "id": "a b", "address": "10.0.0.300", "port": 70000,
            "metadata": {"k": 1}, "ttl_secs": 0, "extra": true,
        });
        let (s, v) = call(&r, "POST", "/v1/instances", &body.to_string(), P1);
        assert_eq!(s, 400);
        let fields: Vec<&str> = v["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "service",
                "id",
                "address",
                "port",
                "metadata.k",
                "ttl_secs",
                "extra"
            ],
            "{v}"
        );
        let (s, v) = call(&r, "POST", "/v1/instances", "{}", P1);
        assert_eq!(s, 400);
        assert_eq!(
            v["details"].as_array().unwrap().len(),
            3,
            "service, id and port are required: {v}"
        );
        let (s, _) = call(
            &r,
            "POST",
            "/v1/instances",
            &"x".repeat(http::MAX_BODY + 1),
            P1,
        );
        assert_eq!(s, 413);
        assert_eq!(r.store().len(), 0, "nothing registered by bad requests");
    }

    #[test]
    fn unknown_paths_and_methods() {
        let r = Registry::default();
        assert_eq!(call(&r, "GET", "/nope", "", P1).0, 404);
        assert_eq!(call(&r, "DELETE", "/v1/instances", "", P1).0, 405);
        assert_eq!(call(&r, "GET", "/v1/instances/product/p1", "", P1).0, 405);
        assert_eq!(call(&r, "POST", "/v1/services/product", "", P1).0, 405);
        assert_eq!(
            call(&r, "GET", "/v1/instances/a/b/heartbeat", "", P1).0,
            405
        );
        assert_eq!(call(&r, "POST", "/health", "", P1).0, 405);
    }
}
