//! `netctl monitor`: the live stream of drops and new connections. From the controller
//! when it runs (it owns the event ring buffer), else straight from the ring buffer.
//! Lost events are shown in the stream as `lost` records (JSON lines with `--json`), and
//! counted in the summary printed at the end (`--count` reached, the stream's end, or
//! Ctrl-C).

use std::{collections::BTreeSet, process::ExitCode, time::Duration};

use netctl_common::DropReason;

use super::load_state;
use crate::{
    dataplane::ebpf::{
        Pins,
        clock::BootClock,
        events::{self, EventView, LOST_BY_CLIENT, LOST_BY_DATAPLANE, LostView},
        stats::LostEvents,
    },
    instance::{agent_client as api, daemon},
    output,
    reconcile::preflight,
    topology::Plan,
};

/// How often, without a controller, the lost-events counter is read.
const LOST_CHECK: Duration = Duration::from_secs(1);

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
    super::require_ebpf(
        &state,
        "monitor",
        "; its drops are logged by the kernel (LOG rules, see `dmesg`)",
    )?;
    if let Some(r) = &args.reason
        && DropReason::from_name(r).is_none()
    {
        let known: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        anyhow::bail!("unknown drop reason {r:?} (one of: {})", known.join(", "));
    }
    if let Some(s) = &args.service {
        let known = peer_names(&state.plan);
        if !known.contains(s) {
            anyhow::bail!(
                "no service or replica {s:?} in {} (one of: {})",
                state.instance,
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let pins = Pins::for_instance(&state.instance);
    let mut session_lost = LostEvents::new(&pins);
    let mut printer = Printer {
        args: &args,
        plan: &state.plan,
        shown: 0,
        lost_by_dataplane: 0,
        lost_by_client: 0,
    };
    let interrupted = if daemon::running(&state.instance).is_some() {
        let mut failed = None;
        let interrupted = tokio::select! {
            r = api::stream_lines(&state.instance, "/v1/events", || watching(&state.instance), |line| {
                match printer.line(line) {
                    Ok(more) => more,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            }) => {
                r?;
                false
            }
            _ = tokio::signal::ctrl_c() => true,
        };
        if let Some(e) = failed {
            return Err(e);
        }
        interrupted
    } else {
        read_directly(&pins, &state.instance, &state.plan, &mut printer).await?
    };
    // What the dataplane lost while we watched, whether the stream said so yet or not.
    let lost = session_lost.more().max(printer.lost_by_dataplane);
    let summary = format!(
        "-- {} events shown{}; {lost} lost by the dataplane, {} not delivered to this client --",
        printer.shown,
        if interrupted { " (interrupted)" } else { "" },
        printer.lost_by_client
    );
    if args.json {
        // stdout stays one JSON record a line.
        output::print_note(&summary)?;
    } else {
        output::print_line(&summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr that the stream is open (as tcpdump's "listening on"): every event from
/// now on is shown. Scripts wait for this line before they make traffic.
fn watching(instance: &str) {
    let _ = output::print_note(&format!("-- watching {instance} (Ctrl-C to stop) --"));
}

/// No controller: this process is the ring buffer's reader, and watches the lost-events
/// counter itself. Returns whether SIGINT ended it.
async fn read_directly(
    pins: &Pins,
    instance: &str,
    plan: &Plan,
    printer: &mut Printer<'_>,
) -> anyhow::Result<bool> {
    let mut reader = events::EventReader::open(pins)?;
    watching(instance);
    let mut lost = LostEvents::new(pins);
    let mut ticker = tokio::time::interval(LOST_CHECK);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            _ = &mut interrupt => return Ok(true),
            _ = ticker.tick() => {
                let n = lost.more();
                if n > 0 {
                    printer.lost(&LostView::new(n, LOST_BY_DATAPLANE))?;
                }
            }
            batch = reader.next_batch() => {
                let batch = batch?;
                let clock = BootClock::now()?;
                for e in &batch {
                    if !printer.event(&events::decode(e, plan, &clock))? {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// What `--service` may name: services, replicas, `host` and `world`.
fn peer_names(plan: &Plan) -> BTreeSet<String> {
    plan.services
        .iter()
        .map(|s| s.name.clone())
        .chain(
            plan.endpoints
                .iter()
                .flat_map(|e| [e.name.clone(), e.service.clone()]),
        )
        .chain(["host".to_string(), "world".to_string()])
        .collect()
}

struct Printer<'a> {
    args: &'a Args,
    plan: &'a Plan,
    shown: usize,
    lost_by_dataplane: u64,
    lost_by_client: u64,
}

impl Printer<'_> {
    /// A line from the controller's stream; false when done.
    fn line(&mut self, line: &str) -> anyhow::Result<bool> {
        let value: serde_json::Value = serde_json::from_str(line)?;
        if value["kind"] == "lost" {
            let lost: LostView = serde_json::from_value(value)?;
            self.lost(&lost)?;
            return Ok(true);
        }
        let e: EventView = serde_json::from_value(value)?;
        self.event(&e)
    }

    /// A `lost` record: printed whatever the filters (it may hide any event).
    fn lost(&mut self, lost: &LostView) -> anyhow::Result<()> {
        if lost.by == LOST_BY_CLIENT {
            self.lost_by_client += lost.count;
        } else {
            self.lost_by_dataplane += lost.count;
        }
        if self.args.json {
            output::print_line(lost.line().trim_end())?;
        } else if lost.by == LOST_BY_CLIENT {
            output::print_line(&format!(
                "-- {} events lost: this client fell behind --",
                lost.count
            ))?;
        } else {
            output::print_line(&format!(
                "-- {} events lost by the dataplane (its ring buffer was full) --",
                lost.count
            ))?;
        }
        Ok(())
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
