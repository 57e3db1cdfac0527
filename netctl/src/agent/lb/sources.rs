//! Where a service's backends come from, in one place. Each source answers with the
//! instances it knows for the services of a plan; [`inventory`] combines the answers the
//! one way the load balancer does:
//! - the topology's replicas (and the backends a service lists by hand) are the base;
//! - the registry *replaces*: a service it lists any instance of (alive or recently dead)
//!   takes its live instances from there, so new replicas join and deregistered ones
//!   drain;
//! - attached endpoints *add*: an endpoint a runtime labelled `product` is a product
//!   backend whether or not it registers, unless an earlier source has its address.
//!
//! A new source (a remote node's endpoints, say) is one more impl, not a new branch in
//! the load balancer.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use super::{desired::Instance, registry_list};
use crate::{endpoint::Endpoint, topology::Plan};

/// How a source's answer combines with what the sources before it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The services it names take their instances from it alone.
    Replaces,
    /// Its instances join, but for addresses a service has already.
    Adds,
}

/// What one source knows.
#[derive(Debug, Default)]
pub struct Answer {
    /// The services this source speaks for (what [`Merge::Replaces`] takes over).
    pub services: HashSet<String>,
    pub instances: Vec<Instance>,
}

pub trait BackendSource {
    /// Shown in a backend's status: `topology`, `registry`, `endpoint`.
    fn name(&self) -> &'static str;
    fn merge(&self) -> Merge;
    /// `None`: nothing to say yet (a registry that has not answered).
    fn answer(&self, plan: &Plan) -> Option<Answer>;
}

/// The instances to balance over, from `sources` in order, in the plan's service order.
/// Instances of services the plan does not have (no VIP) are dropped: they have no
/// frontend to join.
pub fn inventory(plan: &Plan, sources: &[&dyn BackendSource]) -> Vec<Instance> {
    let mut out: Vec<Instance> = Vec::new();
    for source in sources {
        let Some(answer) = source.answer(plan) else {
            continue;
        };
        match source.merge() {
            Merge::Replaces => {
                out.retain(|i| !answer.services.contains(&i.service));
                out.extend(answer.instances);
            }
            Merge::Adds => {
                let known: HashSet<(String, Ipv4Addr)> =
                    out.iter().map(|i| (i.service.clone(), i.addr)).collect();
                out.extend(
                    answer
                        .instances
                        .into_iter()
                        .filter(|i| !known.contains(&(i.service.clone(), i.addr))),
                );
            }
        }
    }
    let order: HashMap<&str, usize> = plan
        .services
        .iter()
        .enumerate()
        .map(|(n, s)| (s.name.as_str(), n))
        .collect();
    out.retain(|i| order.contains_key(i.service.as_str()));
    // Stable: within a service, the source's own order.
    out.sort_by_key(|i| order.get(i.service.as_str()).copied());
    out
}

/// The topology: every replica of every service, and every backend a service lists.
pub struct Topology;

impl BackendSource for Topology {
    fn name(&self) -> &'static str {
        "topology"
    }

    fn merge(&self) -> Merge {
        Merge::Replaces
    }

    fn answer(&self, plan: &Plan) -> Option<Answer> {
        let check = |svc: &str| plan.service(svc).and_then(|s| s.backend_check(None));
        let mut instances: Vec<Instance> = plan
            .endpoints
            .iter()
            .map(|e| Instance {
                service: e.service.clone(),
                name: e.name.clone(),
                addr: e.address,
                weight: 1,
                target_port: None,
                health: check(&e.service),
                source: self.name(),
            })
            .collect();
        for svc in plan.services.iter().filter(|s| !s.backends.is_empty()) {
            for b in &svc.backends {
                instances.push(Instance {
                    service: svc.name.clone(),
                    name: b.to_string(),
                    addr: b.addr,
                    weight: 1,
                    target_port: b.port,
                    // A listed port replaces the service's one port (TCP or UDP).
                    health: svc.backend_check(b.port),
                    source: self.name(),
                });
            }
        }
        Some(Answer {
            services: plan.services.iter().map(|s| s.name.clone()).collect(),
            instances,
        })
    }
}

/// The registry's last list (`GET /v1/instances`), `None` until it has answered.
pub struct Registry<'a>(pub Option<&'a [registry_list::Instance]>);

impl BackendSource for Registry<'_> {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn merge(&self) -> Merge {
        Merge::Replaces
    }

    fn answer(&self, plan: &Plan) -> Option<Answer> {
        let listed = self.0?;
        let mut answer = Answer::default();
        // One backend per address: two registrations from one address are one process
        // as far as the dataplane can tell.
        let mut seen: HashSet<(&str, Ipv4Addr)> = HashSet::new();
        for i in listed {
            let Some(svc) = plan.service(&i.service) else {
                continue;
            };
            answer.services.insert(svc.name.clone());
            if !i.alive || !seen.insert((i.service.as_str(), i.address)) {
                continue;
            }
            answer.instances.push(Instance {
                service: svc.name.clone(),
                name: i.id.clone(),
                addr: i.address,
                weight: weight(i),
                target_port: None,
                health: svc.backend_check(None),
                source: self.name(),
            });
        }
        Some(answer)
    }
}

