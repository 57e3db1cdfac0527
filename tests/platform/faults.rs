//! `up` failing half-way, crashing half-way, or meeting objects it did not make: nothing
//! may be left half-made, and nothing that is not netctl's may be touched.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use common::{Platform, Slot, assert_success, block_on, snapshot::Snapshot};
use netctl::net::netlink::Netlink;

const FAILPOINT: &str = "NETCTL_FAILPOINT";

#[test]
fn a_failure_half_way_rolls_back_everything_the_run_made() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let platform = Platform::network_only(&slot);
    // 3 bridges + 9 namespaces + NAT + dataplane come first: fail among the TC hooks.
    let file = platform.file.to_str().expect("path");
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "fail-after:16")]);
    assert!(!out.status.success(), "up must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("injected failure"), "{err}");
    assert!(err.contains("rolled back the 16 resource(s)"), "{err}");
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // Failing at the very first resource leaves nothing either.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "fail-after:0")]);
    assert!(!out.status.success());
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // And a later clean up works.
    platform.up_ok();
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn a_crash_half_way_leaves_a_journal_that_down_and_up_clean() {
    require_root!();
    let slot = Slot::acquire();
    let before = Snapshot::take(&slot.prefix());
    let platform = Platform::network_only(&slot);
    let file = platform.file.to_str().expect("path");

    // Killed (abort) in the middle of creating the namespaces.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "abort-after:6")]);
    assert!(!out.status.success(), "the process died");
    let status = slot.netctl(&["status"]);
    assert!(
        !status.status.success(),
        "a half-made platform is not healthy"
    );
    let down = slot.netctl(&["down"]);
    assert_success(&down, "down after a crash");
    before.assert_same(&Snapshot::take(&slot.prefix()));

    // Crash again, then `up` finishes the job from the journal.
    let out = slot.netctl_env(&["up", "-f", file], &[(FAILPOINT, "abort-after:20")]);
    assert!(!out.status.success());
    let up = platform.up_ok();
    assert!(up.contains("is up"), "{up}");
    let status = slot.netctl(&["status"]);
    assert_success(&status, "status after recovery");
    drop(platform);
    before.assert_same(&Snapshot::take(&slot.prefix()));
}

#[test]
fn names_taken_by_others_stop_up_before_any_change() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    let squatter = platform.plan.networks[1].bridge.clone();
    // A link netctl did not make, with the name of the platform's second bridge.
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.create_bridge(&squatter).await.expect("create squatter");
    });
    let before = Snapshot::take(&slot.prefix());
    let out = platform.up();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("a link named {squatter} already exists"))
            && err.contains("not changing anything"),
        "{err}"
    );
    before.assert_same(&Snapshot::take(&slot.prefix()));
    // The squatter is untouched by up, and by down.
    let _ = slot.netctl(&["down"]);
    assert!(common::snapshot::link_names().contains(&squatter));
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.delete_link(&squatter).await.expect("remove squatter");
    });
}

#[test]
fn subnets_that_collide_with_host_routes_are_refused() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::network_only(&slot);
    let taken = platform.plan.networks[0].subnet;
    let dummy = format!("{}route", slot.prefix());
    // A link of ours that owns a route into the platform's first subnet.
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        let idx = nl.create_bridge(&dummy).await.expect("dummy link");
        nl.add_address(
            idx,
            taken.hosts().nth(100).expect("host"),
            taken.prefix_len(),
        )
        .await
        .expect("address");
    });
    let before = Snapshot::take(&slot.prefix());
    let out = platform.up();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    block_on(async {
        let nl = Netlink::current().expect("netlink");
        nl.delete_link(&dummy).await.expect("remove dummy");
    });
    assert!(!out.status.success());
    assert!(
        err.contains("overlaps the host's route") && err.contains(&dummy),
        "{err}"
    );
    let after = Snapshot::take(&slot.prefix());
    let mut before = before;
    before.links.remove(&dummy);
    before.assert_same(&after);
}

