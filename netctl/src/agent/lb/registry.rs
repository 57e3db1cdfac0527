//! The service registry as the load balancer's source of instances. The controller polls
//! the registry's list (`GET /v1/instances`) twice a second; a service the registry knows
//! takes its backends from there (new replicas join, deregistered ones drain), and the
//! topology's replicas stand in until then and for services that never register (the
//! data stores, nginx, the registry itself).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use super::{
    desired::Instance,
    registry_list::{self as model, RegistryClient},
};
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

/// The instances to balance over: for each service of the plan, the live instances the
/// registry lists when it lists any instance of that service (alive or recently dead),
/// else the topology's replicas. Registered instances of services the plan does not
/// have (no VIP) are ignored; the backend port is the service's port in the plan.
pub fn instances(plan: &Plan, registry: Option<&[model::Instance]>) -> Vec<Instance> {
    let from_plan = super::desired::instances_from_plan(plan);
    let Some(registered) = registry else {
        return from_plan;
    };
    let mut out = Vec::new();
    for svc in &plan.services {
        let known: Vec<&model::Instance> = registered
            .iter()
            .filter(|i| i.service == svc.name)
            .collect();
        if known.is_empty() {
            out.extend(from_plan.iter().filter(|i| i.service == svc.name).cloned());
            continue;
        }
        let health = svc.backend_check(None);
        let mut seen: Vec<Ipv4Addr> = Vec::new();
        for i in known.into_iter().filter(|i| i.alive) {
            // One backend per address: two registrations from one address are one process
            // as far as the dataplane can tell.
            if seen.contains(&i.address) {
                continue;
            }
            seen.push(i.address);
            out.push(Instance {
                service: svc.name.clone(),
                name: i.id.clone(),
                addr: i.address,
                weight: weight(i),
                target_port: None,
                health: health.clone(),
            });
        }
    }
    out
}

/// `metadata.weight` (1..=1000), else 1.
fn weight(i: &model::Instance) -> u32 {
    i.metadata
        .get("weight")
        .and_then(|w| w.trim().parse::<u32>().ok())
        .filter(|w| (1..=1000).contains(w))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::topology::Source;

    fn plan() -> Plan {
        Source {
            text: r#"
[networks.back]
subnet = "10.1.0.0/24"
[services.product]
network = "back"
address = "10.1.0.10"
replicas = 2
ports = [5000]
[services.redis]
network = "back"
address = "10.1.0.20"
ports = [6379]
"#
            .into(),
            name: "t".into(),
        }
        .plan(None)
        .expect("valid topology")
    }

    fn reg(
        service: &str,
        id: &str,
        addr: &str,
        alive: bool,
        weight: Option<&str>,
    ) -> model::Instance {
        let mut metadata = BTreeMap::new();
        if let Some(w) = weight {
            metadata.insert("weight".to_string(), w.to_string());
        }
        model::Instance {
            service: service.into(),
            id: id.into(),
            address: addr.parse().expect("address"),
            port: 5000,
            metadata,
            alive,
        }
    }

    fn names(v: &[Instance]) -> Vec<String> {
        v.iter()
            .map(|i| format!("{}/{}@{}*{}", i.service, i.name, i.addr, i.weight))
            .collect()
    }

    #[test]
    fn without_an_answer_the_topology_replicas_stand_in() {
        let p = plan();
        assert_eq!(
            instances(&p, None),
            super::super::desired::instances_from_plan(&p)
        );
        assert_eq!(
            instances(&p, Some(&[])),
            super::super::desired::instances_from_plan(&p)
        );
    }

    #[test]
    fn a_service_the_registry_knows_takes_its_live_instances_from_there() {
        let p = plan();
        let list = [
            reg("product", "product-1", "10.1.0.10", true, None),
            reg("product", "product-2", "10.1.0.11", false, None),
            reg("product", "extra", "10.1.0.50", true, Some("3")),
            reg("product", "dup", "10.1.0.50", true, None),
            reg("unknown", "x", "10.1.0.60", true, None),
        ];
        assert_eq!(
            names(&instances(&p, Some(&list))),
            [
                "product/product-1@10.1.0.10*1",
                "product/extra@10.1.0.50*3",
                "redis/redis@10.1.0.20*1",
            ]
        );
    }

    #[test]
    fn all_instances_dead_means_no_backends_not_the_topology() {
        let p = plan();
        let list = [reg("product", "product-1", "10.1.0.10", false, None)];
        assert_eq!(
            names(&instances(&p, Some(&list))),
            ["redis/redis@10.1.0.20*1"]
        );
    }

    #[test]
    fn weights_out_of_range_count_as_one() {
        for w in ["0", "1001", "-2", "x", ""] {
            assert_eq!(weight(&reg("p", "i", "10.0.0.1", true, Some(w))), 1, "{w}");
        }
        assert_eq!(weight(&reg("p", "i", "10.0.0.1", true, Some(" 7 "))), 7);
    }
}
