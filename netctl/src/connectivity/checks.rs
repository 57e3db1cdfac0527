//! Which checks `netctl connectivity` makes, and what the compiled policy says of each:
//! from every service namespace (one instance per service, or all) and from the host, to
//! every other service by address (TCP/UDP on each port, ICMP echo), by VIP on each port,
//! and, from the host, through each port forward. Pure: a function of the plan.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;

use crate::{
    policy::model,
    topology::{Plan, Proto, policy::Peer},
};

/// How a check reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Address,
    Vip,
    PortForward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tcp,
    Udp,
    Icmp,
}

impl Kind {
    fn proto_number(self) -> u8 {
        match self {
            Kind::Tcp => Proto::Tcp.number(),
            Kind::Udp => Proto::Udp.number(),
            Kind::Icmp => netctl_common::flow::IPPROTO_ICMP,
        }
    }
}

/// One probe to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The source instance (`product-2`), or `host`.
    pub source: String,
    /// The source's service, `None` for the host.
    #[serde(skip)]
    pub source_service: Option<String>,
    /// Where the probe is sent from: the source's namespace, `None` for the host's.
    #[serde(skip)]
    pub netns: Option<String>,
    /// The destination service.
    pub destination: String,
    pub via: Via,
    pub kind: Kind,
    /// Address and port (0 for ICMP).
    pub target: SocketAddrV4,
    /// Whether the policy allows it.
    pub expected_allow: bool,
    /// The deciding rule's number, `None` for a default (or the host's implicit allow).
    pub rule: Option<u16>,
}

