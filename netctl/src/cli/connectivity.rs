//! `netctl connectivity`: every source tries every other service by address, VIP and port
//! forward, and the results are held against the compiled policy; exit 1 on a mismatch.

use std::{collections::BTreeMap, process::ExitCode, time::Instant};

use serde_json::json;

use super::{drops, load_state};
use crate::{
    connectivity::{self, Options, Outcome, Verdict, probe},
    output,
    reconcile::{preflight, state::State},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output: every check with what it saw.
    #[arg(long)]
    json: bool,
    /// Only checks from or to this service.
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// From every instance of each service, not only the first.
    #[arg(long)]
    all_instances: bool,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("connectivity")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up");
    };
    let started = Instant::now();
    let options = Options {
        service: args.service.clone(),
        all_instances: args.all_instances,
    };
    let checks = connectivity::checks::checks(&state.plan, &options)?;
    let seen = probe::run_all(&checks)?;
    let mut outcomes = connectivity::judge(checks, seen);
    explain_blocked(&state, &mut outcomes)?;
    let elapsed = started.elapsed().as_secs_f64();
    let mismatches = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Mismatch)
        .count();
    let unverified = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Unverified)
        .count();
    if args.json {
        output::print_json(&json!({
            "instance": state.instance,
            "dataplane": state.plan.dataplane.mode.name(),
            "elapsed_s": elapsed,
            "checks": outcomes.len(),
            "mismatches": mismatches,
            "unverified": unverified,
            "results": outcomes,
        }))?;
    } else {
        print(&state, &outcomes, elapsed, mismatches, unverified)?;
    }
    Ok(if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The checks blocked against the policy are tried again, only they, between two reads of
/// the drop counters: what grew for a pair grew for them (the checks the policy denies,
/// which also count drops, are not among them).
fn explain_blocked(state: &State, outcomes: &mut [Outcome]) -> anyhow::Result<()> {
    let blocked: Vec<usize> = (0..outcomes.len())
        .filter(|i| outcomes[*i].verdict == Verdict::Mismatch && outcomes[*i].cause.is_none())
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    let checks: Vec<_> = blocked.iter().map(|i| outcomes[*i].check.clone()).collect();
    let before = drops::pairs(state)?;
    let again = probe::run_all(&checks)?;
    let after = drops::pairs(state)?;
    let grown = connectivity::grown(&before, &after);
    let outside = outside_netctl(state);
    for (i, seen) in blocked.into_iter().zip(again) {
        let o = &mut outcomes[i];
        o.cause = Some(if seen.passed(o.check.kind) == Some(true) {
            "passed when tried again: intermittent".into()
        } else {
            connectivity::blocked_cause(&o.check, &grown, outside.as_deref())
        });
    }
    Ok(())
}

/// What outside netctl drops the platform's traffic, when the host's firewall shows it.
fn outside_netctl(state: &State) -> Option<String> {
    let d = state
        .resources
        .iter()
        .find_map(|r| r.resource.host_firewall())?
        .ok()?;
    d.blocked.then(|| d.explain())
}

fn print(
    state: &State,
    outcomes: &[Outcome],
    elapsed: f64,
    mismatches: usize,
    unverified: usize,
) -> anyhow::Result<()> {
    // source -> destination -> (matched allowed, matched denied, mismatched, unverified)
    let mut cells: BTreeMap<(usize, &str), BTreeMap<&str, [usize; 4]>> = BTreeMap::new();
    let mut sources: Vec<&str> = Vec::new();
    // Columns in the plan's order of services.
    let destinations: Vec<&str> = state
        .plan
        .services
        .iter()
        .map(|s| s.name.as_str())
        .filter(|s| outcomes.iter().any(|o| o.check.destination == *s))
        .collect();
    for o in outcomes {
        let c = &o.check;
        if !sources.contains(&c.source.as_str()) {
            sources.push(&c.source);
        }
        let row = sources.iter().position(|s| *s == c.source).unwrap_or(0);
        let cell = cells
            .entry((row, &c.source))
            .or_default()
            .entry(&c.destination)
            .or_default();
        let i = match (o.verdict, c.expected_allow) {
            (Verdict::Match, true) => 0,
            (Verdict::Match, false) => 1,
            (Verdict::Mismatch, _) => 2,
            (Verdict::Unverified, _) => 3,
        };
        cell[i] += 1;
    }
    output::print_line(&format!(
        "connectivity of {} ({} dataplane): {} checks in {elapsed:.1}s",
        state.instance,
        state.plan.dataplane.mode.name(),
        outcomes.len()
    ))?;
    let mut header = vec!["from \\ to"];
    header.extend(destinations.iter().copied());
    let mut t = output::table(&header);
    for ((_, source), row) in &cells {
        let mut line = vec![source.to_string()];
        for d in &destinations {
            line.push(match row.get(d) {
                None => "-".into(),
                Some([_, _, bad, _]) if *bad > 0 => format!("MISMATCH {bad}"),
                Some([ok, denied, _, unv]) => {
                    let mut parts = Vec::new();
                    if *ok > 0 {
                        parts.push(format!("ok {ok}"));
                    }
                    if *denied > 0 {
                        parts.push(format!("denied {denied}"));
                    }
                    if *unv > 0 {
                        parts.push(format!("? {unv}"));
                    }
                    parts.join(" ")
                }
            });
        }
        t.add_row(line);
    }
    output::print_table(&t)?;
    output::print_line(
        "(ok: passed as allowed; denied: dropped as the policy says; ?: UDP without an answer)",
    )?;
    if mismatches > 0 {
        print_mismatches(outcomes, mismatches)?;
    } else {
        output::print_line(&format!(
            "every check as the policy says{}",
            if unverified > 0 {
                format!(" ({unverified} UDP checks without an answer)")
            } else {
                String::new()
            }
        ))?;
    }
    Ok(())
}

/// The checks that went otherwise than the policy says, with what was seen and why.
fn print_mismatches(outcomes: &[Outcome], mismatches: usize) -> anyhow::Result<()> {
    output::print_line("")?;
    let mut t = output::table(&["from", "to", "via", "target", "expected", "seen", "cause"]);
    for o in outcomes.iter().filter(|o| o.verdict == Verdict::Mismatch) {
        let c = &o.check;
        t.add_row(vec![
            c.source.clone(),
            c.destination.clone(),
            format!("{:?}", c.via).to_lowercase(),
            match c.kind {
                connectivity::Kind::Icmp => format!("icmp {}", c.target.ip()),
                kind => format!("{} {}", json!(kind).as_str().unwrap_or("?"), c.target),
            },
            if c.expected_allow { "allow" } else { "deny" }.into(),
            seen_text(&o.seen),
            o.cause.clone().unwrap_or_default(),
        ]);
    }
    output::print_table(&t)?;
    output::print_line(&format!("{mismatches} checks not as the policy says"))?;
    Ok(())
}

fn seen_text(seen: &probe::Seen) -> String {
    match seen {
        probe::Seen::Connected => "connected".into(),
        probe::Seen::Refused => "refused".into(),
        probe::Seen::Answered => "answered".into(),
        probe::Seen::NoAnswer => "no answer".into(),
        probe::Seen::Unreachable(e) => format!("unreachable: {e}"),
    }
}
