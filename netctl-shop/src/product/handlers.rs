//! The product service's HTTP API. Every answer carries `X-Instance-Id` (which replica
//! answered); catalog reads carry `X-Cache: HIT | MISS | BYPASS` (Redis down).
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 healthy, or degraded when Redis is down; 503 without PostgreSQL |
//! | `GET /products` | 200 `[Product]` |
//! | `GET /products/{id}` | 200 `Product`; 404 |
//! | `PUT /products/{id}` `{"name"?, "price"?, "stock"?}` | 200 `Product` (caches dropped); 400, 404, 413, 415 |

use bytes::Bytes;
use deadpool_postgres::Pool;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::{
    cache::{Cache, LIST_KEY, Lookup, product_key},
    catalog::{self, Change},
};
use crate::{
    db,
    fields::{Fields, NOT_AN_OBJECT},
    http::{self, FieldError, Resp},
};

pub struct ProductService {
    pub pool: Pool,
    pub cache: Cache,
    pub instance_id: String,
}

pub async fn handle<B>(svc: &ProductService, req: Request<B>) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    // Who the gateway says the client is, said back (so that it can be seen end to end).
    let client = [
        ("x-real-ip", "x-client-ip"),
        ("x-forwarded-for", "x-client-chain"),
    ]
    .map(|(from, to)| (to, req.headers().get(from).cloned()));
    let resp = match (segments.as_slice(), &method) {
        (["health"], &Method::GET) => health(svc).await,
        (["health"], _) => http::method_not_allowed("GET"),
        (["products"], &Method::GET) => list(svc).await,
        (["products"], _) => http::method_not_allowed("GET"),
        (["products", id], &Method::GET) => get(svc, id).await,
        (["products", id], &Method::PUT) => update(svc, id, req).await,
        (["products", _], _) => http::method_not_allowed("GET, PUT"),
        _ => http::not_found(format!("no such endpoint: {method} {path}")),
    };
    let mut resp = http::with_header(resp, "x-instance-id", &svc.instance_id);
    for (name, value) in client {
        if let Some(v) = value {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Product ids are short words; anything else cannot be in the catalog.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn list(svc: &ProductService) -> Resp {
    let lookup = svc.cache.get(LIST_KEY).await;
    if let Lookup::Hit(body) = &lookup {
        return cached(body.clone(), &lookup);
    }
    match catalog::list(&svc.pool).await {
        Ok(products) => fill(svc, LIST_KEY.to_string(), &products, &lookup),
        Err(e) => e.answer(),
    }
}

async fn get(svc: &ProductService, id: &str) -> Resp {
    if !valid_id(id) {
        return http::not_found(format!("no product {id:?}"));
    }
    let key = product_key(id);
    let lookup = svc.cache.get(&key).await;
    if let Lookup::Hit(body) = &lookup {
        return cached(body.clone(), &lookup);
    }
    match catalog::get(&svc.pool, id).await {
        Ok(Some(p)) => fill(svc, key, &p, &lookup),
        Ok(None) => http::not_found(format!("no product {id:?}")),
        Err(e) => e.answer(),
    }
}

fn cached(body: Bytes, lookup: &Lookup) -> Resp {
    http::with_header(
        http::json_bytes(StatusCode::OK, body),
        "x-cache",
        lookup.header(),
    )
}

/// Answers with `value` from the database and stores it in the cache (unless Redis is down).
fn fill<T: serde::Serialize>(
    svc: &ProductService,
    key: String,
    value: &T,
    lookup: &Lookup,
) -> Resp {
    let body = match serde_json::to_vec(value) {
        Ok(b) => Bytes::from(b),
        Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Lookup::Miss(generation) = lookup {
        svc.cache.put(key, body.clone(), generation.clone());
    }
    cached(body, lookup)
}

async fn update<B>(svc: &ProductService, id: &str, req: Request<B>) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !valid_id(id) {
        return http::not_found(format!("no product {id:?}"));
    }
    let value = match http::json_body(req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let change = match parse_change(&value) {
        Ok(c) => c,
        Err(details) => return http::invalid("invalid product change", &details),
    };
    match catalog::update(&svc.pool, id, &change).await {
        Ok(Some(p)) => {
            // The database also announces the change to every replica; dropping the keys
            // here as well means this answer's client reads its own write at once.
            svc.cache
                .invalidate(&[LIST_KEY.to_string(), product_key(id)])
                .await;
            http::json(StatusCode::OK, &p)
        }
        Ok(None) => http::not_found(format!("no product {id:?}")),
        Err(e) => e.answer(),
    }
}

/// The highest price a product may have (the `products.price` column is NUMERIC(12, 2)).
pub const MAX_PRICE: f64 = 9_999_999_999.99;

/// A product change: at least one of name, price (at most two decimals), stock.
pub fn parse_change(value: &serde_json::Value) -> Result<Change, Vec<FieldError>> {
    let Some(mut f) = Fields::of(value) else {
        return Err(vec![FieldError::new("", NOT_AN_OBJECT)]);
    };
    let name = f.string("name", false, 200);
    let price = f.number("price", false, 0.0, MAX_PRICE);
    if let Some(p) = price
        && ((p * 100.0).round() - p * 100.0).abs() > 1e-6
    {
        f.add_error("price", "must have at most two decimals");
    }
    let stock = f.integer("stock", false, 0, i64::from(i32::MAX));
    f.reject_unknown(
        &["name", "price", "stock"],
        &[("id", "the id is in the path")],
    );
    if name.is_none() && price.is_none() && stock.is_none() && f.is_clean() {
        f.add_error("", "give at least one of name, price, stock");
    }
    f.finish()?;
    Ok(Change {
        name,
        price,
        stock: stock.map(|s| s as i32),
    })
}

async fn health(svc: &ProductService) -> Resp {
    let (pg, redis) = tokio::join!(db::ping(&svc.pool), svc.cache.ping());
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let postgres = match &pg {
        Ok(d) => json!({ "ok": true, "latency_ms": ms(*d) }),
        Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
    };
    let redis_json = match &redis {
        Ok(d) => json!({ "ok": true, "latency_ms": ms(*d) }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let (status, code, cache) = match (&pg, &redis) {
        (Err(_), _) => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE, "unknown"),
        (Ok(_), Ok(_)) => ("healthy", StatusCode::OK, "redis"),
        (Ok(_), Err(_)) => (
            "degraded",
            StatusCode::OK,
            "bypassed: Redis is down, every read goes to PostgreSQL (slower)",
        ),
    };
    http::json(
        code,
        &json!({
            "status": status,
            "service": "product",
            "instance": svc.instance_id,
            "postgres": postgres,
            "redis": redis_json,
            "cache": cache,
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: serde_json::Value) -> Vec<String> {
        parse_change(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn changes_are_validated_field_by_field() {
        assert_eq!(
            parse_change(&json!({"price": 19.5, "stock": 3})).unwrap(),
            Change {
                name: None,
                price: Some(19.5),
                stock: Some(3)
            }
        );
        assert_eq!(
            fields(json!({})),
            [": give at least one of name, price, stock"]
        );
        assert_eq!(
            fields(json!({"price": 1.234})),
            ["price: must have at most two decimals"]
        );
        let e = fields(json!({"price": -1, "stock": "many", "name": 5, "id": "9"}));
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("name: must be a string"), "{e:?}");
        assert!(e[1].starts_with("price: must be a number from 0"), "{e:?}");
        assert!(e[2].starts_with("stock: must be a whole number"), "{e:?}");
        assert_eq!(e[3], "id: the id is in the path");
        assert_eq!(fields(json!("x")), [": the body must be a JSON object"]);
    }

    #[test]
    fn ids_are_short_words() {
        assert!(valid_id("1") && valid_id("prod-201") && valid_id("a_b"));
        for bad in ["", "a/b", "..", "x y", &"9".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod endpoint_tests {
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    use super::*;

    /// A replica whose PostgreSQL and Redis refuse connections (nothing listens there):
    /// input checks answer before either is asked, and failures show as 503 / BYPASS.
    fn service() -> ProductService {
        ProductService {
            pool: db::pool("postgresql://nobody@127.0.0.1:9/nothing", 1).unwrap(),
            cache: Cache::new("redis://127.0.0.1:9", 60).unwrap(),
            instance_id: "product-t".into(),
        }
    }

    async fn call(
        svc: &ProductService,
        method: &str,
        path: &str,
        body: &str,
        ct: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = handle(
            svc,
            req.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
        )
        .await;
        assert_eq!(resp.headers()["x-instance-id"], "product-t");
        let status = resp.status();
        let cache = resp
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, cache, serde_json::from_slice(&bytes).unwrap())
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn bad_changes_are_refused_before_the_database() {
        let svc = service();
        let (s, _, v) = call(&svc, "PUT", "/products/1", "{\"price\": \"cheap\"}", JSON).await;
        assert_eq!(s, 400);
        assert_eq!(v["details"][0]["field"], "price");
        let (s, _, v) = call(&svc, "PUT", "/products/1", "{", JSON).await;
        assert_eq!(s, 400);
        assert!(v["error"].as_str().unwrap().contains("not valid JSON"));
        let (s, _, _) = call(&svc, "PUT", "/products/1", "price=1", Some("text/plain")).await;
        assert_eq!(s, 415);
        let big = format!("{{\"name\": \"{}\"}}", "x".repeat(http::MAX_BODY));
        assert_eq!(call(&svc, "PUT", "/products/1", &big, JSON).await.0, 413);
        let (s, _, v) = call(&svc, "PUT", "/products/a.b", "{\"stock\": 1}", JSON).await;
        assert_eq!(s, 404);
        assert!(v["error"].as_str().unwrap().contains("no product"));
    }

    #[tokio::test]
    async fn paths_and_methods() {
        let svc = service();
        assert_eq!(call(&svc, "POST", "/products", "", None).await.0, 405);
        assert_eq!(call(&svc, "DELETE", "/products/1", "", None).await.0, 405);
        assert_eq!(call(&svc, "GET", "/products/1/x", "", None).await.0, 404);
        assert_eq!(call(&svc, "GET", "/products/..", "", None).await.0, 404);
        assert_eq!(call(&svc, "PUT", "/health", "", None).await.0, 405);
    }

    #[tokio::test]
    async fn without_redis_reads_bypass_the_cache_and_without_postgres_they_fail_503() {
        let svc = service();
        let (s, cache, v) = call(&svc, "GET", "/products", "", None).await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(cache, None);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("database unavailable"),
            "{v}"
        );
        assert!(
            svc.cache.last_error().is_some(),
            "the Redis failure is remembered"
        );
        let (s, _, v) = call(&svc, "GET", "/health", "", None).await;
        assert_eq!(s, 503);
        assert_eq!(v["status"], "unhealthy");
        assert_eq!(v["redis"]["ok"], false);
        assert_eq!(v["postgres"]["ok"], false);
    }
}
