//! Validation and planning of what load balancing needs: service ports, VIPs from the
//! service CIDR, algorithms, port forwards and dataplane settings.

use std::{collections::HashMap, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use netctl_common::{
    lb::{MAGLEV_TABLES, MAX_SLOTS},
    maps::LB_SERVICES_MAX_ENTRIES,
};

use super::{
    error::{MAX_REPLICAS, MIN_CONNTRACK, TopologyError},
    health::{HealthCheck, HealthSpec},
    model::{ServiceSpec, Topology},
    plan::{
        Algorithm, Dataplane, Endpoint, ManualBackend, Network, Port, PortForward, Proto, Service,
    },
    ports::{parse_ports, parse_proto, port_number},
};

/// What [`plan`] resolves.
pub(super) struct LbPlan {
    pub services: Vec<Service>,
    pub service_cidr: Ipv4Net,
    pub port_forwards: Vec<PortForward>,
    pub dataplane: Dataplane,
}

/// Resolves a `health` setting for the TCP ports given (the run resolver's work, handed in
/// by the caller so that this section does not reach into another).
pub(super) type HealthResolver =
    fn(&str, &HealthSpec, &[u16], &mut Vec<TopologyError>) -> Option<HealthCheck>;

/// VIPs (explicit ones first, then the next free addresses of the service CIDR, in file
/// order), algorithms, port forwards and dataplane settings. `resolve_health` checks the
/// backends of services that list them by hand.
pub(super) fn plan(
    topology: &Topology,
    networks: &[Network],
    endpoints: &[Endpoint],
    resolve_health: HealthResolver,
    errors: &mut Vec<TopologyError>,
) -> LbPlan {
    let service_cidr = service_cidr(topology, networks, errors);
    let (explicit, mut taken) = explicit_vips(topology, service_cidr, errors);
    let mut services = Vec::new();
    let mut next = service_cidr.hosts();
    for (i, (name, spec)) in topology.services.iter().enumerate() {
        let field = format!("services.{name}");
        let Some(algorithm) = algorithm(&field, spec.lb.as_deref(), errors) else {
            continue;
        };
        let frontends = match &spec.backends {
            Some(list) => listed_backends(&field, spec, list, service_cidr, resolve_health, errors),
            None => own_replicas(&field, name, spec, endpoints, errors),
        };
        let Some((ports, backends, health)) = frontends else {
            continue;
        };
        let vip = match explicit.get(name.as_str()) {
            Some(v) => *v,
            None => match next.find(|a| !taken.contains_key(a)) {
                Some(v) => {
                    taken.insert(v, format!("{field} (automatic VIP)"));
                    v
                }
                None => {
                    errors.push(TopologyError::ServiceCidrExhausted {
                        field: field.clone(),
                        cidr: service_cidr,
                    });
                    continue;
                }
            },
        };
        services.push(Service {
            name: name.clone(),
            id: i as u32 + 1,
            vip,
            ports,
            algorithm,
            backends,
            health,
        });
    }

    let port_forwards = port_forwards(topology, &services, errors);
    check_dataplane_limits(topology, &services, &port_forwards, errors);
    LbPlan {
        services,
        service_cidr,
        port_forwards,
        dataplane: dataplane(topology, errors),
    }
}

/// The VIPs the file sets, by service, and every address taken (by the field that took
/// it), so that automatic VIPs go around them.
fn explicit_vips<'a>(
    topology: &'a Topology,
    service_cidr: Ipv4Net,
    errors: &mut Vec<TopologyError>,
) -> (HashMap<&'a str, Ipv4Addr>, HashMap<Ipv4Addr, String>) {
    let mut taken: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut explicit: HashMap<&str, Ipv4Addr> = HashMap::new();
    for (name, spec) in &topology.services {
        let Some(text) = &spec.vip else { continue };
        let field = format!("services.{name}.vip");
        let Ok(vip) = Ipv4Addr::from_str(text.trim()) else {
            errors.push(TopologyError::BadAddress {
                field,
                value: text.clone(),
            });
            continue;
        };
        if !is_host_of(service_cidr, vip) {
            errors.push(TopologyError::VipOutsideServiceCidr {
                field,
                vip,
                cidr: service_cidr,
            });
            continue;
        }
        if let Some(other) = taken.get(&vip) {
            errors.push(TopologyError::DuplicateAddress {
                field,
                address: vip,
                other: other.clone(),
            });
            continue;
        }
        taken.insert(vip, field);
        explicit.insert(name.as_str(), vip);
    }
    (explicit, taken)
}

