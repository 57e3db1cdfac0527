//! The controller's events component: the single reader of the dataplane's `EVENTS` ring
//! buffer. Every drop is logged (to the controller log, at most `LOG_PER_SECOND` lines a
//! second, then a count of the rest), and every event goes to the `netctl monitor`
//! clients of `GET /v1/events` as JSON lines. A client too slow to keep up is told how
//! many events it lost (`{"kind":"lost","count":N}`), never silently. New-flow events are
//! counted per destination service and protocol, for the metrics' per-service connection
//! counters (on the status board).

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use netctl_common::event::{EVENT_DROP, EVENT_NEW_FLOW};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::agent::{AgentCtx, ComponentFuture, StreamHandler};
use crate::{
    dataplane::{Pins, clock::BootClock, events},
    topology::DataplaneMode,
};

const LOG_PER_SECOND: u32 = 20;
const FANOUT: usize = 8192;
const PER_CLIENT: usize = 1024;

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    if ctx.state.borrow().plan.dataplane.mode == DataplaneMode::Iptables {
        // No ring buffer: the iptables dataplane logs its drops to the kernel log.
        ctx.shutdown.cancelled().await;
        return Ok(());
    }
    let mut reader = events::EventReader::open(&Pins::for_instance(&ctx.instance))?;
    let (tx, _) = broadcast::channel::<Bytes>(FANOUT);
    let open: StreamHandler = {
        let tx = tx.clone();
        Arc::new(move || subscribe(&tx))
    };
    ctx.routes.add_stream("/v1/events", open).await;

    let mut log = DropLog::default();
    let mut seen: u64 = 0;
    let mut dropped: u64 = 0;
    // (destination service identity, protocol) -> new connections since the start.
    let mut new_flows: std::collections::BTreeMap<(String, String), u64> = Default::default();
    loop {
        let batch = tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            batch = reader.next_batch() => batch?,
        };
        let plan = ctx.state.borrow().plan.clone();
        let clock = BootClock::now()?;
        for e in &batch {
            let view = events::decode(e, &plan, &clock);
            seen += 1;
            if e.kind == EVENT_DROP {
                dropped += 1;
                log.drop(&view);
            } else if e.kind == EVENT_NEW_FLOW {
                *new_flows
                    .entry((view.dst_identity.clone(), view.protocol.clone()))
                    .or_default() += 1;
            }
            if tx.receiver_count() > 0
                && let Ok(mut line) = serde_json::to_vec(&view)
            {
                line.push(b'\n');
                let _ = tx.send(Bytes::from(line));
            }
        }
        ctx.board
            .publish(
                "events",
                json!({
                    "events": seen,
                    "drops": dropped,
                    "clients": tx.receiver_count(),
                    "new_connections": new_flows
                        .iter()
                        .map(|((service, protocol), n)| {
                            json!({ "service": service, "protocol": protocol, "count": n })
                        })
                        .collect::<Vec<_>>(),
                }),
            )
            .await;
    }
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
                    Bytes::from(format!("{{\"kind\":\"lost\",\"count\":{n}}}\n"))
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

/// Logs drops, at most `LOG_PER_SECOND` a second; the rest are counted and summarised.
#[derive(Default)]
struct DropLog {
    second: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl DropLog {
    fn drop(&mut self, e: &events::EventView) {
        let now = Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s).as_secs() >= 1)
        {
            if self.suppressed > 0 {
                tracing::warn!(target: "netctl::drops", "{} more drops not logged (see `netctl drops`)", self.suppressed);
            }
            self.second = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_PER_SECOND {
            self.logged += 1;
            tracing::warn!(
                target: "netctl::drops",
                reason = %e.reason,
                "DROP {} {}:{} ({}) -> {}:{} ({}) at {}",
                e.protocol, e.src, e.src_port, e.src_identity, e.dst, e.dst_port, e.dst_identity, e.hook
            );
        } else {
            self.suppressed += 1;
        }
    }
}
