//! `netctl flows`: the eBPF flow map with names resolved; no controller needed.

use std::{process::ExitCode, time::SystemTime};

use anyhow::Context;
use serde::Serialize;

use super::load_state;
use crate::{
    dataplane::ebpf::{Pins, flows},
    output,
    reconcile::preflight,
    topology::Plan,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output (one object per flow direction).
    #[arg(long)]
    json: bool,
    /// Show addresses instead of service names.
    #[arg(short = 'n', long)]
    numeric: bool,
    /// Only flows from or to this service (or replica, e.g. product-2).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// At most this many flows, largest first.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Row<'a> {
    src_name: String,
    dst_name: String,
    protocol: &'static str,
    #[serde(flatten)]
    flow: &'a flows::Flow,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("flows")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up (nothing to read flows from)");
    };
    super::require_ebpf(
        &state,
        "flows",
        "; `netctl conntrack` shows its connections from the kernel's conntrack",
    )?;
    let pins = Pins::for_instance(&state.instance);
    let all = flows::read(&pins).context("reading the flow map")?;
    let plan = &state.plan;
    let names = plan.names();
    let mut rows: Vec<Row> = all
        .iter()
        .map(|f| Row {
            src_name: names.addr(f.src),
            dst_name: names.addr(f.dst),
            protocol: protocol_name(f.proto),
            flow: f,
        })
        .filter(|r| match &args.service {
            Some(s) => {
                matches_service(plan, &r.src_name, s) || matches_service(plan, &r.dst_name, s)
            }
            None => true,
        })
        .collect();
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    if args.json {
        output::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut t = output::table(&[
        "source",
        "destination",
        "proto",
        "packets",
        "bytes",
        "flags",
        "first seen",
        "last seen",
    ]);
    let ago = |t: f64| format!("{:.0}s ago", (now - t).max(0.0));
    for r in &rows {
        let f = r.flow;
        let (src, dst) = if args.numeric {
            (f.src.to_string(), f.dst.to_string())
        } else {
            (r.src_name.clone(), r.dst_name.clone())
        };
        t.add_row(vec![
            endpoint(&src, f.src_port, f.proto),
            endpoint(&dst, f.dst_port, f.proto),
            r.protocol.to_string(),
            f.packets.to_string(),
            output::human_bytes(f.bytes),
            output::tcp_flags(f.tcp_flags),
            ago(f.first_seen),
            ago(f.last_seen),
        ]);
    }
    output::print_table(&t)?;
    Ok(ExitCode::SUCCESS)
}

fn endpoint(name: &str, port: u16, proto: u8) -> String {
    if port == 0
        && proto != netctl_common::flow::IPPROTO_TCP
        && proto != netctl_common::flow::IPPROTO_UDP
    {
        name.to_string()
    } else {
        format!("{name}:{port}")
    }
}

/// `product` matches every replica (`product-1`, ...); a replica name matches itself.
fn matches_service(plan: &Plan, display_name: &str, wanted: &str) -> bool {
    display_name == wanted
        || plan
            .endpoints
            .iter()
            .any(|e| e.name == display_name && e.service == wanted)
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        netctl_common::flow::IPPROTO_TCP => "tcp",
        netctl_common::flow::IPPROTO_UDP => "udp",
        netctl_common::flow::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}
