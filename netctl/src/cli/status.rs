//! `netctl status`: every recorded resource, checked against the kernel, and every
//! supervised service as the controller sees it.

use std::process::ExitCode;

use serde::Serialize;

use super::load_state;
use crate::{
    instance::agent_client as api,
    net::{host_firewall::Diagnosis, netlink::Netlink},
    output,
    reconcile::{preflight, resource::Ctx},
    supervisor::{ServiceStatus, status::from_status},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    kind: &'static str,
    name: String,
    detail: String,
    /// Present in the kernel.
    present: bool,
    /// Creation finished (false: an interrupted `up` left it half-made).
    complete: bool,
}

#[derive(Serialize)]
struct Status {
    instance: String,
    platform: String,
    healthy: bool,
    resources: Vec<Row>,
    /// What the host's firewall does to the platform's forwarded traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    host_firewall: Option<Diagnosis>,
    /// What runs in the namespaces (from the controller; empty when it does not answer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<ServiceStatus>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("status")?;
    let Some(state) = load_state(prefix)? else {
        if args.json {
            output::print_json(&serde_json::json!({ "up": false }))?;
        } else {
            output::print_line("no netctl platform is up")?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let ctx = Ctx {
        host: Netlink::current()?,
    };
    let mut rows = Vec::new();
    for rec in &state.resources {
        rows.push(Row {
            kind: rec.resource.kind(),
            name: rec.resource.name(),
            detail: rec.resource.detail(),
            present: rec.resource.exists(&ctx).await?,
            complete: rec.done,
        });
    }
    let services = match state.plan.supervised().next() {
        Some(_) => api::get(&state.instance, "/v1/status")
            .await
            .ok()
            .and_then(|v| from_status(&v))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let host_firewall = match state
        .resources
        .iter()
        .find_map(|r| r.resource.host_firewall())
    {
        Some(d) => Some(d?),
        None => None,
    };
    let wanted = state.plan.supervised().count();
    let healthy = rows.iter().all(|r| r.present && r.complete)
        && !host_firewall.as_ref().is_some_and(|d| d.blocked)
        && services.len() == wanted
        && services.iter().all(|s| s.state.is_ready());
    let status = Status {
        instance: state.instance.clone(),
        platform: state.plan.platform.clone(),
        healthy,
        resources: rows,
        host_firewall,
        services,
    };
    if args.json {
        output::print_json(&status)?;
    } else {
        print_status(&status, wanted)?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human form: the platform's state, its resources, the host firewall and services.
fn print_status(status: &Status, wanted: usize) -> anyhow::Result<()> {
    output::print_line(&format!(
        "{} (instance {}): {}",
        status.platform,
        status.instance,
        if status.healthy { "up" } else { "DEGRADED" }
    ))?;
    let mut t = output::table(&["kind", "name", "state", "detail"]);
    for r in &status.resources {
        let s = match (r.present, r.complete) {
            (true, true) => "ok",
            (true, false) => "partial",
            (false, _) => "MISSING",
        };
        t.add_row(vec![
            r.kind.to_string(),
            r.name.clone(),
            s.into(),
            r.detail.clone(),
        ]);
    }
    output::print_table(&t)?;
    if let Some(d) = &status.host_firewall {
        output::print_line(&format!(
            "\nhost firewall: {}{}",
            if d.blocked {
                "BLOCKS the platform's traffic: "
            } else {
                ""
            },
            d.explain()
        ))?;
    }
    if wanted > 0 {
        output::print_line("")?;
        if status.services.is_empty() {
            output::print_line("services: unknown (the controller does not answer)")?;
        } else {
            print_services(&status.services)?;
        }
    }
    Ok(())
}

fn print_services(services: &[ServiceStatus]) -> anyhow::Result<()> {
    let mut t = output::table(&["service", "state", "pid", "restarts", "check", "health"]);
    for s in services {
        let health = s.health.as_ref().map_or_else(String::new, |h| {
            if h.ok {
                format!("ok {:.1} ms", h.latency_ms)
            } else {
                format!("failing: {}", h.detail)
            }
        });
        t.add_row(vec![
            s.name.clone(),
            s.state.as_str().to_string(),
            s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            s.restarts.to_string(),
            s.check.clone().unwrap_or_default(),
            health,
        ]);
    }
    output::print_table(&t)?;
    Ok(())
}
