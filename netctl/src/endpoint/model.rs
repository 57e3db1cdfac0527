//! What a caller asks for ([`EndpointRequest`]) and what the agent serves ([`Endpoint`]),
//! the pure step between them ([`resolve`]: checks, address, interface name, identity),
//! and the plan the agent's components follow once endpoints are attached
//! ([`attached_plan`]).

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use netctl_common::policy::{ID_SERVICE_BASE, ID_WORLD};
use serde::{Deserialize, Serialize};

use super::ipam;
use crate::topology::{Plan, plan};

/// The label that makes an endpoint a member of a service (as `service` does).
pub const SERVICE_LABEL: &str = "netctl.service";

/// Interface names are at most this long (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
const MAX_ID_LEN: usize = 128;

/// Who made an endpoint, and so who removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// A service instance of the topology (made by `up`, removed by `down`).
    Topology,
    /// An API call (`netctl endpoint add`, or any client of the agent's socket).
    #[default]
    Api,
    /// A CNI ADD for a container.
    Cni { container_id: String },
    /// Docker's network driver.
    Docker { endpoint_id: String },
}

/// A request to attach a namespace to a network (`POST /v1/endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Unique in the instance: letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// The namespace's file: `/run/netns/NAME`, `/proc/PID/ns/net`, a runtime's path.
    pub netns: PathBuf,
    /// The interface inside the namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// A network of the topology.
    pub network: String,
    /// `None`: the agent chooses a free one.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The service it is a member of (its identity, and a backend of its VIP); also
    /// taken from the label `netctl.service`.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub owner: Owner,
}

fn default_ifname() -> String {
    plan::ENDPOINT_IFNAME.to_string()
}

/// An endpoint as the agent serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// The host end of the veth, on the network's bridge.
    pub host_ifname: String,
    pub network: String,
    pub bridge: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The namespace side's hardware address (known once plumbed).
    #[serde(default)]
    pub mac: Option<String>,
    pub service: Option<String>,
    /// The policy identity: the service's, or the world's for an endpoint of none.
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    pub owner: Owner,
}

/// One endpoint of a list (`GET /v1/endpoints`): the topology's instances and the
/// attached ones alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub id: String,
    pub network: String,
    pub address: Ipv4Addr,
    pub host_ifname: String,
    pub service: Option<String>,
    pub owner: Owner,
    pub netns: PathBuf,
}

impl Owner {
    /// `topology`, `api`, `cni` or `docker`.
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::Topology => "topology",
            Owner::Api => "api",
            Owner::Cni { .. } => "cni",
            Owner::Docker { .. } => "docker",
        }
    }
}

/// Why a request cannot be served; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint: {0}")]
    Invalid(String),
    #[error("network {0:?} is not a network of this platform")]
    UnknownNetwork(String),
    #[error("service {0:?} is not a service of this platform")]
    UnknownService(String),
    #[error("address {address} is not a host address of network {network} ({subnet})")]
    AddressOutside {
        address: Ipv4Addr,
        network: String,
        subnet: ipnet::Ipv4Net,
    },
    #[error("address {0} is already in use")]
    AddressTaken(Ipv4Addr),
    #[error("network {0} has no free address left")]
    NetworkFull(String),
    #[error("endpoint {0:?} already exists with other settings")]
    Conflict(String),
    #[error("endpoint {0:?} is one of the topology's (`netctl endpoints`): choose another id")]
    TopologyId(String),
    #[error("namespace {netns} already has an interface {ifname}: choose another ifname")]
    IfnameTaken { netns: String, ifname: String },
    #[error("no endpoint {0:?}")]
    NotFound(String),
}

impl EndpointError {
    pub fn http_status(&self) -> u16 {
        match self {
            EndpointError::NotFound(_) => 404,
            EndpointError::Conflict(_)
            | EndpointError::AddressTaken(_)
            | EndpointError::TopologyId(_)
            | EndpointError::IfnameTaken { .. } => 409,
            EndpointError::NetworkFull(_) => 507,
            _ => 400,
        }
    }
}

