//! `netctl conntrack`: tracked connections from the pinned `CT` map (eBPF dataplane) or
//! the kernel's conntrack (iptables dataplane), with names.

use std::process::ExitCode;

use serde::Serialize;

use super::{flows::protocol_name, load_state};
use crate::{dataplane::ebpf::conntrack, output, reconcile::preflight, topology::Plan};

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
    let conns = crate::dataplane::open(plan, &state.instance).connections()?;
    let names = plan.names();
    let rows: Vec<Row> = conns
        .iter()
        .map(|c| Row {
            protocol: protocol_name(c.proto),
            client_name: names.addr(c.client),
            frontend_name: names.addr(c.frontend),
            backend_name: names.addr(c.backend),
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

/// The columns of the summary: TCP's states, then the protocols that have none.
const STATES: [&str; 6] = ["established", "syn-sent", "closing", "udp", "icmp", "other"];

/// Connections per destination service, counted by [`STATES`] (anything else is `other`,
/// never `established`).
fn count(plan: &Plan, rows: &[Row]) -> std::collections::BTreeMap<String, [usize; 6]> {
    let mut table: std::collections::BTreeMap<String, [usize; 6]> =
        std::collections::BTreeMap::new();
    for r in rows {
        let service = r
            .service
            .clone()
            .unwrap_or_else(|| crate::report::data::party(plan, r.conn.backend));
        let i = STATES
            .iter()
            .position(|s| *s == r.conn.state)
            .unwrap_or(STATES.len() - 1);
        table.entry(service).or_default()[i] += 1;
    }
    table
}

/// The seed's "connection tracker": connections per destination service and state.
fn summary(plan: &Plan, rows: &[Row], as_json: bool) -> anyhow::Result<ExitCode> {
    let table = count(plan, rows);
    if as_json {
        let v: Vec<serde_json::Value> = table
            .iter()
            .map(|(svc, n)| {
                let mut o = serde_json::Map::new();
                o.insert("service".into(), svc.clone().into());
                for (state, v) in STATES.iter().zip(n) {
                    o.insert(state.replace('-', "_"), (*v).into());
                }
                o.insert("total".into(), n.iter().sum::<usize>().into());
                serde_json::Value::Object(o)
            })
            .collect();
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["service"];
    header.extend(STATES);
    header.push("total");
    let mut t = output::table(&header);
    let mut totals = [0usize; 6];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    #[test]
    fn the_summary_counts_each_state_and_protocol_in_its_own_column() {
        let plan = Source {
            name: "t".into(),
            text: "[networks.a]\nsubnet = \"10.9.0.0/24\"\n[services.web]\nnetwork = \"a\"\n\
                   address = \"10.9.0.2\"\nports = [80]\n"
                .into(),
        }
        .plan(None)
        .expect("valid");
        let conn = |proto: u8, state: &'static str| conntrack::Connection {
            proto,
            client: "10.9.0.9".parse().expect("addr"),
            client_port: 1,
            frontend: "10.9.0.2".parse().expect("addr"),
            frontend_port: 80,
            backend: "10.9.0.2".parse().expect("addr"),
            backend_port: 80,
            state,
            nat: false,
            via_uplink: false,
            service_id: 0,
            backend_id: 0,
            age_s: 0.0,
            idle_s: 0.0,
            expires_in_s: 1.0,
        };
        let conns = [
            conn(6, "established"),
            conn(6, "syn-sent"),
            conn(6, "closing"),
            conn(6, "mystery"),
            conn(17, "udp"),
            conn(1, "icmp"),
            conn(47, "other"),
        ];
        let rows: Vec<Row> = conns
            .iter()
            .map(|c| Row {
                protocol: protocol_name(c.proto),
                client_name: String::new(),
                frontend_name: String::new(),
                backend_name: String::new(),
                service: None,
                conn: c,
            })
            .collect();
        let t = count(&plan, &rows);
        assert_eq!(t.get("web"), Some(&[1, 1, 1, 1, 1, 2]), "{t:?}");
    }
}
