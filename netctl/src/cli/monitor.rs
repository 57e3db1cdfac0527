//! `netctl monitor`: the live stream of drops and new connections. From the controller
//! when it runs (it owns the event ring buffer), else straight from the ring buffer.

use std::process::ExitCode;

use netctl_common::DropReason;

use super::load_state;
use crate::{
    controller::{api, daemon, preflight},
    dataplane::{
        Pins,
        clock::BootClock,
        events::{self, EventView},
        stats,
    },
    output,
    topology::Plan,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Only events from or to this service (or replica).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Only drops for this reason (e.g. policy-denied, rate-limited).
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// Only drops.
    #[arg(long, conflicts_with = "flows")]
    drops: bool,
    /// Only new connections.
    #[arg(long)]
    flows: bool,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("monitor")?;
    let Some(state) = load_state(prefix)? else {
        anyhow::bail!("no netctl platform is up");
    };
    if let Some(r) = &args.reason
        && DropReason::from_name(r).is_none()
    {
        let known: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        anyhow::bail!("unknown drop reason {r:?} (one of: {})", known.join(", "));
    }
    let pins = Pins::for_instance(&state.instance);
    let lost_at_start = lost(&pins);
    let mut printer = Printer {
        args: &args,
        plan: &state.plan,
        shown: 0,
    };
    if daemon::running(&state.instance).is_some() {
        let mut failed = None;
        api::stream_lines(&state.instance, "/v1/events", |line| {
            match printer.line(line) {
                Ok(more) => more,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
    } else {
        let mut reader = events::EventReader::open(&pins)?;
        'read: loop {
            let batch = reader.next_batch().await?;
            let clock = BootClock::now()?;
            for e in &batch {
                if !printer.event(&events::decode(e, &state.plan, &clock))? {
                    break 'read;
                }
            }
        }
    }
    let lost_now = lost(&pins);
    if lost_now > lost_at_start && !args.json {
        output::print_line(&format!(
            "{} events were lost by the dataplane meanwhile",
            lost_now - lost_at_start
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn lost(pins: &Pins) -> u64 {
    stats::counters(pins)
        .ok()
        .and_then(|c| c.into_iter().find(|(n, _)| *n == "events_lost"))
        .map_or(0, |(_, v)| v)
}

struct Printer<'a> {
    args: &'a Args,
    plan: &'a Plan,
    shown: usize,
}

impl Printer<'_> {
    /// A line from the controller's stream; false when done.
    fn line(&mut self, line: &str) -> anyhow::Result<bool> {
        let value: serde_json::Value = serde_json::from_str(line)?;
        if value["kind"] == "lost" {
            output::print_line(&if self.args.json {
                line.to_string()
            } else {
                format!(
                    "-- {} events lost: this client fell behind --",
                    value["count"]
                )
            })?;
            return Ok(true);
        }
        let e: EventView = serde_json::from_value(value)?;
        self.event(&e)
    }

    /// Prints `e` if it passes the filters; false when `--count` is reached.
    fn event(&mut self, e: &EventView) -> anyhow::Result<bool> {
        let a = self.args;
        let is_drop = e.kind == "drop";
        if (a.drops && !is_drop) || (a.flows && is_drop) {
            return Ok(true);
        }
        if a.reason.as_ref().is_some_and(|r| *r != e.reason) {
            return Ok(true);
        }
        if let Some(s) = &a.service {
            let names = |n: &str| {
                n == s
                    || n == format!("{s}(vip)")
                    || self
                        .plan
                        .endpoints
                        .iter()
                        .any(|ep| ep.name == n && ep.service == *s)
            };
            if !(names(&e.src_name)
                || names(&e.dst_name)
                || e.src_identity == *s
                || e.dst_identity == *s)
            {
                return Ok(true);
            }
        }
        if a.json {
            output::print_line(&serde_json::to_string(e)?)?;
        } else {
            let what = if is_drop {
                format!("DROP {:<15}", e.reason)
            } else {
                format!("{:<20}", "NEW")
            };
            output::print_line(&format!(
                "{} {what} {} {}:{} -> {}:{} ({} -> {})",
                clock_text(e.time),
                e.protocol,
                e.src_name,
                e.src_port,
                e.dst_name,
                e.dst_port,
                e.src_identity,
                e.dst_identity
            ))?;
        }
        self.shown += 1;
        Ok(a.count.is_none_or(|n| self.shown < n))
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time.
fn clock_text(t: f64) -> String {
    let secs = t as u64;
    let ms = ((t - secs as f64) * 1000.0) as u64;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
