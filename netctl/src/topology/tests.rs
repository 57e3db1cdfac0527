//! Parsing, planning and every validation error, without root.

use std::net::Ipv4Addr;

use super::*;

fn plan(text: &str) -> Result<Plan, Vec<TopologyError>> {
    Source {
        name: "test.toml".into(),
        text: text.into(),
    }
    .plan(None)
    .map_err(|e| e.errors)
}

fn errors(text: &str) -> Vec<TopologyError> {
    match plan(text) {
        Ok(p) => panic!("expected errors, got a plan: {p:?}"),
        Err(e) => e,
    }
}

/// One network and one service, to which each test adds the field it is about.
const BASE: &str = r#"
[networks.app]
subnet = "10.9.0.0/24"

[services.web]
network = "app"
"#;

#[test]
fn embedded_default_is_the_three_tier_platform() {
    let p = Source::embedded_default()
        .plan(None)
        .expect("default is valid");
    assert_eq!(p.instance(), "nc");
    let nets: Vec<(&str, String, Ipv4Addr)> = p
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.subnet.to_string(), n.gateway))
        .collect();
    assert_eq!(
        nets,
        vec![
            (
                "frontend",
                "172.20.0.0/24".into(),
                Ipv4Addr::new(172, 20, 0, 1)
            ),
            (
                "backend",
                "172.21.0.0/24".into(),
                Ipv4Addr::new(172, 21, 0, 1)
            ),
            (
                "database",
                "172.22.0.0/24".into(),
                Ipv4Addr::new(172, 22, 0, 1)
            ),
        ]
    );
    let tier = |svc: &str| {
        p.endpoints
            .iter()
            .filter(|e| e.service == svc)
            .map(|e| e.network.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(tier("edge"), ["frontend"]);
    assert_eq!(tier("gateway"), ["frontend"]);
    assert_eq!(tier("registry"), ["backend"]);
    assert_eq!(tier("product"), ["backend"; 3]);
    assert_eq!(tier("order"), ["backend"]);
    assert_eq!(tier("redis"), ["database"]);
    assert_eq!(tier("postgres"), ["database"]);
    for e in &p.endpoints {
        let net = p.network(&e.network).expect("network exists");
        assert!(
            net.subnet.contains(&e.address),
            "{} outside its subnet",
            e.name
        );
        assert_eq!(e.gateway, net.gateway);
        assert!(e.host_ifname.len() <= 15);
    }
}

#[test]
fn flat_example_matches_the_original_single_bridge_plan() {
    let text = include_str!("../../../examples/flat.toml");
    let p = plan(text).expect("flat example is valid");
    assert_eq!(p.networks.len(), 1);
    assert_eq!(p.networks[0].subnet.to_string(), "10.0.0.0/16");
    assert_eq!(p.networks[0].gateway, Ipv4Addr::new(10, 0, 0, 1));
    let addr = |name: &str| {
        p.endpoints
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.address.to_string())
    };
    assert_eq!(addr("edge").as_deref(), Some("10.0.0.10"));
    assert_eq!(addr("gateway").as_deref(), Some("10.0.0.20"));
    assert_eq!(addr("product-1").as_deref(), Some("10.0.0.30"));
    assert_eq!(addr("product-2").as_deref(), Some("10.0.0.31"));
    assert_eq!(addr("product-3").as_deref(), Some("10.0.0.32"));
    assert_eq!(addr("order").as_deref(), Some("10.0.0.40"));
    assert_eq!(addr("redis").as_deref(), Some("10.0.0.50"));
    assert_eq!(addr("postgres").as_deref(), Some("10.0.0.60"));
    assert_eq!(addr("registry").as_deref(), Some("10.0.0.70"));
}

#[test]
fn the_topology_docs_example_is_valid() {
    let doc = include_str!("../../../docs/topology.md");
    let start = doc
        .find("```toml\n")
        .expect("docs/topology.md has a TOML example");
    let rest = &doc[start + 8..];
    let end = rest.find("```").expect("example is closed");
    plan(&rest[..end]).expect("the docs' example validates");
}

#[test]
fn automatic_addresses_skip_the_gateway_and_explicit_ones() {
    let p = plan(
        r#"
        [networks.app]
        subnet = "10.9.0.0/29"
        [services.a]
        network = "app"
        replicas = 2
        [services.b]
        network = "app"
        address = "10.9.0.2"
        "#,
    )
    .expect("valid");
    let got: Vec<(String, String)> = p
        .endpoints
        .iter()
        .map(|e| (e.name.clone(), e.address.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a-1".into(), "10.9.0.3".into()),
            ("a-2".into(), "10.9.0.4".into()),
            ("b".into(), "10.9.0.2".into()),
        ]
    );
}

