//! `netctl up [-f FILE]`: bring the platform up, wait until everything it runs is healthy,
//! and print what runs where.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    instance::agent_client as api,
    output,
    reconcile::{
        preflight,
        up::{self, ControllerMode},
    },
    supervisor::{ServiceStatus, status},
    topology::{DataplaneMode, Plan, Source},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topology file (TOML); the embedded reference platform when omitted.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Run the controller in this process instead of in the background (for systemd);
    /// returns on SIGTERM, leaving the platform up.
    #[arg(long)]
    foreground: bool,
    /// The dataplane: `ebpf` (TC and socket programs) or `iptables` (kube-proxy-style
    /// rules, the baseline); overrides the topology's `[dataplane] mode`.
    #[arg(long, value_name = "MODE")]
    dataplane: Option<DataplaneMode>,
    /// Return once the network is up, without waiting for the services to be healthy.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for every service to be healthy.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait_timeout: u64,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut plan = plan_from(args.file.as_deref(), prefix)?;
    if let Some(mode) = args.dataplane {
        plan.dataplane.mode = mode;
    }
    for w in plan.warnings() {
        output::print_warning(&w)?;
    }
    preflight::require_root("up")?;
    if plan.dataplane.mode == DataplaneMode::Iptables && !crate::net::iptables::available() {
        anyhow::bail!(
            "--dataplane iptables needs iptables-restore (the iptables package: cargo xtask setup)"
        );
    }
    let started = Instant::now();
    let mode = if args.foreground {
        ControllerMode::Foreground
    } else {
        ControllerMode::Background
    };
    let report = up::up(&plan, mode).await?;
    let took = started.elapsed();
    if report.upgraded {
        output::print_line("dataplane upgraded in place: new programs on every link, maps kept")?;
    }
    if report.settings_changed {
        output::print_line(&format!(
            "{} (instance {}) is up; settings updated (services, policy), no network change",
            plan.platform,
            plan.instance()
        ))?;
    } else if !report.changed() {
        output::print_line(&format!(
            "{} (instance {}) is up; nothing to change",
            plan.platform,
            plan.instance()
        ))?;
    } else {
        print_summary(&plan, &report, took)?;
    }
    let wait = (!args.no_wait && plan.supervised().next().is_some())
        .then(|| Duration::from_secs(args.wait_timeout));
    if args.foreground {
        // This process is the controller: wait for its services on the side.
        if let Some(timeout) = wait {
            let plan = plan.clone();
            tokio::spawn(async move {
                if let Err(e) = wait_and_print(&plan, timeout, started).await {
                    tracing::error!("{e:#}");
                }
            });
        }
        let instance = up::record_as_controller(&plan)?;
        crate::agent::runtime::run(&instance).await?;
    } else if let Some(timeout) = wait {
        wait_and_print(&plan, timeout, started).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(
    plan: &Plan,
    report: &up::UpReport,
    took: std::time::Duration,
) -> anyhow::Result<()> {
    output::print_line(&format!(
        "{} (instance {}, {} dataplane) is up: {} networks, {} namespaces ({} created, {} removed in {:.2}s)",
        plan.platform,
        plan.instance(),
        plan.dataplane.mode,
        plan.networks.len(),
        plan.endpoints.len(),
        report.created.len(),
        report.removed.len(),
        took.as_secs_f64()
    ))?;
    if plan.supervised().next().is_some() {
        return Ok(());
    }
    let mut t = output::table(&["name", "namespace", "address", "network", "bridge"]);
    for e in &plan.endpoints {
        t.add_row(vec![
            e.name.clone(),
            e.netns.clone(),
            format!("{}/{}", e.address, e.prefix_len),
            e.network.clone(),
            e.bridge.clone(),
        ]);
    }
    output::print_table(&t)?;
    Ok(())
}

/// The instances the load balancer serves (an active backend its own health check finds
/// up, written to the dataplane), from a `/v1/status` answer. The supervisor and the load
/// balancer check separately, so a backend can reach the maps a probe interval after the
/// supervisor calls it healthy.
fn load_balanced(status: &serde_json::Value) -> std::collections::HashSet<&str> {
    status
        .pointer("/components/lb/backends")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b["state"] == "active" && b["health"]["up"] == true)
        .filter_map(|b| b["instance"].as_str())
        .collect()
}

