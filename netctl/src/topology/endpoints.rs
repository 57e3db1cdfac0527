//! Resolves `[networks]` and the namespaces of `[services]` into the plan's networks and
//! endpoints: bridges, namespace and interface names, addresses, each claimed once.

use std::{collections::HashMap, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;

use super::{
    error::{MAX_IFNAME_LEN, MAX_REPLICAS, TopologyError},
    model::{ServiceSpec, Topology},
    plan::{Endpoint, Network, Port, ResolvedRun},
    ports::parse_ports,
};

/// Resolves what runs in service `name`'s namespaces, given its valid ports.
pub(super) type RunResolver =
    fn(&str, &ServiceSpec, Vec<Port>, &mut Vec<TopologyError>) -> ResolvedRun;

/// A service between the two passes of [`Claims::endpoints`]: explicit addresses claimed,
/// automatic ones still to hand out.
struct Pending<'a> {
    name: String,
    spec: &'a ServiceSpec,
    network: &'a Network,
    addrs: Vec<Option<Ipv4Addr>>,
    resolved: ResolvedRun,
}

/// What the networks and namespaces have claimed so far, and what went wrong.
#[derive(Default)]
pub(super) struct Claims {
    pub errors: Vec<TopologyError>,
    /// Interface names on the host -> the field that claimed them.
    ifnames: HashMap<String, String>,
    /// Namespace names -> the field that claimed them.
    netns_names: HashMap<String, String>,
    /// Addresses -> what claimed them (a field, or a gateway).
    addresses: HashMap<Ipv4Addr, String>,
}

impl Claims {
    pub(super) fn check_prefix(&mut self, prefix: &str) {
        if let Some(reason) = name_problem(prefix, true) {
            self.errors.push(TopologyError::InvalidName {
                field: "platform.prefix".into(),
                name: prefix.into(),
                reason,
            });
        }
    }

