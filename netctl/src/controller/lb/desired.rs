//! What the load-balancing maps should hold, computed from the plan, the registered
//! instances, their health and the drain requests. Pure: no I/O, unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
};

use netctl_common::lb::SVC_F_HOST_PORT;

use crate::topology::{Algorithm, Plan, Proto};

/// One instance of a service (a replica), as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub service: String,
    /// `product-2`.
    pub name: String,
    pub addr: Ipv4Addr,
    pub weight: u32,
}

/// A backend as the dataplane addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl BackendKey {
    /// Stable name for Maglev.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.addr, self.port, self.proto.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub key: FrontendKey,
    pub service: String,
    pub service_id: u32,
    pub algorithm: Algorithm,
    pub flags: u8,
    /// Healthy, undrained backends with their weights, in a stable order.
    pub backends: Vec<(BackendKey, u32)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// Backends of instances that failed their health check: out of the maps at once, so
    /// UDP flows choose again.
    pub dead: BTreeSet<BackendKey>,
    /// Backends drained on request: no new connections, established ones continue.
    pub drained: BTreeSet<BackendKey>,
}

/// Everything the desired state depends on.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    pub instances: &'a [Instance],
    /// `Some(true)` up, `Some(false)` down, `None` not checked yet.
    pub health: &'a dyn Fn(&Instance) -> Option<bool>,
    /// `(service, instance)` pairs drained by `netctl drain`.
    pub drains: &'a HashSet<(String, String)>,
    /// Host addresses that serve port forwards (loopback and the uplinks' addresses).
    pub host_addrs: &'a [Ipv4Addr],
}

pub fn compute(inputs: &Inputs) -> Desired {
    let mut out = Desired::default();
    for svc in &inputs.plan.services {
        let instances: Vec<&Instance> = inputs
            .instances
            .iter()
            .filter(|i| i.service == svc.name)
            .collect();
        for port in &svc.ports {
            let mut backends = Vec::new();
            for inst in &instances {
                let key = BackendKey {
                    addr: inst.addr,
                    port: port.port,
                    proto: port.proto,
                };
                if inputs
                    .drains
                    .contains(&(svc.name.clone(), inst.name.clone()))
                {
                    out.drained.insert(key);
                    continue;
                }
                match (inputs.health)(inst) {
                    Some(true) => backends.push((key, inst.weight)),
                    Some(false) => {
                        out.dead.insert(key);
                    }
                    None => {}
                }
            }
            backends.sort();
            let fe = FrontendKey {
                addr: svc.vip,
                port: port.port,
                proto: port.proto,
            };
            out.frontends.insert(
                fe,
                DesiredFrontend {
                    key: fe,
                    service: svc.name.clone(),
                    service_id: svc.id,
                    algorithm: svc.algorithm,
                    flags: 0,
                    backends: backends.clone(),
                },
            );
            for pf in
                inputs.plan.port_forwards.iter().filter(|f| {
                    f.service == svc.name && f.port == port.port && f.proto == port.proto
                })
            {
                for addr in inputs.host_addrs {
                    let key = FrontendKey {
                        addr: *addr,
                        port: pf.host_port,
                        proto: pf.proto,
                    };
                    out.frontends.insert(
                        key,
                        DesiredFrontend {
                            key,
                            service: svc.name.clone(),
                            service_id: svc.id,
                            algorithm: svc.algorithm,
                            flags: SVC_F_HOST_PORT,
                            backends: backends.clone(),
                        },
                    );
                }
            }
        }
    }
    out
}

/// Instances straight from the topology: every replica of every service. Used until a
/// registry says otherwise.
pub fn instances_from_plan(plan: &Plan) -> Vec<Instance> {
    plan.endpoints
        .iter()
        .map(|e| Instance {
            service: e.service.clone(),
            name: e.name.clone(),
            addr: e.address,
            weight: 1,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    fn plan() -> Plan {
        Source {
            name: "t".into(),
            text: r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
address = "10.9.0.10"
replicas = 3
ports = [80, "53/udp"]
lb = "maglev"
[services.db]
network = "app"
address = "10.9.0.50"
ports = [5432]
[[port_forwards]]
host_port = 8080
service = "web"
"#
            .into(),
        }
        .plan(None)
        .expect("valid")
    }

    #[test]
    fn every_port_of_every_service_is_a_frontend_over_its_healthy_replicas() {
        let plan = plan();
        let instances = instances_from_plan(&plan);
        let down = Ipv4Addr::new(10, 9, 0, 11);
        let health = |i: &Instance| Some(i.addr != down);
        let drains = HashSet::new();
        let d = compute(&Inputs {
            plan: &plan,
            instances: &instances,
            health: &health,
            drains: &drains,
            host_addrs: &[Ipv4Addr::LOCALHOST],
        });
        let web = plan.service("web").expect("web");
        let fe = &d.frontends[&FrontendKey {
            addr: web.vip,
            port: 80,
            proto: Proto::Tcp,
        }];
        assert_eq!(fe.algorithm, Algorithm::Maglev);
        let addrs: Vec<Ipv4Addr> = fe.backends.iter().map(|(b, _)| b.addr).collect();
        assert_eq!(
            addrs,
            [Ipv4Addr::new(10, 9, 0, 10), Ipv4Addr::new(10, 9, 0, 12)]
        );
        assert!(d.frontends.contains_key(&FrontendKey {
            addr: web.vip,
            port: 53,
            proto: Proto::Udp
        }));
        assert!(d.dead.contains(&BackendKey {
            addr: down,
            port: 80,
            proto: Proto::Tcp
        }));

        // The port forward is a host-port frontend with the same backends.
        let pf = &d.frontends[&FrontendKey {
            addr: Ipv4Addr::LOCALHOST,
            port: 8080,
            proto: Proto::Tcp,
        }];
        assert_eq!(pf.flags, SVC_F_HOST_PORT);
        assert_eq!(pf.backends, fe.backends);
        assert_eq!(
            d.frontends.len(),
            4,
            "web:80, web:53/udp, db:5432, localhost:8080"
        );
    }

    #[test]
    fn drained_and_unchecked_instances_get_no_new_connections() {
        let plan = plan();
        let instances = instances_from_plan(&plan);
        let health = |i: &Instance| (i.addr != Ipv4Addr::new(10, 9, 0, 12)).then_some(true);
        let drains: HashSet<(String, String)> = [("web".to_string(), "web-1".to_string())].into();
        let d = compute(&Inputs {
            plan: &plan,
            instances: &instances,
            health: &health,
            drains: &drains,
            host_addrs: &[],
        });
        let web = plan.service("web").expect("web");
        let fe = &d.frontends[&FrontendKey {
            addr: web.vip,
            port: 80,
            proto: Proto::Tcp,
        }];
        assert_eq!(fe.backends.len(), 1, "web-1 drained, web-3 unchecked");
        assert!(d.drained.contains(&BackendKey {
            addr: Ipv4Addr::new(10, 9, 0, 10),
            port: 80,
            proto: Proto::Tcp
        }));
        assert!(d.dead.is_empty());
    }
}