impl Check {
    /// The source's identity name, as the drop counters name it.
    pub fn source_identity(&self) -> &str {
        self.source_service.as_deref().unwrap_or("host")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksError {
    #[error("no service {0:?} in the platform (see `netctl services`)")]
    UnknownService(String),
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only checks from or to this service.
    pub service: Option<String>,
    /// From every instance of a service, not only its first.
    pub all_instances: bool,
}

/// Every check for `plan`, in a stable order (source, destination, via, target).
pub fn checks(plan: &Plan, options: &Options) -> Result<Vec<Check>, ChecksError> {
    if let Some(s) = &options.service
        && plan.service(s).is_none()
    {
        return Err(ChecksError::UnknownService(s.clone()));
    }
    let mut sources: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for service in &plan.services {
        let instances = plan.endpoints.iter().filter(|e| e.service == service.name);
        for (i, e) in instances.enumerate() {
            if i > 0 && !options.all_instances {
                break;
            }
            sources.push((
                e.name.clone(),
                Some(service.name.clone()),
                Some(e.netns.clone()),
            ));
        }
    }
    sources.push(("host".into(), None, None));

    let mut out = Vec::new();
    for (source, source_service, netns) in &sources {
        let src_peer = match source_service {
            Some(s) => Peer::Service(s.clone()),
            None => Peer::Host,
        };
        for dst in &plan.services {
            if source_service.as_deref() == Some(dst.name.as_str()) {
                continue;
            }
            if let Some(only) = &options.service
                && source_service.as_deref() != Some(only.as_str())
                && &dst.name != only
            {
                continue;
            }
            let dst_peer = Peer::Service(dst.name.clone());
            let mut add = |via: Via, kind: Kind, addr: Ipv4Addr, port: u16, policy_port: u16| {
                let v = model::verdict(
                    &plan.policy,
                    &src_peer,
                    &dst_peer,
                    policy_port,
                    kind.proto_number(),
                );
                out.push(Check {
                    source: source.clone(),
                    source_service: source_service.clone(),
                    netns: netns.clone(),
                    destination: dst.name.clone(),
                    via,
                    kind,
                    target: SocketAddrV4::new(addr, port),
                    expected_allow: v.allow,
                    rule: v.rule,
                });
            };
            // By address: the first instance (it is the service's identity either way).
            if let Some(e) = plan.endpoints.iter().find(|e| e.service == dst.name) {
                for p in &e.ports {
                    add(Via::Address, kind_of(p.proto), e.address, p.port, p.port);
                }
                add(Via::Address, Kind::Icmp, e.address, 0, 0);
            }
            for p in &dst.ports {
                add(Via::Vip, kind_of(p.proto), dst.vip, p.port, p.port);
            }
            // Port forwards serve the outside and the host (through localhost).
            if source_service.is_none() {
                for pf in plan
                    .port_forwards
                    .iter()
                    .filter(|pf| pf.service == dst.name)
                {
                    add(
                        Via::PortForward,
                        kind_of(pf.proto),
                        Ipv4Addr::LOCALHOST,
                        pf.host_port,
                        pf.port,
                    );
                }
            }
        }
    }
    Ok(out)
}

fn kind_of(proto: Proto) -> Kind {
    match proto {
        Proto::Tcp => Kind::Tcp,
        Proto::Udp => Kind::Udp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    fn plan(text: &str) -> Plan {
        Source {
            name: "t".into(),
            text: text.into(),
        }
        .plan(None)
        .expect("valid")
    }

    const TOPOLOGY: &str = r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
address = "10.9.0.10"
replicas = 2
ports = [80]
[services.db]
network = "app"
address = "10.9.0.30"
ports = [5432, "5353/udp"]
[[port_forwards]]
host_port = 8080
service = "web"
port = 80
[policy]
default_deny = ["db"]
[[policy.rules]]
from = ["web"]
to = "db"
ports = [5432]
"#;

    #[test]
    fn every_source_reaches_every_other_service_by_address_vip_and_port_forward() {
        let p = plan(TOPOLOGY);
        let all = checks(&p, &Options::default()).unwrap();
        let from = |s: &str| all.iter().filter(|c| c.source == s).collect::<Vec<_>>();
        // web-1 (not web-2) -> db: 2 ports by address, ICMP, 2 ports by VIP.
        assert_eq!(from("web-1").len(), 5);
        assert!(from("web-2").is_empty());
        let db = from("db");
        assert!(db.iter().all(|c| c.destination == "web"));
        assert!(db.iter().all(|c| c.via != Via::PortForward));
        // The host: web (1 + ICMP + VIP + the port forward) and db (5).
        let host = from("host");
        assert_eq!(host.len(), 4 + 5);
        let pf = host.iter().find(|c| c.via == Via::PortForward).unwrap();
        assert_eq!(pf.target, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(pf.kind, Kind::Tcp);
    }

    #[test]
    fn the_expected_verdicts_are_the_policys() {
        let p = plan(TOPOLOGY);
        let all = checks(&p, &Options::default()).unwrap();
        let find = |src: &str, via: Via, kind: Kind, port: u16| {
            all.iter()
                .find(|c| {
                    c.source == src && c.via == via && c.kind == kind && c.target.port() == port
                })
                .unwrap()
        };
        assert!(find("web-1", Via::Address, Kind::Tcp, 5432).expected_allow);
        assert!(find("web-1", Via::Vip, Kind::Tcp, 5432).expected_allow);
        assert!(!find("web-1", Via::Address, Kind::Udp, 5353).expected_allow);
        assert!(!find("web-1", Via::Address, Kind::Icmp, 0).expected_allow);
        // Nothing denies db -> web.
        assert!(find("db", Via::Vip, Kind::Tcp, 80).expected_allow);
    }

    #[test]
    fn one_service_or_all_instances_and_an_unknown_service_is_an_error() {
        let p = plan(TOPOLOGY);
        let only = Options {
            service: Some("db".into()),
            all_instances: true,
        };
        let some = checks(&p, &only).unwrap();
        assert!(
            some.iter()
                .all(|c| c.destination == "db" || c.source_service.as_deref() == Some("db"))
        );
        assert!(some.iter().any(|c| c.source == "web-2"));
        let bad = Options {
            service: Some("nope".into()),
            all_instances: false,
        };
        assert_eq!(
            checks(&p, &bad),
            Err(ChecksError::UnknownService("nope".into()))
        );
    }
}
