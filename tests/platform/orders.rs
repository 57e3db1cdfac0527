//! Orders under load, through the whole platform (nginx, gateway, order service,
//! PostgreSQL): 1,000 POSTs at once, and every 201 is exactly one row; retries with an
//! idempotency key store one order.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{collections::BTreeMap, time::Instant};

use common::{
    Platform, Slot,
    http::{self, psql},
};
use hyper::Method;

const ORDERS: usize = 1000;

#[test]
fn a_thousand_concurrent_orders_are_each_stored_exactly_once() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::default_topology(&slot);
    platform.up_ok();
    let url = format!("{}/api/orders", platform.edge_url());
    let rt = http::runtime();
    let client = http::client();

    let started = Instant::now();
    let replies = rt.block_on(async {
        let tasks: Vec<_> = (0..ORDERS)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let body = format!(
                        r#"{{"customer_id": "load-{i}", "product_id": "{}", "quantity": {}}}"#,
                        i % 3 + 1,
                        i % 5 + 1
                    );
                    http::send(&client, Method::POST, &url, Some(&body)).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let took = started.elapsed();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut created: Vec<String> = Vec::new();
    for r in &replies {
        match r {
            Ok(r) => {
                *by_status.entry(r.status).or_default() += 1;
                if r.status == 201 {
                    created.push(r.json()["customer_id"].as_str().unwrap().to_string());
                } else {
                    // Overload may refuse an order, but only with a JSON answer saying so.
                    assert_eq!(r.status, 503, "{r:?}");
                    assert!(r.json()["error"].is_string());
                }
            }
            Err(e) => panic!("a request got no answer: {e}"),
        }
    }
    eprintln!(
        "{ORDERS} concurrent orders in {:.2}s: {by_status:?}",
        took.as_secs_f64()
    );
    let rows: usize = psql(&platform, "SELECT count(*) FROM orders")
        .parse()
        .unwrap();
    assert_eq!(
        rows,
        created.len(),
        "every 201 is a row, and every row a 201"
    );
    let distinct: usize = psql(&platform, "SELECT count(DISTINCT customer_id) FROM orders")
        .parse()
        .unwrap();
    assert_eq!(distinct, rows, "no order stored twice");
    created.sort();
    let mut stored: Vec<String> = psql(
        &platform,
        "SELECT customer_id FROM orders ORDER BY customer_id",
    )
    .lines()
    .map(str::to_string)
    .collect();
    stored.sort();
    assert_eq!(
        stored, created,
        "the rows are exactly the acknowledged orders"
    );
    // On 2 busy cores an overloaded order service sheds some with 503; most get through.
    assert!(
        created.len() * 100 >= ORDERS * 80,
        "at least 80% accepted: {by_status:?}"
    );
    // Totals were computed by the server from the catalog.
    let wrong = psql(
        &platform,
        "SELECT count(*) FROM orders o JOIN products p ON p.id = o.product_id \
         WHERE o.total_price <> p.price * o.quantity",
    );
    assert_eq!(wrong, "0");

    // The same order sent 20 times at once with one idempotency key: stored once.
    let replies = rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let req = hyper::Request::post(&url)
                        .header("content-type", "application/json")
                        .header("idempotency-key", "retry-me-7")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"customer_id": "retrier", "product_id": "2", "quantity": 3}"#,
                        )))
                        .unwrap();
                    let resp = client.request(req).await.unwrap();
                    let status = resp.status().as_u16();
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    (status, v["id"].as_i64())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let firsts = replies.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(firsts, 1, "{replies:?}");
    assert!(
        replies.iter().all(|(s, _)| *s == 201 || *s == 200),
        "{replies:?}"
    );
    let ids: std::collections::BTreeSet<_> = replies.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 1, "every retry got the same order: {replies:?}");
    assert_eq!(
        psql(
            &platform,
            "SELECT count(*) FROM orders WHERE customer_id = 'retrier'"
        ),
        "1"
    );
    let reused = rt.block_on(async {
        let req = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-me-7")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"customer_id": "retrier", "product_id": "1", "quantity": 3}"#,
            )))
            .unwrap();
        client.request(req).await.unwrap().status().as_u16()
    });
    assert_eq!(reused, 409, "a key reused for another order is refused");
}
