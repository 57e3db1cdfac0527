//! Health checks of backends, run from the host with each service's own `health` setting
//! (check, port, path, interval, timeout, retries: `topology::HealthCheck`), by the same
//! probes the supervisor uses (`supervisor::probe`). A service without a setting gets
//! load balancing's default, a TCP connect every 500 ms ([`HealthCheck::lb_default`]).
//! A backend is down after `retries` failures in a row and up again after one success, so
//! a killed replica leaves the maps within `retries * interval + timeout`.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Notify, RwLock},
    task::JoinHandle,
};

use crate::{supervisor::probe, topology::HealthCheck};

/// What to check on an instance: its address and the check; no check (e.g. UDP-only
/// services): always up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Probe {
    pub addr: Ipv4Addr,
    pub check: Option<HealthCheck>,
}

pub use crate::instance::agent_status::Health;

/// Runs one task per probe and keeps the latest results.
#[derive(Default)]
pub struct Checker {
    results: Arc<RwLock<HashMap<Probe, Health>>>,
    tasks: HashMap<Probe, JoinHandle<()>>,
    /// Signalled when a probe's verdict changes (or it has its first), so the maps follow
    /// at once rather than at the next tick.
    changed: Arc<Notify>,
}

impl Checker {
    /// Starts probes that are new, stops those no longer wanted.
    pub async fn set_probes(&mut self, probes: &[Probe]) {
        self.tasks.retain(|p, task| {
            let keep = probes.contains(p);
            if !keep {
                task.abort();
            }
            keep
        });
        {
            let mut results = self.results.write().await;
            results.retain(|p, _| probes.contains(p));
        }
        for p in probes {
            if !self.tasks.contains_key(p) {
                let task = tokio::spawn(run(p.clone(), self.results.clone(), self.changed.clone()));
                self.tasks.insert(p.clone(), task);
            }
        }
    }

    /// Resolves when a verdict changed since the last call. Cancel-safe.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Latest result of every probe; a probe not yet checked is absent.
    pub async fn results(&self) -> HashMap<Probe, Health> {
        self.results.read().await.clone()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// How often a probe without a check reports "up" (nothing to ask, nothing to wait for).
const UNCHECKED_EVERY: Duration = Duration::from_secs(5);

async fn run(probe: Probe, results: Arc<RwLock<HashMap<Probe, Health>>>, changed: Arc<Notify>) {
    let every = probe
        .check
        .as_ref()
        .map_or(UNCHECKED_EVERY, HealthCheck::interval);
    let fall = probe.check.as_ref().map_or(1, |c| c.retries.max(1));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = match &probe.check {
            Some(check) => probe::check(probe.addr, check).await,
            None => probe::Outcome {
                ok: true,
                latency: Duration::ZERO,
                detail: "nothing to check".into(),
            },
        };
        let mut map = results.write().await;
        let now = unix_now();
        let first = !map.contains_key(&probe);
        let h = map.entry(probe.clone()).or_insert(Health {
            up: false,
            latency_ms: None,
            failures: fall,
            last_error: None,
            since: now,
            checks: 0,
            check: probe.check.as_ref().map(HealthCheck::describe),
        });
        h.checks += 1;
        let was_up = h.up;
        if outcome.ok {
            if !h.up {
                h.since = now;
            }
            h.up = true;
            h.failures = 0;
            h.latency_ms = Some(outcome.latency.as_secs_f64() * 1000.0);
            h.last_error = None;
        } else {
            h.failures = h.failures.saturating_add(1);
            h.last_error = Some(outcome.detail);
            if h.up && h.failures >= fall {
                h.up = false;
                h.since = now;
            }
        }
        if first || h.up != was_up {
            changed.notify_one();
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
