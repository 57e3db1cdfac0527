//! Faults under load, on the whole reference platform: the controller killed and replaced,
//! a product replica killed, a replica drained, the order service killed in the middle of
//! 10,000 orders. The promise: the dataplane keeps forwarding, no request that should
//! succeed fails (or at most 0.1% of them, when a backend dies mid-request), no order is
//! lost or stored twice. Plus who may reach what: the registry's write API only from
//! the services policy allows, secrets and state readable by root alone.
//!
//! Figures go to stderr (`--nocapture`) for the closing notes.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{MetadataExt, PermissionsExt},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Platform, Slot, assert_success,
    http::{self, psql},
    load::{Counts, Load},
    service, services, wait_for,
};
use netctl::instance::daemon;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

fn pids(slot: &Slot) -> BTreeMap<String, Option<u32>> {
    services(slot)
        .into_iter()
        .map(|s| (s.name, s.pid))
        .collect()
}

/// The product backends in the load-balancing maps (from the pinned maps, as
/// `netctl services` shows them): instance -> state.
fn product_backends(slot: &Slot) -> BTreeMap<String, String> {
    let out = slot.netctl(&["services", "--json", "--service", "product"]);
    assert_success(&out, "netctl services");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut backends = BTreeMap::new();
    for fe in v["frontends"].as_array().unwrap() {
        for b in fe["backends"].as_array().unwrap() {
            backends.insert(
                b["instance"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            );
        }
    }
    for b in v["draining"].as_array().into_iter().flatten() {
        if b["service"] == "product" {
            backends.insert(
                b["instance"].as_str().unwrap().to_string(),
                "draining".into(),
            );
        }
    }
    backends
}

fn sigkill(pid: u32, what: &str) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill {what}: {e}"));
}

/// A phase of the load: what it saw, printed and returned.
fn phase(load: &Load, name: &str, from: Counts) -> Counts {
    let d = load.counts().since(from);
    eprintln!(
        "{name}: {} requests, {} failed ({:.3}%)",
        d.total(),
        d.failed,
        100.0 * d.failed as f64 / d.total().max(1) as f64
    );
    d
}

