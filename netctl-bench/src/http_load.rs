//! Our HTTP load generator: `concurrency` workers, each on its own keep-alive HTTP/1.1
//! connection (hyper), share a budget of `requests` GETs of one URL; every request is
//! timed from sending to the last byte of the answer. A request that fails (no answer,
//! broken connection, status not 2xx) is a failure; a broken connection is made anew.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub concurrency: usize,
    pub requests: usize,
    /// Threads of the generator's runtime.
    pub threads: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub elapsed: Duration,
    pub ok: usize,
    pub failures: usize,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Failures without an answer, by kind.
    pub errors: BTreeMap<String, usize>,
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
    /// Answers by the value of `X-Instance-Id` (which replica) and of `X-Cache`.
    pub instances: BTreeMap<String, usize>,
    pub cache: BTreeMap<String, usize>,
    /// Connections opened (concurrency, plus reconnections after failures).
    pub connections: usize,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.ok + self.failures) as f64 / secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failures += other.failures;
        self.connections += other.connections;
        self.latencies.extend(other.latencies);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.instances {
            *self.instances.entry(k).or_default() += v;
        }
        for (k, v) in other.cache {
            *self.cache.entry(k).or_default() += v;
        }
    }
}

/// Runs the load on a runtime of its own; returns when every request is done.
pub fn run(load: &Load) -> anyhow::Result<Outcome> {
    let uri: Uri = load
        .url
        .parse()
        .with_context(|| format!("{:?} is not a URL", load.url))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{}: only http:// is supported", load.url);
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("{} has no host", load.url))?
        .clone();
    let addr: SocketAddr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    )
    .parse()
    .with_context(|| format!("{}: give the host as an IP address", load.url))?;
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(load.threads.max(1))
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    runtime.block_on(async {
        let budget = Arc::new(AtomicUsize::new(load.requests));
        let started = Instant::now();
        let workers: Vec<_> = (0..load.concurrency.max(1))
            .map(|_| {
                let budget = budget.clone();
                let path = path.clone();
                let host = authority.to_string();
                tokio::spawn(async move { worker(addr, host, path, budget).await })
            })
            .collect();
        let mut total = Outcome::default();
        for w in workers {
            total.merge(w.await.context("a load worker panicked")?);
        }
        total.elapsed = started.elapsed();
        Ok(total)
    })
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(addr: SocketAddr, host: String, path: String, budget: Arc<AtomicUsize>) -> Outcome {
    let mut out = Outcome::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    // Claim one request at a time until the budget is spent.
    while budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        let started = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                out.connections += 1;
                sender = Some(connect(addr).await?);
            }
            let s = sender.as_mut().ok_or("no connection")?;
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let req = Request::get(path.as_str())
                .header(hyper::header::HOST, host.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = s
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (instance, cache) = (header("x-instance-id"), header("x-cache"));
            resp.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((status, instance, cache))
        })
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()));
        match result {
            Ok((status, instance, cache)) => {
                *out.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    out.ok += 1;
                    out.latencies.push(started.elapsed());
                } else {
                    out.failures += 1;
                }
                if let Some(i) = instance {
                    *out.instances.entry(i).or_default() += 1;
                }
                if let Some(c) = cache {
                    *out.cache.entry(c).or_default() += 1;
                }
            }
            Err(e) => {
                out.failures += 1;
                *out.errors.entry(e).or_default() += 1;
                sender = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::{Response, service::service_fn};

    use super::*;

    /// A loopback server that answers 200, except every fifth request 503.
    fn server(rt: &tokio::runtime::Runtime) -> SocketAddr {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let count = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    let count = count.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req| {
                            let n = count.fetch_add(1, Ordering::Relaxed);
                            async move {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"[]")));
                                if n % 5 == 4 {
                                    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                r.headers_mut().insert("x-cache", "HIT".parse().unwrap());
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
            addr
        })
    }

    #[test]
    fn every_request_is_counted_once_with_its_status() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = server(&rt);
        let out = run(&Load {
            url: format!("http://{addr}/api/products"),
            concurrency: 7,
            requests: 500,
            threads: 1,
        })
        .unwrap();
        assert_eq!(out.ok + out.failures, 500);
        assert_eq!(out.statuses[&200], 400);
        assert_eq!(out.statuses[&503], 100);
        assert_eq!(out.latencies.len(), 400);
        assert_eq!(out.cache["HIT"], 500);
        assert_eq!(out.connections, 7, "keep-alive: one connection per worker");
        assert!(out.per_second() > 0.0);
    }

    #[test]
    fn a_refused_connection_is_a_failure_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = run(&Load {
            url: format!("http://127.0.0.1:{port}/"),
            concurrency: 2,
            requests: 10,
            threads: 1,
        })
        .unwrap();
        assert_eq!(out.failures, 10);
        assert_eq!(out.errors.values().sum::<usize>(), 10);
        assert!(
            run(&Load {
                url: "https://x/".into(),
                concurrency: 1,
                requests: 1,
                threads: 1
            })
            .is_err()
        );
    }
}