/// `lb`: round-robin unless the file names another.
fn algorithm(field: &str, lb: Option<&str>, errors: &mut Vec<TopologyError>) -> Option<Algorithm> {
    let Some(text) = lb else {
        return Some(Algorithm::RoundRobin);
    };
    let a = Algorithm::parse(text);
    if a.is_none() {
        errors.push(TopologyError::BadAlgorithm {
            field: format!("{field}.lb"),
            value: text.into(),
        });
    }
    a
}

/// A service's ports, the backends it lists by hand and their health check.
type Frontends = (Vec<Port>, Vec<ManualBackend>, Option<HealthCheck>);

/// A service that lists its backends: its own ports, the backends parsed, their check.
fn listed_backends(
    field: &str,
    spec: &ServiceSpec,
    list: &[String],
    service_cidr: Ipv4Net,
    resolve_health: HealthResolver,
    errors: &mut Vec<TopologyError>,
) -> Option<Frontends> {
    let ports = parse_ports(&format!("{field}.ports"), &spec.ports, errors);
    if ports.is_empty() {
        if spec.ports.is_empty() {
            errors.push(TopologyError::BadBackends {
                field: format!("{field}.ports"),
                what: "a service that lists backends needs ports".into(),
            });
        }
        return None;
    }
    let tcp: Vec<u16> = ports
        .iter()
        .filter(|p| p.proto == Proto::Tcp)
        .map(|p| p.port)
        .collect();
    let health = spec
        .health
        .as_ref()
        .and_then(|h| resolve_health(&format!("{field}.health"), h, &tcp, errors));
    let backends = parse_backends(
        &format!("{field}.backends"),
        list,
        &ports,
        service_cidr,
        errors,
    )?;
    Some((ports, backends, health))
}

/// A service of namespaces: the ports and check its endpoints resolved; none without
/// ports (no frontend to balance).
fn own_replicas(
    field: &str,
    name: &str,
    spec: &ServiceSpec,
    endpoints: &[Endpoint],
    errors: &mut Vec<TopologyError>,
) -> Option<Frontends> {
    // No endpoint: the service's own errors are reported already.
    let ep = endpoints.iter().find(|e| e.service == name)?;
    if ep.ports.is_empty() {
        if spec.vip.is_some() {
            errors.push(TopologyError::VipWithoutPorts {
                field: format!("{field}.vip"),
            });
        }
        return None;
    }
    Some((ep.ports.clone(), Vec::new(), ep.health.clone()))
}

/// `[dataplane]`; the mode is resolved by the caller (`netctl up --dataplane` overrides it).
fn dataplane(topology: &Topology, errors: &mut Vec<TopologyError>) -> Dataplane {
    let dataplane = Dataplane {
        socket_lb: topology.dataplane.socket_lb,
        conntrack_max: topology.dataplane.conntrack_max,
        mode: Default::default(),
        flow_events: topology.dataplane.flow_events,
    };
    if dataplane.conntrack_max < MIN_CONNTRACK {
        errors.push(TopologyError::ConntrackTooSmall {
            value: dataplane.conntrack_max,
        });
    }
    dataplane
}