/// Polls the controller until every supervised process is ready (and served by the load
/// balancer when it backs a service), then prints them; on timeout, says which are not
/// and why.
async fn wait_and_print(plan: &Plan, timeout: Duration, started: Instant) -> anyhow::Result<()> {
    let instance = plan.instance();
    let want: Vec<&str> = plan.supervised().map(|e| e.name.as_str()).collect();
    // Of those, the backends of services with a VIP: also wait until the dataplane serves
    // them, so that the VIPs and host ports answer as soon as `up` returns.
    let want_lb: Vec<&str> = plan
        .supervised()
        .filter(|e| plan.service(&e.service).is_some())
        .map(|e| e.name.as_str())
        .collect();
    let fingerprint = plan.fingerprint();
    let deadline = Instant::now() + timeout;
    let mut last: Vec<ServiceStatus> = Vec::new();
    let mut last_unserved: Vec<String> = Vec::new();
    let mut last_error: Option<anyhow::Error>;
    // Up to `timeout` of waiting: say so on a terminal (nothing for scripts).
    let spinner = output::spinner("waiting for the controller");
    loop {
        match api::get(&instance, "/v1/status").await {
            Ok(v) => {
                last = status::from_status(&v).unwrap_or_default();
                last_error = None;
                let pending: Vec<&str> = want
                    .iter()
                    .copied()
                    .filter(|n| !last.iter().any(|s| s.name == *n && s.state.is_ready()))
                    .collect();
                let serving = load_balanced(&v);
                let unserved: Vec<&str> = want_lb
                    .iter()
                    .copied()
                    .filter(|n| !serving.contains(n))
                    .collect();
                last_unserved = unserved.iter().map(|n| n.to_string()).collect();
                spinner.set_message(if pending.is_empty() {
                    format!(
                        "waiting for the load balancer to serve {}",
                        unserved.join(", ")
                    )
                } else {
                    format!(
                        "{} of {} services healthy; waiting for {}",
                        want.len() - pending.len(),
                        want.len(),
                        pending.join(", ")
                    )
                });
                // The controller may still be applying an earlier plan (reload is a signal).
                let current = status::applied_plan(&v) == Some(fingerprint.as_str());
                let ready = current
                    && last.len() == want.len()
                    && pending.is_empty()
                    && unserved.is_empty();
                if ready {
                    spinner.finish_and_clear();
                    output::print_line(&format!(
                        "{} services healthy ({:.1}s)",
                        want.len(),
                        started.elapsed().as_secs_f64()
                    ))?;
                    return print_services(plan, &last);
                }
            }
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spinner.finish_and_clear();
    if let Some(e) = last_error {
        bail!("the controller does not answer: {e:#}");
    }
    print_services(plan, &last)?;
    let waiting: Vec<String> = want
        .iter()
        .map(|n| match last.iter().find(|s| s.name == *n) {
            None => format!("{n}: not started"),
            Some(s) if s.state.is_ready() => String::new(),
            Some(s) => {
                let why = s
                    .last_error
                    .clone()
                    .or_else(|| s.health.as_ref().map(|h| h.detail.clone()))
                    .unwrap_or_else(|| "no health check passed yet".into());
                format!("{n}: {} {why} (netctl logs {n})", s.state.as_str())
            }
        })
        .filter(|l| !l.is_empty())
        .chain(last_unserved.iter().filter(|n| last.iter().any(|s| s.name == **n && s.state.is_ready())).map(|n| {
            format!(
                "{n}: healthy, but not yet an active backend of the load balancer (netctl services)"
            )
        }))
        .collect();
    bail!(
        "not every service is healthy after {}s (the platform stays up; they keep being \
         restarted):\n  - {}",
        timeout.as_secs(),
        waiting.join("\n  - ")
    )
}

/// The summary: where each service runs, its VIP (load-balanced address), its state and
/// where to reach it.
pub fn print_services(plan: &Plan, services: &[ServiceStatus]) -> anyhow::Result<()> {
    let mut t = output::table(&["service", "namespace", "address", "vip", "state", "url"]);
    for s in services {
        let vip = plan
            .service(&s.service)
            .map_or_else(|| "-".to_string(), |svc| svc.vip.to_string());
        t.add_row(vec![
            s.name.clone(),
            s.netns.clone(),
            s.address.to_string(),
            vip,
            s.state.as_str().to_string(),
            s.url.clone().unwrap_or_default(),
        ]);
    }
    output::print_table(&t)?;
    Ok(())
}

/// Reads and validates the topology (a file or the embedded default).
pub fn plan_from(file: Option<&std::path::Path>, prefix: Option<&str>) -> anyhow::Result<Plan> {
    let source = match file {
        Some(path) => Source::read(path)?,
        None => Source::embedded_default(),
    };
    Ok(source.plan(prefix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_healthy_backends_count_as_served() {
        let status = serde_json::json!({ "components": { "lb": { "backends": [
            { "instance": "edge", "state": "active", "health": { "up": true } },
            { "instance": "gateway", "state": "active", "health": { "up": false } },
            { "instance": "product-1", "state": "draining", "health": { "up": true } },
            { "instance": "product-2", "state": "active", "health": { "up": true } },
        ] } } });
        let served = load_balanced(&status);
        assert_eq!(
            served,
            ["edge", "product-2"]
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
        );
        assert!(load_balanced(&serde_json::json!({ "components": {} })).is_empty());
    }
}
