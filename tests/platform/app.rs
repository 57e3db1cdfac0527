//! The reference platform for real, in this test's own prefix and subnets: nginx, the
//! gateway, the registry, three product replicas on PostgreSQL and Redis, the order
//! service. One platform for the whole story (it takes a few seconds to bring up), told
//! in steps: catalog and cache, orders in PostgreSQL, replicas and restarts, Redis down,
//! a controller killed and adopted, data kept across `down`/`up`, nothing left behind.
//!
//! The host reaches the shop as a user would, `curl localhost:8080` (the slot's own port).

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{
    Platform, Slot, assert_success,
    http::{self, Client, get, post, psql, redis_stat},
    relocate, service, services,
    snapshot::Snapshot,
    wait_for,
};
use netctl::{
    instance::ProcessId,
    instance::daemon,
    supervisor::{ServiceState, record, stop},
    topology::{DEFAULT_TOPOLOGY, Topology},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

/// Every live process in the platform's namespaces.
fn processes(platform: &Platform) -> Vec<ProcessId> {
    platform
        .plan
        .endpoints
        .iter()
        .filter_map(|e| stop::netns_inode(&e.netns))
        .flat_map(stop::processes_in)
        .collect()
}

#[test]
fn the_reference_platform_serves_the_shop_end_to_end() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let rt = http::runtime();
    let client = http::client();
    {
        let platform = Platform::default_topology(&slot);
        let started = Instant::now();
        let out = platform.up_ok();
        eprintln!("up took {:.1}s", started.elapsed().as_secs_f64());
        assert!(out.contains("9 services healthy"), "{out}");
        for name in ["edge", "product-3", "postgres"] {
            let line = out
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in the summary: {out}"));
            assert!(line.contains("healthy"), "{line}");
            assert!(
                line.contains(&platform.endpoint(name).address.to_string()),
                "{line}"
            );
        }
        let edge = platform.edge_url();
        let status = slot.netctl(&["status"]);
        assert_success(&status, "netctl status");
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.lines().any(|l| l.starts_with("product-2")
                && l.contains("healthy")
                && l.contains("http :5000/health")),
            "{text}"
        );

        catalog_is_served_and_cached(&platform, &rt, &client, &edge);
        changes_drop_the_cache(&platform, &rt, &client, &edge);
        let order_id = orders_are_committed(&platform, &rt, &client, &edge);
        every_replica_serves(&rt, &client, &edge);
        the_client_address_arrives_through_the_edge_and_cannot_be_forged(&platform);
        the_registry_belongs_to_the_instances(&platform);
        a_killed_replica_is_restarted_without_failed_requests(&slot, &rt, &client, &edge);
        without_redis_the_catalog_is_slower_and_says_so(&platform, &slot, &rt, &client, &edge);
        logs_are_kept_per_service(&slot);
        a_killed_controller_is_replaced_and_adopts_the_services(
            &platform, &slot, &rt, &client, &edge,
        );

        // down stops everything, even what it did not start itself.
        let pids = processes(&platform);
        assert!(pids.len() >= 9, "{pids:?}");
        let out = slot.netctl(&["down"]);
        assert_success(&out, "netctl down");
        let alive: Vec<_> = pids.iter().filter(|p| p.is_alive()).collect();
        assert!(alive.is_empty(), "down left processes running: {alive:?}");
        assert!(record::all(&slot.instance()).is_empty());

        // The data is still there for the next up.
        platform.up_ok();
        let r = rt.block_on(get(&client, &format!("{edge}/api/orders/{order_id}")));
        assert_eq!(r.status, 200, "order {order_id} survived down/up: {r:?}");
        assert_eq!(r.json()["customer_id"], "cust-101");

        assert_success(&slot.netctl(&["down", "--volumes"]), "down --volumes");
        assert!(
            !std::path::Path::new(&format!("/var/lib/netctl/{}", slot.instance())).exists(),
            "--volumes removes the data"
        );
    }
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

