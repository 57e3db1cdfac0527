//! The controller's load-balancing component: keeps the dataplane's frontends (eBPF service
//! and backend maps, or iptables chains) in step with the topology's services, the
//! instances the registry knows (polled twice a second; the topology's replicas until it
//! answers), their health and drain requests (within a tick, 200 ms), and collects expired
//! conntrack entries (eBPF).
//!
//! Each tick only looks at what changed (the plan, health results, drains, host
//! addresses); the desired state is recomputed and the writer called only then (and every
//! few seconds as a resync), and the status (every backend, with its health) is built
//! only when somebody reads it, so a platform of 10,000 services costs little while steady.
//!
//! API: `POST /v1/lb/drain` `{"service": "product", "instance": "product-2", "drain": true}`
//! (false undoes it); `GET /v1/lb/drains`.

pub mod desired;
pub mod health;
pub mod registry;
pub mod registry_list;
pub mod sources;

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
    desired::{Inputs, Instance},
    health::{Checker, Health, Probe},
    sources::BackendSource,
};
use super::component::{AgentCtx, ApiError, ComponentFuture, Handler};
use crate::{
    dataplane::{
        self,
        host_facts::HostFacts,
        lb::{BackendKey, Desired, GcReport, LbWriter, Refs},
    },
    endpoint::Endpoint,
    instance::agent_status::{BackendState, BackendStatus, LbStatus},
    net::netlink::Netlink,
    topology::Plan,
};

const TICK: Duration = Duration::from_millis(200);
const GC_EVERY: Duration = Duration::from_secs(5);
const HOST_ADDRS_EVERY: Duration = Duration::from_secs(5);
/// Even when no input changed, the dataplane is reconciled this often (drain timeouts,
/// anything changed behind the controller's back).
const RESYNC_EVERY: Duration = Duration::from_secs(5);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

type Drains = Arc<RwLock<HashSet<(String, String)>>>;

/// Every instance and health check, computed once per plan and registry answer (not per
/// tick: a platform of 10,000 services has 30,000 instances).
struct Inventory {
    instances: Vec<Instance>,
}

impl Inventory {
    /// The registry's instances (the topology's until it answers), and every attached
    /// endpoint that is a member of a service: a runtime's container labelled `product`
    /// is a product backend whether or not it registers.
    fn of(plan: &Plan, registry: &registry::Watch, attached: &[Endpoint]) -> Self {
        let sources: [&dyn BackendSource; 3] = [
            &sources::Topology,
            &sources::Registry(registry.known()),
            &sources::Endpoints(attached),
        ];
        Self {
            instances: sources::inventory(plan, &sources),
        }
    }

    /// Each health check once: instances of many services often share an address:port.
    fn probes(&self) -> Vec<Probe> {
        let set: HashSet<Probe> = self.instances.iter().map(Instance::probe).collect();
        set.into_iter().collect()
    }
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    let mut plans = ctx.plan.clone();
    let mut current: Arc<Plan> = plans.borrow_and_update().clone();
    // The dataplane this controller writes is fixed for its life (a new dataplane gets a
    // new controller, see `Resource::depends_on`).
    let mut writer = dataplane::open_lb_writer(&current, &ctx.instance)?;
    // What served before this controller started keeps serving until its first health
    // check says otherwise: a replaced controller must not empty the maps meanwhile.
    let adopted: HashSet<Ipv4Addr> = writer.serving_addrs();
    let mut registry = registry::Watch::default();
    let mut registry_seen = 0;
    let mut checker = Checker::default();
    let drains: Drains = Arc::default();
    register_routes(&ctx, drains.clone()).await;
    let netlink = Netlink::current()?;

