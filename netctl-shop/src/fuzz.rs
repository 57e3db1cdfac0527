//! Entry points for fuzzing the registry's and the order service's request parsing (the
//! `fuzz/` cargo-fuzz targets `registry` and `order`, and the mutation tests below, call
//! them): a raw body goes through the real handler. Whatever the body, the answer is JSON;
//! a body that is not a valid request is 400 (413 when too large) with an `error`; a valid
//! one keeps what validation promises. A panic is a bug.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::Value;

use super::{
    http::{self, Resp},
    order::{
        handlers::OrderService,
        validate::{MAX_QUANTITY, MIN_QUANTITY, parse_order},
    },
    registry::handlers::{Registry, handle as registry_handle, parse_registration},
};

/// The address fuzzed registrations come from.
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

fn post(path: &str, body: &[u8]) -> Request<Full<Bytes>> {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)));
    match req {
        Ok(r) => r,
        Err(e) => panic!("a request with a fixed path and header: {e}"),
    }
}

/// Status and JSON body of an answer; panics when the body is not JSON.
async fn answer(resp: Resp) -> (StatusCode, Value) {
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "every answer is JSON"
    );
    let status = resp.status();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => match e {},
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => (status, v),
        Err(e) => panic!(
            "the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// A refusal: 400 (or 413 for a body over the limit) naming what is wrong.
fn assert_refused(status: StatusCode, body: &Value, input: &[u8]) {
    if input.len() > http::MAX_BODY {
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    } else {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an error says what is wrong: {body}"
    );
    if let Some(details) = body.get("details") {
        let details = details.as_array().map_or(&[][..], Vec::as_slice);
        assert!(!details.is_empty(), "details name something: {body}");
        for d in details {
            assert!(d["field"].is_string() && d["message"].is_string(), "{body}");
        }
    }
}

/// `POST /v1/instances` with `input` from 10.0.0.10 to an empty registry.
pub fn registry(input: &[u8]) {
    futures::executor::block_on(registry_async(input));
}

async fn registry_async(input: &[u8]) {
    let reg = Registry::default();
    let peer = SocketAddr::from((PEER, 40000));
    let (status, body) =
        answer(registry_handle(&reg, post("/v1/instances", input), peer).await).await;
    let parsed = (input.len() <= http::MAX_BODY)
        .then(|| serde_json::from_slice::<Value>(input).ok())
        .flatten()
        .map(|v| parse_registration(&v));
    let Some(Ok((registration, ttl))) = parsed else {
        assert_refused(status, &body, input);
        let list = answer(registry_handle(&reg, get("/v1/instances"), peer).await).await;
        assert_eq!(
            list.1["instances"],
            Value::Array(Vec::new()),
            "nothing registered"
        );
        return;
    };
    // A valid registration: made, unless it claims an address that is not its own.
    if registration.address.is_some_and(|a| a != PEER) {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        return;
    }
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["service"], registration.service.as_str());
    assert_eq!(body["id"], registration.id.as_str());
    assert_eq!(body["address"], PEER.to_string().as_str());
    assert_eq!(body["port"], registration.port);
    assert_eq!(body["ttl_secs"], ttl);
    assert!((1..=super::registry::model::MAX_TTL_SECS).contains(&ttl));
    assert!((1..=65535).contains(&registration.port));
    for (name, max, extra) in [
        (&registration.service, 63, "-_."),
        (&registration.id, 128, "-_.:"),
    ] {
        assert!(!name.is_empty() && name.chars().count() <= max, "{name:?}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c)),
            "{name:?}"
        );
    }
    // And discoverable, as it was given.
    let path = format!("/v1/services/{}", registration.service);
    let (s, found) = answer(registry_handle(&reg, get(&path), peer).await).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = found["instances"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, [registration.id.as_str()], "{found}");
}

fn get(path: &str) -> Request<Full<Bytes>> {
    match Request::builder().uri(path).body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => panic!("a GET of a path made of checked names: {e}"),
    }
}

thread_local! {
    /// The order service under fuzzing: its database is never reached (a port nothing
    /// listens on), so a valid order is answered 503 after validation.
    static ORDERS: Option<(tokio::runtime::Runtime, OrderService)> = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
        let pool = super::db::pool("postgresql://nobody@127.0.0.1:9/nothing", 1).ok();
        rt.zip(pool).map(|(rt, pool)| {
            (rt, OrderService { pool, instance_id: "order-fuzz".into() })
        })
    };
}

/// `POST /orders` with `input` to an order service without a database.
pub fn order(input: &[u8]) {
    ORDERS.with(|o| {
        let Some((rt, svc)) = o else {
            panic!("could not make the order service's runtime and pool");
        };
        rt.block_on(order_async(svc, input));
    });
}

