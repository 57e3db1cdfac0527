//! `netctl status`: every recorded resource, checked against the kernel.

use std::process::ExitCode;

use serde::Serialize;

use super::load_state;
use crate::{
    controller::{preflight, resource::Ctx},
    net::netlink::Netlink,
    output,
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
    let healthy = rows.iter().all(|r| r.present && r.complete);
    let status = Status {
        instance: state.instance.clone(),
        platform: state.plan.platform.clone(),
        healthy,
        resources: rows,
    };
    if args.json {
        output::print_json(&status)?;
    } else {
        output::print_line(&format!(
            "{} (instance {}): {}",
            status.platform,
            status.instance,
            if healthy { "up" } else { "DEGRADED" }
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
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
