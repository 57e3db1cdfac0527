//! The controller's events component: the single reader of the dataplane's `EVENTS` ring
//! buffer. Every drop is logged (to the controller log, at most `LOG_PER_SECOND` lines a
//! second, then a count of the rest, written once a second), and every event goes to the
//! `netctl monitor` clients of `GET /v1/events` as JSON lines. Lost events are never
//! silent: when the dataplane's `events_lost` counter grows (the ring buffer was full),
//! every client gets `{"kind":"lost","count":N,"by":"dataplane"}`; a client too slow to
//! keep up gets `{"kind":"lost","count":N,"by":"client"}`. New-flow events are counted
//! per destination service and protocol, for the metrics' per-service connection
//! counters (on the status board).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use netctl_common::event::{EVENT_DROP, EVENT_NEW_FLOW};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::component::{AgentCtx, ComponentFuture, StreamHandler};
use crate::{
    dataplane::ebpf::{
        Pins,
        clock::BootClock,
        events::{self, LOST_BY_CLIENT, LOST_BY_DATAPLANE, LostView},
        stats::LostEvents,
    },
    topology::{DataplaneMode, Plan},
};

const LOG_PER_SECOND: u32 = 20;
const FANOUT: usize = 8192;
const PER_CLIENT: usize = 1024;
/// How often the lost-events counter is read, the log's summary written and the status
/// published.
const TICK: Duration = Duration::from_secs(1);
/// The status (event and per-service connection counts) is published at most this often
/// while events flow.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    if ctx.plan.borrow().dataplane.mode == DataplaneMode::Iptables {
        // No ring buffer: the iptables dataplane logs its drops to the kernel log.
        ctx.shutdown.cancelled().await;
        return Ok(());
    }
    let pins = Pins::for_instance(&ctx.instance);
    let mut reader = events::EventReader::open(&pins)?;
    let mut lost = LostEvents::new(&pins);
    let mut ticker = tokio::time::interval(TICK);
    let (tx, _) = broadcast::channel::<Bytes>(FANOUT);
    let open: StreamHandler = {
        let tx = tx.clone();
        Arc::new(move || subscribe(&tx))
    };
    ctx.routes.add_stream("/v1/events", open).await;

    let mut log = DropLog::default();
    let mut seen: u64 = 0;
    let mut dropped: u64 = 0;
    let mut lost_total: u64 = 0;
    // (destination identity, protocol) -> new connections since the start; named when
    // published.
    let mut new_flows: BTreeMap<(u32, u8), u64> = BTreeMap::new();
    let mut published = Instant::now();
    loop {
        let batch = tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            batch = reader.next_batch() => batch?,
            _ = ticker.tick() => {
                if let Some(n) = log.tick(Instant::now()) {
                    log_suppressed(n);
                }
                let more = lost.more();
                if more > 0 {
                    lost_total += more;
                    tracing::warn!(target: "netctl::drops", "the dataplane lost {more} events (ring buffer full)");
                    let _ = tx.send(Bytes::from(LostView::new(more, LOST_BY_DATAPLANE).line()));
                }
                let plan = ctx.plan.borrow().clone();
                ctx.board
                    .publish("events", status(seen, dropped, lost_total, tx.receiver_count(), &new_flows, &plan))
                    .await;
                published = Instant::now();
                continue;
            }
        };
        // The state, not a copy of its plan: the plan's name index is built once per
        // state and every event of every batch is named from it.
        let plan = ctx.plan.borrow().clone();
        let clock = BootClock::now()?;
        let now = Instant::now();
        // Named only when someone reads it: at thousands of new connections a second,
        // counting is all most events need. Asked once a batch (it takes a lock); a
        // reader who joins mid-batch gets events from the next one.
        let streamed = tx.receiver_count() > 0;
        for e in &batch {
            seen += 1;
            let logged = e.kind == EVENT_DROP && log.admit(now);
            if e.kind == EVENT_DROP {
                dropped += 1;
            } else if e.kind == EVENT_NEW_FLOW {
                *new_flows
                    .entry((e.dst_identity, e.tuple.proto))
                    .or_default() += 1;
            }
            if !(streamed || logged) {
                continue;
            }
            let view = events::decode(e, &plan, &clock);
            if logged {
                log_drop(&view);
            }
            if streamed && let Ok(mut line) = serde_json::to_vec(&view) {
                line.push(b'\n');
                let _ = tx.send(Bytes::from(line));
            }
        }
        if now.duration_since(published) >= PUBLISH_EVERY {
            ctx.board
                .publish(
                    "events",
                    status(
                        seen,
                        dropped,
                        lost_total,
                        tx.receiver_count(),
                        &new_flows,
                        &plan,
                    ),
                )
                .await;
            published = now;
        }
    }
}