/// `metadata.weight` (1..=1000), else 1.
fn weight(i: &registry_list::Instance) -> u32 {
    i.metadata
        .get("weight")
        .and_then(|w| w.trim().parse::<u32>().ok())
        .filter(|w| (1..=1000).contains(w))
        .unwrap_or(1)
}

/// The endpoints attached through the agent's API that are members of a service.
pub struct Endpoints<'a>(pub &'a [Endpoint]);

impl BackendSource for Endpoints<'_> {
    fn name(&self) -> &'static str {
        "endpoint"
    }

    fn merge(&self) -> Merge {
        Merge::Adds
    }

    fn answer(&self, plan: &Plan) -> Option<Answer> {
        let instances = self
            .0
            .iter()
            .filter_map(|ep| {
                let svc = plan.service(ep.service.as_deref()?)?;
                Some(Instance {
                    service: svc.name.clone(),
                    name: ep.id.clone(),
                    addr: ep.address,
                    weight: 1,
                    target_port: None,
                    health: svc.backend_check(None),
                    source: self.name(),
                })
            })
            .collect();
        Some(Answer {
            services: HashSet::new(),
            instances,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::topology::TopologyBuilder;

    fn plan() -> Plan {
        TopologyBuilder::new()
            .network("back", "10.1.0.0/24")
            .service("product", |s| {
                s.network("back").address("10.1.0.10").replicas(2).tcp(5000)
            })
            .service("redis", |s| {
                s.network("back").address("10.1.0.20").tcp(6379)
            })
            .plan()
            .expect("valid topology")
    }

    fn reg(
        service: &str,
        id: &str,
        addr: &str,
        alive: bool,
        weight: Option<&str>,
    ) -> registry_list::Instance {
        let mut metadata = BTreeMap::new();
        if let Some(w) = weight {
            metadata.insert("weight".to_string(), w.to_string());
        }
        registry_list::Instance {
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
            .map(|i| {
                format!(
                    "{}/{}@{}*{} {}",
                    i.service, i.name, i.addr, i.weight, i.source
                )
            })
            .collect()
    }

    fn with_registry(p: &Plan, list: Option<&[registry_list::Instance]>) -> Vec<Instance> {
        inventory(p, &[&Topology, &Registry(list)])
    }

    #[test]
    fn without_an_answer_the_topology_replicas_stand_in() {
        let p = plan();
        let topology = inventory(&p, &[&Topology]);
        assert_eq!(
            names(&topology),
            [
                "product/product-1@10.1.0.10*1 topology",
                "product/product-2@10.1.0.11*1 topology",
                "redis/redis@10.1.0.20*1 topology",
            ]
        );
        assert_eq!(with_registry(&p, None), topology);
        assert_eq!(with_registry(&p, Some(&[])), topology);
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
            names(&with_registry(&p, Some(&list))),
            [
                "product/product-1@10.1.0.10*1 registry",
                "product/extra@10.1.0.50*3 registry",
                "redis/redis@10.1.0.20*1 topology",
            ]
        );
    }

    #[test]
    fn all_instances_dead_means_no_backends_not_the_topology() {
        let p = plan();
        let list = [reg("product", "product-1", "10.1.0.10", false, None)];
        assert_eq!(
            names(&with_registry(&p, Some(&list))),
            ["redis/redis@10.1.0.20*1 topology"]
        );
    }

    #[test]
    fn weights_out_of_range_count_as_one() {
        for w in ["0", "1001", "-2", "x", ""] {
            assert_eq!(weight(&reg("p", "i", "10.0.0.1", true, Some(w))), 1, "{w}");
        }
        assert_eq!(weight(&reg("p", "i", "10.0.0.1", true, Some(" 7 "))), 7);
    }

    fn endpoint(id: &str, addr: &str, service: Option<&str>) -> Endpoint {
        Endpoint {
            id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            ifname: "eth0".into(),
            host_ifname: format!("h-{id}"),
            network: "back".into(),
            bridge: "br-back".into(),
            address: addr.parse().expect("address"),
            prefix_len: 24,
            gateway: "10.1.0.1".parse().expect("address"),
            mac: None,
            service: service.map(String::from),
            identity: 0,
            labels: BTreeMap::new(),
            owner: crate::endpoint::Owner::Api,
        }
    }

    #[test]
    fn labelled_endpoints_join_a_service_unless_its_address_is_known() {
        let p = plan();
        let attached = [
            endpoint("c1", "10.1.0.77", Some("product")),
            // The registry has this address for product already.
            endpoint("c2", "10.1.0.50", Some("product")),
            endpoint("c3", "10.1.0.78", None),
            endpoint("c4", "10.1.0.79", Some("nosuch")),
        ];
        let list = [reg("product", "extra", "10.1.0.50", true, None)];
        let got = inventory(
            &p,
            &[&Topology, &Registry(Some(&list)), &Endpoints(&attached)],
        );
        assert_eq!(
            names(&got),
            [
                "product/extra@10.1.0.50*1 registry",
                "product/c1@10.1.0.77*1 endpoint",
                "redis/redis@10.1.0.20*1 topology",
            ]
        );
    }
}
