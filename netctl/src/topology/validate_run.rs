//! Validation of what runs in a namespace (`kind`, `command`, `env`) and of its `health`
//! check. Like the rest of validation, every problem is collected and names its field.

use std::time::Duration;

use indexmap::IndexMap;

use super::{
    error::TopologyError,
    health::{
        DEFAULT_HTTP_PATH, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_TIMEOUT, HealthCheck,
        HealthSpec, MAX_INTERVAL, MAX_RETRIES, MIN_INTERVAL, MIN_TIMEOUT, Probe, parse_duration,
    },
    model::{ServiceSpec, Topology},
    plan::{Port, Proto, ResolvedRun},
    run::{Kind, Program, Run},
};

/// Gateway variables that replace discovery through the registry by a fixed base URL.
pub const GATEWAY_UPSTREAM_ENV: [&str; 2] = ["PRODUCT_URL", "ORDER_URL"];

/// Resolves `kind`/`command`/`env`/`health` of service `name`. `ports` are the service's
/// valid ports (bad ones are reported elsewhere).
pub fn resolve(
    name: &str,
    spec: &ServiceSpec,
    ports: Vec<Port>,
    errors: &mut Vec<TopologyError>,
) -> ResolvedRun {
    let field = format!("services.{name}");
    let program = program(&field, spec, errors);
    check_env(&field, &spec.env, errors);
    let kind = match &program {
        Some(Program::Builtin(k)) => Some(*k),
        _ => None,
    };
    let mut ports = ports;
    if let (Some(k), true) = (kind, spec.ports.is_empty()) {
        ports.push(Port {
            port: k.default_port(),
            proto: Proto::Tcp,
        });
    }
    let tcp: Vec<u16> = ports
        .iter()
        .filter(|p| p.proto == Proto::Tcp)
        .map(|p| p.port)
        .collect();
    if let Some(k) = kind
        && k.single_replica()
        && spec.replicas > 1
    {
        errors.push(TopologyError::KindSingleReplica {
            field: format!("{field}.replicas"),
            kind: k,
            replicas: spec.replicas,
        });
    }
    let health = match &spec.health {
        Some(h) => health(&format!("{field}.health"), h, &tcp, errors),
        None => kind.and_then(|k| tcp.first().map(|p| k.default_health(*p))),
    };
    ResolvedRun {
        run: program.map(|program| Run {
            program,
            env: spec.env.clone(),
        }),
        health,
        ports,
    }
}

fn program(field: &str, spec: &ServiceSpec, errors: &mut Vec<TopologyError>) -> Option<Program> {
    match (&spec.kind, &spec.command) {
        (Some(_), Some(_)) => {
            errors.push(TopologyError::KindAndCommand {
                field: field.to_string(),
            });
            None
        }
        (Some(kind), None) => match kind.parse::<Kind>() {
            Ok(k) => Some(Program::Builtin(k)),
            Err(()) => {
                errors.push(TopologyError::UnknownKind {
                    field: format!("{field}.kind"),
                    value: kind.clone(),
                    known: Kind::names(),
                });
                None
            }
        },
        (None, Some(argv)) => {
            let cfield = format!("{field}.command");
            let problem = if argv.is_empty() {
                Some("it is empty; give the program and its arguments")
            } else if argv[0].trim().is_empty() {
                Some("the program (first element) is empty")
            } else if argv.iter().any(|a| a.contains('\0')) {
                Some("arguments cannot contain NUL characters")
            } else {
                None
            };
            match problem {
                Some(reason) => {
                    errors.push(TopologyError::BadCommand {
                        field: cfield,
                        reason,
                    });
                    None
                }
                None => Some(Program::Command(argv.clone())),
            }
        }
        (None, None) => None,
    }
}

fn check_env(field: &str, env: &IndexMap<String, String>, errors: &mut Vec<TopologyError>) {
    for (k, v) in env {
        let valid_name = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let reason = if !valid_name {
            Some("names are letters, digits and '_', not starting with a digit")
        } else if v.contains('\0') {
            Some("values cannot contain NUL characters")
        } else {
            None
        };
        if let Some(reason) = reason {
            errors.push(TopologyError::BadEnv {
                field: format!("{field}.env.{k}"),
                reason,
            });
        }
    }
}

/// Validates a `health` setting; `ports` are the service's TCP ports (the first is the
/// default port to check).
pub(super) fn health(
    field: &str,
    spec: &HealthSpec,
    ports: &[u16],
    errors: &mut Vec<TopologyError>,
) -> Option<HealthCheck> {
    let before = errors.len();
    let probe = health_probe(field, spec, errors);
    let port = health_port(field, spec.port, ports, errors);
    let (interval, timeout) = health_times(field, spec, errors);
    let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
    if retries == 0 || retries > MAX_RETRIES {
        errors.push(bad_health(
            field,
            "retries",
            format!("{retries} is outside 1..{MAX_RETRIES}"),
        ));
    }
    if errors.len() != before {
        return None;
    }
    Some(HealthCheck {
        probe: probe?,
        port: port?,
        interval_ms: interval?.as_millis() as u64,
        timeout_ms: timeout?.as_millis() as u64,
        retries,
    })
}