#[test]
fn under_load_the_shop_survives_a_controller_kill_a_replica_kill_and_a_drain() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::default_topology(&slot);
    platform.up_ok();
    let rt = http::runtime();
    let url = format!("{}/api/products", platform.edge_url());
    // 8 clients on kept-alive connections and 4 that connect anew for every request.
    let load = Load::start(&rt, &url, 8, 4);
    std::thread::sleep(Duration::from_secs(1));

    // 1. The controller dies (kill -9) and a product replica with it, unnoticed: the
    // dataplane keeps forwarding from its pinned programs and maps.
    let before = pids(&slot);
    let mark = load.counts();
    let controller = daemon::running(&slot.instance()).expect("controller");
    sigkill(controller.pid, "the controller");
    wait_for("the controller to die", Duration::from_secs(5), || {
        !controller.is_alive()
    });
    std::thread::sleep(Duration::from_secs(2));
    // ... and something changes meanwhile: product-3 dies with nobody to restart it.
    let p3 = before["product-3"].unwrap();
    sigkill(p3, "product-3");
    std::thread::sleep(Duration::from_secs(1));
    // A new controller (netctl up) adopts the pinned state and the running services
    // without recreating them, and reconciles what changed: product-3 is started again.
    let out = platform.up_ok();
    assert!(out.contains("9 services healthy"), "{out}");
    let after = pids(&slot);
    for (name, pid) in &before {
        if name == "product-3" {
            assert_ne!(after[name], *pid, "product-3 was started again");
        } else {
            assert_eq!(after[name], *pid, "{name} was adopted, not restarted");
        }
    }
    let crash = phase(&load, "controller kill -9 and replacement", mark);
    assert!(crash.total() > 100, "the load ran: {crash:?}");
    assert_eq!(crash.failed, 0, "failures: {:?}", load.failures());

    // 2. A replica is cut off mid-load (its link goes down: the process lives on, so its
    // supervisor restarts nothing, but its health check fails): it leaves the LB maps
    // within 2 s, at most 0.1% of requests fail, and it comes back once it is reachable
    // again.
    wait_for("product-2 in the maps", Duration::from_secs(10), || {
        product_backends(&slot).get("product-2").map(String::as_str) == Some("active")
    });
    let mark = load.counts();
    let p2 = service(&slot, "product-2").pid.unwrap();
    let link = platform.endpoint("product-2").host_ifname.clone();
    let set_link = |state: &str| {
        let out = std::process::Command::new("ip")
            .args(["link", "set", "dev", &link, state])
            .output()
            .unwrap();
        assert_success(&out, &format!("ip link set {link} {state}"));
    };
    struct Reconnect(String);
    impl Drop for Reconnect {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "set", "dev", &self.0, "up"])
                .status();
        }
    }
    set_link("down");
    let cut = Reconnect(link.clone());
    let left = wait_for(
        "the unreachable product-2 to leave the maps",
        Duration::from_secs(2),
        || !product_backends(&slot).contains_key("product-2"),
    );
    eprintln!("product-2 out of the maps {left:?} after its link went down");
    // Out for a while, under load: nobody restarted it, it stays out.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!product_backends(&slot).contains_key("product-2"));
    assert_eq!(service(&slot, "product-2").pid, Some(p2), "not restarted");
    set_link("up");
    drop(cut);
    let back = wait_for(
        "product-2 back in the maps once reachable",
        Duration::from_secs(10),
        || product_backends(&slot).get("product-2").map(String::as_str) == Some("active"),
    );
    eprintln!("product-2 back in the maps {back:?} after its link came up");
    let partitioned = phase(&load, "product replica unreachable, then back", mark);
    assert!(partitioned.total() > 100, "the load ran: {partitioned:?}");
    assert!(
        partitioned.failed * 1000 <= partitioned.total(),
        "{} of {} failed: {:?}",
        partitioned.failed,
        partitioned.total(),
        load.failures()
    );

    // A replica killed outright is restarted and serves again, failing at most 0.1%.
    let mark = load.counts();
    let p2 = service(&slot, "product-2").pid.unwrap();
    sigkill(p2, "product-2");
    let back = wait_for(
        "product-2 to be restarted and back in the maps",
        Duration::from_secs(20),
        || {
            service(&slot, "product-2").pid.is_some_and(|p| p != p2)
                && product_backends(&slot).get("product-2").map(String::as_str) == Some("active")
        },
    );
    eprintln!("product-2 restarted and back in the maps {back:?} after kill -9");
    let killed = phase(&load, "product replica kill -9", mark);
    assert!(
        killed.failed * 1000 <= killed.total(),
        "{} of {} failed: {:?}",
        killed.failed,
        killed.total(),
        load.failures()
    );

    // 3. Draining a replica fails nothing: it takes no new connections, the ones it has
    // finish.
    let mark = load.counts();
    assert_success(
        &slot.netctl(&["drain", "product/product-1"]),
        "netctl drain",
    );
    wait_for("product-1 to drain", Duration::from_secs(2), || {
        product_backends(&slot).get("product-1").map(String::as_str) != Some("active")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_success(
        &slot.netctl(&["drain", "--undo", "product/product-1"]),
        "netctl drain --undo",
    );
    wait_for("product-1 back", Duration::from_secs(5), || {
        product_backends(&slot).get("product-1").map(String::as_str) == Some("active")
    });
    let drained = phase(&load, "drain and undrain", mark);
    assert_eq!(drained.failed, 0, "failures: {:?}", load.failures());

    let failures = load.failures();
    let total = load.stop(&rt);
    eprintln!(
        "whole run: {} requests, {} failed",
        total.total(),
        total.failed
    );
    // Only the replica faults may cost requests, and at most 0.1% of the run.
    assert!(
        total.failed * 1000 <= total.total(),
        "{} of {} failed: {failures:?}",
        total.failed,
        total.total()
    );

    // 4. Who may write to the registry: the services policy allows, not the edge.
    registry_is_reachable_only_as_policy_says(&platform);
    // 5. Secrets and state are root's alone.
    secrets_and_state_are_root_only(&slot);
}

fn registry_is_reachable_only_as_policy_says(platform: &Platform) {
    let registry = platform.endpoint("registry");
    let addr = std::net::SocketAddr::from((registry.address, registry.port().unwrap()));
    let connects = |ns: &str| {
        netctl::net::netns::run_in(ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        })
        .unwrap()
    };
    // The edge has no business there: its packets are dropped (policy-denied).
    assert!(
        !connects(&platform.endpoint("edge").netns),
        "the edge reached the registry"
    );
    // The order service reaches it, and registers only its own address.
    let order = platform.endpoint("order");
    assert!(connects(&order.netns));
    let (status, body) = http::from_namespace(
        &order.netns,
        addr,
        "POST",
        "/v1/instances",
        r#"{"service": "order", "id": "order-extra", "port": 5000, "address": "10.255.0.1"}"#,
    );
    assert_eq!(status, 403, "another address is refused: {body}");
    let (status, body) = http::from_namespace(
        &order.netns,
        addr,
        "POST",
        "/v1/instances",
        r#"{"service": "order", "id": "order-extra", "port": 5000}"#,
    );
    assert_eq!(status, 201, "its own address is taken: {body}");
}

