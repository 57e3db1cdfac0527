//! `netctl up [-f FILE]`

use std::{path::PathBuf, process::ExitCode, time::Instant};

use crate::{
    controller::{
        preflight,
        up::{self, ControllerMode},
    },
    output,
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
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut plan = plan_from(args.file.as_deref(), prefix)?;
    if let Some(mode) = args.dataplane {
        plan.dataplane.mode = mode;
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
    if args.foreground {
        up::become_controller(&plan).await?;
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

/// Reads and validates the topology (a file or the embedded default).
pub fn plan_from(file: Option<&std::path::Path>, prefix: Option<&str>) -> anyhow::Result<Plan> {
    let source = match file {
        Some(path) => Source::read(path)?,
        None => Source::embedded_default(),
    };
    Ok(source.plan(prefix)?)
}