fn bad_health(field: &str, sub: &str, reason: String) -> TopologyError {
    TopologyError::BadHealth {
        field: format!("{field}.{sub}"),
        reason,
    }
}

/// `check` (and `path`, which only HTTP takes).
fn health_probe(field: &str, spec: &HealthSpec, errors: &mut Vec<TopologyError>) -> Option<Probe> {
    match spec.check.as_str() {
        check @ ("tcp" | "redis" | "postgres") => {
            if spec.path.is_some() {
                errors.push(bad_health(
                    field,
                    "path",
                    "a path needs check = \"http\"".into(),
                ));
            }
            Some(match check {
                "redis" => Probe::Redis,
                "postgres" => Probe::Postgres,
                _ => Probe::Tcp,
            })
        }
        "http" => {
            let path = spec.path.as_deref().unwrap_or(DEFAULT_HTTP_PATH);
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.push(bad_health(
                    field,
                    "path",
                    format!("{path:?} is not a URL path (starts with '/', no spaces)"),
                ));
            }
            Some(Probe::Http {
                path: path.to_string(),
            })
        }
        other => {
            errors.push(bad_health(
                field,
                "check",
                format!(
                    "{other:?} is not a check: use \"http\", \"tcp\", \"redis\" or \"postgres\""
                ),
            ));
            None
        }
    }
}

/// `port`, else the service's first TCP port.
fn health_port(
    field: &str,
    port: Option<u32>,
    ports: &[u16],
    errors: &mut Vec<TopologyError>,
) -> Option<u16> {
    match port {
        Some(p) if p == 0 || p > u32::from(u16::MAX) => {
            errors.push(bad_health(
                field,
                "port",
                format!("{p} is not a port (1-65535)"),
            ));
            None
        }
        Some(p) => u16::try_from(p).ok(),
        None => {
            let first = ports.first().copied();
            if first.is_none() {
                errors.push(bad_health(
                    field,
                    "port",
                    "the service lists no TCP port: give the port to check".into(),
                ));
            }
            first
        }
    }
}

/// `interval` and `timeout`: each a duration in its bounds, the timeout within the interval.
fn health_times(
    field: &str,
    spec: &HealthSpec,
    errors: &mut Vec<TopologyError>,
) -> (Option<Duration>, Option<Duration>) {
    let mut duration = |sub: &str, text: &Option<String>, default| match text {
        None => Some(default),
        Some(t) => match parse_duration(t) {
            Ok(d) => Some(d),
            Err(reason) => {
                errors.push(TopologyError::BadDuration {
                    field: format!("{field}.{sub}"),
                    value: t.clone(),
                    reason,
                });
                None
            }
        },
    };
    let interval = duration("interval", &spec.interval, DEFAULT_INTERVAL);
    let timeout = duration("timeout", &spec.timeout, DEFAULT_TIMEOUT);
    if let Some(i) = interval
        && !(MIN_INTERVAL..=MAX_INTERVAL).contains(&i)
    {
        errors.push(bad_health(
            field,
            "interval",
            format!("{i:?} is outside {MIN_INTERVAL:?}..{MAX_INTERVAL:?}"),
        ));
    }
    if let (Some(i), Some(t)) = (interval, timeout) {
        if t < MIN_TIMEOUT {
            errors.push(bad_health(
                field,
                "timeout",
                format!("{t:?} is shorter than {MIN_TIMEOUT:?}"),
            ));
        } else if t > i {
            errors.push(bad_health(
                field,
                "timeout",
                format!("{t:?} is longer than the interval ({i:?})"),
            ));
        }
    }
    (interval, timeout)
}

/// Built-in services find each other by kind: each kind another one needs must exist, and
/// exactly once.
pub fn check_wiring(topology: &Topology, errors: &mut Vec<TopologyError>) {
    let mut seen: Vec<(Kind, String)> = Vec::new();
    for (name, spec) in &topology.services {
        let Some(kind) = builtin(spec) else { continue };
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == kind) {
            errors.push(TopologyError::DuplicateKind {
                field: format!("services.{name}.kind"),
                kind,
                other: format!("services.{other}"),
            });
        } else {
            seen.push((kind, name.clone()));
        }
    }
    for (name, spec) in &topology.services {
        let Some(kind) = builtin(spec) else { continue };
        for need in kind.needs() {
            if !seen.iter().any(|(k, _)| k == need) {
                errors.push(TopologyError::MissingDependency {
                    field: format!("services.{name}.kind"),
                    kind,
                    needs: format!("a service of kind {:?}", need.as_str()),
                });
            }
        }
        let fixed_upstreams = GATEWAY_UPSTREAM_ENV
            .iter()
            .all(|v| spec.env.contains_key(*v));
        if kind == Kind::Gateway
            && !fixed_upstreams
            && !seen.iter().any(|(k, _)| *k == Kind::Registry)
        {
            errors.push(TopologyError::MissingDependency {
                field: format!("services.{name}.kind"),
                kind,
                needs: "a service of kind \"registry\" to discover its upstreams, or env \
                        PRODUCT_URL and ORDER_URL"
                    .to_string(),
            });
        }
    }
}

fn builtin(spec: &ServiceSpec) -> Option<Kind> {
    if spec.command.is_some() {
        return None;
    }
    spec.kind.as_deref().and_then(|k| k.parse().ok())
}
