//! Where the gateway sends a request: the instances of an upstream service, discovered
//! through the registry (refreshed periodically, client-side round-robin), or one fixed
//! base URL (e.g. a load-balanced service VIP) from the environment. An instance that
//! refuses connections is passed over for a few seconds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::registry::client::RegistryClient;

/// How long an instance that refused a connection is passed over.
const EJECT_FOR: Duration = Duration::from_secs(3);

/// One place to send requests: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub authority: String,
    /// Registry instance id, when discovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// A base URL from the environment (`PRODUCT_URL=http://10.96.0.3:5000`).
    Fixed(String),
    /// The live instances of `service` in the registry.
    Registry {
        client: RegistryClient,
        service: String,
    },
}

pub struct Upstream {
    pub name: &'static str,
    pub source: Source,
    targets: RwLock<Vec<Target>>,
    next: AtomicUsize,
    ejected: Mutex<HashMap<String, Instant>>,
    /// The last discovery error, while discovery fails.
    discovery_error: Mutex<Option<String>>,
}

impl Upstream {
    pub fn new(name: &'static str, source: Source) -> anyhow::Result<Arc<Self>> {
        let targets = match &source {
            Source::Fixed(url) => vec![Target {
                authority: authority_of(url)?,
                id: None,
            }],
            Source::Registry { .. } => Vec::new(),
        };
        Ok(Arc::new(Self {
            name,
            source,
            targets: RwLock::new(targets),
            next: AtomicUsize::new(0),
            ejected: Mutex::new(HashMap::new()),
            discovery_error: Mutex::new(None),
        }))
    }

    pub fn targets(&self) -> Vec<Target> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next target in round-robin order, skipping `tried` and (when there is a
    /// choice) recently ejected ones. A fixed URL is always the target: behind it, a
    /// load-balanced VIP sends each new connection to a backend of its own choosing.
    pub fn pick(&self, tried: &[String]) -> Option<Target> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        if matches!(self.source, Source::Fixed(_)) {
            return targets.first().cloned();
        }
        let fresh: Vec<&Target> = targets
            .iter()
            .filter(|t| !tried.contains(&t.authority))
            .collect();
        if fresh.is_empty() {
            return None;
        }
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let usable: Vec<&Target> = fresh
            .iter()
            .copied()
            .filter(|t| ejected.get(&t.authority).is_none_or(|until| *until <= now))
            .collect();
        let pool = if usable.is_empty() { &fresh } else { &usable };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Some(pool[i].clone())
    }

    /// Whether [`pick`](Self::pick) would find a target not in `tried`, without moving the
    /// round-robin position (asking must not skip an instance of the next request's).
    pub fn has_untried(&self, tried: &[String]) -> bool {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        if matches!(self.source, Source::Fixed(_)) {
            return !targets.is_empty();
        }
        targets.iter().any(|t| !tried.contains(&t.authority))
    }

    /// `authority` refused a connection: pass it over for a while (a fixed URL, never).
    pub fn eject(&self, authority: &str) {
        if matches!(self.source, Source::Fixed(_)) {
            return;
        }
        self.ejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(authority.to_string(), Instant::now() + EJECT_FOR);
    }

    pub fn set_targets(&self, targets: Vec<Target>) {
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    pub fn discovery_error(&self) -> Option<String> {
        self.discovery_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One discovery round; on failure the last known targets stay.
    pub async fn refresh(&self) {
        let Source::Registry { client, service } = &self.source else {
            return;
        };
        match client.discover(service).await {
            Ok(instances) => {
                let targets = instances
                    .into_iter()
                    .map(|i| Target {
                        authority: format!("{}:{}", i.address, i.port),
                        id: Some(i.id),
                    })
                    .collect();
                self.set_targets(targets);
                let mut err = self
                    .discovery_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if err.take().is_some() {
                    tracing::info!(upstream = self.name, "discovery works again");
                }
            }
            Err(e) => {
                let mut err = self
                    .discovery_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if err.is_none() {
                    tracing::warn!(
                        upstream = self.name,
                        "discovery failed: {e:#}; keeping the last known instances"
                    );
                }
                *err = Some(format!("{e:#}"));
            }
        }
    }

    /// Refreshes every `interval` until `shutdown`.
    pub async fn keep_fresh(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        if matches!(self.source, Source::Fixed(_)) {
            return;
        }
        loop {
            self.refresh().await;
            // Faster while nothing is known yet (start-up).
            let wait = if self.targets().is_empty() {
                Duration::from_millis(250)
            } else {
                interval
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    pub fn describe_source(&self) -> String {
        match &self.source {
            Source::Fixed(url) => format!("fixed {url}"),
            Source::Registry { client, service } => {
                format!("registry {} service {service}", client.base())
            }
        }
    }
}

/// `http://host:port[/]` -> `host:port`.
pub fn authority_of(url: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{url:?}: only http:// upstreams are supported");
    }
    if !matches!(uri.path(), "" | "/") {
        anyhow::bail!("{url:?}: give a base URL without a path");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url:?} has no host"))?;
    Ok(match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize) -> Arc<Upstream> {
        let u = Upstream::new(
            "product",
            Source::Registry {
                client: RegistryClient::new("http://127.0.0.1:1"),
                service: "product".into(),
            },
        )
        .unwrap();
        u.set_targets(
            (0..n)
                .map(|i| Target {
                    authority: format!("10.0.0.{i}:5000"),
                    id: Some(format!("p{i}")),
                })
                .collect(),
        );
        u
    }

    #[test]
    fn round_robin_visits_every_instance() {
        let u = upstream(3);
        let picks: Vec<String> = (0..6).map(|_| u.pick(&[]).unwrap().authority).collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first: Vec<&String> = picks[0..3].iter().collect();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn ejected_and_tried_instances_are_passed_over() {
        let u = upstream(3);
        u.eject("10.0.0.1:5000");
        for _ in 0..6 {
            assert_ne!(u.pick(&[]).unwrap().authority, "10.0.0.1:5000");
        }
        let tried = vec!["10.0.0.0:5000".to_string(), "10.0.0.2:5000".to_string()];
        // Only the ejected one is left: better than nothing.
        assert_eq!(u.pick(&tried).unwrap().authority, "10.0.0.1:5000");
        let all: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:5000")).collect();
        assert_eq!(u.pick(&all), None);
        assert_eq!(upstream(0).pick(&[]), None);
    }

    #[test]
    fn fixed_urls_are_checked() {
        assert_eq!(
            authority_of("http://10.96.0.3:5000").unwrap(),
            "10.96.0.3:5000"
        );
        assert_eq!(authority_of("http://10.96.0.3/").unwrap(), "10.96.0.3:80");
        assert!(authority_of("https://x:1").is_err());
        assert!(authority_of("http://x:1/api").is_err());
        assert!(authority_of("not a url").is_err());
        let u = Upstream::new("order", Source::Fixed("http://10.96.0.4:5000".into())).unwrap();
        assert_eq!(u.pick(&[]).unwrap().authority, "10.96.0.4:5000");
        // Tried again: a VIP picks another backend for the new connection.
        u.eject("10.96.0.4:5000");
        let tried = vec!["10.96.0.4:5000".to_string()];
        assert_eq!(u.pick(&tried).unwrap().authority, "10.96.0.4:5000");
    }
}