async fn order_async(svc: &OrderService, input: &[u8]) {
    let resp = super::order::handlers::handle(svc, post("/orders", input)).await;
    let (status, body) = answer(resp).await;
    let parsed = (input.len() <= http::MAX_BODY)
        .then(|| serde_json::from_slice::<Value>(input).ok())
        .flatten();
    let order = parsed.as_ref().map(parse_order);
    let Some(Ok(order)) = order else {
        assert_refused(status, &body, input);
        return;
    };
    // Valid: it got past validation (to the database, which is not there).
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!((MIN_QUANTITY..=MAX_QUANTITY).contains(&i64::from(order.quantity)));
    for (value, max) in [(&order.customer_id, 100), (&order.product_id, 64)] {
        assert!(!value.trim().is_empty() && value.chars().count() <= max);
        assert!(!value.chars().any(char::is_control));
    }
    // Nothing but the three fields was accepted (no price from the client).
    let keys: BTreeSet<&str> = parsed
        .as_ref()
        .and_then(Value::as_object)
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert!(
        keys.iter()
            .all(|k| ["customer_id", "product_id", "quantity"].contains(k)),
        "{keys:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutations of seed bodies for the in-suite tests: byte flips, cuts, insertions of JSON
    /// punctuation and of numbers at the edges of the ranges, deterministic.
    fn mutations(seeds: &[&[u8]], count: usize, mut check: impl FnMut(&[u8])) {
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r % n.max(1) as u64) as usize
        };
        const PIECES: [&[u8]; 16] = [
            b"\"", b"{", b"}", b"[", b"]", b":", b",", b"null", b"true", b"0", b"-1", b"1000",
            b"1001", b"65536", b"1e3", b"\\u0000",
        ];
        for i in 0..count {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..next(3) + 1 {
                let at = next(input.len() + 1);
                match next(4) {
                    0 if !input.is_empty() => {
                        let at = at.min(input.len() - 1);
                        input[at] = b"az09 \"{}[]:,.-\\"[next(15)];
                    }
                    1 => input.truncate(at),
                    2 => {
                        let piece = PIECES[next(PIECES.len())];
                        input.splice(at..at, piece.iter().copied());
                    }
                    _ if !input.is_empty() => {
                        input.remove(at.min(input.len() - 1));
                    }
                    _ => {}
                }
            }
            check(&input);
        }
    }

    const REGISTRATIONS: [&[u8]; 3] = [
        br#"{"service": "product", "id": "product-1", "port": 5000, "metadata": {"zone": "a"}}"#,
        br#"{"service": "order", "id": "o:1", "address": "10.0.0.10", "port": 5000, "ttl_secs": 30}"#,
        br#"{"service": "x.y_z", "id": "A-b", "address": "10.0.0.11", "port": 1}"#,
    ];
    const ORDERS_: [&[u8]; 3] = [
        br#"{"customer_id": "c-1", "product_id": "1", "quantity": 2}"#,
        br#"{"customer_id": "k", "product_id": "3", "quantity": 1000}"#,
        br#"{"quantity": 1, "customer_id": "\u00e9", "product_id": "2"}"#,
    ];

    /// Thousands of mutated registrations through the real handler: never a panic, every
    /// bad one 400 with a JSON error and nothing registered, every valid one registered as
    /// given (`cargo xtask fuzz registry` runs libFuzzer on the same entry point).
    #[test]
    fn mutated_registrations_are_refused_cleanly_or_kept_as_promised() {
        let (mut valid, mut n) = (0, 0);
        mutations(&REGISTRATIONS, 3000, |input| {
            n += 1;
            registry(input);
            let v = serde_json::from_slice::<Value>(input).ok();
            valid += usize::from(v.is_some_and(|v| parse_registration(&v).is_ok()));
        });
        assert_eq!(n, 3000);
        assert!(
            valid > 100,
            "the mutations also make valid registrations ({valid})"
        );
        for seed in REGISTRATIONS {
            registry(seed);
        }
        registry(&vec![b' '; http::MAX_BODY + 1]);
        registry(b"");
    }

    /// The same for orders (`cargo xtask fuzz order`).
    #[test]
    fn mutated_orders_are_refused_cleanly_or_kept_as_promised() {
        let (mut valid, mut n) = (0, 0);
        mutations(&ORDERS_, 3000, |input| {
            n += 1;
            order(input);
            let v = serde_json::from_slice::<Value>(input).ok();
            valid += usize::from(v.is_some_and(|v| parse_order(&v).is_ok()));
        });
        assert_eq!(n, 3000);
        assert!(valid > 50, "the mutations also make valid orders ({valid})");
        order(&vec![b' '; http::MAX_BODY + 1]);
        order(b"");
    }
}