#[test]
fn names_carry_the_prefix_and_replica_number() {
    let p = Source {
        name: "t".into(),
        text: format!("{BASE}replicas = 2\n"),
    }
    .plan(Some("t7-"))
    .expect("valid");
    assert_eq!(p.instance(), "t7");
    assert_eq!(p.networks[0].bridge, "t7-app");
    assert_eq!(p.endpoints[0].netns, "t7-web-1");
    assert_eq!(p.endpoints[1].host_ifname, "t7-web-2");
}

#[test]
fn explicit_bridge_and_namespace_names_are_kept() {
    let p = plan(
        r#"
        [networks.app]
        subnet = "10.9.0.0/24"
        gateway = "10.9.0.254"
        bridge = "br-app"
        [services.web]
        network = "app"
        namespace = "web-ns"
        "#,
    )
    .expect("valid");
    assert_eq!(p.networks[0].bridge, "br-app");
    assert_eq!(p.networks[0].gateway, Ipv4Addr::new(10, 9, 0, 254));
    assert_eq!(p.endpoints[0].netns, "web-ns");
    assert_eq!(p.endpoints[0].address, Ipv4Addr::new(10, 9, 0, 1));
}

#[test]
fn syntax_errors_and_unknown_fields_are_reported() {
    assert!(matches!(
        errors("[networks.app\n")[0],
        TopologyError::Syntax(_)
    ));
    let e = errors(&format!("{BASE}colour = \"blue\"\n"));
    assert!(matches!(&e[0], TopologyError::Syntax(m) if m.contains("colour")));
}

#[test]
fn empty_topology_is_an_error() {
    assert_eq!(
        errors("[networks.app]\nsubnet = \"10.9.0.0/24\"\n"),
        vec![TopologyError::Empty]
    );
}

#[test]
fn bad_cidr_names_the_field() {
    let e = errors("[networks.app]\nsubnet = \"10.9.0.0/33\"\n[services.web]\nnetwork = \"app\"\n");
    assert!(
        matches!(&e[0], TopologyError::BadCidr { field, .. } if field == "networks.app.subnet"),
        "{e:?}"
    );
    let e = errors("[networks.app]\nsubnet = \"ten\"\n[services.web]\nnetwork = \"app\"\n");
    assert!(matches!(&e[0], TopologyError::BadCidr { .. }));
}

#[test]
fn subnet_with_host_bits_or_too_small_is_an_error() {
    let e = errors("[networks.app]\nsubnet = \"10.9.0.5/24\"\n[services.web]\nnetwork = \"app\"\n");
    assert!(
        matches!(&e[0], TopologyError::SubnetHostBits { network, .. } if network == "10.9.0.0/24")
    );
    let e = errors("[networks.app]\nsubnet = \"10.9.0.4/31\"\n[services.web]\nnetwork = \"app\"\n");
    assert!(matches!(&e[0], TopologyError::SubnetTooSmall { .. }));
}

#[test]
fn overlapping_subnets_are_an_error() {
    let e = errors(
        r#"
        [networks.a]
        subnet = "10.9.0.0/16"
        [networks.b]
        subnet = "10.9.4.0/24"
        [services.web]
        network = "a"
        "#,
    );
    assert!(
        e.iter().any(
            |e| matches!(e, TopologyError::OverlappingSubnets { a, b, .. } if a == "a" && b == "b")
        ),
        "{e:?}"
    );
}

#[test]
fn gateway_must_be_a_host_of_the_subnet() {
    for gw in ["10.8.0.1", "10.9.0.0", "10.9.0.255"] {
        let e = errors(&format!(
            "[networks.app]\nsubnet = \"10.9.0.0/24\"\ngateway = \"{gw}\"\n[services.web]\nnetwork = \"app\"\n"
        ));
        assert!(
            matches!(&e[0], TopologyError::GatewayNotInSubnet { field, .. } if field == "networks.app.gateway"),
            "{gw}: {e:?}"
        );
    }
}

