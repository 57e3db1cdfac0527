//! The order service's HTTP API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 healthy / 503 when the database does not answer |
//! | `POST /orders` `{"customer_id", "product_id", "quantity"}` | 201 `Order` once committed; 400 (each bad field named, unknown product), 413, 415, 503 |
//! | ... with `Idempotency-Key: K` | the same, once per key: a retry gets 200 and the first order; 409 when K was used for another order |
//! | `GET /orders/{id}` | 200 `Order`; 400 (not a positive integer), 404 |

use bytes::Bytes;
use deadpool_postgres::Pool;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{
    store::{self, Created},
    validate::{parse_order, parse_order_id},
};
use crate::{
    db,
    http::{self, FieldError, Resp},
};

pub struct OrderService {
    pub pool: Pool,
    pub instance_id: String,
}

pub async fn handle<B>(svc: &OrderService, req: Request<B>) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let resp = match (segments.as_slice(), &method) {
        (["health"], &Method::GET) => health(svc).await,
        (["health"], _) => http::method_not_allowed("GET"),
        (["orders"], &Method::POST) => create(svc, req).await,
        (["orders"], _) => http::method_not_allowed("POST"),
        (["orders", id], &Method::GET) => get(svc, id).await,
        (["orders", _], _) => http::method_not_allowed("GET"),
        _ => http::not_found(format!("no such endpoint: {method} {path}")),
    };
    http::with_header(resp, "x-instance-id", &svc.instance_id)
}

async fn health(svc: &OrderService) -> Resp {
    match db::ping(&svc.pool).await {
        Ok(latency) => http::json(
            StatusCode::OK,
            &json!({
                "status": "healthy",
                "service": "order",
                "instance": svc.instance_id,
                "postgres": { "ok": true, "latency_ms": latency.as_secs_f64() * 1000.0 },
            }),
        ),
        Err(e) => http::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "status": "unhealthy",
                "service": "order",
                "instance": svc.instance_id,
                "postgres": { "ok": false, "error": format!("{e:#}") },
            }),
        ),
    }
}

async fn create<B>(svc: &OrderService, req: Request<B>) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let key = match idempotency_key(req.headers()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let value = match http::json_body(req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let new = match parse_order(&value) {
        Ok(o) => o,
        Err(details) => return http::invalid("invalid order", &details),
    };
    match store::create(&svc.pool, &new, key.as_deref()).await {
        Ok(Created::New(order)) => http::json(StatusCode::CREATED, &order),
        Ok(Created::Replayed(order)) => http::with_header(
            http::json(StatusCode::OK, &order),
            "idempotent-replayed",
            "true",
        ),
        Ok(Created::KeyReused) => http::error(
            StatusCode::CONFLICT,
            "this Idempotency-Key was used for a different order",
        ),
        Ok(Created::UnknownProduct) => http::invalid(
            "invalid order",
            &[FieldError::new(
                "product_id",
                format!("unknown product {:?}", new.product_id),
            )],
        ),
        Err(e) => e.answer(),
    }
}

/// The optional `Idempotency-Key` header: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, http::Rejected> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(Box::new(http::error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        ))),
    }
}

async fn get(svc: &OrderService, id: &str) -> Resp {
    let Some(id) = parse_order_id(id) else {
        return http::error(
            StatusCode::BAD_REQUEST,
            format!("order id {id:?} is not a positive integer"),
        );
    };
    match store::get(&svc.pool, id).await {
        Ok(Some(order)) => http::json(StatusCode::OK, &order),
        Ok(None) => http::not_found(format!("no order {id}")),
        Err(e) => e.answer(),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    use super::*;

    /// A service whose database is never reached: these requests are refused before.
    fn service() -> OrderService {
        OrderService {
            pool: db::pool("postgresql://nobody@127.0.0.1:9/nothing", 1).unwrap(),
            instance_id: "order-t".into(),
        }
    }

    fn call(
        method: &str,
        path: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = handle(&service(), req).await;
            assert_eq!(resp.headers()["x-instance-id"], "order-t");
            assert_eq!(resp.headers()["content-type"], "application/json");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap())
        })
    }

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn bad_orders_are_400_with_every_field_named() {
        let (s, v) = call("POST", "/orders", "{\"customer_id\": 1", JSON);
        assert_eq!(s, 400);
        assert!(
            v["error"].as_str().unwrap().contains("not valid JSON"),
            "{v}"
        );

        let (s, v) = call("POST", "/orders", "{\"quantity\": \"two\"}", JSON);
        assert_eq!(s, 400);
        assert_eq!(v["error"], "invalid order");
        let fields: Vec<&str> = v["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["customer_id", "product_id", "quantity"]);

        let (s, v) = call(
            "POST",
            "/orders",
            r#"{"customer_id": "c", "product_id": "1", "quantity": 1001}"#,
            None,
        );
        assert_eq!(s, 400, "no content type is accepted as JSON");
        assert_eq!(v["details"][0]["field"], "quantity");

        let (s, v) = call("POST", "/orders", "[]", JSON);
        assert_eq!(s, 400);
        assert_eq!(v["details"][0]["message"], "the body must be a JSON object");
    }

    #[test]
    fn other_bodies_and_sizes_are_refused() {
        let (s, _) = call(
            "POST",
            "/orders",
            "customer_id=1",
            Some("application/x-www-form-urlencoded"),
        );
        assert_eq!(s, 415);
        let big = format!("{{\"customer_id\": \"{}\"}}", "x".repeat(http::MAX_BODY));
        let (s, v) = call("POST", "/orders", &big, JSON);
        assert_eq!(s, 413);
        assert!(v["error"].as_str().unwrap().contains("larger than"));
    }

    #[test]
    fn bad_ids_methods_and_paths() {
        let (s, v) = call("GET", "/orders/abc", "", None);
        assert_eq!(s, 400);
        assert!(v["error"].as_str().unwrap().contains("positive integer"));
        let (s, _) = call("GET", "/orders/0", "", None);
        assert_eq!(s, 400);
        assert_eq!(call("DELETE", "/orders/1", "", None).0, 405);
        assert_eq!(call("GET", "/orders", "", None).0, 405);
        assert_eq!(call("POST", "/health", "", None).0, 405);
        let req = Request::builder()
            .method("POST")
            .uri("/orders")
            .header("idempotency-key", "has space")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resp = rt.block_on(handle(&service(), req));
        assert_eq!(resp.status(), 400);
        assert_eq!(call("GET", "/nope", "", None).0, 404);
    }

    #[test]
    fn a_database_that_does_not_answer_is_503() {
        let (s, v) = call("GET", "/health", "", None);
        assert_eq!(s, 503);
        assert_eq!(v["postgres"]["ok"], false);
        let (s, v) = call("GET", "/orders/1", "", None);
        assert_eq!(s, 503);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("database unavailable"),
            "{v}"
        );
    }
}
