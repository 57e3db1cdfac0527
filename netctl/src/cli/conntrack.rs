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
    /// Active connections per service and per state instead of one line per connection.
    #[arg(long)]
    summary: bool,
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
    if args.summary {
        return summary(plan, &rows, args.json);
    }
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

/// The seed's "connection tracker": connections per destination service and state.
fn summary(plan: &Plan, rows: &[Row], as_json: bool) -> anyhow::Result<ExitCode> {
    const STATES: [&str; 4] = ["established", "syn-sent", "closing", "udp"];
    let mut table: std::collections::BTreeMap<String, [usize; 4]> =
        std::collections::BTreeMap::new();
    for r in rows {
        let service = r
            .service
            .clone()
            .unwrap_or_else(|| crate::report::data::party(plan, r.conn.backend));
        let i = STATES.iter().position(|s| *s == r.conn.state).unwrap_or(0);
        table.entry(service).or_default()[i] += 1;
    }
    if as_json {
        let v: Vec<serde_json::Value> = table
            .iter()
            .map(|(svc, n)| {
                serde_json::json!({
                    "service": svc,
                    "established": n[0], "syn_sent": n[1], "closing": n[2], "udp": n[3],
                    "total": n.iter().sum::<usize>(),
                })
            })
            .collect();
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&[
        "service",
        "established",
        "syn-sent",
        "closing",
        "udp",
        "total",
    ]);
    let mut totals = [0usize; 4];
    for (svc, n) in &table {
        for (t, v) in totals.iter_mut().zip(n) {
            *t += v;
        }
        let mut row = vec![svc.clone()];
        row.extend(n.iter().map(ToString::to_string));
        row.push(n.iter().sum::<usize>().to_string());
        t.add_row(row);
    }
    let mut row = vec!["(all)".to_string()];
    row.extend(totals.iter().map(ToString::to_string));
    row.push(totals.iter().sum::<usize>().to_string());
    t.add_row(row);
    output::print_table(&t)?;
    Ok(ExitCode::SUCCESS)
}