fn catalog_is_served_and_cached(
    platform: &Platform,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) {
    let hits_before = redis_stat(platform, "keyspace_hits");
    let first = rt.block_on(get(client, &format!("{edge}/api/products")));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.json(),
        json!([
            {"id": "1", "name": "Laptop", "price": 999.99, "stock": 50},
            {"id": "2", "name": "Mouse", "price": 29.99, "stock": 200},
            {"id": "3", "name": "Keyboard", "price": 79.99, "stock": 150},
        ])
    );
    assert_eq!(first.header("x-cache"), Some("MISS"));
    // Redis is filled in the background: the next read finds it there.
    wait_for("the cache to be filled", Duration::from_secs(5), || {
        let r = rt.block_on(get(client, &format!("{edge}/api/products")));
        assert_eq!(r.body, first.body, "the cached answer is the same");
        r.header("x-cache") == Some("HIT")
    });
    assert!(
        redis_stat(platform, "keyspace_hits") > hits_before,
        "Redis counted the hit"
    );
    let one = rt.block_on(get(client, &format!("{edge}/api/products/2")));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["name"], "Mouse");
    let none = rt.block_on(get(client, &format!("{edge}/api/products/99")));
    assert_eq!(none.status, 404);
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("no product")
    );
}

fn changes_drop_the_cache(
    platform: &Platform,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) {
    // Warm the entry, then change the product behind the services' back, with psql.
    let url = format!("{edge}/api/products/3");
    wait_for("product 3 cached", Duration::from_secs(5), || {
        rt.block_on(get(client, &url)).header("x-cache") == Some("HIT")
    });
    psql(platform, "UPDATE products SET price = 74.99 WHERE id = '3'");
    wait_for(
        "the change to reach readers",
        Duration::from_secs(5),
        || rt.block_on(get(client, &url)).json()["price"] == 74.99,
    );
    // And through the product service's own API (not exposed by the gateway).
    let p1 = platform.endpoint("product-1");
    let r = rt
        .block_on(http::send(
            client,
            hyper::Method::PUT,
            &format!("http://{}:5000/products/3", p1.address),
            Some(r#"{"price": 79.99}"#),
        ))
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let list = rt
        .block_on(get(client, &format!("{edge}/api/products")))
        .json();
    assert_eq!(list[2]["price"], 79.99, "the list was dropped too: {list}");
}

fn orders_are_committed(
    platform: &Platform,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) -> i64 {
    let r = rt.block_on(post(
        client,
        &format!("{edge}/api/orders"),
        r#"{"customer_id": "cust-101", "product_id": "1", "quantity": 2}"#,
    ));
    assert_eq!(r.status, 201, "{r:?}");
    let order = r.json();
    assert_eq!(
        order["total_price"], 1999.98,
        "price from the catalog: {order}"
    );
    assert_eq!(order["unit_price"], 999.99);
    let id = order["id"].as_i64().expect("an id");
    let row = psql(
        platform,
        &format!(
            "SELECT customer_id, product_id, quantity, total_price FROM orders WHERE id = {id}"
        ),
    );
    assert_eq!(row, "cust-101|1|2|1999.98");
    let back = rt.block_on(get(client, &format!("{edge}/api/orders/{id}")));
    assert_eq!(back.status, 200);
    assert_eq!(back.json(), order);

    let missing = rt.block_on(get(client, &format!("{edge}/api/orders/987654")));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no order 987654");
    // Bad input through the whole chain: 400 with every field named, nothing stored.
    let rows = psql(platform, "SELECT count(*) FROM orders");
    for (body, fields) in [
        (
            r#"{"customer_id": "c", "product_id": "77", "quantity": 1}"#,
            vec!["product_id"],
        ),
        (
            r#"{"product_id": 1, "quantity": "2"}"#,
            vec!["customer_id", "product_id", "quantity"],
        ),
        (
            r#"{"customer_id": "c", "product_id": "1", "quantity": 1, "total_price": 0.01}"#,
            vec!["total_price"],
        ),
    ] {
        let r = rt.block_on(post(client, &format!("{edge}/api/orders"), body));
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let got: Vec<String> = r.json()["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, fields, "{body}");
    }
    let r = rt.block_on(post(client, &format!("{edge}/api/orders"), "{not json"));
    assert_eq!(r.status, 400);
    assert_eq!(
        psql(platform, "SELECT count(*) FROM orders"),
        rows,
        "nothing stored"
    );
    id
}

/// A raw GET with forged client headers, from namespace `ns` (or the host): the
/// `X-Client-IP` and `X-Client-Chain` the product service said back.
fn forged_get(ns: Option<&str>, addr: std::net::SocketAddr) -> (String, String) {
    use std::io::{Read, Write};
    let exchange = move || -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!(
                "GET /api/products HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let text = match ns {
        Some(ns) => netctl::net::netns::run_in(ns, exchange),
        None => exchange(),
    }
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let header = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    (header("x-client-ip"), header("x-client-chain"))
}

/// The client's address reaches the services through nginx and the gateway (X-Real-IP,
/// X-Forwarded-For); a client cannot claim another, neither through the edge (nginx sets
/// X-Real-IP itself) nor by calling the gateway directly.
fn the_client_address_arrives_through_the_edge_and_cannot_be_forged(platform: &Platform) {
    let edge = platform.endpoint("edge");
    let pf = platform
        .plan
        .port_forwards
        .iter()
        .find(|pf| pf.service == "edge")
        .expect("the edge has a host port");
    let (client_ip, chain) = forged_get(None, ([127, 0, 0, 1], pf.host_port).into());
    let seen: std::net::Ipv4Addr = client_ip.parse().expect("an address");
    assert_ne!(client_ip, "6.6.6.6", "nginx says who the client is");
    assert_ne!(seen, edge.address);
    // What the client claimed stays first in the chain, then the client as nginx saw it,
    // then nginx as the gateway saw it.
    assert_eq!(chain, format!("6.6.6.6, {client_ip}, {}", edge.address));
    // Straight to the gateway from another namespace: its claim is not believed.
    let gateway = platform.endpoint("gateway");
    let order = platform.endpoint("order");
    let (client_ip, chain) = forged_get(
        Some(&order.netns),
        (gateway.address, gateway.port().unwrap()).into(),
    );
    assert_eq!(client_ip, order.address.to_string());
    assert_eq!(chain, order.address.to_string());
}

fn every_replica_serves(rt: &tokio::runtime::Runtime, client: &Client, edge: &str) {
    // The gateway finds the product replicas through the registry and sends each request
    // to the next live one (round-robin) over connections it keeps alive. Requests in
    // parallel spread over the replicas.
    let batch = |n: usize| parallel_gets(rt, client, &format!("{edge}/api/products"), n);
    let all = BTreeSet::from([
        "product-1".to_string(),
        "product-2".into(),
        "product-3".into(),
    ]);
    let mut seen = BTreeSet::new();
    wait_for("every replica to answer", Duration::from_secs(10), || {
        seen.extend(batch(30));
        seen == all
    });
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..3 {
        for id in batch(30) {
            *count.entry(id).or_default() += 1;
        }
    }
    assert_eq!(count.len(), 3, "{count:?}");
    assert!(
        count.values().all(|n| *n >= 10),
        "spread over the replicas: {count:?}"
    );
}

/// `n` GETs at once; the replicas that answered them (each must answer 200).
fn parallel_gets(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    url: &str,
    n: usize,
) -> Vec<String> {
    rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let client = client.clone();
                let url = url.to_string();
                tokio::spawn(async move { get(&client, &url).await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            ids.push(r.header("x-instance-id").unwrap().to_string());
        }
        ids
    })
}

fn the_registry_belongs_to_the_instances(platform: &Platform) {
    let registry = platform.endpoint("registry");
    let addr = std::net::SocketAddr::from((registry.address, 8500));
    let p1 = platform.endpoint("product-1");
    let p2 = platform.endpoint("product-2");
    // Reads are open, from the host too: every instance of every service, alive.
    let (s, v) = http::from_namespace_or_host(None, addr, "GET", "/v1/instances", "");
    assert_eq!(s, 200);
    let mut ids: Vec<String> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["alive"] == true)
        .map(|i| {
            format!(
                "{}/{}",
                i["service"].as_str().unwrap(),
                i["id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "gateway/gateway",
            "order/order",
            "product/product-1",
            "product/product-2",
            "product/product-3"
        ]
    );
    // product-1 cannot speak for product-2: not register its address, not remove it,
    // not take its id.
    let hijack = format!(
        r#"{{"service": "product", "id": "evil", "address": "{}", "port": 5000}}"#,
        p2.address
    );
    let (s, v) = http::from_namespace(&p1.netns, addr, "POST", "/v1/instances", &hijack);
    assert_eq!(s, 403, "{v}");
    let (s, _) = http::from_namespace(
        &p1.netns,
        addr,
        "DELETE",
        "/v1/instances/product/product-2",
        "",
    );
    assert_eq!(s, 403);
    let (s, _) = http::from_namespace(
        &p1.netns,
        addr,
        "PUT",
        "/v1/instances/product/product-2/heartbeat",
        "",
    );
    assert_eq!(s, 403);
    let takeover = r#"{"service": "product", "id": "product-2", "port": 5000}"#;
    let (s, _) = http::from_namespace(&p1.netns, addr, "POST", "/v1/instances", takeover);
    assert_eq!(s, 409);
    // Its own address it may register, and remove again.
    let own = r#"{"service": "extra", "id": "x1", "port": 7000}"#;
    let (s, v) = http::from_namespace(&p1.netns, addr, "POST", "/v1/instances", own);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["address"], p1.address.to_string());
    let (s, _) = http::from_namespace(&p1.netns, addr, "DELETE", "/v1/instances/extra/x1", "");
    assert_eq!(s, 200);
}

fn a_killed_replica_is_restarted_without_failed_requests(
    slot: &Slot,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) {
    let before = service(slot, "product-2");
    let pid = before.pid.expect("product-2 runs");
    let url = format!("{edge}/api/products");
    let statuses = rt.block_on(async {
        // Requests go on while the replica is killed and restarted.
        let load = {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    let r = http::send(&client, hyper::Method::GET, &url, None).await;
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 product-2");
        load.await.unwrap()
    });
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the restart: {failed:?}",
        failed.len(),
        statuses.len()
    );
    wait_for(
        "product-2 to be restarted and healthy",
        Duration::from_secs(15),
        || {
            let s = service(slot, "product-2");
            s.state == ServiceState::Healthy && s.pid.is_some_and(|p| p != pid) && s.restarts == 1
        },
    );
    let after = service(slot, "product-2");
    assert!(after.last_error.unwrap().contains("SIGKILL"));
    // And it serves again: the gateway finds it in the registry again and sends it its
    // share (ask for many at once, so that every replica gets some).
    wait_for("product-2 to answer again", Duration::from_secs(10), || {
        parallel_gets(rt, client, &url, 40)
            .iter()
            .any(|id| id == "product-2")
    });
}

fn without_redis_the_catalog_is_slower_and_says_so(
    platform: &Platform,
    slot: &Slot,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) {
    // A Redis that does not answer (stopped, not dead: the supervisor leaves it).
    let redis = service(slot, "redis").pid.expect("redis runs");
    kill(Pid::from_raw(redis as i32), Signal::SIGSTOP).expect("SIGSTOP redis");
    let p1 = platform.endpoint("product-1");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..6 {
            let r = rt.block_on(get(client, &format!("{edge}/api/products")));
            assert_eq!(r.status, 200, "served from PostgreSQL: {r:?}");
            assert_eq!(r.json().as_array().unwrap().len(), 3);
            assert_eq!(r.header("x-cache"), Some("BYPASS"));
        }
        let h = rt.block_on(get(client, &format!("http://{}:5000/health", p1.address)));
        assert_eq!(h.status, 200, "{h:?}");
        let h = h.json();
        assert_eq!(h["status"], "degraded", "{h}");
        assert_eq!(h["redis"]["ok"], false);
        assert!(h["cache"].as_str().unwrap().contains("slower"), "{h}");
    }));
    kill(Pid::from_raw(redis as i32), Signal::SIGCONT).expect("SIGCONT redis");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
    wait_for(
        "the cache to be used again",
        Duration::from_secs(10),
        || {
            rt.block_on(get(client, &format!("{edge}/api/products")))
                .header("x-cache")
                == Some("HIT")
        },
    );
    let h: Value = rt
        .block_on(get(client, &format!("http://{}:5000/health", p1.address)))
        .json();
    assert_eq!(h["status"], "healthy", "{h}");
}

