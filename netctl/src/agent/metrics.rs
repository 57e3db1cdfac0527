//! The controller's Prometheus endpoint (`GET /metrics`, text format 0.0.4) on the
//! topology's `[metrics] listen` address: flows and bytes by service pair, drops by reason
//! and pair, dataplane counters, new connections per service (the dataplane's new-flow
//! events), conntrack fill, map pressure (entries and capacity of every pinned map),
//! backend health. Everything is read fresh from the pinned maps at each scrape (iptables
//! dataplane: drops from the counters of the policy's rules, conntrack from the kernel's
//! `nf_conntrack_count`/`_max` and its table; it has no maps).

use std::{collections::BTreeMap, convert::Infallible, fmt::Write as _};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, MapInfo};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use netctl_common::{DropReason, event::DropPairKey, maps as names};
use serde_json::Value;
use tokio::net::TcpListener;

use super::component::{AgentCtx, ComponentFuture};
use crate::{
    dataplane::ebpf::{Pins, bpf_sys, conntrack, flows, stats},
    instance::StatusBoard,
    policy::identity,
    report,
    topology::{DataplaneMode, Plan},
};

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    let mut plan = ctx.plan.clone();
    loop {
        let listen = plan.borrow().metrics_listen;
        let Some(addr) = listen else {
            // Off: wait for a change of the topology.
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                r = plan.changed() => { if r.is_err() { return Ok(()); } continue; }
            }
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics");
        ctx.board
            .publish("metrics", serde_json::json!({ "listen": addr }))
            .await;
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                r = plan.changed() => {
                    if r.is_err() { return Ok(()); }
                    if plan.borrow().metrics_listen != Some(addr) { break; }
                }
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    serve(stream, &ctx);
                }
            }
        }
    }
}