/// A `netctl serve registry` on loopback with short limits; killed when dropped.
struct LoopbackRegistry {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl LoopbackRegistry {
    fn start(port: u16, env: &[(&str, &str)]) -> LoopbackRegistry {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let child = std::process::Command::new(common::NETCTL)
            .args(["serve", "registry"])
            .env("LISTEN", addr.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting the registry");
        let r = LoopbackRegistry { child, addr };
        common::wait_for(
            "the registry to answer",
            std::time::Duration::from_secs(10),
            || r.health().is_ok(),
        );
        r
    }

    /// `GET /health` on a new connection, answered within 1 s: the status line.
    fn health(&self) -> Result<String, String> {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        Ok(answer.lines().next().unwrap_or("").to_string())
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A slow-loris client: sends `head` (and, with `body`, the start of a body), then one
/// byte every 100 ms for up to 6 s. When the server cut it, and what it answered.
fn trickle(
    addr: std::net::SocketAddr,
    head: &'static str,
    trickled: u8,
) -> (std::time::Duration, String) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    s.write_all(head.as_bytes()).expect("head");
    let mut answer = Vec::new();
    while started.elapsed() < std::time::Duration::from_secs(6) {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if s.write_all(&[trickled]).is_err() {
            break;
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

/// Slow clients (the head or the body trickled byte by byte) are cut at their deadline
/// while normal clients keep getting answers; past the connection cap a client is told
/// 503 at once instead of waiting.
#[test]
fn slow_clients_are_cut_without_hurting_others_and_surplus_connections_get_503() {
    use std::time::{Duration, Instant};
    require_root!();
    let slot = Slot::acquire();
    let registry = LoopbackRegistry::start(
        slot.host_port(0),
        &[
            ("HTTP_HEADER_TIMEOUT_MS", "1000"),
            ("HTTP_BODY_TIMEOUT_MS", "1000"),
            ("HTTP_MAX_CONNECTIONS", "64"),
        ],
    );
    let addr = registry.addr;
    let started = Instant::now();
    let slow: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    // The head never ends.
                    trickle(addr, "GET /health HTTP/1.1\r\nHost: r\r\nX-Slow: ", b'a')
                } else {
                    // The body never ends.
                    trickle(
                        addr,
                        "POST /v1/instances HTTP/1.1\r\nHost: r\r\nContent-Type: \
                         application/json\r\nContent-Length: 500\r\n\r\n{\"service\": \"",
                        b'a',
                    )
                }
            })
        })
        .collect();
    // Normal clients meanwhile: every request answered within its 1 s.
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let status = registry
            .health()
            .expect("a normal client is answered in time");
        assert!(status.contains(" 200 "), "{status}");
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cut = Vec::new();
    for (i, t) in slow.into_iter().enumerate() {
        let (after, answer) = t.join().unwrap();
        assert!(
            after < Duration::from_secs(3),
            "slow client {i} was not cut: {after:?} {answer:?}"
        );
        if i % 2 == 1 {
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "a trickled body gets 408: {answer:?}"
            );
        }
        cut.push(after);
    }
    cut.sort();
    eprintln!(
        "{answered} normal requests answered while 40 slow clients were cut after {:?}..{:?}",
        cut[0],
        cut[cut.len() - 1]
    );

    // The cap: 64 connections that send nothing fill it; the next is told 503 at once.
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The registry accepts them in its own time: the surplus client is told 503 once the
    // cap is full (a 503, not a wait: waiting, it would be served once the idle ones are
    // cut, below).
    common::wait_for("the cap to be full", Duration::from_secs(3), || {
        registry.health().is_ok_and(|s| s.contains(" 503 "))
    });
    // Once the idle ones are cut (their head never came), clients are served again.
    common::wait_for(
        "the idle connections to be cut",
        Duration::from_secs(3),
        || registry.health().is_ok_and(|s| s.contains(" 200 ")),
    );
    drop(idle);
}