/// Everything under `dir`, `dir` included (symlinks not followed).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() && !dir.is_symlink() {
        for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn secrets_and_state_are_root_only(slot: &Slot) {
    let instance = slot.instance();
    let secrets = format!("/var/lib/netctl/{instance}/secrets");
    // Every file and directory of the instance's state and logs, whatever new ones a
    // later change adds, and the secrets.
    let mut private: Vec<std::path::PathBuf> = vec![
        "/run/netctl".into(),
        "/run/netctl/host.json".into(),
        "/var/log/netctl".into(),
    ];
    for root in [
        format!("/run/netctl/{instance}"),
        format!("/var/log/netctl/{instance}"),
        secrets,
    ] {
        private.extend(walk(std::path::Path::new(&root)));
    }
    let names: Vec<String> = private.iter().map(|p| p.display().to_string()).collect();
    for must in [
        "postgres.password",
        "state.json",
        "controller.sock",
        "controller.log",
        "product-1.log",
    ] {
        assert!(names.iter().any(|p| p.ends_with(must)), "{must}: {names:?}");
    }
    for path in &private {
        let meta =
            std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.uid(), 0, "{} belongs to root", path.display());
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert!(
            mode & !want == 0,
            "{} is root's alone: {mode:o}, want at most {want:o}",
            path.display()
        );
    }
}

/// How an order ended for its client: (201 new or 200 replayed, the order's id), or the
/// last error once it gave up.
type Outcome = Result<(u16, i64), String>;