impl EndpointRequest {
    /// The service it asks to join: `service`, else the `netctl.service` label.
    pub fn service_name(&self) -> Option<&str> {
        self.service
            .as_deref()
            .or_else(|| self.labels.get(SERVICE_LABEL).map(String::as_str))
            .filter(|s| !s.is_empty())
    }
}

/// Checks `req` against the plan and the endpoints attached so far, and chooses what it
/// leaves open (address, host interface name). Pure: nothing is made.
pub fn resolve(
    req: &EndpointRequest,
    plan: &Plan,
    attached: &[Endpoint],
) -> Result<Endpoint, EndpointError> {
    check_id(&req.id)?;
    check_ifname(&req.ifname)?;
    // Listed beside the topology's endpoints, an attached one must not share an id.
    if plan.endpoints.iter().any(|e| e.name == req.id) {
        return Err(EndpointError::TopologyId(req.id.clone()));
    }
    if !req.netns.is_absolute() {
        return Err(EndpointError::Invalid(format!(
            "netns {} is not an absolute path",
            req.netns.display()
        )));
    }
    let network = plan
        .networks
        .iter()
        .find(|n| n.name == req.network)
        .ok_or_else(|| EndpointError::UnknownNetwork(req.network.clone()))?;
    let service = req.service_name().map(str::to_string);
    let identity = match &service {
        None => ID_WORLD,
        Some(name) => service_identity(plan, name)
            .ok_or_else(|| EndpointError::UnknownService(name.clone()))?,
    };
    let taken = taken_addresses(plan, attached);
    let address = match req.address {
        Some(a) if !ipam::is_host_address(network.subnet, a) => {
            return Err(EndpointError::AddressOutside {
                address: a,
                network: network.name.clone(),
                subnet: network.subnet,
            });
        }
        Some(a) if taken.contains(&a) => return Err(EndpointError::AddressTaken(a)),
        Some(a) => a,
        None => ipam::allocate(network.subnet, &taken)
            .ok_or_else(|| EndpointError::NetworkFull(network.name.clone()))?,
    };
    let used: HashSet<&str> = plan
        .endpoints
        .iter()
        .map(|e| e.host_ifname.as_str())
        .chain(attached.iter().map(|e| e.host_ifname.as_str()))
        .collect();
    let host_ifname = host_ifname(&plan.prefix, &req.id, &used);
    Ok(Endpoint {
        id: req.id.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        host_ifname,
        network: network.name.clone(),
        bridge: network.bridge.clone(),
        address,
        prefix_len: network.subnet.prefix_len(),
        gateway: network.gateway,
        mac: None,
        service,
        identity,
        labels: req.labels.clone(),
        owner: req.owner.clone(),
    })
}

/// Whether an attached endpoint is what `req` asks for (a repeated request succeeds).
pub fn satisfies(ep: &Endpoint, req: &EndpointRequest) -> bool {
    ep.netns == req.netns
        && ep.ifname == req.ifname
        && ep.network == req.network
        && req.address.is_none_or(|a| a == ep.address)
        && ep.service.as_deref() == req.service_name()
        && ep.labels == req.labels
        && ep.owner == req.owner
}

/// The identity of service `name`: its namespaces' or its VIP's.
fn service_identity(plan: &Plan, name: &str) -> Option<u32> {
    let id = plan
        .endpoints
        .iter()
        .find(|e| e.service == name)
        .map(|e| e.service_id)
        .or_else(|| plan.services.iter().find(|s| s.name == name).map(|s| s.id))?;
    Some(ID_SERVICE_BASE + id)
}

fn taken_addresses(plan: &Plan, attached: &[Endpoint]) -> HashSet<Ipv4Addr> {
    let mut taken: HashSet<Ipv4Addr> = plan.endpoints.iter().map(|e| e.address).collect();
    taken.extend(plan.networks.iter().map(|n| n.gateway));
    taken.extend(plan.services.iter().map(|s| s.vip));
    taken.extend(attached.iter().map(|e| e.address));
    taken
}