/// The component's entry on the status board (read by the metrics endpoint).
fn status(
    seen: u64,
    dropped: u64,
    lost: u64,
    clients: usize,
    new_flows: &BTreeMap<(u32, u8), u64>,
    plan: &Plan,
) -> serde_json::Value {
    let names = plan.names();
    json!({
        "events": seen,
        "drops": dropped,
        "lost": lost,
        "clients": clients,
        "new_connections": new_flows
            .iter()
            .map(|((identity, proto), n)| {
                json!({
                    "service": names.identity(*identity),
                    "protocol": crate::cli_protocol_name(*proto),
                    "count": n,
                })
            })
            .collect::<Vec<_>>(),
    })
}

/// A client's stream: events from the broadcast, and a note when it fell behind.
fn subscribe(tx: &broadcast::Sender<Bytes>) -> mpsc::Receiver<Bytes> {
    let mut rx = tx.subscribe();
    let (out, client) = mpsc::channel(PER_CLIENT);
    tokio::spawn(async move {
        loop {
            let chunk = match rx.recv().await {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Bytes::from(LostView::new(n, LOST_BY_CLIENT).line())
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if out.send(chunk).await.is_err() {
                return; // the client went away
            }
        }
    });
    client
}

/// Logs drops, at most `LOG_PER_SECOND` a second; the rest are counted and summarised
/// (by [`DropLog::tick`], once their second is over).
#[derive(Default)]
struct DropLog {
    second: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

fn log_drop(e: &events::EventView) {
    tracing::warn!(
        target: "netctl::drops",
        reason = %e.reason,
        "DROP {} {}:{} ({}) -> {}:{} ({}) at {}",
        e.protocol, e.src, e.src_port, e.src_identity, e.dst, e.dst_port, e.dst_identity, e.hook
    );
}

impl DropLog {
    /// Whether a drop at `now` may be logged (else it is counted).
    fn admit(&mut self, now: Instant) -> bool {
        if let Some(n) = self.tick(now) {
            log_suppressed(n);
        }
        if self.second.is_none() {
            self.second = Some(now);
        }
        if self.logged < LOG_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Ends the second that began with its first drop once it is over: the number of
    /// drops not logged in it, if any.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        let start = self.second?;
        if now.duration_since(start) < Duration::from_secs(1) {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.second = None;
        self.logged = 0;
        (n > 0).then_some(n)
    }
}

fn log_suppressed(n: u64) {
    tracing::warn!(target: "netctl::drops", "{n} more drops not logged (see `netctl drops`)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_over_the_log_budget_are_summarised_when_their_second_is_over() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        let logged = (0..25).filter(|_| log.admit(t0)).count();
        assert_eq!(logged, LOG_PER_SECOND as usize);
        // No further drop arrives: the timer's tick writes the summary, once.
        assert_eq!(
            log.tick(t0 + Duration::from_millis(500)),
            None,
            "second not over"
        );
        assert_eq!(log.tick(t0 + Duration::from_millis(1001)), Some(5));
        assert_eq!(log.tick(t0 + Duration::from_millis(3000)), None);
        // A new second logs again.
        assert!(log.admit(t0 + Duration::from_secs(4)));
        assert_eq!(
            log.tick(t0 + Duration::from_secs(6)),
            None,
            "nothing suppressed"
        );
    }
}
