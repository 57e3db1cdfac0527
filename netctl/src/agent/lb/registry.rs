//! The service registry as the load balancer's source of instances. The controller polls
//! the registry's list (`GET /v1/instances`) twice a second; a service the registry knows
//! takes its backends from there (new replicas join, deregistered ones drain), and the
//! topology's replicas stand in until then and for services that never register (the
//! data stores, nginx, the registry itself).

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::registry_list::{self as model, RegistryClient};
use crate::topology::{Kind, Plan};

const POLL_EVERY: Duration = Duration::from_millis(500);

/// The registry's URL in `plan`: its first endpoint of kind `registry`.
pub fn url(plan: &Plan) -> Option<String> {
    let r = plan.endpoints_of_kind(Kind::Registry).into_iter().next()?;
    let port = r.port().unwrap_or(Kind::Registry.default_port());
    Some(format!("http://{}:{port}", r.address))
}

/// Polls the registry in the background and keeps the last list it answered.
#[derive(Default)]
pub struct Watch {
    url: Option<String>,
    client: Option<RegistryClient>,
    task: Option<JoinHandle<anyhow::Result<Vec<model::Instance>>>>,
    /// A poll that finished while the caller waited for it, not collected yet.
    done: Option<Result<anyhow::Result<Vec<model::Instance>>, tokio::task::JoinError>>,
    last_poll: Option<Instant>,
    /// The last answer; `None` until the registry has answered once.
    known: Option<Vec<model::Instance>>,
    /// Bumped whenever `known` changes (what makes the instances worth recomputing).
    generation: u64,
    error: Option<String>,
}

impl Watch {
    /// Collects a finished poll and starts the next one when due. Never blocks.
    pub async fn tick(&mut self, plan: &Plan) {
        let want = url(plan);
        if want != self.url {
            if let Some(task) = self.task.take() {
                task.abort();
            }
            self.client = want.as_deref().map(RegistryClient::new);
            self.url = want;
            self.known = None;
            self.done = None;
            self.generation += 1;
            self.error = None;
            self.last_poll = None;
        }
        if let Some(task) = &self.task
            && task.is_finished()
            && let Some(task) = self.task.take()
        {
            self.done = Some(task.await);
        }
        if let Some(done) = self.done.take() {
            match done {
                Ok(Ok(list)) => {
                    // Only what decides the backends counts as a change, not the
                    // heartbeat times.
                    let key = |l: &[model::Instance]| -> Vec<(
                        String,
                        String,
                        std::net::Ipv4Addr,
                        bool,
                        Option<String>,
                    )> {
                        l.iter()
                            .map(|i| {
                                (
                                    i.service.clone(),
                                    i.id.clone(),
                                    i.address,
                                    i.alive,
                                    i.metadata.get("weight").cloned(),
                                )
                            })
                            .collect()
                    };
                    if self.known.as_deref().map(key) != Some(key(&list)) {
                        self.generation += 1;
                    }
                    self.known = Some(list);
                    self.error = None;
                }
                // Keep the last list: a registry restarting must not empty the maps.
                Ok(Err(e)) => self.error = Some(format!("{e:#}")),
                Err(e) => self.error = Some(e.to_string()),
            }
        }
        let due = self.last_poll.is_none_or(|t| t.elapsed() >= POLL_EVERY);
        if self.task.is_none()
            && due
            && let Some(client) = self.client.clone()
        {
            self.last_poll = Some(Instant::now());
            self.task = Some(tokio::spawn(async move { client.list().await }));
        }
    }

    /// Resolves when the running poll finishes (never while none runs), so the caller
    /// acts on the registry's answer at once rather than at its next tick. Cancel-safe.
    pub async fn answered(&mut self) {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await;
                self.task = None;
                self.done = Some(result);
            }
            None => std::future::pending().await,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn known(&self) -> Option<&[model::Instance]> {
        self.known.as_deref()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url,
            "answered": self.known.is_some(),
            "instances": self.known.as_ref().map(Vec::len),
            "error": self.error,
        })
    }
}
