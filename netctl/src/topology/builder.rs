//! Topologies written in code, for tests: unit tests and the integration suite build the
//! small platforms they need with this instead of pasting TOML into each test, so a
//! renamed field is a compile error in one place rather than a parse failure in twenty.
//!
//! ```
//! use netctl::topology::builder::TopologyBuilder;
//!
//! let topology = TopologyBuilder::new()
//!     .network("front", "10.0.1.0/24")
//!     .network("back", "10.0.2.0/24")
//!     .service("client", |s| s.network("front").address("10.0.1.10"))
//!     .service("web", |s| {
//!         s.network("back")
//!             .address("10.0.2.10")
//!             .replicas(3)
//!             .ports(&["7000", "7001/udp"])
//!             .lb("maglev")
//!     })
//!     .socket_lb(false)
//!     .build();
//! assert_eq!(topology.services["web"].replicas, 3);
//! ```

use super::{
    Plan, ValidationErrors,
    health::HealthSpec,
    model::{
        NetworkSpec, PortForwardSpec, PortSpec, RateLimitSpec, RuleSpec, ServiceSpec, Topology,
    },
    validate,
};

/// Builds a [`Topology`] as a file would hold it; everything not set keeps the file's
/// default.
#[derive(Debug, Clone, Default)]
pub struct TopologyBuilder(Topology);

impl TopologyBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `[networks.NAME]` with `subnet`.
    pub fn network(mut self, name: &str, subnet: &str) -> Self {
        self.0.networks.insert(
            name.to_string(),
            NetworkSpec {
                subnet: subnet.to_string(),
                gateway: None,
                bridge: None,
            },
        );
        self
    }

    /// `[services.NAME]`, shaped by `f`.
    pub fn service(mut self, name: &str, f: impl FnOnce(ServiceBuilder) -> ServiceBuilder) -> Self {
        let spec = f(ServiceBuilder::default()).0;
        self.0.services.insert(name.to_string(), spec);
        self
    }

    /// `[dataplane] socket_lb`.
    pub fn socket_lb(mut self, on: bool) -> Self {
        self.0.dataplane.socket_lb = on;
        self
    }

    /// `[dataplane] conntrack_max`.
    pub fn conntrack_max(mut self, entries: u32) -> Self {
        self.0.dataplane.conntrack_max = entries;
        self
    }

    /// `[dataplane] mode`: `ebpf` or `iptables`.
    pub fn mode(mut self, mode: &str) -> Self {
        self.0.dataplane.mode = mode.to_string();
        self
    }

    /// `[platform] uplinks`.
    pub fn uplinks(mut self, uplinks: &[&str]) -> Self {
        self.0.platform.uplinks = Some(uplinks.iter().map(|u| u.to_string()).collect());
        self
    }

    /// `[[port_forwards]]`: `host_port` to `service`'s `port` (TCP).
    pub fn port_forward(mut self, host_port: u32, service: &str, port: u32) -> Self {
        self.0.port_forwards.push(PortForwardSpec {
            host_port,
            service: service.to_string(),
            port: Some(port),
            protocol: None,
        });
        self
    }

    /// `[policy] default_deny`.
    pub fn default_deny(mut self, services: &[&str]) -> Self {
        self.0.policy.default_deny = strings(services);
        self
    }

    /// `[[policy.rules]]`: allow `from` to reach `to` on `ports` (all ports when empty).
    pub fn allow(self, from: &[&str], to: &str, ports: &[&str]) -> Self {
        self.rule(None, from, to, ports)
    }

    /// `[[policy.rules]]` with `action = "deny"`.
    pub fn deny(self, from: &[&str], to: &str, ports: &[&str]) -> Self {
        self.rule(Some("deny"), from, to, ports)
    }

    fn rule(mut self, action: Option<&str>, from: &[&str], to: &str, ports: &[&str]) -> Self {
        self.0.policy.rules.push(RuleSpec {
            from: Some(strings(from)),
            to: to.to_string(),
            ports: (!ports.is_empty()).then(|| ports.iter().map(|p| port(p)).collect()),
            action: action.map(String::from),
        });
        self
    }

    /// `[[policy.rate_limits]]`: `rate` (e.g. `"60/m"`) with `burst`, per source address;
    /// `from` empty: any source without a limit of its own.
    pub fn rate_limit(self, from: &[&str], to: &str, rate: &str, burst: u32) -> Self {
        self.limit(None, from, to, rate, burst)
    }

    /// A rate limit that all replicas of each source service share (`per = "service"`).
    pub fn rate_limit_per_service(self, from: &[&str], to: &str, rate: &str, burst: u32) -> Self {
        self.limit(Some("service"), from, to, rate, burst)
    }

    fn limit(mut self, per: Option<&str>, from: &[&str], to: &str, rate: &str, burst: u32) -> Self {
        self.0.policy.rate_limits.push(RateLimitSpec {
            from: (!from.is_empty()).then(|| strings(from)),
            to: to.to_string(),
            rate: rate.to_string(),
            burst,
            per: per.map(String::from),
        });
        self
    }

    /// Validates it into a plan, as `up` would a file.
    pub fn plan(&self) -> Result<Plan, ValidationErrors> {
        validate::validate(&self.0).map_err(|errors| ValidationErrors {
            source_name: "<built topology>".to_string(),
            errors,
        })
    }

    pub fn build(self) -> Topology {
        self.0
    }

    /// The topology as a file (what `netctl up -f` reads).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&self.0)
    }
}

