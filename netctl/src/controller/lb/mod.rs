//! The controller's load-balancing component: keeps the eBPF service and backend maps in
//! step with the topology's services, the instances the registry knows (polled twice a
//! second; the topology's replicas until it answers), their health and
//! drain requests (within a tick, 200 ms), and collects expired conntrack entries.
//!
//! API: `POST /v1/lb/drain` `{"service": "product", "instance": "product-2", "drain": true}`
//! (false undoes it); `GET /v1/lb/drains`.

pub mod apply;
pub mod desired;
pub mod health;
pub mod registry;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use self::{
    apply::{Reconciler, Refs},
    desired::{BackendKey, Desired, Inputs, Instance},
    health::{Checker, Health, Probe},
};
use super::agent::{AgentCtx, ApiError, ComponentFuture, Handler};
use crate::{
    controller::resource::HostFacts,
    dataplane::{Pins, conntrack, lb::LbMaps},
    net::netlink::Netlink,
    topology::{Plan, Proto},
};

const TICK: Duration = Duration::from_millis(200);
const GC_EVERY: Duration = Duration::from_secs(5);
const HOST_ADDRS_EVERY: Duration = Duration::from_secs(5);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

type Drains = Arc<RwLock<HashSet<(String, String)>>>;

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    let pins = Pins::for_instance(&ctx.instance);
    let mut reconciler = Reconciler::adopt(LbMaps::open(&pins)?);
    reconciler
        .maps()
        .set_host_netns_cookie(crate::net::netns::current_cookie()?)?;
    // What served before this controller started keeps serving until its first health
    // check says otherwise: a replaced controller must not empty the maps meanwhile.
    let adopted = reconciler.serving_addrs();
    let mut checker = Checker::default();
    let mut registry = registry::Watch::default();
    let drains: Drains = Arc::default();
    register_routes(&ctx, drains.clone()).await;
    let netlink = Netlink::current()?;

    let mut state = ctx.state.clone();
    let mut refs: Option<Refs> = None;
    let mut gc_task: Option<
        tokio::task::JoinHandle<anyhow::Result<(conntrack::GcReport, Instant)>>,
    > = None;
    let mut last_gc = Instant::now() - GC_EVERY;
    let mut host_addrs: Vec<Ipv4Addr> = Vec::new();
    let mut last_host_scan = Instant::now() - HOST_ADDRS_EVERY;
    let mut gc_summary = json!(null);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            _ = state.changed() => {},
            _ = ticker.tick() => {},
        }
        let plan = state.borrow().plan.clone();
        let socket_lb = plan.dataplane.socket_lb;
        reconciler
            .maps()
            .set_config_flags(plan.dataplane.config_flags())?;

        if last_host_scan.elapsed() >= HOST_ADDRS_EVERY {
            last_host_scan = Instant::now();
            host_addrs = port_forward_addrs(&netlink, &plan)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("finding the uplinks' addresses: {e:#}");
                    vec![Ipv4Addr::LOCALHOST]
                });
        }

        registry.tick(&plan).await;
        let instances = registry::instances(&plan, registry.known());
        let probes: Vec<(Instance, Probe)> = instances
            .iter()
            .map(|i| (i.clone(), probe_for(&plan, i)))
            .collect();
        checker
            .set_probes(&probes.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>())
            .await;
        let results = checker.results().await;
        let health_of = |i: &Instance| -> Option<bool> {
            probes
                .iter()
                .find(|(inst, _)| inst == i)
                .and_then(|(_, p)| results.get(p))
                .map(|h| h.up)
                .or_else(|| adopted.contains(&i.addr).then_some(true))
        };
        let drained = drains.read().await.clone();
        let desired = desired::compute(&Inputs {
            plan: &plan,
            instances: &instances,
            health: &health_of,
            drains: &drained,
            host_addrs: &host_addrs,
        });
        let changes = reconciler.apply(&desired, refs.as_ref())?;
        if changes.any() {
            tracing::info!(?changes, "load-balancing maps updated");
        }

        // Conntrack GC off the async threads: a full table is a lot of syscalls.
        if let Some(task) = &gc_task
            && task.is_finished()
            && let Some(task) = gc_task.take()
        {
            match task.await {
                Ok(Ok((report, taken))) => {
                    gc_summary =
                        json!({ "entries": report.entries, "expired_last_pass": report.expired });
                    refs = Some(Refs {
                        per_backend: report.per_backend,
                        taken,
                    });
                }
                Ok(Err(e)) => tracing::warn!("conntrack GC: {e:#}"),
                Err(e) => tracing::warn!("conntrack GC task: {e}"),
            }
        }
        if gc_task.is_none() && last_gc.elapsed() >= GC_EVERY {
            last_gc = Instant::now();
            let pins = pins.clone();
            gc_task = Some(tokio::task::spawn_blocking(move || {
                let taken = Instant::now();
                let mut map = conntrack::open(&pins)?;
                Ok((conntrack::gc(&mut map)?, taken))
            }));
        }

        let status = status(
            &plan,
            &instances,
            &probes,
            &results,
            &desired,
            &reconciler,
            &drained,
            socket_lb,
            &gc_summary,
            registry.status(),
        );
        ctx.board.publish("lb", status).await;
    }
}