fn serve(stream: tokio::net::TcpStream, ctx: &AgentCtx) {
    let (plans, board, instance) = (ctx.plan.clone(), ctx.board.clone(), ctx.instance.clone());
    tokio::spawn(async move {
        let service = service_fn(move |req: Request<Incoming>| {
            let (plans, board, instance) = (plans.clone(), board.clone(), instance.clone());
            async move {
                if req.uri().path() != "/metrics" {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    return Ok::<_, Infallible>(r);
                }
                let plan = plans.borrow().clone();
                let body = match render(&plan, &instance, &board).await {
                    Ok(text) => text,
                    Err(e) => format!("# error: {e:#}\n"),
                };
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(r)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// The metrics text, read from the maps (off the async threads) and the status board.
pub async fn render(plan: &Plan, instance: &str, board: &StatusBoard) -> anyhow::Result<String> {
    let status = board.snapshot().await;
    let (plan, instance) = (plan.clone(), instance.to_string());
    tokio::task::spawn_blocking(move || render_maps(&plan, &instance, &status))
        .await
        .context("metrics task")?
}

fn render_maps(plan: &Plan, instance: &str, status: &Value) -> anyhow::Result<String> {
    let mut m = Metrics::default();
    match plan.dataplane.mode {
        DataplaneMode::Ebpf => ebpf_metrics(&mut m, plan, &Pins::for_instance(instance))?,
        DataplaneMode::Iptables => iptables_metrics(&mut m, plan, instance)?,
    }
    board_metrics(&mut m, status);
    Ok(m.finish())
}

/// What the pinned maps say: flows, drops, dataplane counters, conntrack, map fill.
fn ebpf_metrics(m: &mut Metrics, plan: &Plan, pins: &Pins) -> anyhow::Result<()> {
    let all_flows = flows::read(pins)?;
    let analysis = report::analyse(plan, &all_flows, None);
    m.gauge(
        "netctl_flow_entries",
        "Flow directions in the FLOWS map.",
        &[],
        all_flows.len() as f64,
    );
    for (src, dst, c) in &analysis.pairs {
        let l = [("source", src.as_str()), ("destination", dst.as_str())];
        m.counter(
            "netctl_flow_packets_total",
            "Packets between services (eBPF flow counters).",
            &l,
            c.packets as f64,
        );
        m.counter(
            "netctl_flow_bytes_total",
            "Bytes between services (eBPF flow counters).",
            &l,
            c.bytes as f64,
        );
    }
    for (proto, c) in &analysis.protocols {
        m.counter(
            "netctl_protocol_packets_total",
            "Packets by protocol.",
            &[("protocol", proto.as_str())],
            c.packets as f64,
        );
    }
    for (svc, c) in &analysis.talkers {
        m.counter(
            "netctl_service_sent_packets_total",
            "Packets a service sent.",
            &[("service", svc.as_str())],
            c.packets as f64,
        );
    }

    for (reason, n) in stats::drops(pins)? {
        m.counter(
            "netctl_drops_total",
            "Packets dropped by the dataplane, by reason.",
            &[("reason", reason.name())],
            n as f64,
        );
    }
    let pairs_data = MapData::from_pin(pins.map(names::DROP_PAIRS)).context("DROP_PAIRS")?;
    let pairs: HashMap<_, DropPairKey, u64> = HashMap::try_from(Map::LruHashMap(pairs_data))?;
    let identities = plan.names();
    for (k, n) in pairs.iter().filter_map(Result::ok) {
        let (src, dst) = (
            identities.identity(k.src_identity),
            identities.identity(k.dst_identity),
        );
        let reason = DropReason::from_u32(k.reason).map_or("?", DropReason::name);
        m.counter(
            "netctl_drop_pairs_total",
            "Packets dropped, by source and destination identity and reason.",
            &[("source", &src), ("destination", &dst), ("reason", reason)],
            n as f64,
        );
    }
    for (name, n) in stats::counters(pins)? {
        m.counter(
            "netctl_dataplane_events_total",
            "Dataplane event counters.",
            &[("event", name)],
            n as f64,
        );
    }

    let ct = conntrack::open(pins)?;
    let entries = conntrack::entries(&ct);
    let conns = conntrack::connections_of(&entries)?;
    let ct_entries = entries.len() as u64;
    // The two biggest maps were just read whole: their counts are known, not walked again.
    let pressure = map_pressure(
        pins,
        &[
            (names::FLOWS, all_flows.len() as u64),
            (names::CT, ct_entries),
        ],
    );
    m.gauge(
        "netctl_conntrack_entries",
        "Entries in the conntrack map (two per connection).",
        &[],
        ct_entries as f64,
    );
    m.gauge(
        "netctl_conntrack_capacity",
        "Capacity of the conntrack map.",
        &[],
        f64::from(plan.dataplane.conntrack_max),
    );
    service_connections(m, plan, &conns);
    for p in &pressure {
        let l = [("map", p.name.as_str())];
        m.gauge(
            "netctl_map_capacity",
            "Capacity (max entries) of each pinned map.",
            &l,
            f64::from(p.max_entries),
        );
        if let Some(n) = p.entries {
            m.gauge(
                "netctl_map_entries",
                "Entries in each pinned hash map.",
                &l,
                n as f64,
            );
            if p.max_entries > 0 {
                m.gauge(
                    "netctl_map_fill_ratio",
                    "Entries over capacity of each pinned hash map (LRU maps evict at 1).",
                    &l,
                    n as f64 / f64::from(p.max_entries),
                );
            }
        }
    }
    Ok(())
}

/// Tracked connections to each service, by state.
fn service_connections(m: &mut Metrics, plan: &Plan, conns: &[conntrack::Connection]) {
    let mut per_service: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for c in conns {
        let svc = plan
            .service_by_id(c.service_id)
            .map_or_else(|| report::data::party(plan, c.backend), |s| s.name.clone());
        *per_service.entry((svc, c.state)).or_default() += 1;
    }
    for ((svc, st), n) in &per_service {
        m.gauge(
            "netctl_service_connections",
            "Tracked connections to each service, by state.",
            &[("service", svc.as_str()), ("state", st)],
            *n as f64,
        );
    }
}

/// One pinned map's fill.
struct Pressure {
    name: String,
    max_entries: u32,
    /// For hash maps (arrays and ring buffers are always "full").
    entries: Option<u64>,
}

/// Every pinned map: capacity, and for the hash maps (LB, policy, identities, rate
/// limits, drop pairs, flows, conntrack, socket reverse NAT) how many entries they hold.
/// `known`: entry counts already read, by map name.
fn map_pressure(pins: &Pins, known: &[(&str, u64)]) -> Vec<Pressure> {
    use aya::maps::MapType;
    let mut out = Vec::new();
    for name in pins.pinned_maps() {
        let path = pins.map(&name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let hash = matches!(
            info.map_type(),
            Ok(MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash)
        );
        let entries = if let Some(&(_, n)) = known.iter().find(|(k, _)| *k == name) {
            Some(n)
        } else if hash {
            // An LRU map that is being written may briefly show more keys than fit: a
            // bound keeps a scrape short whatever happens.
            let limit = u64::from(info.max_entries()) * 2;
            match bpf_sys::count_keys(&path, info.key_size(), limit) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::debug!("{e:#}");
                    None
                }
            }
        } else {
            None
        };
        out.push(Pressure {
            name,
            max_entries: info.max_entries(),
            entries,
        });
    }
    out
}

/// The kernel's conntrack table, host-wide: what the iptables dataplane keeps its NAT in.
const NF_CONNTRACK_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
const NF_CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

fn read_number(path: &str) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The iptables dataplane has no maps: its drops are the counters of the policy's rules,
/// its connections the kernel's conntrack.
fn iptables_metrics(m: &mut Metrics, plan: &Plan, instance: &str) -> anyhow::Result<()> {
    if let (Some(count), Some(max)) = (
        read_number(NF_CONNTRACK_COUNT),
        read_number(NF_CONNTRACK_MAX),
    ) {
        m.gauge(
            "netctl_conntrack_entries",
            "Entries in the kernel's conntrack table (host-wide: iptables dataplane).",
            &[],
            count,
        );
        m.gauge(
            "netctl_conntrack_capacity",
            "Capacity of the kernel's conntrack table (nf_conntrack_max).",
            &[],
            max,
        );
    }
    match crate::dataplane::iptables::conntrack::connections(plan) {
        Ok(conns) => service_connections(m, plan, &conns),
        Err(e) => tracing::debug!("{e:#}"),
    }
    let chains = crate::dataplane::iptables::Chains::for_instance(instance);
    let d = crate::dataplane::iptables::policy::drops(
        &chains,
        &crate::net::iptables::save_counted("filter")?,
    );
    for reason in [DropReason::PolicyDenied, DropReason::RateLimited] {
        m.counter(
            "netctl_drops_total",
            "Packets dropped by the dataplane, by reason.",
            &[("reason", reason.name())],
            d.by_reason.get(reason.name()).copied().unwrap_or(0) as f64,
        );
    }
    for ((src, dst, reason), n) in &d.by_pair {
        let (src, dst) = (identity::name(plan, *src), identity::name(plan, *dst));
        m.counter(
            "netctl_drop_pairs_total",
            "Packets dropped, by source and destination identity and reason.",
            &[("source", &src), ("destination", &dst), ("reason", reason)],
            *n as f64,
        );
    }
    Ok(())
}

/// What the controller's components report: backend health and state, events read.
fn board_metrics(m: &mut Metrics, status: &Value) {
    if let Some(backends) = status["components"]["lb"]["backends"].as_array() {
        for b in backends {
            let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
            let port = b["port"].to_string();
            let l = [
                ("service", s("service")),
                ("instance", s("instance")),
                ("address", s("addr")),
                ("port", port),
            ];
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let up = b["health"]["up"].as_bool().unwrap_or(false);
            m.gauge(
                "netctl_backend_up",
                "1 when the backend passes its health check.",
                &l,
                if up { 1.0 } else { 0.0 },
            );
            m.gauge(
                "netctl_backend_active",
                "1 when the backend takes new connections (in the LB maps, not draining).",
                &l,
                if b["state"] == "active" { 1.0 } else { 0.0 },
            );
            if let Some(ms) = b["health"]["latency_ms"].as_f64() {
                m.gauge(
                    "netctl_backend_health_latency_seconds",
                    "Latency of the last successful health check.",
                    &l,
                    ms / 1000.0,
                );
            }
        }
    }
    for c in status["components"]["events"]["new_connections"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        let (service, protocol) = (s("service"), s("protocol"));
        m.counter(
            "netctl_service_new_connections_total",
            "New connections to each service (destination identity) and protocol, from the \
             dataplane's new-flow events since the controller started.",
            &[("service", &service), ("protocol", &protocol)],
            c["count"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(n) = status["components"]["events"]["events"].as_u64() {
        m.counter(
            "netctl_events_read_total",
            "Events the controller read from the ring buffer.",
            &[],
            n as f64,
        );
    }
}

/// Builds the exposition text, one HELP/TYPE header per metric name.
#[derive(Default)]
struct Metrics {
    families: BTreeMap<&'static str, (String, Vec<String>)>,
}

impl Metrics {
    fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, "counter", labels, value);
    }

    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, "gauge", labels, value);
    }

    fn sample(
        &mut self,
        name: &'static str,
        help: &str,
        kind: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let family = self.families.entry(name).or_insert_with(|| {
            (
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
                Vec::new(),
            )
        });
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        family.1.push(line);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for (_, (header, lines)) in self.families {
            out.push_str(&header);
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_groups_samples_under_one_header() {
        let mut m = Metrics::default();
        m.counter("a_total", "A.", &[("x", "1")], 2.0);
        m.gauge("b", "B.", &[], 0.5);
        m.counter("a_total", "A.", &[("x", "q\"uote")], 3.0);
        assert_eq!(
            m.finish(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\na_total{x=\"q\\\"uote\"} 3\n\
             # HELP b B.\n# TYPE b gauge\nb 0.5\n"
        );
    }
}
