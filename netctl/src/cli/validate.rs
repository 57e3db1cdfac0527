//! `netctl validate [-f FILE]`

use std::{path::PathBuf, process::ExitCode};

use super::up::plan_from;
use crate::output;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topology file (TOML); the embedded reference platform when omitted.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print the resolved plan (names and addresses) as JSON.
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
    }
    Ok(ExitCode::SUCCESS)
}