/// Health check of an instance: TCP connect to its first TCP port; nothing for UDP-only.
fn probe_for(plan: &Plan, inst: &Instance) -> Probe {
    let port = plan
        .service(&inst.service)
        .and_then(|s| s.ports.iter().find(|p| p.proto == Proto::Tcp))
        .map(|p| p.port);
    match port {
        Some(port) => Probe::Tcp {
            addr: inst.addr,
            port,
        },
        None => Probe::None { addr: inst.addr },
    }
}

/// Loopback and the IPv4 addresses of the uplinks: where host ports are served.
async fn port_forward_addrs(netlink: &Netlink, plan: &Plan) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = vec![Ipv4Addr::LOCALHOST];
    if plan.port_forwards.is_empty() {
        return Ok(out);
    }
    let facts = HostFacts::discover(netlink, plan).await?;
    for uplink in &facts.uplinks {
        let Some(link) = netlink.link(uplink).await? else {
            continue;
        };
        for net in netlink
            .addresses(link.index)
            .await
            .with_context(|| format!("addresses of {uplink}"))?
        {
            out.push(net.addr());
        }
    }
    Ok(out)
}

async fn register_routes(ctx: &AgentCtx, drains: Drains) {
    let set: Handler = {
        let drains = drains.clone();
        Arc::new(move |body: Value| {
            let drains = drains.clone();
            Box::pin(async move {
                let field = |name: &str| {
                    body.get(name)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("missing string field {name:?}"))
                        })
                };
                let service = field("service")?;
                let instance = field("instance")?;
                let drain = body.get("drain").and_then(Value::as_bool).unwrap_or(true);
                let mut d = drains.write().await;
                if drain {
                    d.insert((service.clone(), instance.clone()));
                } else {
                    d.remove(&(service.clone(), instance.clone()));
                }
                Ok(json!({ "service": service, "instance": instance, "drain": drain }))
            })
        })
    };
    let list: Handler = Arc::new(move |_| {
        let drains = drains.clone();
        Box::pin(async move {
            let d = drains.read().await;
            let mut v: Vec<Value> = d
                .iter()
                .map(|(s, i)| json!({ "service": s, "instance": i }))
                .collect();
            v.sort_by_key(|x| x.to_string());
            Ok(Value::Array(v))
        })
    });
    ctx.routes.add("POST", "/v1/lb/drain", set).await;
    ctx.routes.add("GET", "/v1/lb/drains", list).await;
}

#[allow(clippy::too_many_arguments)]
fn status(
    plan: &Plan,
    instances: &[Instance],
    probes: &[(Instance, Probe)],
    results: &HashMap<Probe, Health>,
    desired: &Desired,
    reconciler: &Reconciler,
    drains: &HashSet<(String, String)>,
    socket_lb: bool,
    gc: &Value,
    registry: Value,
) -> Value {
    let mut backends = Vec::new();
    for svc in &plan.services {
        for inst in instances.iter().filter(|i| i.service == svc.name) {
            let health = probes
                .iter()
                .find(|(i, _)| i == inst)
                .and_then(|(_, p)| results.get(p));
            for port in &svc.ports {
                let key = BackendKey {
                    addr: inst.addr,
                    port: port.port,
                    proto: port.proto,
                };
                let in_lb = desired
                    .frontends
                    .values()
                    .any(|f| f.backends.iter().any(|(b, _)| *b == key));
                let state = if drains.contains(&(svc.name.clone(), inst.name.clone()))
                    || reconciler.is_draining(&key)
                {
                    "draining"
                } else if in_lb {
                    "active"
                } else if health.is_some_and(|h| !h.up) {
                    "down"
                } else {
                    "unchecked"
                };
                backends.push(json!({
                    "service": svc.name,
                    "instance": inst.name,
                    "addr": inst.addr,
                    "port": port.port,
                    "proto": port.proto.name(),
                    "weight": inst.weight,
                    "state": state,
                    "backend_id": reconciler.backend_id(&key),
                    "health": health,
                }));
            }
        }
    }
    json!({
        "socket_lb": socket_lb,
        "backends": backends,
        "conntrack": gc,
        "registry": registry,
    })
}