fn logs_are_kept_per_service(slot: &Slot) {
    let out = slot.netctl(&["logs", "product"]);
    assert_success(&out, "netctl logs product");
    let text = String::from_utf8_lossy(&out.stdout);
    for replica in ["product-1", "product-2", "product-3"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(replica) && l.contains("product service serving")),
            "{replica} in: {text}"
        );
    }
    assert!(text.contains("killed by SIGKILL; restarting"), "{text}");
    let out = slot.netctl(&["logs", "postgres", "--tail", "5"]);
    assert_success(&out, "netctl logs postgres");
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() <= 5);
    let out = slot.netctl(&["logs", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no service \"nosuch\"") && err.contains("product-1"),
        "{err}"
    );
}

fn a_killed_controller_is_replaced_and_adopts_the_services(
    platform: &Platform,
    slot: &Slot,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    edge: &str,
) {
    let pids: Vec<(String, Option<u32>)> = services(slot)
        .into_iter()
        .map(|s| (s.name, s.pid))
        .collect();
    let controller = daemon::running(&slot.instance()).expect("controller");
    kill(Pid::from_raw(controller.pid as i32), Signal::SIGKILL).expect("kill -9 the controller");
    wait_for("the controller to die", Duration::from_secs(5), || {
        !controller.is_alive()
    });
    // The services keep serving without it.
    let r = rt.block_on(get(client, &format!("{edge}/api/products")));
    assert_eq!(r.status, 200);
    let out = platform.up_ok();
    assert!(out.contains("9 services healthy"), "{out}");
    let again: Vec<(String, Option<u32>)> = services(slot)
        .into_iter()
        .map(|s| (s.name, s.pid))
        .collect();
    assert_eq!(again, pids, "the new controller adopted the same processes");
}

