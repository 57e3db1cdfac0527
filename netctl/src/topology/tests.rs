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
fn readme_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("README has a TOML example");
    let rest = &readme[start + 8..];
    let end = rest.find("```").expect("example is closed");
    plan(&rest[..end]).expect("README example validates");
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
