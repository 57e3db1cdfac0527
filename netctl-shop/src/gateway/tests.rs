//! The gateway in-process, in front of real services on loopback: the registry (for
//! discovery) and an order service whose database is absent (its input checks answer
//! without it), plus sockets that refuse, hang or hang up, for the upstream failures.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

use super::{
    handlers::{Gateway, handle},
    upstream::{Source, Target, Upstream},
};
use crate::{
    client, db, http,
    order::handlers::OrderService,
    registry::{client::RegistryClient, handlers::Registry, model::Registration},
};

const PEER: &str = "10.1.0.7:41000";

/// Serves `handler`-like services on an ephemeral loopback port.
async fn loopback<F, Fut>(handler: F, stop: &CancellationToken) -> SocketAddr
where
    F: Fn(Request<crate::http::Body>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Resp> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(listener, handler, stop.clone()));
    addr
}

async fn order_service(stop: &CancellationToken) -> SocketAddr {
    let svc = Arc::new(OrderService {
        pool: db::pool("postgresql://nobody@127.0.0.1:9/nothing", 1).unwrap(),
        instance_id: "order-1".into(),
    });
    loopback(
        move |req, _| {
            let svc = svc.clone();
            async move { crate::order::handlers::handle(&svc, req).await }
        },
        stop,
    )
    .await
}

/// A port where nothing listens (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn fixed(name: &'static str, addr: SocketAddr) -> Arc<Upstream> {
    Upstream::new(name, Source::Fixed(format!("http://{addr}"))).unwrap()
}

/// An upstream found through the registry (a dead one: the targets are set by hand).
fn listed(name: &'static str, addrs: &[SocketAddr]) -> Arc<Upstream> {
    let u = Upstream::new(
        name,
        Source::Registry {
            client: RegistryClient::new("http://127.0.0.1:9"),
            service: name.into(),
        },
    )
    .unwrap();
    u.set_targets(
        addrs
            .iter()
            .map(|a| Target {
                authority: a.to_string(),
                id: None,
            })
            .collect(),
    );
    u
}

fn gateway(product: Arc<Upstream>, order: Arc<Upstream>, timeout: Duration) -> Gateway {
    Gateway {
        client: client::pooled(Duration::from_millis(500)),
        product,
        order,
        timeout,
        attempt_timeout: Duration::from_millis(200),
        instance_id: "gateway-t".into(),
        trusted_proxies: vec!["127.0.0.2".parse().unwrap()],
    }
}

async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &str,
    ct: Option<&str>,
) -> (StatusCode, hyper::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = handle(gw, req, PEER.parse().unwrap()).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn upstream_answers_pass_through_with_the_instance_named() {
    let stop = CancellationToken::new();
    let order = order_service(&stop).await;
    let gw = gateway(
        fixed("product", closed_port().await),
        fixed("order", order),
        Duration::from_secs(2),
    );
    let (s, h, v) = call(&gw, "POST", "/api/orders", "{\"quantity\": 0}", JSON).await;
    assert_eq!(s, 400, "the order service's own answer: {v}");
    assert_eq!(v["error"], "invalid order");
    assert_eq!(h["x-instance-id"], "order-1");
    assert_eq!(h["x-upstream"], order.to_string().as_str());
    let (s, _, v) = call(&gw, "GET", "/api/orders/12", "", None).await;
    assert_eq!(s, 503, "the order service has no database: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("database unavailable")
    );
    stop.cancel();
}

#[tokio::test]
async fn failures_are_502_503_504_with_json() {
    let stop = CancellationToken::new();
    // Refused.
    let refused = fixed("product", closed_port().await);
    // Accepts, reads, never answers.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // Reads the request, then hangs up.
    let rude = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = rude.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                .await;
            drop(s);
        }
    });
    let empty = listed("order", &[]);

    let gw = gateway(refused, empty, Duration::from_millis(300));
    let (s, _, v) = call(&gw, "GET", "/health", "", None).await;
    assert_eq!(s, 503, "no order instance known yet: {v}");
    assert_eq!(v["status"], "no instance of order known");
    let (s, _, v) = call(&gw, "GET", "/api/products", "", None).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["upstream"], "product");
    assert!(
        v["error"].as_str().unwrap().contains("cannot connect"),
        "{v}"
    );
    let (s, _, v) = call(&gw, "POST", "/api/orders", "{}", JSON).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "no order instance is available");

    let gw = gateway(
        fixed("product", hang_addr),
        fixed("order", rude_addr),
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    let (s, _, v) = call(&gw, "GET", "/api/products/1", "", None).await;
    assert_eq!(s, 504, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("within 300 ms"),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a timeout, not a hang"
    );
    let (s, _, v) = call(&gw, "GET", "/api/orders/1", "", None).await;
    assert_eq!(s, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("broke off"), "{v}");
    stop.cancel();
}

