//! `netctl conntrack`: tracked connections from the pinned `CT` map, with names.

use std::process::ExitCode;

use serde::Serialize;

use super::{flows::protocol_name, load_state};
use crate::{
    controller::preflight,
    dataplane::{Pins, conntrack},
    output,
    topology::Plan,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Only connections of this service (to its frontends, or from/to its replicas).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

#[derive(Serialize)]
struct Row<'a> {
    protocol: &'static str,
    client_name: String,
    frontend_name: String,
    backend_name: String,
    service: Option<String>,
    #[serde(flatten)]
    conn: &'a conntrack::Connection,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("conntrack")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up");
    };
    let plan = &state.plan;
    let map = conntrack::open(&Pins::for_instance(&state.instance))?;
    let conns = conntrack::connections(&map)?;
    let rows: Vec<Row> = conns
        .iter()
        .map(|c| Row {
            protocol: protocol_name(c.proto),
            client_name: plan.name_of(c.client),
            frontend_name: plan.name_of(c.frontend),
            backend_name: plan.name_of(c.backend),
            service: plan.service_by_id(c.service_id).map(|s| s.name.clone()),
            conn: c,
        })
        .filter(|r| args.service.as_ref().is_none_or(|s| involves(plan, r, s)))
        .collect();
    if args.json {
        output::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&[
        "proto", "client", "frontend", "backend", "state", "age", "idle", "service",
    ]);
    for r in &rows {
        let c = r.conn;
        let backend = if c.nat {
            format!("{}:{}", r.backend_name, c.backend_port)
        } else {
            "-".into()
        };
        t.add_row(vec![
            r.protocol.to_string(),
            format!("{}:{}", r.client_name, c.client_port),
            format!("{}:{}", r.frontend_name, c.frontend_port),
            backend,
            c.state.to_string(),
            format!("{:.0}s", c.age_s),
            format!("{:.0}s", c.idle_s),
            r.service.clone().unwrap_or_default(),
        ]);
    }
    output::print_table(&t)?;
    Ok(ExitCode::SUCCESS)
}

fn involves(plan: &Plan, r: &Row, service: &str) -> bool {
    let name_is = |n: &str| {
        n == service
            || n == format!("{service}(vip)")
            || plan
                .endpoints
                .iter()
                .any(|e| e.name == n && e.service == service)
    };
    r.service.as_deref() == Some(service)
        || name_is(&r.client_name)
        || name_is(&r.frontend_name)
        || name_is(&r.backend_name)
}