#[test]
fn address_outside_its_subnet_is_an_error() {
    let e = errors(&format!("{BASE}address = \"10.10.0.5\"\n"));
    assert!(
        matches!(&e[0], TopologyError::AddressOutsideSubnet { field, network, .. }
            if field == "services.web.address" && network == "app"),
        "{e:?}"
    );
    // The third replica of .253 would be the broadcast address.
    let e = errors(&format!("{BASE}address = \"10.9.0.253\"\nreplicas = 3\n"));
    assert!(
        matches!(
            &e[0],
            TopologyError::AddressReserved {
                what: "broadcast address",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn duplicate_addresses_are_an_error() {
    let e = errors(
        r#"
        [networks.app]
        subnet = "10.9.0.0/24"
        [services.a]
        network = "app"
        address = "10.9.0.7"
        [services.b]
        network = "app"
        address = "10.9.0.6"
        replicas = 2
        "#,
    );
    assert!(
        matches!(&e[0], TopologyError::DuplicateAddress { address, other, .. }
            if *address == Ipv4Addr::new(10, 9, 0, 7) && other == "services.a.address"),
        "{e:?}"
    );
    // The gateway is taken too.
    let e = errors(&format!("{BASE}address = \"10.9.0.1\"\n"));
    assert!(
        matches!(&e[0], TopologyError::DuplicateAddress { other, .. } if other == "networks.app.gateway")
    );
}

#[test]
fn duplicate_names_are_an_error() {
    // A network and a service of the same name would both want the interface `nc-db`.
    let e = errors(
        r#"
        [networks.db]
        subnet = "10.9.0.0/24"
        [services.db]
        network = "db"
        "#,
    );
    assert!(
        matches!(&e[0], TopologyError::DuplicateName { kind: "interface", name, .. } if name == "nc-db"),
        "{e:?}"
    );
    let e = errors(
        r#"
        [networks.app]
        subnet = "10.9.0.0/24"
        [services.a]
        network = "app"
        namespace = "same"
        [services.b]
        network = "app"
        namespace = "same"
        "#,
    );
    assert!(e.iter().any(|e| matches!(
        e,
        TopologyError::DuplicateName {
            kind: "namespace",
            ..
        }
    )));
    // Duplicate service keys are rejected by the TOML parser itself.
    let e = errors(&format!("{BASE}[services.web]\nnetwork = \"app\"\n"));
    assert!(
        matches!(&e[0], TopologyError::Syntax(m) if m.contains("duplicate")),
        "{e:?}"
    );
}

#[test]
fn interface_names_over_15_bytes_are_an_error() {
    let e = errors(
        r#"
        [networks.app]
        subnet = "10.9.0.0/24"
        [services.inventory-service]
        network = "app"
        "#,
    );
    assert!(
        matches!(&e[0], TopologyError::NameTooLong { name, len: 20, .. } if name == "nc-inventory-service"),
        "{e:?}"
    );
    let long_bridge = "[networks.app]\nsubnet = \"10.9.0.0/24\"\nbridge = \"a-very-long-bridge\"\n[services.web]\nnetwork = \"app\"\n";
    assert!(
        matches!(&errors(long_bridge)[0], TopologyError::NameTooLong { field, .. } if field == "networks.app.bridge")
    );
}

#[test]
fn unknown_network_is_an_error() {
    let e = errors("[networks.app]\nsubnet = \"10.9.0.0/24\"\n[services.web]\nnetwork = \"ap\"\n");
    assert!(
        matches!(&e[0], TopologyError::UnknownNetwork { field, network, known }
            if field == "services.web.network" && network == "ap" && known == "app"),
        "{e:?}"
    );
}

#[test]
fn bad_ports_replicas_and_names_are_errors() {
    let e = errors(&format!("{BASE}ports = [80, 0, 70000]\n"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        matches!(&e[0], TopologyError::BadPort { field, value: 0 } if field == "services.web.ports[1]")
    );
    assert!(matches!(&e[1], TopologyError::BadPort { value: 70000, .. }));
    let e = errors(&format!("{BASE}replicas = 0\n"));
    assert!(matches!(&e[0], TopologyError::BadReplicas { value: 0, .. }));
    let e = errors("[networks.app]\nsubnet = \"10.9.0.0/24\"\n[services.Web]\nnetwork = \"app\"\n");
    assert!(matches!(&e[0], TopologyError::InvalidName { .. }));
    let e = Source {
        name: "t".into(),
        text: BASE.into(),
    }
    .plan(Some("a/b"))
    .map_err(|e| e.errors);
    assert!(
        matches!(&e.unwrap_err()[0], TopologyError::InvalidName { field, .. } if field == "platform.prefix")
    );
}

#[test]
fn a_full_subnet_is_an_error() {
    let e = errors(
        "[networks.app]\nsubnet = \"10.9.0.0/30\"\n[services.web]\nnetwork = \"app\"\nreplicas = 2\n",
    );
    assert!(
        matches!(&e[0], TopologyError::SubnetExhausted { .. }),
        "{e:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_the_file_name() {
    let err = Source {
        name: "broken.toml".into(),
        text: r#"
        [networks.a]
        subnet = "10.9.0.0/24"
        gateway = "10.1.0.1"
        [services.x]
        network = "nope"
        [services.y]
        network = "a"
        ports = [0]
        "#
        .into(),
    }
    .plan(None)
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("broken.toml: 3 problems"), "{text}");
    assert!(text.contains("networks.a.gateway"), "{text}");
    assert!(text.contains("services.x.network"), "{text}");
    assert!(text.contains("services.y.ports[0]"), "{text}");
}

#[test]
fn services_may_list_backends_instead_of_namespaces() {
    let p = plan(
        r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.web]
network = "app"
ports = [80]
[services.ext]
ports = [7000]
backends = ["10.9.0.2", "10.9.0.3:8000", "192.0.2.7"]
lb = "random"
"#,
    )
    .expect("valid");
    let ext = p.service("ext").expect("ext has a VIP");
    assert_eq!(
        ext.ports,
        [Port {
            port: 7000,
            proto: Proto::Tcp
        }]
    );
    assert_eq!(
        ext.backends,
        [
            ManualBackend {
                addr: Ipv4Addr::new(10, 9, 0, 2),
                port: None
            },
            ManualBackend {
                addr: Ipv4Addr::new(10, 9, 0, 3),
                port: Some(8000)
            },
            ManualBackend {
                addr: Ipv4Addr::new(192, 0, 2, 7),
                port: None
            },
        ]
    );
    assert!(
        p.endpoints.iter().all(|e| e.service != "ext"),
        "no namespace"
    );
    assert_eq!(p.dataplane.mode, DataplaneMode::Ebpf);
}

#[test]
fn bad_backend_lists_name_the_field() {
    let errs = errors(
        r#"
[networks.app]
subnet = "10.9.0.0/24"
[services.a]
ports = [80]
backends = []
[services.b]
ports = [80, 81]
backends = ["10.9.0.2:8000", "nonsense", "10.9.0.3:0", "10.96.0.9"]
[services.c]
network = "app"
ports = [80]
backends = ["10.9.0.2", "10.9.0.2"]
[services.d]
backends = ["10.9.0.4"]
[services.e]
ports = [80]
"#,
    );
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| {
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "no error with {needle:?} in {text:#?}"
        )
    };
    has("services.a.backends: lists no backend");
    has("services.b.backends[0]: a target port needs a service with exactly one port");
    has("services.b.backends[1]: \"nonsense\" is not a backend");
    has("services.b.backends[2]: 0 is not a port");
    has("services.b.backends[3]: 10.96.0.9 is in platform.service_cidr");
    has("services.c.network: a service that lists backends has no network of its own");
    has("services.c.backends[1]: 10.9.0.2 is listed twice");
    has("services.d.ports: a service that lists backends needs ports");
    has("services.e.network: missing");
}

#[test]
fn the_dataplane_mode_is_ebpf_or_iptables() {
    let p = plan(&format!("{BASE}[dataplane]\nmode = \"iptables\"\n")).expect("valid");
    assert_eq!(p.dataplane.mode, DataplaneMode::Iptables);
    let errs = errors(&format!("{BASE}[dataplane]\nmode = \"ipvs\"\n"));
    assert_eq!(
        errs[0].to_string(),
        "dataplane.mode: \"ipvs\" is not a dataplane (ebpf or iptables)"
    );
}

#[test]
fn default_platform_runs_every_service_with_a_health_check() {
    let p = Source::embedded_default()
        .plan(None)
        .expect("default is valid");
    let kind_of = |name: &str| {
        let e = p.endpoints.iter().find(|e| e.name == name).expect(name);
        (e.kind(), e.health.as_ref().map(HealthCheck::describe))
    };
    assert_eq!(
        kind_of("edge"),
        (Some(Kind::Nginx), Some("http :80/health".into()))
    );
    assert_eq!(
        kind_of("product-3"),
        (Some(Kind::Product), Some("http :5000/health".into()))
    );
    assert_eq!(
        kind_of("postgres"),
        (Some(Kind::Postgres), Some("postgres :5432".into()))
    );
    assert_eq!(
        kind_of("redis"),
        (Some(Kind::Redis), Some("redis :6379".into()))
    );
    assert_eq!(p.supervised().count(), 9, "every namespace runs something");
    assert_eq!(p.endpoints_of_kind(Kind::Product).len(), 3);
    let h = p.endpoints[0].health.as_ref().expect("edge health");
    assert_eq!((h.interval_ms, h.timeout_ms, h.retries), (500, 400, 2));
    // Load balancing checks each service's backends with that same check.
    for svc in &p.services {
        let replica = p
            .endpoints
            .iter()
            .find(|e| e.service == svc.name)
            .expect("replica");
        assert_eq!(svc.health, replica.health, "{}", svc.name);
        assert_eq!(svc.backend_check(None), replica.health, "{}", svc.name);
    }
}

/// A data tier for the built-ins that need one.
const STORES: &str = r#"
[services.redis]
network = "app"
kind = "redis"
[services.postgres]
network = "app"
kind = "postgres"
"#;

#[test]
fn a_kind_brings_its_default_port_and_health_check() {
    let p = plan(&format!(
        "[networks.app]\nsubnet = \"10.9.0.0/24\"\n[services.web]\nnetwork = \"app\"\nkind = \"product\"\n{STORES}"
    ))
    .expect("valid");
    let web = &p.endpoints[0];
    assert_eq!(web.port(), Some(5000));
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.health, Some(HealthCheck::http(5000)));
    assert_eq!(
        p.endpoints[1].health,
        Some(HealthCheck::new(Probe::Redis, 6379))
    );
    assert_eq!(p.endpoints[2].port(), Some(5432));
    assert_eq!(
        p.endpoints[2].health,
        Some(HealthCheck::new(Probe::Postgres, 5432))
    );
}

#[test]
fn the_data_store_checks_parse_and_refuse_a_path() {
    for (check, probe) in [("redis", Probe::Redis), ("postgres", Probe::Postgres)] {
        let p = plan(&format!(
            "{BASE}ports = [7000]\nhealth = {{ check = \"{check}\", interval = \"1s\" }}\n"
        ))
        .expect("valid");
        let h = p.endpoints[0].health.as_ref().expect("a check");
        assert_eq!((&h.probe, h.port, h.interval_ms), (&probe, 7000, 1000));
        assert_eq!(
            p.services[0].health.as_ref(),
            Some(h),
            "the service's check"
        );
        let e = errors(&format!(
            "{BASE}ports = [7000]\nhealth = {{ check = \"{check}\", path = \"/\" }}\n"
        ));
        assert!(
            e[0].to_string().starts_with("services.web.health.path:"),
            "{e:?}"
        );
    }
}

#[test]
fn load_balancing_checks_backends_with_the_service_setting_or_a_fast_tcp_connect() {
    let p = plan(&format!(
        "{BASE}ports = [7000, \"53/udp\"]\n\
         health = {{ check = \"http\", path = \"/ready\", interval = \"300ms\", timeout = \"100ms\", retries = 4 }}\n\
         [services.plain]\nnetwork = \"app\"\nports = [8000]\n\
         [services.dns]\nnetwork = \"app\"\nports = [\"53/udp\"]\n\
         [services.ext]\nports = [9000]\nbackends = [\"10.9.0.200:9100\", \"10.9.0.201\"]\n\
         health = {{ check = \"tcp\", retries = 5 }}\n"
    ))
    .expect("valid");
    let web = p
        .service("web")
        .expect("web")
        .backend_check(None)
        .expect("checked");
    assert_eq!(
        (web.describe(), web.interval_ms, web.timeout_ms, web.retries),
        ("http :7000/ready".to_string(), 300, 100, 4)
    );
    let plain = p.service("plain").expect("plain").backend_check(None);
    assert_eq!(plain, Some(HealthCheck::lb_default(8000)));
    assert_eq!(p.service("dns").expect("dns").backend_check(None), None);
    // A listed backend's port replaces the service's default port, timing kept.
    let ext = p.service("ext").expect("ext");
    let listed = ext.backend_check(Some(9100)).expect("checked");
    assert_eq!((listed.port, listed.retries), (9100, 5));
    assert_eq!(ext.backend_check(None).map(|c| c.port), Some(9000));
    // A listed backend's check is validated like any other.
    let e = errors(&format!(
        "{BASE}\n[services.ext]\nports = [9000]\nbackends = [\"10.9.0.200\"]\nhealth = {{ check = \"icmp\" }}\n"
    ));
    assert!(
        e[0].to_string().starts_with("services.ext.health.check:"),
        "{e:?}"
    );
}

#[test]
fn more_maglev_ports_than_tables_are_refused_naming_the_service() {
    let mut text = String::from("[networks.app]\nsubnet = \"10.9.0.0/22\"\n");
    // 30 services of 2 ports and one of 5: 65 Maglev frontends, one more than the tables.
    for i in 0..30 {
        text.push_str(&format!(
            "[services.m{i}]\nnetwork = \"app\"\nports = [80, 81]\nlb = \"maglev\"\n"
        ));
    }
    text.push_str("[services.big]\nnetwork = \"app\"\nports = [1, 2, 3, 4, 5]\nlb = \"maglev\"\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    let msg = e[0].to_string();
    assert!(msg.starts_with("services.big.lb: 65 ports"), "{msg}");
    assert!(msg.contains("64 Maglev tables"), "{msg}");
    // 64 are fine, and other algorithms do not count.
    let fine = text.replace(
        "ports = [1, 2, 3, 4, 5]\nlb = \"maglev\"",
        "ports = [1, 2, 3, 4]\nlb = \"maglev\"",
    );
    assert!(plan(&fine).is_ok());
    let rr = text.replace(
        "ports = [1, 2, 3, 4, 5]\nlb = \"maglev\"",
        "ports = [1, 2, 3, 4, 5]",
    );
    assert!(plan(&rr).is_ok());
}

#[test]
fn frontends_that_would_not_fit_the_service_map_are_refused() {
    // 260 services x 2 ports x 256 listed backends: far more slots than LB_SERVICES holds.
    let backends: Vec<String> = (0..256)
        .map(|i| format!("\"10.50.{}.{}\"", i / 200, 1 + i % 200))
        .collect();
    let mut text = String::new();
    for i in 0..260 {
        text.push_str(&format!(
            "[services.s{i}]\nports = [80, 81]\nbackends = [{}]\n",
            backends.join(", ")
        ));
    }
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|e| e.to_string().contains("entries of the LB_SERVICES map")),
        "{e:?}"
    );
}

#[test]
fn socket_lb_off_warns_that_the_host_has_no_path_to_services() {
    let on = plan(&format!("{BASE}ports = [80]\n")).expect("valid");
    assert!(on.warnings().is_empty());
    let off = plan(&format!(
        "{BASE}ports = [80]\n[dataplane]\nsocket_lb = false\n[[port_forwards]]\nhost_port = 8080\nservice = \"web\"\n"
    ))
    .expect("valid");
    let w = off.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("dataplane.socket_lb = false:"), "{}", w[0]);
    assert!(w[0].contains("localhost:8080"), "{}", w[0]);
    let mut iptables = off.clone();
    iptables.dataplane.mode = DataplaneMode::Iptables;
    assert!(
        iptables.warnings().is_empty(),
        "iptables serves the host itself"
    );
}