/// Bodies over the services' limit through the public entry (the slot's :8080) get the
/// gateway's 413 and its JSON, never a 502 "unreachable": 16 KiB + 1, 100 KB and 10 MB, on
/// both dataplanes. Bodies at the limit still reach the gateway (its 400 for bad JSON).
#[test]
fn oversized_bodies_through_the_edge_get_413_not_502_on_both_dataplanes() {
    require_root!();
    let (slot_e, slot_i) = (Slot::acquire(), Slot::acquire());
    std::thread::scope(|s| {
        let e = s.spawn(|| oversized_bodies("ebpf", &slot_e));
        let i = s.spawn(|| oversized_bodies("iptables", &slot_i));
        e.join().expect("ebpf side");
        i.join().expect("iptables side");
    });
}

fn oversized_bodies(mode: &str, slot: &Slot) {
    let mut topology = Topology::parse(DEFAULT_TOPOLOGY).expect("default parses");
    relocate(&mut topology, slot.block());
    topology.dataplane.mode = mode.into();
    let platform = Platform::from_topology(slot, &topology);
    platform.up_ok();
    let rt = http::runtime();
    let client = http::client();
    let url = format!("{}/api/orders", platform.edge_url());
    let limit = netctl_shop::http::MAX_BODY;
    for size in [limit + 1, 100_000, 10_000_000] {
        let body = "x".repeat(size);
        let r = rt.block_on(post(&client, &url, &body));
        eprintln!(
            "{mode}: POST of {size} bytes through the edge: {}",
            r.status
        );
        assert_eq!(r.status, 413, "{mode}: {size} bytes: {:?}", r.body);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            error,
            format!("the request body is larger than {limit} bytes"),
            "{mode}: {size} bytes"
        );
    }
    // At the limit the body reaches the gateway, which judges it (not JSON: 400).
    let r = rt.block_on(post(&client, &url, &"x".repeat(limit)));
    assert_eq!(r.status, 400, "{mode}: {:?}", r.body);
    // And the edge keeps serving.
    assert_eq!(
        rt.block_on(get(
            &client,
            &format!("{}/api/products", platform.edge_url())
        ))
        .status,
        200,
        "{mode}"
    );
    assert_success(&slot.netctl(&["down"]), "netctl down");
}