/// What the eBPF dataplane's maps can hold: a Maglev table per port of a Maglev service
/// (a port forward shares its service's), and every frontend's master entry and slots in
/// `LB_SERVICES`. Found here, not by a load balancer that cannot write the 65th table.
fn check_dataplane_limits(
    topology: &Topology,
    services: &[Service],
    port_forwards: &[PortForward],
    errors: &mut Vec<TopologyError>,
) {
    let mut tables = 0usize;
    for svc in services.iter().filter(|s| s.algorithm == Algorithm::Maglev) {
        tables += svc.ports.len();
        if tables > MAGLEV_TABLES as usize {
            errors.push(TopologyError::TooManyMaglevPorts {
                field: format!("services.{}.lb", svc.name),
                count: services
                    .iter()
                    .filter(|s| s.algorithm == Algorithm::Maglev)
                    .map(|s| s.ports.len())
                    .sum(),
            });
            break;
        }
    }
    // Backends of a service of namespaces are its replicas (weight 1 until a registry
    // says otherwise); a port forward has a frontend per host address (loopback and each
    // uplink's addresses: counted as two).
    let backends = |svc: &Service| -> usize {
        if svc.backends.is_empty() {
            topology
                .services
                .get(&svc.name)
                .map_or(1, |s| s.replicas as usize)
        } else {
            svc.backends.len()
        }
    };
    let mut entries: usize = services
        .iter()
        .map(|svc| svc.ports.len() * (1 + backends(svc)))
        .sum();
    for pf in port_forwards {
        if let Some(svc) = services.iter().find(|s| s.name == pf.service) {
            entries += 2 * (1 + backends(svc));
        }
    }
    if entries > LB_SERVICES_MAX_ENTRIES as usize {
        errors.push(TopologyError::TooManyFrontendEntries {
            entries,
            max: LB_SERVICES_MAX_ENTRIES as usize,
        });
    }
}

// A frontend's slot count is a u16 (slot 0 is the master); the topology's own limits stay
// below it. Weights from a registry are scaled down to fit at run time.
const _: () = assert!(MAX_BACKENDS <= MAX_SLOTS && (MAX_REPLICAS as usize) <= MAX_SLOTS);

fn service_cidr(
    topology: &Topology,
    networks: &[Network],
    errors: &mut Vec<TopologyError>,
) -> Ipv4Net {
    let field = "platform.service_cidr";
    let text = &topology.platform.service_cidr;
    let fallback = Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).unwrap_or_default();
    let cidr = match Ipv4Net::from_str(text.trim()) {
        Ok(c) if c.trunc() == c && c.prefix_len() <= 30 => c,
        Ok(c) if c.trunc() != c => {
            errors.push(TopologyError::SubnetHostBits {
                field: field.into(),
                value: text.clone(),
                network: c.trunc().to_string(),
            });
            return fallback;
        }
        Ok(_) => {
            errors.push(TopologyError::SubnetTooSmall {
                field: field.into(),
                value: text.clone(),
            });
            return fallback;
        }
        Err(e) => {
            errors.push(TopologyError::BadCidr {
                field: field.into(),
                value: text.clone(),
                reason: e.to_string(),
            });
            return fallback;
        }
    };
    for n in networks {
        if n.subnet.contains(&cidr) || cidr.contains(&n.subnet) {
            errors.push(TopologyError::ServiceCidrOverlapsNetwork {
                cidr,
                network: n.name.clone(),
                subnet: n.subnet,
            });
        }
    }
    cidr
}

