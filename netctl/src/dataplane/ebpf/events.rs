//! Reading the `EVENTS` ring buffer (drops and new flows) and turning events into named,
//! serializable records. The ring buffer has one reader: the controller when it runs
//! (it fans events out to `netctl monitor` clients), `netctl monitor` itself otherwise.

use std::{net::Ipv4Addr, os::fd::AsRawFd, time::Duration};

use anyhow::Context;
use aya::maps::{Map, MapData, RingBuf};
use netctl_common::{
    DropReason,
    event::{
        EVENT_DROP, EVENTS_POLL_MS, Event, HOOK_ENDPOINT_EGRESS, HOOK_ENDPOINT_INGRESS,
        HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS,
    },
    maps::EVENTS,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::{Pins, clock::BootClock};
use crate::{policy::identity, topology::Plan};

/// An event for people and scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// Unix seconds.
    pub time: f64,
    /// `drop` or `flow`.
    pub kind: String,
    /// Drop reason name (`policy-denied`, ...); empty for flows.
    pub reason: String,
    pub protocol: String,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub src_name: String,
    pub dst_name: String,
    /// Identities the dataplane judged by (`web`, `host`, `world`).
    pub src_identity: String,
    pub dst_identity: String,
    pub hook: String,
    pub ifindex: u32,
}

/// Who lost events: the dataplane (the ring buffer was full: `COUNTERS[events_lost]`
/// grew) or one client of the controller's stream (it fell behind).
pub const LOST_BY_DATAPLANE: &str = "dataplane";
pub const LOST_BY_CLIENT: &str = "client";

/// The record a stream carries in place of events that were lost:
/// `{"kind":"lost","count":N,"by":"dataplane"|"client"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostView {
    pub kind: String,
    pub count: u64,
    pub by: String,
}

impl LostView {
    pub fn new(count: u64, by: &str) -> Self {
        Self {
            kind: "lost".into(),
            count,
            by: by.into(),
        }
    }

    /// As one JSON line, newline included.
    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

pub fn decode(e: &Event, plan: &Plan, clock: &BootClock) -> EventView {
    let src = Ipv4Addr::from(e.tuple.src_addr);
    let dst = Ipv4Addr::from(e.tuple.dst_addr);
    EventView {
        time: clock.unix(e.time_ns),
        kind: if e.kind == EVENT_DROP { "drop" } else { "flow" }.into(),
        reason: if e.kind == EVENT_DROP {
            DropReason::from_u32(e.reason)
                .map_or_else(|| format!("#{}", e.reason), |r| r.name().to_string())
        } else {
            String::new()
        },
        protocol: crate::cli_protocol_name(e.tuple.proto).into(),
        src,
        src_port: e.tuple.src_port,
        dst,
        dst_port: e.tuple.dst_port,
        src_name: plan.name_of(src),
        dst_name: plan.name_of(dst),
        src_identity: identity::name(plan, e.src_identity),
        dst_identity: identity::name(plan, e.dst_identity),
        hook: match e.hook {
            HOOK_ENDPOINT_INGRESS => "endpoint-ingress",
            HOOK_ENDPOINT_EGRESS => "endpoint-egress",
            HOOK_UPLINK_INGRESS => "uplink-ingress",
            HOOK_UPLINK_EGRESS => "uplink-egress",
            _ => "?",
        }
        .into(),
        ifindex: e.ifindex,
    }
}

/// The pinned ring buffer, awaitable.
pub struct EventReader {
    ring: AsyncFd<RingBufFd>,
}

struct RingBufFd(RingBuf<MapData>);

impl AsRawFd for RingBufFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl EventReader {
    /// Must be called inside a tokio runtime.
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let data =
            MapData::from_pin(pins.map(EVENTS)).context("opening the pinned EVENTS ring buffer")?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).context("EVENTS is not a ring buffer")?;
        // SAFETY: the ring buffer owns its fd, which stays open (and is not registered
        // elsewhere) for as long as the AsyncFd that owns the ring buffer.
        let ring = unsafe { AsyncFd::register(RingBufFd(ring)) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
        Ok(Self { ring })
    }

    /// Waits for events and returns those available (at least one). The dataplane wakes
    /// the reader only when events pile up (`EVENTS_WAKEUP_BYTES`), so the ring is also
    /// drained every `EVENTS_POLL_MS`.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<Event>> {
        let poll = Duration::from_millis(EVENTS_POLL_MS);
        loop {
            let out = self.drain();
            if !out.is_empty() {
                return Ok(out);
            }
            if let Ok(ready) = tokio::time::timeout(poll, self.ring.readable_mut()).await {
                ready.context("waiting for events")?.clear_ready();
            }
        }
    }

    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let ring = &mut self.ring.get_mut().0;
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the dataplane writes whole `Event`s; read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        out
    }
}
