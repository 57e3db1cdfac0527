//! `netctl validate [-f FILE]`: checks a topology without root and prints a short summary
//! of the resolved plan (networks, then every service with its addresses, VIP and
//! ports); `--json` prints the whole plan.

use std::{path::PathBuf, process::ExitCode};

use super::up::plan_from;
use crate::output;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topology file (TOML); the embedded reference platform when omitted.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print the whole resolved plan (names and addresses) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    let plan = plan_from(args.file.as_deref(), prefix)?;
    for w in plan.warnings() {
        output::print_warning(&w)?;
    }
    if args.json {
        output::print_json(&plan)?;
    } else {
        output::print_line(&format!(
            "ok: {} networks, {} services in {} namespaces (instance {})",
            plan.networks.len(),
            plan.endpoints
                .iter()
                .map(|e| &e.service)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            plan.endpoints.len(),
            plan.instance()
        ))?;
        print_summary(&plan)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Networks with their bridges and gateways, then services with where they run.
fn print_summary(plan: &crate::topology::Plan) -> anyhow::Result<()> {
    let mut t = output::table(&["network", "subnet", "gateway", "bridge"]);
    for n in &plan.networks {
        t.add_row(vec![
            n.name.clone(),
            n.subnet.to_string(),
            n.gateway.to_string(),
            n.bridge.clone(),
        ]);
    }
    output::print_table(&t)?;
    let mut t = output::table(&["service", "addresses", "vip", "ports"]);
    for s in &plan.services {
        let addresses: Vec<String> = plan
            .endpoints
            .iter()
            .filter(|e| e.service == s.name)
            .map(|e| e.address.to_string())
            .chain(s.backends.iter().map(ToString::to_string))
            .collect();
        t.add_row(vec![
            s.name.clone(),
            addresses.join(" "),
            s.vip.to_string(),
            s.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    // Namespaces of services without ports have no VIP (and no entry above).
    for e in plan
        .endpoints
        .iter()
        .filter(|e| plan.service(&e.service).is_none())
    {
        t.add_row(vec![
            e.name.clone(),
            e.address.to_string(),
            "-".into(),
            "-".into(),
        ]);
    }
    output::print_table(&t)?;
    Ok(())
}