fn check_id(id: &str) -> Result<(), EndpointError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok_char) || id.starts_with('.') {
        return Err(EndpointError::Invalid(format!(
            "id {id:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.' (not first)"
        )));
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<(), EndpointError> {
    let ok_char = |c: char| c.is_ascii_graphic() && c != '/' && c != ':';
    if name.is_empty() || name.len() > MAX_IFNAME_LEN || !name.chars().all(ok_char) {
        return Err(EndpointError::Invalid(format!(
            "ifname {name:?} must be 1 to {MAX_IFNAME_LEN} printable characters without '/' or ':'"
        )));
    }
    Ok(())
}

/// `<prefix>x<8 hex digits of a hash of the id>`, the prefix cut so the name fits, and
/// the next hash where two ids meet on one name.
fn host_ifname(prefix: &str, id: &str, used: &HashSet<&str>) -> String {
    let head: String = prefix.chars().take(MAX_IFNAME_LEN - 9).collect();
    let mut salt = 0u32;
    loop {
        let name = format!("{head}x{:08x}", fnv1a(id, salt));
        if !used.contains(name.as_str()) {
            return name;
        }
        salt += 1;
    }
}

/// FNV-1a, 32 bits: stable across builds (the std hasher is not), for names only.
fn fnv1a(text: &str, salt: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5 ^ salt;
    for b in text.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The plan the agent's components follow: the recorded plan with every attached
/// endpoint that is a member of a service added as one of its instances, so that policy
/// (identities), flow names and metrics see them as they see the topology's.
pub fn attached_plan(recorded: &Plan, attached: &[Endpoint]) -> Plan {
    let mut plan = Plan {
        names: Default::default(),
        ..recorded.clone()
    };
    for ep in attached {
        let Some(service) = &ep.service else { continue };
        let service_id = ep.identity.saturating_sub(ID_SERVICE_BASE);
        let ports = plan
            .services
            .iter()
            .find(|s| s.name == *service)
            .map(|s| s.ports.clone())
            .unwrap_or_default();
        plan.endpoints.push(plan::Endpoint {
            name: ep.id.clone(),
            service: service.clone(),
            service_id,
            replica: 0,
            netns: ep.netns.display().to_string(),
            host_ifname: ep.host_ifname.clone(),
            network: ep.network.clone(),
            bridge: ep.bridge.clone(),
            address: ep.address,
            prefix_len: ep.prefix_len,
            gateway: ep.gateway,
            ports,
            run: None,
            health: None,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owners_kind_is_the_tag_it_is_written_with() {
        for owner in [
            Owner::Topology,
            Owner::Api,
            Owner::Cni {
                container_id: "c".into(),
            },
            Owner::Docker {
                endpoint_id: "d".into(),
            },
        ] {
            let written = serde_json::to_value(&owner).expect("serializes");
            assert_eq!(written["kind"], owner.kind(), "{owner:?}");
        }
    }
    use crate::topology::Source;

    fn plan() -> Plan {
        Source {
            text: r#"
[platform]
prefix = "ep-"
[networks.back]
subnet = "10.77.0.0/24"
[services.web]
network = "back"
ports = [8080]
"#
            .into(),
            name: "t".into(),
        }
        .plan(None)
        .expect("valid topology")
    }

    fn req(id: &str) -> EndpointRequest {
        EndpointRequest {
            id: id.into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            network: "back".into(),
            address: None,
            service: None,
            labels: BTreeMap::new(),
            owner: Owner::Api,
        }
    }

    #[test]
    fn an_endpoint_of_no_service_gets_a_free_address_and_the_world_identity() {
        let p = plan();
        let ep = resolve(&req("c1"), &p, &[]).expect("resolves");
        assert_eq!(ep.address, Ipv4Addr::new(10, 77, 0, 254));
        assert_eq!(ep.identity, ID_WORLD);
        assert_eq!(ep.gateway, p.networks[0].gateway);
        assert!(ep.host_ifname.starts_with("ep-x") && ep.host_ifname.len() <= 15);
        let second = resolve(&req("c2"), &p, std::slice::from_ref(&ep)).expect("resolves");
        assert_eq!(second.address, Ipv4Addr::new(10, 77, 0, 253));
        assert_ne!(second.host_ifname, ep.host_ifname);
    }

    #[test]
    fn a_member_of_a_service_has_its_identity_by_field_or_label() {
        let p = plan();
        let web = p
            .endpoints
            .iter()
            .find(|e| e.service == "web")
            .expect("web");
        let mut r = req("c1");
        r.service = Some("web".into());
        assert_eq!(
            resolve(&r, &p, &[]).expect("resolves").identity,
            ID_SERVICE_BASE + web.service_id
        );
        let mut r = req("c1");
        r.labels.insert(SERVICE_LABEL.into(), "web".into());
        let ep = resolve(&r, &p, &[]).expect("resolves");
        assert_eq!(ep.service.as_deref(), Some("web"));
        let merged = attached_plan(&p, std::slice::from_ref(&ep));
        assert!(merged.endpoints.iter().any(|e| e.address == ep.address));
        assert_eq!(merged.name_of(ep.address), "c1");
    }

    /// Found by schemathesis (api_schema): `{"id": "edge", "netns": "/run/netns/<edge's>",
    /// "network": "frontend"}` went on to make a veth and answered 500 (File exists).
    #[test]
    fn the_id_of_a_topology_endpoint_is_refused_with_409() {
        let p = plan();
        let topology_id = p.endpoints[0].name.clone();
        let e = resolve(&req(&topology_id), &p, &[]).expect_err("refused");
        assert_eq!(e, EndpointError::TopologyId(topology_id));
        assert_eq!(e.http_status(), 409);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let p = plan();
        let web = p.endpoints[0].address;
        let cases: Vec<(EndpointRequest, EndpointError)> = vec![
            (
                EndpointRequest {
                    id: "".into(),
                    ..req("x")
                },
                EndpointError::Invalid(String::new()),
            ),
            (
                EndpointRequest {
                    id: "a/b".into(),
                    ..req("x")
                },
                EndpointError::Invalid(String::new()),
            ),
            (
                EndpointRequest {
                    ifname: "a-very-long-interface".into(),
                    ..req("x")
                },
                EndpointError::Invalid(String::new()),
            ),
            (
                EndpointRequest {
                    netns: "relative".into(),
                    ..req("x")
                },
                EndpointError::Invalid(String::new()),
            ),
            (
                EndpointRequest {
                    network: "nope".into(),
                    ..req("x")
                },
                EndpointError::UnknownNetwork("nope".into()),
            ),
            (
                EndpointRequest {
                    service: Some("nope".into()),
                    ..req("x")
                },
                EndpointError::UnknownService("nope".into()),
            ),
            (
                EndpointRequest {
                    address: Some(Ipv4Addr::new(10, 78, 0, 5)),
                    ..req("x")
                },
                EndpointError::AddressOutside {
                    address: Ipv4Addr::new(10, 78, 0, 5),
                    network: "back".into(),
                    subnet: p.networks[0].subnet,
                },
            ),
            (
                EndpointRequest {
                    address: Some(Ipv4Addr::new(10, 77, 0, 255)),
                    ..req("x")
                },
                EndpointError::AddressOutside {
                    address: Ipv4Addr::new(10, 77, 0, 255),
                    network: "back".into(),
                    subnet: p.networks[0].subnet,
                },
            ),
            (
                EndpointRequest {
                    address: Some(web),
                    ..req("x")
                },
                EndpointError::AddressTaken(web),
            ),
        ];
        for (r, want) in cases {
            let got = resolve(&r, &p, &[]).expect_err("refused");
            match want {
                EndpointError::Invalid(_) => {
                    assert!(matches!(got, EndpointError::Invalid(_)), "{r:?}: {got}")
                }
                want => assert_eq!(got, want, "{r:?}"),
            }
            assert_eq!(
                got.http_status(),
                if matches!(got, EndpointError::AddressTaken(_)) {
                    409
                } else {
                    400
                }
            );
        }
    }

    #[test]
    fn host_interface_names_fit_and_do_not_collide() {
        let long = "a-very-long-prefix-";
        let a = host_ifname(long, "one", &HashSet::new());
        assert!(a.len() <= MAX_IFNAME_LEN, "{a}");
        let used: HashSet<&str> = [a.as_str()].into_iter().collect();
        let b = host_ifname(long, "one", &used);
        assert_ne!(a, b);
        assert_eq!(host_ifname(long, "one", &HashSet::new()), a, "stable");
    }
}