fn port_forwards(
    topology: &Topology,
    services: &[Service],
    errors: &mut Vec<TopologyError>,
) -> Vec<PortForward> {
    let mut out: Vec<PortForward> = Vec::new();
    for (i, spec) in topology.port_forwards.iter().enumerate() {
        let field = format!("port_forwards[{i}]");
        let Some(host_port) = port_number(&format!("{field}.host_port"), spec.host_port, errors)
        else {
            continue;
        };
        let proto = match spec.protocol.as_deref() {
            None => Proto::Tcp,
            Some(p) => match parse_proto(p) {
                Some(p) => p,
                None => {
                    errors.push(TopologyError::BadPortSpec {
                        field: format!("{field}.protocol"),
                        value: p.into(),
                    });
                    continue;
                }
            },
        };
        let Some(service) = services.iter().find(|s| s.name == spec.service) else {
            errors.push(TopologyError::UnknownService {
                field: format!("{field}.service"),
                service: spec.service.clone(),
                known: services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            continue;
        };
        let port = match spec.port {
            Some(p) => match port_number(&format!("{field}.port"), p, errors) {
                Some(p) => p,
                None => continue,
            },
            None => match service.ports.iter().find(|p| p.proto == proto) {
                Some(p) => p.port,
                None => 0,
            },
        };
        if !service.ports.contains(&Port { port, proto }) {
            errors.push(TopologyError::PortForwardToUnknownPort {
                field: format!("{field}.port"),
                service: service.name.clone(),
                port: Port { port, proto }.to_string(),
            });
            continue;
        }
        if out
            .iter()
            .any(|f| f.host_port == host_port && f.proto == proto)
        {
            errors.push(TopologyError::DuplicatePort {
                field: format!("{field}.host_port"),
                port: Port {
                    port: host_port,
                    proto,
                }
                .to_string(),
            });
            continue;
        }
        out.push(PortForward {
            host_port,
            proto,
            service: service.name.clone(),
            port,
        });
    }
    out
}

/// Most backends one service may list (as many as replicas).
pub const MAX_BACKENDS: usize = MAX_REPLICAS as usize;

/// `backends = ["10.0.2.10", "10.0.2.11:7000"]`; `None` when any entry is wrong (each
/// reported with its index).
fn parse_backends(
    field: &str,
    list: &[String],
    ports: &[Port],
    service_cidr: Ipv4Net,
    errors: &mut Vec<TopologyError>,
) -> Option<Vec<ManualBackend>> {
    let before = errors.len();
    if list.is_empty() {
        errors.push(TopologyError::BadBackends {
            field: field.into(),
            what: "lists no backend".into(),
        });
    }
    if list.len() > MAX_BACKENDS {
        errors.push(TopologyError::BadBackends {
            field: field.into(),
            what: format!("{} backends (at most {MAX_BACKENDS})", list.len()),
        });
    }
    let mut out: Vec<ManualBackend> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let bad = || TopologyError::BadBackend {
            field: f.clone(),
            value: text.clone(),
        };
        let (addr_text, port_text) = match text.trim().split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let Ok(addr) = Ipv4Addr::from_str(addr_text) else {
            errors.push(bad());
            continue;
        };
        let port = match port_text {
            None => None,
            Some(p) => match p.parse::<u32>() {
                Ok(n) => match port_number(&f, n, errors) {
                    Some(p) => Some(p),
                    None => continue,
                },
                Err(_) => {
                    errors.push(bad());
                    continue;
                }
            },
        };
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback()
        {
            errors.push(TopologyError::BadBackends {
                field: f,
                what: format!("{addr} is not an address a backend can have"),
            });
            continue;
        }
        if service_cidr.contains(&addr) {
            errors.push(TopologyError::BadBackends {
                field: f,
                what: format!(
                    "{addr} is in platform.service_cidr ({service_cidr}): a backend cannot be a VIP"
                ),
            });
            continue;
        }
        if port.is_some() && ports.len() != 1 {
            errors.push(TopologyError::BadBackends {
                field: f,
                what: format!(
                    "a target port needs a service with exactly one port (it has {}); \
                     write the address alone to keep each port",
                    ports.len()
                ),
            });
            continue;
        }
        let b = ManualBackend { addr, port };
        if out.contains(&b) {
            errors.push(TopologyError::BadBackends {
                field: f,
                what: format!("{b} is listed twice"),
            });
            continue;
        }
        out.push(b);
    }
    (errors.len() == before).then_some(out)
}

fn is_host_of(net: Ipv4Net, addr: Ipv4Addr) -> bool {
    net.contains(&addr) && addr != net.network() && addr != net.broadcast()
}
