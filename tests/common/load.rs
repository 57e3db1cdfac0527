//! Steady HTTP load for fault tests: some clients keep their connection alive, others
//! open a new one for every request, all until stopped. Every request is counted, and
//! every failure is kept with what went wrong and when.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper_util::{client::legacy::Client as Legacy, rt::TokioExecutor};

use super::http::{self, Client};

/// One failed request: when (since the load started), which kind of client, what.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Duration,
    pub fresh_connection: bool,
    pub what: String,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub started: Instant,
}

/// Requests answered and failed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            ok: self.ok - earlier.ok,
            failed: self.failed - earlier.failed,
        }
    }

    pub fn total(self) -> u64 {
        self.ok + self.failed
    }
}

/// A client that opens a new connection for every request.
fn fresh_client() -> Client {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Legacy::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(c)
}

impl Load {
    /// `keepalive` clients on one connection each and `fresh` clients that connect anew
    /// for every request, all sending `GET url` back to back (200 is success).
    pub fn start(rt: &tokio::runtime::Runtime, url: &str, keepalive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..keepalive + fresh {
            let is_fresh = i >= keepalive;
            let client = if is_fresh {
                fresh_client()
            } else {
                http::client()
            };
            let (stop, counters, url) = (stop.clone(), counters.clone(), url.to_string());
            tasks.push(rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = http::send(&client, hyper::Method::GET, &url, None).await;
                    match outcome {
                        Ok(r) if r.status == 200 => {
                            counters.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(r) => {
                                    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
                                }
                                Err(e) => e,
                            };
                            if let Ok(mut f) = counters.failures.lock() {
                                f.push(Failure {
                                    at: started.elapsed(),
                                    fresh_connection: is_fresh,
                                    what,
                                });
                            }
                            // Do not spin on a refused connection.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            counters,
            tasks,
            started,
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Failures so far, oldest first.
    pub fn failures(&self) -> Vec<Failure> {
        self.counters
            .failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Stops every client (after its request in flight) and returns the totals.
    pub fn stop(mut self, rt: &tokio::runtime::Runtime) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = rt.block_on(t);
        }
        Counts {
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
