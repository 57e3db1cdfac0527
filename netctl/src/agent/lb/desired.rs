//! What the load-balancing maps should hold, computed from the plan, the registered
//! instances, their health and the drain requests. Pure: no I/O, unit-tested.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use netctl_common::lb::SVC_F_HOST_PORT;

use super::health::Probe;
pub use crate::dataplane::lb::{BackendKey, Desired, DesiredFrontend, FrontendKey};
use crate::topology::{HealthCheck, Plan};

/// One instance of a service (a replica), as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub service: String,
    /// `product-2`.
    pub name: String,
    pub addr: Ipv4Addr,
    pub weight: u32,
    /// The port every frontend port of the service goes to on this instance (a backend
    /// listed as `ADDR:PORT`); `None`: the frontend's own port.
    pub target_port: Option<u16>,
    /// How it is checked (the service's `health`); `None`: nothing to check (always up).
    pub health: Option<HealthCheck>,
    /// The source that named it (`sources::BackendSource::name`).
    pub source: &'static str,
}

impl Instance {
    /// The health check of this instance.
    pub fn probe(&self) -> Probe {
        Probe {
            addr: self.addr,
            check: self.health.clone(),
        }
    }
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
    // Instances by service once, not a scan of every instance per service: platforms of
    // 10,000 services have 30,000 instances.
    let mut by_service: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in inputs.instances {
        by_service.entry(i.service.as_str()).or_default().push(i);
    }
    for svc in &inputs.plan.services {
        let instances = by_service
            .get(svc.name.as_str())
            .map_or(&[][..], Vec::as_slice);
        for port in &svc.ports {
            let mut backends = Vec::new();
            for inst in instances {
                let key = BackendKey {
                    addr: inst.addr,
                    port: inst.target_port.unwrap_or(port.port),
                    proto: port.proto,
                };
                if !inputs.drains.is_empty()
                    && inputs
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
                            target: Some(fe),
                        },
                    );
                }
            }
            out.frontends.insert(
                fe,
                DesiredFrontend {
                    key: fe,
                    service: svc.name.clone(),
                    service_id: svc.id,
                    algorithm: svc.algorithm,
                    flags: 0,
                    backends,
                    target: None,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::lb::sources::{Topology, inventory};
    use crate::topology::{Algorithm, Proto, TopologyBuilder};

    fn plan() -> Plan {
        TopologyBuilder::new()
            .network("app", "10.9.0.0/24")
            .service("web", |s| {
                s.network("app")
                    .address("10.9.0.10")
                    .replicas(3)
                    .tcp(80)
                    .udp(53)
                    .lb("maglev")
            })
            .service("db", |s| s.network("app").address("10.9.0.50").tcp(5432))
            .port_forward(8080, "web", 80)
            .plan()
            .expect("valid")
    }

    #[test]
    fn every_port_of_every_service_is_a_frontend_over_its_healthy_replicas() {
        let plan = plan();
        let instances = inventory(&plan, &[&Topology]);
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
        let instances = inventory(&plan, &[&Topology]);
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

    #[test]
    fn listed_backends_are_instances_with_their_target_ports() {
        let plan = TopologyBuilder::new()
            .network("app", "10.9.0.0/24")
            .service("web", |s| s.network("app").address("10.9.0.10").tcp(80))
            .service("ext", |s| {
                s.tcp(7000).backends(&["10.9.0.10:80", "10.9.0.11"])
            })
            .plan()
            .expect("valid");
        let instances = inventory(&plan, &[&Topology]);
        let ext: Vec<&Instance> = instances.iter().filter(|i| i.service == "ext").collect();
        assert_eq!(ext.len(), 2);
        assert_eq!(
            ext[0].probe(),
            Probe {
                addr: Ipv4Addr::new(10, 9, 0, 10),
                check: Some(HealthCheck::lb_default(80)),
            }
        );
        assert_eq!(
            ext[1].probe(),
            Probe {
                addr: Ipv4Addr::new(10, 9, 0, 11),
                check: Some(HealthCheck::lb_default(7000)),
            }
        );
        // web's replica and ext's first backend share one health check.
        let web = instances.iter().find(|i| i.service == "web").expect("web");
        assert_eq!(web.probe(), ext[0].probe());
        let d = compute(&Inputs {
            plan: &plan,
            instances: &instances,
            health: &|_| Some(true),
            drains: &HashSet::new(),
            host_addrs: &[],
        });
        let vip = plan.service("ext").expect("ext").vip;
        let fe = &d.frontends[&FrontendKey {
            addr: vip,
            port: 7000,
            proto: Proto::Tcp,
        }];
        let targets: Vec<(Ipv4Addr, u16)> =
            fe.backends.iter().map(|(b, _)| (b.addr, b.port)).collect();
        assert_eq!(
            targets,
            [
                (Ipv4Addr::new(10, 9, 0, 10), 80),
                (Ipv4Addr::new(10, 9, 0, 11), 7000)
            ]
        );
    }
}