/// 10,000 orders from 50 clients, each order sent until acknowledged with one
/// idempotency key; the order service is killed once in the middle.
#[test]
fn ten_thousand_orders_survive_an_order_service_kill_exactly_once() {
    require_root!();
    const CLIENTS: usize = 50;
    let orders: usize = std::env::var("NETCTL_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let slot = Slot::acquire();
    let platform = Platform::default_topology(&slot);
    platform.up_ok();
    let rt = http::runtime();
    let url = format!("{}/api/orders", platform.edge_url());
    let acked = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let failures_seen = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let started = Instant::now();

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, acked, retries, seen) = (
                url.clone(),
                acked.clone(),
                retries.clone(),
                failures_seen.clone(),
            );
            let client = http::client();
            rt.spawn(async move {
                // (key, outcome): 201 new, 200 replayed, or the last error after giving up.
                let mut results: Vec<(String, Outcome)> = Vec::new();
                for i in (c..orders).step_by(CLIENTS) {
                    let key = format!("k-{i:05}");
                    let body = format!(
                        r#"{{"customer_id": "{key}", "product_id": "{}", "quantity": {}}}"#,
                        i % 3 + 1,
                        i % 7 + 1
                    );
                    let mut outcome = Err(String::new());
                    for attempt in 0..40 {
                        if attempt > 0 {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50 * attempt.min(10))).await;
                        }
                        let req = hyper::Request::post(&url)
                            .header("content-type", "application/json")
                            .header("idempotency-key", &key)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                            .unwrap();
                        let answer = async {
                            let r = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                            let status = r.status().as_u16();
                            let body = http_body_util::BodyExt::collect(r.into_body())
                                .await
                                .map_err(|e| e.to_string())?
                                .to_bytes();
                            Ok::<_, String>((status, body))
                        };
                        match tokio::time::timeout(Duration::from_secs(20), answer).await {
                            Ok(Ok((status @ (200 | 201), body))) => {
                                let v: Value = serde_json::from_slice(&body).unwrap();
                                outcome = Ok((status, v["id"].as_i64().unwrap()));
                                break;
                            }
                            Ok(Ok((status, body))) => {
                                let what = format!("{status}");
                                *seen.lock().unwrap().entry(what).or_default() += 1;
                                // A client error is final: nothing to retry.
                                if (400..500).contains(&status) {
                                    outcome =
                                        Err(format!("{status} {}", String::from_utf8_lossy(&body)));
                                    break;
                                }
                                outcome = Err(format!("{status}"));
                            }
                            Ok(Err(e)) => {
                                let what = e.split('(').next().unwrap_or("").to_string();
                                *seen.lock().unwrap().entry(what).or_default() += 1;
                                outcome = Err(e);
                            }
                            Err(_) => {
                                *seen.lock().unwrap().entry("timeout".into()).or_default() += 1;
                                outcome = Err("timeout".into());
                            }
                        }
                    }
                    if outcome.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    results.push((key, outcome));
                }
                results
            })
        })
        .collect();

    // Kill the order service once a third of the orders are in.
    wait_for("a third of the orders", Duration::from_secs(120), || {
        acked.load(Ordering::Relaxed) as usize >= orders / 3
    });
    let order_pid = service(&slot, "order").pid.unwrap();
    sigkill(order_pid, "the order service");
    let killed_at = acked.load(Ordering::Relaxed);

    let mut results = Vec::new();
    for t in tasks {
        results.extend(rt.block_on(t).unwrap());
    }
    let took = started.elapsed();
    let restarted = service(&slot, "order");
    assert!(restarted.restarts >= 1 && restarted.pid != Some(order_pid));

    let mut new = BTreeMap::new();
    let mut replayed = 0;
    let mut errors = Vec::new();
    for (key, outcome) in &results {
        match outcome {
            Ok((201, id)) => {
                new.insert(key.clone(), *id);
            }
            Ok((_, id)) => {
                replayed += 1;
                new.insert(key.clone(), *id);
            }
            Err(e) => errors.push((key.clone(), e.clone())),
        }
    }
    eprintln!(
        "{orders} orders from {CLIENTS} clients in {:.1}s ({:.0}/s), order service killed \
         after {killed_at}: {} acknowledged ({replayed} as replays), {} retries, {} gave up; \
         failures seen on the way: {:?}",
        took.as_secs_f64(),
        orders as f64 / took.as_secs_f64(),
        new.len(),
        retries.load(Ordering::Relaxed),
        errors.len(),
        failures_seen.lock().unwrap()
    );
    assert!(errors.is_empty(), "orders never acknowledged: {errors:?}");

    // Every acknowledged order is exactly one row, with the id its client was given; no
    // row exists that was not acknowledged.
    let rows: BTreeMap<String, i64> = psql(
        &platform,
        "SELECT customer_id, id FROM orders WHERE customer_id LIKE 'k-%'",
    )
    .lines()
    .map(|l| {
        let (k, id) = l.split_once('|').unwrap();
        (k.to_string(), id.parse().unwrap())
    })
    .collect();
    let row_count: usize = psql(
        &platform,
        "SELECT count(*) FROM orders WHERE customer_id LIKE 'k-%'",
    )
    .parse()
    .unwrap();
    assert_eq!(row_count, rows.len(), "an order stored twice");
    let only_rows: BTreeSet<_> = rows.keys().filter(|k| !new.contains_key(*k)).collect();
    let only_acks: BTreeSet<_> = new.keys().filter(|k| !rows.contains_key(*k)).collect();
    assert!(
        only_rows.is_empty(),
        "rows nobody was told of: {only_rows:?}"
    );
    assert!(
        only_acks.is_empty(),
        "acknowledged but not stored: {only_acks:?}"
    );
    assert_eq!(rows, new, "each client got its own row's id");
    assert_eq!(rows.len(), orders);
}