/// A TCP relay to `target` that can be cut: while cut, every connection through it is
/// closed and new ones are closed at once (nothing sent reaches the target).
struct Relay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                o.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, cut, open }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The product cache against a real Redis: a fill that read the database before a change
/// and arrives after its invalidation is not stored; and when Redis was unreachable
/// during a change (the invalidation lost), every product entry is dropped once it
/// answers again.
#[test]
fn the_cache_keeps_no_stale_value_after_a_racing_fill_or_a_redis_outage() {
    use bytes::Bytes;
    use netctl_shop::product::cache::{Cache, LIST_KEY, Lookup, product_key};
    use std::time::Duration;
    require_root!();
    let slot = Slot::acquire();
    let dir = tempfile::tempdir().unwrap();
    let port = slot.host_port(2);
    let mut redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (cargo xtask setup installs it)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _redis = Kill(&mut redis);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_for("redis to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(target).is_ok()
    });
    let relay = Relay::start(target);
    let rt = common::http::runtime();
    rt.block_on(async {
        let cache = Cache::new(&format!("redis://{}", relay.addr), 60).unwrap();
        let key = product_key("1");
        let miss = |l: &Lookup| matches!(l, Lookup::Miss(_));

        // A reader misses (and goes on to read the old row)...
        let Lookup::Miss(seen) = cache.get(&key).await else {
            panic!("an empty cache misses");
        };
        // ... a writer changes the row and drops the entries ...
        assert!(cache.invalidate(&[LIST_KEY.to_string(), key.clone()]).await);
        // ... and then the reader's fill, with the old row, arrives: not stored.
        let stored = cache.put(key.clone(), Bytes::from_static(b"old"), seen);
        assert!(!stored.unwrap().await.unwrap(), "a stale fill is refused");
        assert!(
            miss(&cache.get(&key).await),
            "the old value did not come back"
        );
        // A fill that began after the change is stored.
        let Lookup::Miss(seen) = cache.get(&key).await else {
            panic!("still empty");
        };
        let stored = cache.put(key.clone(), Bytes::from_static(b"new"), seen);
        assert!(stored.unwrap().await.unwrap());
        assert_eq!(
            cache.get(&key).await,
            Lookup::Hit(Bytes::from_static(b"new"))
        );

        // Redis unreachable while the product changes: the invalidation is lost ...
        relay.set_cut(true);
        assert!(
            !cache.invalidate(std::slice::from_ref(&key)).await,
            "nothing reached Redis"
        );
        assert_eq!(cache.get(&key).await, Lookup::Down);
        relay.set_cut(false);
        // ... so once Redis answers again, the entry (stale now) is dropped.
        let started = std::time::Instant::now();
        loop {
            match cache.get(&key).await {
                Lookup::Miss(_) => break,
                other => assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the stale entry outlived the outage: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A first PostgreSQL start that dies after `initdb`, before the shop's role and database
/// exist, is finished at the next start (it used to crash-loop: the cluster existed, so
/// the role was never made).
#[test]
fn an_interrupted_first_postgres_start_is_finished_at_the_next() {
    require_root!();
    let slot = Slot::acquire();
    let platform = Platform::from_toml(
        &slot,
        r#"
[networks.database]
subnet = "10.0.2.0/24"
[services.postgres]
network = "database"
ports = [5432]
kind = "postgres"
health = { check = "tcp", interval = "500ms", timeout = "400ms" }
"#,
    );
    let file = platform.file.to_str().unwrap();
    // Logs outlive `down --volumes`: start from none, so that only this run's count.
    let log = netctl::instance::paths::service_log(&slot.instance(), "postgres");
    let _ = std::fs::remove_file(&log);
    let out = slot.netctl_env(
        &["up", "-f", file, "--wait-timeout", "4"],
        &[(FAILPOINT, "postgres-bootstrap")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("postgres"),
        "postgres cannot be healthy: {err}"
    );
    let data = netctl::instance::paths::data(&slot.instance(), "postgres");
    // initdb may take longer than the wait on a busy machine: wait for the failure itself.
    common::wait_for(
        "the injected failure after initdb",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("injected failure")),
    );
    assert!(data.join("PG_VERSION").exists(), "initdb ran");
    assert_success(&slot.netctl(&["down"]), "netctl down (the data stays)");
    assert!(data.join("PG_VERSION").exists());

    platform.up_ok();
    assert_eq!(
        common::http::psql(
            &platform,
            "SELECT current_user || '/' || current_database()"
        ),
        "shop/shop"
    );
}