#[test]
fn a_command_with_env_and_an_explicit_check_is_resolved() {
    let p = plan(&format!(
        "{BASE}ports = [8000]\ncommand = [\"/usr/bin/python3\", \"-m\", \"http.server\"]\n\
         env = {{ A_B = \"1\", _x = \"y\" }}\n\
         health = {{ check = \"http\", path = \"/\", interval = \"500ms\", timeout = \"200ms\", retries = 5 }}\n"
    ))
    .expect("valid");
    let web = &p.endpoints[0];
    let run = web.run.as_ref().expect("runs something");
    assert_eq!(
        run.program,
        Program::Command(vec![
            "/usr/bin/python3".into(),
            "-m".into(),
            "http.server".into()
        ])
    );
    assert_eq!(run.env.get("A_B").map(String::as_str), Some("1"));
    assert_eq!(
        web.health,
        Some(HealthCheck {
            probe: Probe::Http { path: "/".into() },
            port: 8000,
            interval_ms: 500,
            timeout_ms: 200,
            retries: 5,
        })
    );
    // Nothing to run and no check: a bare namespace, as before.
    let p = plan(BASE).expect("valid");
    assert_eq!(
        (p.endpoints[0].run.as_ref(), p.endpoints[0].health.as_ref()),
        (None, None)
    );
}