    pub(super) fn networks(&mut self, topology: &Topology) -> Vec<Network> {
        let prefix = &topology.platform.prefix;
        let mut out: Vec<Network> = Vec::new();
        for (name, spec) in &topology.networks {
            let field = format!("networks.{name}");
            self.check_name(&format!("{field} (name)"), name);
            let Some(subnet) = self.subnet(&format!("{field}.subnet"), &spec.subnet) else {
                continue;
            };
            let gateway = match &spec.gateway {
                Some(text) => match self.address(&format!("{field}.gateway"), text) {
                    Some(gw) if is_host_of(subnet, gw) => gw,
                    Some(gw) => {
                        self.errors.push(TopologyError::GatewayNotInSubnet {
                            field: format!("{field}.gateway"),
                            gateway: gw,
                            subnet,
                        });
                        continue;
                    }
                    None => continue,
                },
                None => first_host(subnet),
            };
            let bridge = spec
                .bridge
                .clone()
                .unwrap_or_else(|| format!("{prefix}{name}"));
            self.claim_ifname(&format!("{field}.bridge"), &bridge);
            self.claim_address(&format!("{field}.gateway"), gateway);
            out.push(Network {
                name: name.to_string(),
                bridge,
                subnet,
                gateway,
            });
        }
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                if a.subnet.contains(&b.subnet) || b.subnet.contains(&a.subnet) {
                    self.errors.push(TopologyError::OverlappingSubnets {
                        a: a.name.clone(),
                        subnet_a: a.subnet,
                        b: b.name.clone(),
                        subnet_b: b.subnet,
                    });
                }
            }
        }
        out
    }

    /// Every service's namespaces, one per replica; `resolve_run` resolves what runs in
    /// them (handed in by the caller, so that this section does not reach into another).
    pub(super) fn endpoints(
        &mut self,
        topology: &Topology,
        networks: &[Network],
        resolve_run: RunResolver,
    ) -> Vec<Endpoint> {
        // Explicit addresses first, so automatic ones never take an address a later
        // service asked for.
        let pending: Vec<Pending> = topology
            .services
            .iter()
            .filter_map(|(name, spec)| self.pend(topology, networks, name, spec, resolve_run))
            .collect();
        let mut out = Vec::new();
        for p in pending {
            self.place(topology, p, &mut out);
        }
        out
    }

    /// The first pass over one service: its checks, its explicit addresses claimed, what
    /// runs there resolved; `None` when it has no namespaces (or errors say why not).
    fn pend<'a>(
        &mut self,
        topology: &Topology,
        networks: &'a [Network],
        name: &str,
        spec: &'a ServiceSpec,
        resolve_run: RunResolver,
    ) -> Option<Pending<'a>> {
        let field = format!("services.{name}");
        self.check_name(&format!("{field} (name)"), name);
        if spec.backends.is_some() {
            // A VIP over listed addresses: no namespace, nothing on a network.
            self.check_manual(&field, spec);
            return None;
        }
        let Some(spec_network) = &spec.network else {
            self.errors.push(TopologyError::MissingNetwork {
                field: format!("{field}.network"),
            });
            return None;
        };
        let replicas = spec.replicas;
        if replicas == 0 || replicas > MAX_REPLICAS {
            self.errors.push(TopologyError::BadReplicas {
                field: format!("{field}.replicas"),
                value: replicas,
            });
            return None;
        }
        let ports = parse_ports(&format!("{field}.ports"), &spec.ports, &mut self.errors);
        let Some(network) = networks.iter().find(|n| n.name == *spec_network) else {
            // A network that failed its own checks is already reported.
            if !topology.networks.contains_key(spec_network) {
                self.errors.push(TopologyError::UnknownNetwork {
                    field: format!("{field}.network"),
                    network: spec_network.clone(),
                    known: known_list(topology.networks.keys()),
                });
            }
            return None;
        };
        let addrs = match &spec.address {
            Some(text) => self.claim_explicit(&format!("{field}.address"), text, replicas, network),
            None => vec![None; replicas as usize],
        };
        // What runs there, its check, and the kind's default port when none is listed.
        let resolved = resolve_run(name, spec, ports, &mut self.errors);
        Some(Pending {
            name: name.to_string(),
            spec,
            network,
            addrs,
            resolved,
        })
    }

    /// `address` and the addresses after it, one per replica, each claimed if it is free
    /// and on `network` (`None` where not).
    fn claim_explicit(
        &mut self,
        field: &str,
        text: &str,
        replicas: u32,
        network: &Network,
    ) -> Vec<Option<Ipv4Addr>> {
        let mut addrs = vec![None; replicas as usize];
        let Some(first) = self.address(field, text) else {
            return addrs;
        };
        for (r, slot) in addrs.iter_mut().enumerate() {
            let Some(addr) = u32::from(first).checked_add(r as u32).map(Ipv4Addr::from) else {
                break;
            };
            let what = if r == 0 {
                field.to_string()
            } else {
                format!("{field} (replica {})", r + 1)
            };
            if self.check_in_network(&what, addr, network) {
                self.claim_address(&what, addr);
                *slot = Some(addr);
            }
        }
        addrs
    }

    /// The second pass over one service: automatic addresses handed out, names claimed,
    /// one endpoint per replica.
    fn place(&mut self, topology: &Topology, pending: Pending, out: &mut Vec<Endpoint>) {
        let Pending {
            name,
            spec,
            network,
            addrs,
            resolved,
        } = pending;
        let field = format!("services.{name}");
        for (r, addr) in addrs.into_iter().enumerate() {
            let replica = r as u32 + 1;
            let address = match addr {
                Some(a) => a,
                None if spec.address.is_some() => continue, // reported above
                None => match self.next_free(network) {
                    Some(a) => {
                        self.claim_address(&format!("{field} (automatic)"), a);
                        a
                    }
                    None => {
                        self.errors.push(TopologyError::SubnetExhausted {
                            field: field.clone(),
                            network: network.name.clone(),
                            subnet: network.subnet,
                        });
                        break;
                    }
                },
            };
            let local = if spec.replicas > 1 {
                format!("{name}-{replica}")
            } else {
                name.clone()
            };
            let netns = match &spec.namespace {
                Some(ns) if spec.replicas > 1 => format!("{ns}-{replica}"),
                Some(ns) => ns.clone(),
                None => format!("{}{local}", topology.platform.prefix),
            };
            let nsfield = format!("{field}.namespace");
            self.claim_netns(&nsfield, &netns);
            // The host-side veth carries the namespace's name: `ip link` then reads like
            // the list of namespaces.
            self.claim_ifname(&nsfield, &netns);
            out.push(Endpoint {
                name: local,
                service: name.clone(),
                service_id: topology
                    .services
                    .get_index_of(&name)
                    .map_or(0, |i| i as u32 + 1),
                replica,
                netns: netns.clone(),
                host_ifname: netns,
                network: network.name.clone(),
                bridge: network.bridge.clone(),
                address,
                prefix_len: network.subnet.prefix_len(),
                gateway: network.gateway,
                ports: resolved.ports.clone(),
                run: resolved.run.clone(),
                health: resolved.health.clone(),
            });
        }
    }

    /// A service with `backends` takes none of the fields that make namespaces.
    fn check_manual(&mut self, field: &str, spec: &ServiceSpec) {
        let mut refuse = |set: bool, what: &'static str, name: &str| {
            if set {
                self.errors.push(TopologyError::BackendsWithNamespaces {
                    field: format!("{field}.{name}"),
                    what,
                });
            }
        };
        refuse(spec.network.is_some(), "network", "network");
        refuse(spec.address.is_some(), "address", "address");
        refuse(spec.replicas != 1, "replicas", "replicas");
        refuse(spec.namespace.is_some(), "namespace", "namespace");
    }

    fn subnet(&mut self, field: &str, text: &str) -> Option<Ipv4Net> {
        let net = match Ipv4Net::from_str(text.trim()) {
            Ok(net) => net,
            Err(e) => {
                self.errors.push(TopologyError::BadCidr {
                    field: field.into(),
                    value: text.into(),
                    reason: e.to_string(),
                });
                return None;
            }
        };
        if net.trunc() != net {
            self.errors.push(TopologyError::SubnetHostBits {
                field: field.into(),
                value: text.into(),
                network: net.trunc().to_string(),
            });
            return None;
        }
        if net.prefix_len() > 30 {
            self.errors.push(TopologyError::SubnetTooSmall {
                field: field.into(),
                value: text.into(),
            });
            return None;
        }
        Some(net)
    }

    fn address(&mut self, field: &str, text: &str) -> Option<Ipv4Addr> {
        match Ipv4Addr::from_str(text.trim()) {
            Ok(a) => Some(a),
            Err(_) => {
                self.errors.push(TopologyError::BadAddress {
                    field: field.into(),
                    value: text.into(),
                });
                None
            }
        }
    }

    /// True when `addr` may be given to a namespace on `network`.
    fn check_in_network(&mut self, field: &str, addr: Ipv4Addr, network: &Network) -> bool {
        let subnet = network.subnet;
        if !subnet.contains(&addr) {
            self.errors.push(TopologyError::AddressOutsideSubnet {
                field: field.into(),
                address: addr,
                network: network.name.clone(),
                subnet,
            });
            return false;
        }
        let what = if addr == subnet.network() {
            Some("network address")
        } else if addr == subnet.broadcast() {
            Some("broadcast address")
        } else {
            None
        };
        if let Some(what) = what {
            self.errors.push(TopologyError::AddressReserved {
                field: field.into(),
                address: addr,
                what,
                network: network.name.clone(),
            });
            return false;
        }
        true
    }

    fn next_free(&self, network: &Network) -> Option<Ipv4Addr> {
        network
            .subnet
            .hosts()
            .find(|a| !self.addresses.contains_key(a))
    }

    fn claim_address(&mut self, field: &str, addr: Ipv4Addr) {
        if let Some(other) = self.addresses.get(&addr) {
            self.errors.push(TopologyError::DuplicateAddress {
                field: field.into(),
                address: addr,
                other: other.clone(),
            });
        } else {
            self.addresses.insert(addr, field.into());
        }
    }

    fn claim_ifname(&mut self, field: &str, name: &str) {
        if let Some(reason) = name_problem(name, false) {
            self.errors.push(TopologyError::InvalidName {
                field: field.into(),
                name: name.into(),
                reason,
            });
            return;
        }
        if name.len() > MAX_IFNAME_LEN {
            self.errors.push(TopologyError::NameTooLong {
                field: field.into(),
                name: name.into(),
                len: name.len(),
            });
            return;
        }
        if let Some(other) = self.ifnames.get(name) {
            self.errors.push(TopologyError::DuplicateName {
                field: field.into(),
                kind: "interface",
                name: name.into(),
                other: other.clone(),
            });
        } else {
            self.ifnames.insert(name.into(), field.into());
        }
    }

    fn claim_netns(&mut self, field: &str, name: &str) {
        if let Some(other) = self.netns_names.get(name) {
            self.errors.push(TopologyError::DuplicateName {
                field: field.into(),
                kind: "namespace",
                name: name.into(),
                other: other.clone(),
            });
        } else {
            self.netns_names.insert(name.into(), field.into());
        }
    }

    fn check_name(&mut self, field: &str, name: &str) {
        if let Some(reason) = name_problem(name, false) {
            self.errors.push(TopologyError::InvalidName {
                field: field.into(),
                name: name.into(),
                reason,
            });
        }
    }
}

/// Names become interface names, namespace files and nft identifiers: keep them to
/// lowercase letters, digits and `-`/`_`.
fn name_problem(name: &str, may_be_empty: bool) -> Option<&'static str> {
    if name.is_empty() {
        return (!may_be_empty).then_some("empty");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Some("use lowercase letters, digits, '-' and '_'");
    }
    None
}

fn is_host_of(subnet: Ipv4Net, addr: Ipv4Addr) -> bool {
    subnet.contains(&addr) && addr != subnet.network() && addr != subnet.broadcast()
}

fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn known_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
