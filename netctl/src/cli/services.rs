//! `netctl services`: every frontend (VIP:port, host port) with its backends, from the
//! pinned maps (eBPF dataplane) or the instance's iptables chains (iptables dataplane);
//! health comes from the controller when it is running.

use std::{collections::HashMap, net::Ipv4Addr, process::ExitCode};

use serde::Serialize;

use super::load_state;
use crate::{
    dataplane::ebpf::{Pins, lb::LbMaps},
    instance::{
        agent_client as api,
        agent_status::{self, BackendState, BackendStatus, Health, LbStatus},
    },
    output,
    reconcile::preflight,
    topology::{DataplaneMode, Plan, Proto},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Only this service.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

#[derive(Serialize)]
struct FrontendRow {
    service: String,
    addr: Ipv4Addr,
    port: u16,
    proto: &'static str,
    host_port: bool,
    algorithm: &'static str,
    backends: Vec<BackendRow>,
}

#[derive(Serialize)]
struct BackendRow {
    id: u32,
    addr: Ipv4Addr,
    port: u16,
    instance: String,
    state: &'static str,
    weight: usize,
    /// iptables: the share of new connections its `statistic` rule gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<f64>,
    health: Option<Health>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("services")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up");
    };
    let plan = &state.plan;
    // Health is only known to a running controller; the maps or rules alone still answer.
    let lb_status: Vec<BackendStatus> = match api::get(&state.instance, "/v1/status").await {
        Ok(s) => match agent_status::component::<LbStatus>(&s, "lb") {
            Some(Ok(lb)) => lb.backends,
            // A failed load balancer publishes its error instead; the maps still answer.
            Some(Err(e)) => {
                tracing::warn!("{e:#}");
                Vec::new()
            }
            None => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    let health = HealthIndex::of(&lb_status);
    let (rows, draining) = match plan.dataplane.mode {
        DataplaneMode::Ebpf => from_maps(&state, &health, args.service.as_deref())?,
        DataplaneMode::Iptables => {
            from_rules(&state, &health, &lb_status, args.service.as_deref())?
        }
    };
    if args.json {
        output::print_json(&serde_json::json!({ "frontends": rows, "draining": draining }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&[
        "service",
        "frontend",
        "algorithm",
        "backend",
        "instance",
        "state",
        "health",
        "weight",
    ]);
    for r in &rows {
        let frontend = format!(
            "{}:{}/{}{}",
            if r.addr.is_unspecified() {
                "*".to_string()
            } else {
                r.addr.to_string()
            },
            r.port,
            r.proto,
            if r.host_port { " (host port)" } else { "" }
        );
        if r.backends.is_empty() {
            t.add_row(vec![
                r.service.clone(),
                frontend,
                r.algorithm.into(),
                "-".into(),
                "-".into(),
                "no backend".into(),
                "".into(),
                "".into(),
            ]);
            continue;
        }
        for (i, b) in r.backends.iter().enumerate() {
            let (svc, fe, alg) = if i == 0 {
                (r.service.clone(), frontend.clone(), r.algorithm.to_string())
            } else {
                (String::new(), String::new(), String::new())
            };
            t.add_row(vec![
                svc,
                fe,
                alg,
                format!("{}:{}", b.addr, b.port),
                b.instance.clone(),
                b.state.into(),
                health_text(&b.health),
                b.share
                    .map_or_else(|| b.weight.to_string(), |s| format!("{:.0}%", s * 100.0)),
            ]);
        }
    }
    for d in &draining {
        t.add_row(vec![
            d.instance.clone(),
            "-".into(),
            "-".into(),
            format!("{}:{}", d.addr, d.port),
            d.instance.clone(),
            "draining".into(),
            health_text(&d.health),
            "0".into(),
        ]);
    }
    output::print_table(&t)?;
    Ok(ExitCode::SUCCESS)
}

/// The eBPF dataplane: frontends and backends from the pinned maps.
fn from_maps(
    state: &crate::reconcile::State,
    health: &HealthIndex,
    only: Option<&str>,
) -> anyhow::Result<(Vec<FrontendRow>, Vec<BackendRow>)> {
    let plan = &state.plan;
    let maps = LbMaps::open(&Pins::for_instance(&state.instance))?;
    let backends: HashMap<u32, netctl_common::Backend> = maps.backends().into_iter().collect();
    let mut rows = Vec::new();
    for fe in maps.frontends() {
        let service = plan
            .service_by_id(fe.service_id)
            .map_or_else(|| format!("#{}", fe.service_id), |s| s.name.clone());
        if only.is_some_and(|s| s != service) {
            continue;
        }
        let mut ids: Vec<u32> = fe.slots.clone();
        ids.sort_unstable();
        ids.dedup();
        let backend_rows = ids
            .iter()
            .filter_map(|id| backends.get(id).map(|b| (*id, b)))
            .map(|(id, b)| {
                let addr = Ipv4Addr::from(b.addr);
                BackendRow {
                    id,
                    addr,
                    port: b.port,
                    instance: plan.name_of(addr),
                    state: if b.state == netctl_common::lb::BACKEND_DRAINING {
                        "draining"
                    } else {
                        "active"
                    },
                    weight: fe.slots.iter().filter(|s| **s == id).count(),
                    share: None,
                    health: health.get(addr, b.port),
                }
            })
            .collect();
        rows.push(FrontendRow {
            service,
            addr: fe.addr,
            port: fe.port,
            proto: Proto::from_number(fe.proto).map_or("?", Proto::name),
            host_port: fe.flags & netctl_common::lb::SVC_F_HOST_PORT != 0,
            algorithm: algorithm_name(fe.algorithm),
            backends: backend_rows,
        });
    }
    // Draining backends belong to no frontend any more; show them under their service.
    Ok((rows, draining_rows(plan, &backends, health)))
}

/// The iptables dataplane: frontends read back from the instance's chains; draining
/// backends (no longer in any chain) from the controller.
fn from_rules(
    state: &crate::reconcile::State,
    health: &HealthIndex,
    lb_status: &[BackendStatus],
    only: Option<&str>,
) -> anyhow::Result<(Vec<FrontendRow>, Vec<BackendRow>)> {
    let plan = &state.plan;
    let chains = crate::dataplane::iptables::Chains::for_instance(&state.instance);
    let nat = crate::net::iptables::save("nat")?;
    let filter = crate::net::iptables::save("filter")?;
    let mut rows = Vec::new();
    for fe in crate::dataplane::iptables::rules::read_frontends(&chains, &nat, &filter) {
        if only.is_some_and(|s| s != fe.service) {
            continue;
        }
        let backends = fe
            .backends
            .iter()
            .map(|(addr, port, share)| BackendRow {
                id: 0,
                addr: *addr,
                port: *port,
                instance: plan.name_of(*addr),
                state: "active",
                weight: 1,
                share: Some(*share),
                health: health.get(*addr, *port),
            })
            .collect();
        rows.push(FrontendRow {
            service: fe.service,
            addr: fe.addr,
            port: fe.port,
            proto: fe.proto.name(),
            host_port: fe.host_port,
            algorithm: fe.algorithm,
            backends,
        });
    }
    let draining = lb_status
        .iter()
        .filter(|b| b.state == BackendState::Draining)
        .filter(|b| only.is_none_or(|s| b.service == s))
        .map(|b| {
            let (addr, port) = (b.addr, b.port);
            BackendRow {
                id: 0,
                addr,
                port,
                instance: plan.name_of(addr),
                state: "draining",
                weight: 0,
                share: None,
                health: health.get(addr, port),
            }
        })
        .collect();
    Ok((rows, draining))
}

fn draining_rows(
    plan: &Plan,
    backends: &HashMap<u32, netctl_common::Backend>,
    health: &HealthIndex,
) -> Vec<BackendRow> {
    let mut out: Vec<BackendRow> = backends
        .iter()
        .filter(|(_, b)| b.state == netctl_common::lb::BACKEND_DRAINING)
        .map(|(id, b)| {
            let addr = Ipv4Addr::from(b.addr);
            BackendRow {
                id: *id,
                addr,
                port: b.port,
                instance: plan.name_of(addr),
                state: "draining",
                weight: 0,
                share: None,
                health: health.get(addr, b.port),
            }
        })
        .collect();
    out.sort_by_key(|b| (b.addr, b.port));
    out
}

/// Health by backend address:port, from the controller's status (indexed once: a platform
/// of 10,000 services has 30,000 backends).
struct HealthIndex(HashMap<(Ipv4Addr, u16), Option<Health>>);

impl HealthIndex {
    fn of(lb_status: &[BackendStatus]) -> Self {
        let mut map = HashMap::new();
        for b in lb_status {
            map.entry((b.addr, b.port))
                .or_insert_with(|| b.health.clone());
        }
        Self(map)
    }

    fn get(&self, addr: Ipv4Addr, port: u16) -> Option<Health> {
        self.0.get(&(addr, port)).cloned().flatten()
    }
}

fn health_text(h: &Option<Health>) -> String {
    match h {
        None => "unknown".into(),
        Some(h) if h.up => match h.latency_ms {
            Some(ms) => format!("up ({ms:.1} ms)"),
            None => "up".into(),
        },
        Some(h) => format!("DOWN ({})", h.last_error.as_deref().unwrap_or("failing")),
    }
}

pub fn algorithm_name(code: u8) -> &'static str {
    match code {
        netctl_common::lb::ALG_ROUND_ROBIN => "round-robin",
        netctl_common::lb::ALG_RANDOM => "random",
        netctl_common::lb::ALG_MAGLEV => "maglev",
        _ => "?",
    }
}