/// One `[services.NAME]` table.
#[derive(Debug, Clone)]
pub struct ServiceBuilder(ServiceSpec);

impl Default for ServiceBuilder {
    fn default() -> Self {
        Self(ServiceSpec {
            network: None,
            address: None,
            replicas: 1,
            ports: Vec::new(),
            vip: None,
            lb: None,
            namespace: None,
            backends: None,
            kind: None,
            command: None,
            env: Default::default(),
            health: None,
        })
    }
}

impl ServiceBuilder {
    pub fn network(mut self, network: &str) -> Self {
        self.0.network = Some(network.to_string());
        self
    }

    /// The first replica's address.
    pub fn address(mut self, address: &str) -> Self {
        self.0.address = Some(address.to_string());
        self
    }

    pub fn replicas(mut self, n: u32) -> Self {
        self.0.replicas = n;
        self
    }

    /// `"7000"` (TCP) or `"53/udp"`.
    pub fn ports(mut self, ports: &[&str]) -> Self {
        self.0.ports = ports.iter().map(|p| port(p)).collect();
        self
    }

    /// Adds a TCP port.
    pub fn tcp(mut self, port: u16) -> Self {
        self.0.ports.push(PortSpec::Number(port.into()));
        self
    }

    /// Adds a UDP port.
    pub fn udp(mut self, port: u16) -> Self {
        self.0.ports.push(PortSpec::Text(format!("{port}/udp")));
        self
    }

    pub fn vip(mut self, vip: &str) -> Self {
        self.0.vip = Some(vip.to_string());
        self
    }

    /// `round-robin`, `random` or `maglev`.
    pub fn lb(mut self, algorithm: &str) -> Self {
        self.0.lb = Some(algorithm.to_string());
        self
    }

    /// Backends listed by hand (`"10.0.2.10"` or `"10.0.2.10:7000"`), no namespace.
    pub fn backends(mut self, backends: &[&str]) -> Self {
        self.0.backends = Some(strings(backends));
        self
    }

    /// A built-in program: `registry`, `gateway`, `product`, `order`, `redis`, ...
    pub fn kind(mut self, kind: &str) -> Self {
        self.0.kind = Some(kind.to_string());
        self
    }

    pub fn command(mut self, argv: &[&str]) -> Self {
        self.0.command = Some(strings(argv));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.0.env.insert(key.to_string(), value.to_string());
        self
    }

    /// `health = { check, ... }`, e.g. `health(HealthSpec::check("http"))`.
    pub fn health(mut self, health: HealthSpec) -> Self {
        self.0.health = Some(health);
        self
    }
}

impl HealthSpec {
    /// `{ check = KIND }` with every other field at its default.
    pub fn check(kind: &str) -> Self {
        Self {
            check: kind.to_string(),
            port: None,
            path: None,
            interval: None,
            timeout: None,
            retries: None,
        }
    }

    /// A fast check for tests: `interval` and `timeout` as written (`"200ms"`), `retries`.
    pub fn every(mut self, interval: &str, timeout: &str, retries: u32) -> Self {
        self.interval = Some(interval.to_string());
        self.timeout = Some(timeout.to_string());
        self.retries = Some(retries);
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_string());
        self
    }
}

/// A number is a TCP port; anything else (`"53/udp"`) is written as text, as a file would.
fn port(p: &str) -> PortSpec {
    match p.parse::<u32>() {
        Ok(n) => PortSpec::Number(n),
        Err(_) => PortSpec::Text(p.to_string()),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    fn web() -> TopologyBuilder {
        TopologyBuilder::new()
            .network("front", "10.0.1.0/24")
            .network("back", "10.0.2.0/24")
            .service("client", |s| s.network("front").address("10.0.1.10"))
            .service("web", |s| {
                s.network("back")
                    .address("10.0.2.10")
                    .replicas(3)
                    .ports(&["7000", "7001/udp"])
                    .lb("maglev")
                    .health(HealthSpec::check("http").every("200ms", "150ms", 2))
            })
            .socket_lb(false)
            .allow(&["client"], "web", &["7000"])
            .rate_limit(&["client"], "web", "600/m", 20)
    }

    #[test]
    fn a_built_topology_equals_the_same_file_parsed() {
        let file = r#"
[networks.front]
subnet = "10.0.1.0/24"
[networks.back]
subnet = "10.0.2.0/24"
[services.client]
network = "front"
address = "10.0.1.10"
[services.web]
network = "back"
address = "10.0.2.10"
replicas = 3
ports = [7000, "7001/udp"]
lb = "maglev"
health = { check = "http", interval = "200ms", timeout = "150ms", retries = 2 }
[dataplane]
socket_lb = false
[[policy.rules]]
from = ["client"]
to = "web"
ports = [7000]
[[policy.rate_limits]]
from = ["client"]
to = "web"
rate = "600/m"
burst = 20
"#;
        let parsed = Topology::parse(file).expect("the file parses");
        assert_eq!(web().build(), parsed);
    }

    #[test]
    fn its_toml_reads_back_as_the_same_topology_and_plans() {
        let b = web();
        let text = b.to_toml().expect("serializes");
        assert_eq!(
            Topology::parse(&text).expect("reads back"),
            b.clone().build()
        );
        let plan = Source {
            text,
            name: "built".into(),
        }
        .plan(None)
        .expect("a valid topology");
        assert_eq!(plan.endpoints.len(), 4);
    }
}
