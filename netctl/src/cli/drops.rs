//! `netctl drops`: dropped packets by reason and by identity pair, from the pinned maps
//! (iptables dataplane: from the counters of the policy's rules).

use std::process::ExitCode;

use netctl_common::DropReason;
use serde_json::json;

use super::load_state;
use crate::{
    dataplane::ebpf::{Pins, conntrack, stats},
    dataplane::iptables::{Chains, policy as ipt_policy},
    net::iptables,
    output,
    reconcile::preflight,
    reconcile::state::State,
    topology::DataplaneMode,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("drops")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up");
    };
    if state.plan.dataplane.mode == DataplaneMode::Iptables {
        return iptables_drops(&state, args.json);
    }
    let pins = Pins::for_instance(&state.instance);
    let by_reason = stats::drops(&pins)?;
    let counters = stats::counters(&pins)?;
    let lost = counters
        .iter()
        .find(|(n, _)| *n == "events_lost")
        .map_or(0, |(_, v)| *v);
    let by_pair = pairs(&state)?;
    let ct = conntrack::open(&pins)?;
    let entries = ct.keys().filter_map(Result::ok).count();
    let capacity = state.plan.dataplane.conntrack_max;
    let fill = entries as f64 / f64::from(capacity.max(1));
    let miss = counters
        .iter()
        .find(|(n, _)| *n == "ct_miss_established")
        .map_or(0, |(_, v)| *v);
    if args.json {
        output::print_json(&json!({
            "conntrack": { "entries": entries, "capacity": capacity, "fill": fill, "miss_established": miss },
            "by_reason": by_reason.iter().map(|(r, n)| json!({ "reason": r.name(), "number": *r as u32, "packets": n })).collect::<Vec<_>>(),
            "by_pair": by_pair.iter().map(|(s, d, r, n)| json!({ "source": s, "destination": d, "reason": r, "packets": n })).collect::<Vec<_>>(),
            "events_lost": lost,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["reason", "packets"]);
    for (r, n) in &by_reason {
        t.add_row(vec![r.name().to_string(), n.to_string()]);
    }
    output::print_table(&t)?;
    if !by_pair.is_empty() {
        output::print_line("")?;
        let mut t = output::table(&["source", "destination", "reason", "packets"]);
        for (s, d, r, n) in &by_pair {
            t.add_row(vec![s.clone(), d.clone(), r.to_string(), n.to_string()]);
        }
        output::print_table(&t)?;
    }
    output::print_line(&format!(
        "\nconntrack: {entries} of {capacity} entries ({:.0}%){}",
        fill * 100.0,
        if fill > 0.9 {
            " — FULL: new connections evict the least recently used (see bpf-maps.md)"
        } else {
            ""
        }
    ))?;
    if miss > 0 {
        output::print_line(&format!(
            "{miss} mid-connection TCP packets found no conntrack entry (evicted or expired)"
        ))?;
    }
    if lost > 0 {
        output::print_line(&format!(
            "\n{lost} events were lost (the event reader fell behind)"
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The iptables dataplane's drops: the packet counters of its `DROP` rules (by reason) and
/// of the entries and limits that sent packets there (by pair; `*`: any source).
fn iptables_drops(state: &State, as_json: bool) -> anyhow::Result<ExitCode> {
    let chains = Chains::for_instance(&state.instance);
    let d = ipt_policy::drops(&chains, &iptables::save_counted("filter")?);
    let reasons = [DropReason::PolicyDenied, DropReason::RateLimited];
    let by_reason: Vec<(&str, u64)> = reasons
        .iter()
        .map(|r| (r.name(), d.by_reason.get(r.name()).copied().unwrap_or(0)))
        .collect();
    // Pairs from the same save as the reasons, so that the two add up.
    let by_pair = named(state, d.pairs());
    if as_json {
        output::print_json(&json!({
            "dataplane": "iptables",
            "by_reason": by_reason.iter().map(|(r, n)| json!({ "reason": r, "packets": n })).collect::<Vec<_>>(),
            "by_pair": by_pair.iter().map(|(s, d, r, n)| json!({ "source": s, "destination": d, "reason": r, "packets": n })).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["reason", "packets"]);
    for (r, n) in &by_reason {
        t.add_row(vec![r.to_string(), n.to_string()]);
    }
    output::print_table(&t)?;
    if !by_pair.is_empty() {
        output::print_line("")?;
        let mut t = output::table(&["source", "destination", "reason", "packets"]);
        for (s, d, r, n) in &by_pair {
            t.add_row(vec![s.clone(), d.clone(), r.to_string(), n.to_string()]);
        }
        output::print_table(&t)?;
    }
    output::print_line(
        "\n(iptables dataplane: the counters of the policy's DROP rules; each drop is also \
         logged by the kernel with a prefix naming its rule, see `dmesg`)",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Packets dropped per (source, destination, reason), identities by name, most first.
/// The iptables dataplane names `*` as the source of drops by entries and limits for any
/// source.
pub type Pairs = Vec<(String, String, &'static str, u64)>;

/// The dataplane's drop counters per identity pair, as `drops` shows them.
pub fn pairs(state: &State) -> anyhow::Result<Pairs> {
    let pairs = crate::dataplane::open(&state.plan, &state.instance).drop_pairs()?;
    Ok(named(state, pairs))
}

/// Drop pairs with their identities by name, most packets first.
fn named(state: &State, pairs: impl IntoIterator<Item = crate::dataplane::DropPair>) -> Pairs {
    let names = state.plan.names();
    let mut by_pair: Pairs = pairs
        .into_iter()
        .map(|p| {
            (
                names.identity(p.src_identity),
                names.identity(p.dst_identity),
                p.reason,
                p.packets,
            )
        })
        .collect();
    by_pair.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| a.cmp(b)));
    by_pair
}