#[test]
fn bad_run_fields_name_their_field() {
    let cases: &[(&str, &str)] = &[
        ("kind = \"mysql\"\n", "services.web.kind"),
        ("kind = \"redis\"\ncommand = [\"x\"]\n", "services.web"),
        ("command = []\n", "services.web.command"),
        ("command = [\"\"]\n", "services.web.command"),
        (
            "command = [\"x\"]\nenv = { 1A = \"x\" }\n",
            "services.web.env.1A",
        ),
        (
            "command = [\"x\"]\nenv = { \"A-B\" = \"x\" }\n",
            "services.web.env.A-B",
        ),
    ];
    for (extra, field) in cases {
        let e = errors(&format!("{BASE}{extra}"));
        assert_eq!(e.len(), 1, "{extra}: {e:?}");
        assert!(
            e[0].to_string().starts_with(&format!("{field}:")),
            "{extra}: {}",
            e[0]
        );
    }
}

#[test]
fn bad_health_checks_name_their_field() {
    let cases: &[(&str, &str)] = &[
        ("check = \"icmp\"", "services.web.health.check"),
        (
            "check = \"http\", path = \"health\"",
            "services.web.health.path",
        ),
        (
            "check = \"http\", path = \"/a b\"",
            "services.web.health.path",
        ),
        ("check = \"tcp\", path = \"/\"", "services.web.health.path"),
        ("check = \"tcp\", port = 0", "services.web.health.port"),
        ("check = \"tcp\", port = 70000", "services.web.health.port"),
        (
            "check = \"tcp\", interval = \"2\"",
            "services.web.health.interval",
        ),
        (
            "check = \"tcp\", interval = \"50ms\", timeout = \"20ms\"",
            "services.web.health.interval",
        ),
        (
            "check = \"tcp\", timeout = \"fast\"",
            "services.web.health.timeout",
        ),
        (
            "check = \"tcp\", interval = \"1s\", timeout = \"2s\"",
            "services.web.health.timeout",
        ),
        (
            "check = \"tcp\", timeout = \"1ms\"",
            "services.web.health.timeout",
        ),
        (
            "check = \"tcp\", retries = 0",
            "services.web.health.retries",
        ),
    ];
    for (h, field) in cases {
        let e = errors(&format!("{BASE}ports = [80]\nhealth = {{ {h} }}\n"));
        assert_eq!(e.len(), 1, "{h}: {e:?}");
        assert!(
            e[0].to_string().starts_with(&format!("{field}:")),
            "{h}: {}",
            e[0]
        );
    }
    // No ports to default to.
    let e = errors(&format!("{BASE}health = {{ check = \"tcp\" }}\n"));
    assert!(
        e[0].to_string().starts_with("services.web.health.port:"),
        "{e:?}"
    );
    // Unknown keys in the table are syntax errors naming the key.
    let e = errors(&format!(
        "{BASE}health = {{ check = \"tcp\", every = \"1s\" }}\n"
    ));
    assert!(
        matches!(&e[0], TopologyError::Syntax(m) if m.contains("every")),
        "{e:?}"
    );
}