    let mut inventory: Option<Inventory> = None;
    let mut conntrack = ConntrackPasses::default();
    let mut host_addrs = HostAddrs::default();
    let mut last_health: HashMap<Probe, bool> = HashMap::new();
    let mut last_drains: HashSet<(String, String)> = HashSet::new();
    let mut last_apply = Instant::now();
    // The status lists every backend: it is built only for a reader (`/v1/status`).
    let mut status_requests = ctx.board.publish_on_request("lb").await;
    let mut readers = Vec::new();
    let mut desired = Desired::default();
    let mut apply_errors = ApplyErrors::default();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            _ = plans.changed() => {},
            _ = ticker.tick() => {},
            () = registry.answered() => {},
            () = checker.changed() => {},
            Some(reader) = status_requests.recv() => readers.push(reader),
        }
        let mut dirty = false;
        let latest = plans.borrow_and_update().clone();
        registry.tick(&latest).await;
        if inventory.is_none()
            || !Arc::ptr_eq(&latest, &current)
            || registry.generation() != registry_seen
        {
            current = latest;
            registry_seen = registry.generation();
            let inv = Inventory::of(&current, &registry, &ctx.attached.current());
            checker.set_probes(&inv.probes()).await;
            inventory = Some(inv);
            if let Err(e) = writer.set_config_flags(current.dataplane.config_flags()) {
                tracing::warn!("{e:#}");
            }
            dirty = true;
        }
        let plan = &*current;
        let Some(inv) = &inventory else { continue };

        dirty |= host_addrs.refresh(&netlink, plan).await;

        let results = checker.results().await;
        let health: HashMap<Probe, bool> = results.iter().map(|(p, h)| (p.clone(), h.up)).collect();
        if health != last_health {
            last_health = health;
            dirty = true;
        }
        let drained = drains.read().await.clone();
        if drained != last_drains {
            last_drains = drained;
            dirty = true;
        }

        // Draining backends may be idle after a pass.
        dirty |= conntrack.collect().await && writer.any_draining();
        conntrack.start_if_due(writer.as_ref());

        if dirty || last_apply.elapsed() >= RESYNC_EVERY || apply_errors.retry_due(last_apply) {
            last_apply = Instant::now();
            desired = desired::compute(&Inputs {
                plan,
                instances: &inv.instances,
                health: &|i: &Instance| {
                    last_health
                        .get(&i.probe())
                        .copied()
                        .or_else(|| adopted.contains(&i.addr).then_some(true))
                },
                drains: &last_drains,
                host_addrs: &host_addrs.addrs,
            });
            apply_errors.report(write(writer.as_mut(), &desired, conntrack.refs.as_ref()));
        }

        if !readers.is_empty() {
            while let Ok(reader) = status_requests.try_recv() {
                readers.push(reader);
            }
            let mut status = status(
                plan,
                &inv.instances,
                &results,
                &desired,
                writer.as_ref(),
                &last_drains,
                &conntrack.summary,
            );
            status.registry = registry.status();
            status.errors = json!(apply_errors.current);
            let status = serde_json::to_value(&status).unwrap_or_default();
            for reader in readers.drain(..) {
                // A reader that gave up has dropped its end: nothing to do.
                let _ = reader.send(status.clone());
            }
        }
    }
}

/// Writes `desired`, logging what changed. A pass that could not write everything returns
/// its errors to be logged and tried again soon; it never ends the component (the maps
/// would freeze with dead backends in them).
fn write(writer: &mut dyn LbWriter, desired: &Desired, refs: Option<&Refs>) -> Vec<String> {
    match writer.apply(desired, refs) {
        Ok(changes) => {
            if changes.any() {
                tracing::info!(
                    frontends_written = changes.frontends_written,
                    frontends_removed = changes.frontends_removed,
                    backends_written = changes.backends_written,
                    backends_removed = changes.backends_removed,
                    "load-balancing dataplane updated"
                );
            }
            changes.errors
        }
        Err(e) => vec![format!("{e:#}")],
    }
}

/// The dataplane's own conntrack passes (eBPF; in iptables mode the kernel's conntrack
/// ages its entries itself), off the async threads: a full table is a lot of syscalls.
struct ConntrackPasses {
    task: Option<tokio::task::JoinHandle<anyhow::Result<(GcReport, Instant)>>>,
    last: Instant,
    /// Live connections per backend from the last pass (what lets a drained backend go).
    refs: Option<Refs>,
    /// The last pass for the status, or null.
    summary: Value,
}

impl Default for ConntrackPasses {
    fn default() -> Self {
        Self {
            task: None,
            last: Instant::now() - GC_EVERY,
            refs: None,
            summary: Value::Null,
        }
    }
}

impl ConntrackPasses {
    /// Takes in a finished pass; true when one finished.
    async fn collect(&mut self) -> bool {
        let Some(task) = self.task.take_if(|t| t.is_finished()) else {
            return false;
        };
        match task.await {
            Ok(Ok((report, taken))) => {
                self.summary = json!({
                    "entries": report.entries,
                    "expired_last_pass": report.expired,
                    "renewed_last_pass": report.renewed,
                });
                self.refs = Some(Refs {
                    per_backend: report.per_backend,
                    taken,
                });
                true
            }
            Ok(Err(e)) => {
                tracing::warn!("conntrack GC: {e:#}");
                false
            }
            Err(e) => {
                tracing::warn!("conntrack GC task: {e}");
                false
            }
        }
    }

