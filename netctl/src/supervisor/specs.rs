//! What to run for each endpoint of a plan, worked out without touching anything: the
//! spec of a command as the topology gives it, or of a built-in kind as [`super::builtin`]
//! configures it, then the topology's own environment on top.

use nix::sys::signal::Signal;

use super::{
    builtin,
    spec::{BASE_ENV, ProcessSpec, set},
};
use crate::topology::{Endpoint, Plan, Program};

/// Every endpoint of `plan` that runs something, in plan order. `exe` is the netctl
/// binary (for `netctl serve`).
pub fn for_plan(plan: &Plan, exe: &str) -> Vec<ProcessSpec> {
    plan.supervised()
        .filter_map(|e| for_endpoint(plan, e, exe))
        .collect()
}

pub fn for_endpoint(plan: &Plan, e: &Endpoint, exe: &str) -> Option<ProcessSpec> {
    let run = e.run.as_ref()?;
    let instance = plan.instance();
    let mut spec = ProcessSpec {
        name: e.name.clone(),
        service: e.service.clone(),
        netns: e.netns.clone(),
        address: e.address,
        port: e.port(),
        kind: run.kind(),
        argv: Vec::new(),
        env: BASE_ENV
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        secret_env: Vec::new(),
        user: None,
        stop_signal: Signal::SIGTERM,
        health: e.health.clone(),
        url: None,
        files: Vec::new(),
    };
    match &run.program {
        Program::Command(argv) => {
            spec.argv = argv.clone();
            spec.url = match (&e.health, e.port()) {
                (Some(h), _) if matches!(h.probe, crate::topology::Probe::Http { .. }) => {
                    Some(format!("http://{}:{}", e.address, h.port))
                }
                (_, Some(p)) => Some(format!("{}:{p}", e.address)),
                _ => None,
            };
        }
        Program::Builtin(kind) => builtin::configure(&mut spec, *kind, plan, e, &instance, exe),
    }
    // The file's env last: it overrides what netctl set.
    for (k, v) in &run.env {
        spec.secret_env.retain(|(name, _)| name != k);
        set(&mut spec.env, k, v);
    }
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::spec::Secret;
    use crate::topology::Source;

    fn default_specs() -> Vec<ProcessSpec> {
        let plan = Source::embedded_default().plan(None).unwrap();
        for_plan(&plan, "/usr/bin/netctl")
    }

    fn find<'a>(specs: &'a [ProcessSpec], name: &str) -> &'a ProcessSpec {
        specs.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn the_default_platform_is_wired_by_kind() {
        let specs = default_specs();
        assert_eq!(specs.len(), 9);
        let p2 = find(&specs, "product-2");
        assert_eq!(p2.argv, ["/usr/bin/netctl", "serve", "product"]);
        assert_eq!(p2.get_env("LISTEN"), Some("172.21.0.11:5000"));
        assert_eq!(p2.get_env("INSTANCE_ID"), Some("product-2"));
        assert_eq!(p2.get_env("SERVICE_NAME"), Some("product"));
        assert_eq!(p2.get_env("REGISTRY_URL"), Some("http://172.21.0.5:8500"));
        assert_eq!(p2.get_env("REDIS_URL"), Some("redis://172.22.0.10:6379"));
        assert_eq!(
            p2.secret_env,
            [(
                "DATABASE_URL".to_string(),
                Secret::DatabaseUrl {
                    name: "postgres".into(),
                    address: "172.22.0.20".parse().unwrap(),
                    port: 5432
                }
            )]
        );
        assert!(
            p2.env.iter().all(|(_, v)| !v.contains("postgresql://")),
            "no secret in the spec"
        );
        assert_eq!(find(&specs, "registry").get_env("REGISTRY_URL"), None);
        assert_eq!(find(&specs, "order").get_env("REDIS_URL"), None);

        let pg = find(&specs, "postgres");
        assert!(pg.argv[0].ends_with("postgres"), "{:?}", pg.argv);
        assert!(
            pg.argv
                .contains(&"listen_addresses=172.22.0.20".to_string())
        );
        assert_eq!(pg.user.as_deref(), Some("postgres"));
        assert_eq!(pg.stop_signal, Signal::SIGINT);
        let redis = find(&specs, "redis");
        assert_eq!(redis.argv[..3], ["redis-server", "--bind", "172.22.0.10"]);
        assert_eq!(redis.user.as_deref(), Some("redis"));
        let edge = find(&specs, "edge");
        assert_eq!(edge.files.len(), 1);
        assert!(edge.files[0].1.contains("server 172.20.0.20:3000"));
        assert_eq!(edge.url.as_deref(), Some("http://172.20.0.10:80"));
    }

    #[test]
    fn the_file_env_overrides_and_changes_the_fingerprint() {
        let text = Source::embedded_default().text.replace(
            "kind = \"gateway\"",
            "kind = \"gateway\"\nenv = { PRODUCT_URL = \"http://10.96.0.3:5000\", DATABASE_URL = \"x\" }",
        );
        let plan = Source {
            name: "t".into(),
            text,
        }
        .plan(None)
        .unwrap();
        let specs = for_plan(&plan, "/usr/bin/netctl");
        let gw = find(&specs, "gateway");
        assert_eq!(gw.get_env("PRODUCT_URL"), Some("http://10.96.0.3:5000"));
        let before = find(&default_specs(), "gateway").fingerprint();
        assert_ne!(gw.fingerprint(), before);
        assert_eq!(
            find(&specs, "order").fingerprint(),
            find(&default_specs(), "order").fingerprint()
        );
    }

    #[test]
    fn commands_run_as_given() {
        let plan = Source {
            name: "t".into(),
            text: r#"
                [networks.app]
                subnet = "10.9.0.0/24"
                [services.web]
                network = "app"
                address = "10.9.0.5"
                ports = [8000]
                command = ["/bin/sh", "-c", "exec sleep 100"]
                env = { A = "b" }
                health = { check = "http", path = "/" }
            "#
            .into(),
        }
        .plan(None)
        .unwrap();
        let specs = for_plan(&plan, "/x");
        assert_eq!(specs[0].argv, ["/bin/sh", "-c", "exec sleep 100"]);
        assert_eq!(specs[0].get_env("A"), Some("b"));
        assert_eq!(specs[0].get_env("PATH"), Some(BASE_ENV[0].1));
        assert_eq!(specs[0].user, None);
        assert_eq!(specs[0].url.as_deref(), Some("http://10.9.0.5:8000"));
    }
}