#[test]
fn built_ins_need_their_dependencies_once() {
    let net = "[networks.app]\nsubnet = \"10.9.0.0/24\"\n";
    // A product service without its data stores.
    let e = errors(&format!(
        "{net}[services.web]\nnetwork = \"app\"\nkind = \"product\"\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|e| matches!(e, TopologyError::MissingDependency { field, .. } if field == "services.web.kind")));
    assert!(e[0].to_string().contains("\"postgres\""), "{}", e[0]);
    // Two of a kind.
    let e = errors(&format!(
        "{net}{STORES}[services.cache2]\nnetwork = \"app\"\nkind = \"redis\"\n"
    ));
    assert!(
        matches!(&e[0], TopologyError::DuplicateKind { field, other, .. }
            if field == "services.cache2.kind" && other == "services.redis"),
        "{e:?}"
    );
    // Data stores run once.
    let e = errors(&format!(
        "{net}[services.redis]\nnetwork = \"app\"\nkind = \"redis\"\nreplicas = 2\n"
    ));
    assert!(
        matches!(&e[0], TopologyError::KindSingleReplica { field, .. } if field == "services.redis.replicas"),
        "{e:?}"
    );
    // A gateway discovers through a registry, unless both upstreams are fixed.
    let gw = format!("{net}[services.gw]\nnetwork = \"app\"\nkind = \"gateway\"\n");
    let e = errors(&gw);
    assert!(e[0].to_string().contains("registry"), "{e:?}");
    plan(&format!(
        "{gw}env = {{ PRODUCT_URL = \"http://10.9.0.9:5000\", ORDER_URL = \"http://10.9.0.9:5001\" }}\n"
    ))
    .expect("fixed upstreams need no registry");
    plan(&format!(
        "{gw}[services.reg]\nnetwork = \"app\"\nkind = \"registry\"\n"
    ))
    .expect("with a registry");
}

#[test]
fn run_fields_survive_the_state_file() {
    let p = Source::embedded_default().plan(None).expect("valid");
    let text = serde_json::to_string(&p).expect("serializes");
    let back: Plan = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, p);
    // A state file written before these fields existed still loads.
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for e in v["endpoints"].as_array_mut().expect("endpoints") {
        let e = e.as_object_mut().expect("object");
        e.remove("run");
        e.remove("health");
    }
    let old: Plan = serde_json::from_value(v).expect("old state loads");
    assert!(old.endpoints.iter().all(|e| e.run.is_none()));
}

/// The first error's text starts with `field:` (the TOML path the user must fix).
fn first_names(text: &str, field: &str) -> TopologyError {
    let e = errors(text);
    assert!(
        e[0].to_string().starts_with(&format!("{field}:")),
        "expected an error naming {field}, got {e:?}"
    );
    e[0].clone()
}

#[test]
fn a_vip_outside_the_service_cidr_is_an_error() {
    let e = first_names(
        &format!("{BASE}ports = [80]\nvip = \"10.1.2.3\"\n"),
        "services.web.vip",
    );
    assert!(
        matches!(e, TopologyError::VipOutsideServiceCidr { vip, .. } if vip == Ipv4Addr::new(10, 1, 2, 3)),
        "{e:?}"
    );
    // The network and broadcast addresses of the CIDR are not hosts either.
    let e = first_names(
        &format!(
            "[platform]\nservice_cidr = \"10.96.0.0/24\"\n{BASE}ports = [80]\nvip = \"10.96.0.255\"\n"
        ),
        "services.web.vip",
    );
    assert!(
        matches!(e, TopologyError::VipOutsideServiceCidr { .. }),
        "{e:?}"
    );
}

#[test]
fn a_vip_without_ports_is_an_error() {
    let e = first_names(&format!("{BASE}vip = \"10.96.0.9\"\n"), "services.web.vip");
    assert!(matches!(e, TopologyError::VipWithoutPorts { .. }), "{e:?}");
}

#[test]
fn a_bad_lb_algorithm_is_an_error() {
    let e = first_names(
        &format!("{BASE}ports = [80]\nlb = \"least-conn\"\n"),
        "services.web.lb",
    );
    assert!(
        matches!(&e, TopologyError::BadAlgorithm { value, .. } if value == "least-conn"),
        "{e:?}"
    );
    assert!(e.to_string().contains("round-robin, random, maglev"), "{e}");
}

#[test]
fn a_duplicate_port_is_an_error() {
    let e = first_names(
        &format!("{BASE}ports = [80, \"80/tcp\"]\n"),
        "services.web.ports[1]",
    );
    assert!(matches!(e, TopologyError::DuplicatePort { .. }), "{e:?}");
    // The same number over UDP is another port.
    plan(&format!("{BASE}ports = [53, \"53/udp\"]\n")).expect("tcp and udp 53");
}

#[test]
fn a_bad_port_spec_is_an_error() {
    for spec in ["80/sctp", "http", "80/"] {
        let e = first_names(
            &format!("{BASE}ports = [\"{spec}\"]\n"),
            "services.web.ports[0]",
        );
        assert!(
            matches!(&e, TopologyError::BadPortSpec { value, .. } if value == spec),
            "{spec}: {e:?}"
        );
    }
}

#[test]
fn port_forwards_to_an_unknown_service_or_port_are_errors() {
    let e = first_names(
        &format!("{BASE}ports = [80]\n[[port_forwards]]\nhost_port = 8080\nservice = \"webb\"\n"),
        "port_forwards[0].service",
    );
    assert!(
        matches!(&e, TopologyError::UnknownService { service, known, .. } if service == "webb" && known == "web"),
        "{e:?}"
    );
    let e = first_names(
        &format!(
            "{BASE}ports = [80]\n[[port_forwards]]\nhost_port = 8080\nservice = \"web\"\nport = 81\n"
        ),
        "port_forwards[0].port",
    );
    assert!(
        matches!(&e, TopologyError::PortForwardToUnknownPort { port, .. } if port == "81/tcp"),
        "{e:?}"
    );
    // A UDP forward to a service with only TCP ports.
    let e = first_names(
        &format!(
            "{BASE}ports = [80]\n[[port_forwards]]\nhost_port = 8080\nservice = \"web\"\nprotocol = \"udp\"\n"
        ),
        "port_forwards[0].port",
    );
    assert!(
        matches!(e, TopologyError::PortForwardToUnknownPort { .. }),
        "{e:?}"
    );
}

#[test]
fn an_exhausted_service_cidr_is_an_error() {
    // A /30 has two host addresses: the third service has no VIP.
    let mut text = String::from(
        "[platform]\nservice_cidr = \"10.96.0.0/30\"\n[networks.app]\nsubnet = \"10.9.0.0/24\"\n",
    );
    for name in ["a", "b", "c"] {
        text.push_str(&format!(
            "[services.{name}]\nnetwork = \"app\"\nports = [80]\n"
        ));
    }
    let e = first_names(&text, "services.c");
    assert!(
        matches!(e, TopologyError::ServiceCidrExhausted { .. }),
        "{e:?}"
    );
}

#[test]
fn a_service_cidr_overlapping_a_network_names_the_service_cidr() {
    let e = first_names(
        &format!("[platform]\nservice_cidr = \"10.9.0.0/16\"\n{BASE}ports = [80]\n"),
        "platform.service_cidr",
    );
    assert!(
        matches!(&e, TopologyError::ServiceCidrOverlapsNetwork { network, .. } if network == "app"),
        "{e:?}"
    );
    assert!(e.to_string().contains("networks.app.subnet"), "{e}");
}

#[test]
fn a_conntrack_table_too_small_is_an_error() {
    let e = first_names(
        &format!("{BASE}[dataplane]\nconntrack_max = 10\n"),
        "dataplane.conntrack_max",
    );
    assert!(
        matches!(e, TopologyError::ConntrackTooSmall { value: 10 }),
        "{e:?}"
    );
    plan(&format!(
        "{BASE}[dataplane]\nconntrack_max = {}\n",
        error::MIN_CONNTRACK
    ))
    .expect("the minimum is enough");
}

#[test]
fn a_malformed_address_is_an_error() {
    let e = first_names(
        &format!("{BASE}address = \"10.1.0.300\"\n"),
        "services.web.address",
    );
    assert!(
        matches!(&e, TopologyError::BadAddress { value, .. } if value == "10.1.0.300"),
        "{e:?}"
    );
    let e = first_names(
        &format!("{BASE}ports = [80]\nvip = \"10.96.0.300\"\n"),
        "services.web.vip",
    );
    assert!(matches!(e, TopologyError::BadAddress { .. }), "{e:?}");
}