    fn start_if_due(&mut self, writer: &dyn LbWriter) {
        if self.task.is_some() || self.last.elapsed() < GC_EVERY {
            return;
        }
        let Some(job) = writer.conntrack_gc() else {
            return;
        };
        self.last = Instant::now();
        self.task = Some(tokio::task::spawn_blocking(move || {
            let taken = Instant::now();
            Ok((job()?, taken))
        }));
    }
}

/// The host addresses that serve port forwards, looked up again every few seconds (an
/// uplink may get a new address).
struct HostAddrs {
    addrs: Vec<Ipv4Addr>,
    scanned: Instant,
}

impl Default for HostAddrs {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            scanned: Instant::now() - HOST_ADDRS_EVERY,
        }
    }
}

impl HostAddrs {
    /// True when they changed.
    async fn refresh(&mut self, netlink: &Netlink, plan: &Plan) -> bool {
        if self.scanned.elapsed() < HOST_ADDRS_EVERY {
            return false;
        }
        self.scanned = Instant::now();
        let addrs = port_forward_addrs(netlink, plan).await.unwrap_or_else(|e| {
            tracing::warn!("finding the uplinks' addresses: {e:#}");
            vec![Ipv4Addr::LOCALHOST]
        });
        if addrs == self.addrs {
            return false;
        }
        self.addrs = addrs;
        true
    }
}

/// How often a pass that could not write everything is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often the same errors are logged again.
const RELOG_EVERY: Duration = Duration::from_secs(30);

/// What the last pass could not write: logged when it changes (and every 30 s while it
/// lasts), shown in the status, and tried again every second.
#[derive(Default)]
struct ApplyErrors {
    current: Vec<String>,
    logged: Option<Instant>,
}

impl ApplyErrors {
    fn report(&mut self, errors: Vec<String>) {
        let now = Instant::now();
        if errors.is_empty() {
            if !self.current.is_empty() {
                tracing::info!("load balancing: every frontend written again");
            }
            *self = ApplyErrors::default();
            return;
        }
        let changed = errors != self.current;
        if changed || self.logged.is_none_or(|t| t.elapsed() >= RELOG_EVERY) {
            for e in &errors {
                tracing::warn!("load balancing: {e} (retrying)");
            }
            self.logged = Some(now);
        }
        self.current = errors;
    }

    /// `last_apply`: when the pass that reported them ran.
    fn retry_due(&self, last_apply: Instant) -> bool {
        !self.current.is_empty() && last_apply.elapsed() >= RETRY_EVERY
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

/// The component's status: every backend of every service (state, health), in O(n).
fn status(
    plan: &Plan,
    instances: &[Instance],
    results: &HashMap<Probe, Health>,
    desired: &Desired,
    writer: &dyn LbWriter,
    drains: &HashSet<(String, String)>,
    gc: &Value,
) -> LbStatus {
    let in_lb: HashSet<BackendKey> = desired
        .frontends
        .values()
        .flat_map(|f| f.backends.iter().map(|(b, _)| *b))
        .collect();
    let mut by_service: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in instances {
        by_service.entry(i.service.as_str()).or_default().push(i);
    }
    let mut backends = Vec::new();
    for svc in &plan.services {
        for inst in by_service.get(svc.name.as_str()).into_iter().flatten() {
            let health = results.get(&inst.probe());
            for port in &svc.ports {
                let key = BackendKey {
                    addr: inst.addr,
                    port: inst.target_port.unwrap_or(port.port),
                    proto: port.proto,
                };
                let state = if drains.contains(&(svc.name.clone(), inst.name.clone()))
                    || writer.is_draining(&key)
                {
                    BackendState::Draining
                } else if in_lb.contains(&key) {
                    BackendState::Active
                } else if health.is_some_and(|h| !h.up) {
                    BackendState::Down
                } else {
                    BackendState::Unchecked
                };
                backends.push(BackendStatus {
                    service: svc.name.clone(),
                    instance: inst.name.clone(),
                    addr: inst.addr,
                    port: key.port,
                    proto: port.proto.name().to_string(),
                    weight: inst.weight,
                    state,
                    backend_id: writer.backend_id(&key),
                    health: health.cloned(),
                    source: inst.source.to_string(),
                });
            }
        }
    }
    LbStatus {
        dataplane: plan.dataplane.mode.name().to_string(),
        socket_lb: plan.dataplane.socket_lb_active(),
        backends,
        conntrack: gc.clone(),
        registry: Value::Null,
        errors: Value::Null,
    }
}