#[tokio::test]
async fn discovered_instances_are_used_in_turn_and_refusing_ones_skipped() {
    let stop = CancellationToken::new();
    let registry = Arc::new(Registry::default());
    let reg_addr = loopback(
        {
            let registry = registry.clone();
            move |req, peer| {
                let registry = registry.clone();
                async move { crate::registry::handlers::handle(&registry, req, peer).await }
            }
        },
        &stop,
    )
    .await;
    let live = order_service(&stop).await;
    let dead = closed_port().await;
    let reg_client = RegistryClient::new(&format!("http://{reg_addr}"));
    for (id, addr) in [("o-live", live), ("o-dead", dead)] {
        reg_client
            .register(&Registration {
                service: "order".into(),
                id: id.into(),
                address: None,
                port: addr.port(),
                metadata: Default::default(),
                ttl_secs: None,
            })
            .await
            .unwrap();
    }
    let order = Upstream::new(
        "order",
        Source::Registry {
            client: reg_client,
            service: "order".into(),
        },
    )
    .unwrap();
    order.refresh().await;
    let mut found: Vec<String> = order
        .targets()
        .iter()
        .map(|t: &Target| t.authority.clone())
        .collect();
    found.sort();
    let mut want = vec![live.to_string(), dead.to_string()];
    want.sort();
    assert_eq!(found, want);

    let gw = gateway(fixed("product", dead), order, Duration::from_secs(2));
    // Every request gets through: the refusing instance is tried at most once, then skipped.
    for _ in 0..6 {
        let (s, h, v) = call(&gw, "POST", "/api/orders", "{\"quantity\": 2000}", JSON).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(h["x-upstream"], live.to_string().as_str());
    }
    let (s, _, v) = call(&gw, "GET", "/health", "", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["upstreams"]["order"]["instances"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    stop.cancel();
}

#[tokio::test]
async fn bad_requests_never_reach_an_upstream() {
    let gw = gateway(
        fixed("product", closed_port().await),
        fixed("order", closed_port().await),
        Duration::from_secs(1),
    );
    let cases: &[(&str, &str, &str, Option<&str>, u16)] = &[
        ("GET", "/api/products/a.b", "", None, 404),
        ("GET", "/api/products/1/2", "", None, 404),
        ("GET", "/api/orders/a:b", "", None, 400),
        ("DELETE", "/api/products", "", None, 405),
        ("PUT", "/api/products/1", "{}", JSON, 405),
        ("GET", "/api/orders", "", None, 405),
        ("DELETE", "/api/orders/1", "", None, 405),
        (
            "POST",
            "/api/orders",
            "a=b",
            Some("application/x-www-form-urlencoded"),
            415,
        ),
        ("GET", "/api/nothing", "", None, 404),
        ("GET", "/", "", None, 404),
        ("POST", "/health", "", None, 405),
    ];
    for (method, path, body, ct, want) in cases {
        let (s, _, v) = call(&gw, method, path, body, *ct).await;
        assert_eq!(s.as_u16(), *want, "{method} {path}: {v}");
        assert!(v["error"].is_string(), "{method} {path}: {v}");
    }
    let big = "x".repeat(http::MAX_BODY + 1);
    let (s, _, _) = call(&gw, "POST", "/api/orders", &big, JSON).await;
    assert_eq!(s, 413);
    let (s, _, v) = call(&gw, "GET", "/health", "", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({
            "status": "healthy", "service": "gateway", "instance": "gateway-t",
            "upstreams": v["upstreams"].clone(),
        })
    );
}

/// A product instance that answers every request with `status` and names itself.
async fn answering(status: StatusCode, id: &'static str, stop: &CancellationToken) -> SocketAddr {
    loopback(
        move |_req, _| async move {
            let resp = http::json(status, &json!({ "instance": id }));
            http::with_header(resp, "x-instance-id", id)
        },
        stop,
    )
    .await
}

#[tokio::test]
async fn a_read_answered_503_goes_to_the_next_instance() {
    let stop = CancellationToken::new();
    let sick = answering(StatusCode::SERVICE_UNAVAILABLE, "sick", &stop).await;
    let well = answering(StatusCode::OK, "well", &stop).await;
    let product = listed("product", &[sick, well]);
    let gw = gateway(
        product.clone(),
        fixed("order", sick),
        Duration::from_secs(2),
    );
    for _ in 0..6 {
        let (s, h, v) = call(&gw, "GET", "/api/products", "", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(h["x-instance-id"], "well");
    }
    // Nobody can serve: the last 503 stands, as the instance said it.
    product.set_targets(vec![Target {
        authority: sick.to_string(),
        id: None,
    }]);
    let (s, h, v) = call(&gw, "GET", "/api/products", "", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(h["x-instance-id"], "sick");
    // A write is never sent twice.
    let (s, _, v) = call(
        &gw,
        "POST",
        "/api/orders",
        r#"{"customer_id": "c", "product_id": "1", "quantity": 1}"#,
        JSON,
    )
    .await;
    assert_eq!(s, 503, "{v}");
    stop.cancel();
}

#[tokio::test]
async fn a_read_sent_to_a_hung_instance_is_answered_by_the_next() {
    let stop = CancellationToken::new();
    // Accepts, never answers (a stopped process: its kernel still accepts).
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let well = answering(StatusCode::OK, "well", &stop).await;
    let product = listed("product", &[hang_addr, well]);
    let gw = gateway(product, fixed("order", hang_addr), Duration::from_secs(5));
    let started = std::time::Instant::now();
    for _ in 0..6 {
        let (s, h, v) = call(&gw, "GET", "/api/products", "", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(h["x-instance-id"], "well");
    }
    // The hung one cost one attempt (200 ms), then was passed over.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A write is not sent twice: it waits the whole budget on the one it was sent to.
    let gw = gateway(
        fixed("product", well),
        fixed("order", hang_addr),
        Duration::from_millis(600),
    );
    let started = std::time::Instant::now();
    let (s, _, v) = call(&gw, "POST", "/api/orders", "{}", JSON).await;
    assert_eq!(s, 504, "{v}");
    assert!(started.elapsed() >= Duration::from_millis(600));
    stop.cancel();
}

#[tokio::test]
async fn reads_alternate_between_two_instances() {
    // Deciding whether a read may give up early on one instance must not move the
    // round-robin position: with two instances, that sent every read to the same one.
    let stop = CancellationToken::new();
    let a = answering(StatusCode::OK, "a", &stop).await;
    let b = answering(StatusCode::OK, "b", &stop).await;
    let gw = gateway(
        listed("product", &[a, b]),
        fixed("order", a),
        Duration::from_secs(2),
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, h, v) = call(&gw, "GET", "/api/products", "", None).await;
        assert_eq!(s, 200, "{v}");
        seen.push(h["x-instance-id"].to_str().unwrap().to_string());
    }
    assert_ne!(seen[0], seen[1], "{seen:?}");
    assert_eq!(seen[0..2], seen[2..4], "{seen:?}");
    stop.cancel();
}
