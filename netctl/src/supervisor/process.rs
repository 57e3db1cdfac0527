//! One supervised process, as a task: prepare, start, watch (exit and health), restart
//! with backoff; stop it when asked, or leave it running when the controller itself
//! stops (a restarted controller adopts it).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    STOP_GRACE, builtin, probe,
    record::{self, Record},
    spawn,
    spec::ProcessSpec,
    status::{HealthResult, ServiceState, ServiceStatus},
    stop,
};
use crate::{
    instance::{ProcessId, StatusBoard, paths},
    topology::HealthCheck,
};

/// First restart delay; doubles per failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the failure count.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Probe interval until the first success (so that `up` returns quickly).
const STARTUP_PROBE: Duration = Duration::from_millis(100);
/// How often an adopted process (not our child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The plan order of the names, and each process's latest status.
type Table = (Vec<String>, HashMap<String, ServiceStatus>);

/// Every process's status, published together on the board in plan order.
#[derive(Clone)]
pub struct Statuses {
    board: StatusBoard,
    inner: Arc<Mutex<Table>>,
}

impl Statuses {
    pub fn new(board: StatusBoard) -> Self {
        Self {
            board,
            inner: Arc::new(Mutex::new((Vec::new(), HashMap::new()))),
        }
    }

    /// The order in which statuses are listed.
    pub fn set_order(&self, names: Vec<String>) {
        self.lock().0 = names;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn update(&self, name: &str, f: impl FnOnce(&mut ServiceStatus)) {
        {
            let mut g = self.lock();
            if let Some(s) = g.1.get_mut(name) {
                f(s);
            }
        }
        self.publish().await;
    }

    pub async fn insert(&self, status: ServiceStatus) {
        self.lock().1.insert(status.name.clone(), status);
        self.publish().await;
    }

    pub async fn remove(&self, name: &str) {
        self.lock().1.remove(name);
        self.publish().await;
    }

    pub async fn publish(&self) {
        let list: Vec<ServiceStatus> = {
            let g = self.lock();
            let mut list: Vec<ServiceStatus> =
                g.0.iter().filter_map(|n| g.1.get(n).cloned()).collect();
            let mut rest: Vec<ServiceStatus> =
                g.1.values()
                    .filter(|s| !g.0.contains(&s.name))
                    .cloned()
                    .collect();
            rest.sort_by(|a, b| a.name.cmp(&b.name));
            list.extend(rest);
            list
        };
        let value = serde_json::to_value(list).unwrap_or_default();
        self.board.publish("services", value).await;
    }
}

/// A running supervision task.
pub struct Handle {
    pub fingerprint: String,
    /// The namespace inode the process runs in (0 until started).
    pub netns_inode: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Handle {
    /// Stops the process and waits for the task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Waits for the task after the controller's shutdown (which leaves processes running).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

pub struct Ctx {
    pub instance: String,
    pub statuses: Statuses,
    /// Cancelled when the controller stops: processes stay up.
    pub detach: CancellationToken,
}

/// Starts supervising `spec`, adopting `adopt` when it is the same process still running.
/// Its status is on the board when this returns.
pub async fn start(ctx: Arc<Ctx>, spec: ProcessSpec, adopt: Option<Record>) -> Handle {
    let mut status = initial_status(&ctx, &spec);
    status.restarts = adopt.as_ref().map_or(0, |r| r.restarts);
    status.pid = adopt.as_ref().map(|r| r.pid);
    ctx.statuses.insert(status).await;
    let stop = CancellationToken::new();
    let netns_inode = Arc::new(AtomicU64::new(adopt.as_ref().map_or(0, |r| r.netns_inode)));
    let fingerprint = spec.fingerprint();
    let task = tokio::spawn(supervise(
        ctx,
        spec,
        adopt,
        stop.clone(),
        netns_inode.clone(),
    ));
    Handle {
        fingerprint,
        netns_inode,
        stop,
        task,
    }
}

/// A started process: our child, or one adopted from an earlier controller.
struct Running {
    id: ProcessId,
    child: Option<tokio::process::Child>,
    inode: u64,
    since: Instant,
}

enum Ended {
    Exited(String),
    Stop,
    Detach,
}

fn initial_status(ctx: &Ctx, spec: &ProcessSpec) -> ServiceStatus {
    ServiceStatus {
        name: spec.name.clone(),
        service: spec.service.clone(),
        netns: spec.netns.clone(),
        address: spec.address,
        port: spec.port,
        program: spec.kind.map_or_else(
            || spec.argv.first().cloned().unwrap_or_default(),
            |k| k.to_string(),
        ),
        state: ServiceState::Starting,
        pid: None,
        restarts: 0,
        since_ms: now_ms(),
        check: spec.health.as_ref().map(HealthCheck::describe),
        health: None,
        last_error: None,
        url: spec.url.clone(),
        log: paths::service_log(&ctx.instance, &spec.name)
            .display()
            .to_string(),
    }
}

async fn supervise(
    ctx: Arc<Ctx>,
    spec: ProcessSpec,
    adopt: Option<Record>,
    stop_token: CancellationToken,
    inode_out: Arc<AtomicU64>,
) {
    let log = paths::service_log(&ctx.instance, &spec.name);
    let statuses = ctx.statuses.clone();
    let mut restarts = adopt.as_ref().map_or(0, |r| r.restarts);
    let mut failures: u32 = 0;
    let mut current = adopt.map(|r| {
        tracing::info!(name = spec.name, pid = r.pid, "adopted a running process");
        Running {
            id: r.process(),
            child: None,
            inode: r.netns_inode,
            since: Instant::now(),
        }
    });
    loop {
        let running = match current.take() {
            Some(r) => r,
            None => {
                set_state(&statuses, &spec.name, ServiceState::Starting, None, None).await;
                match start_once(&ctx, &spec, restarts).await {
                    Ok(r) => r,
                    Err(e) => {
                        let msg = format!("could not start: {e:#}");
                        tracing::warn!(name = spec.name, "{msg}");
                        spawn::log_line(&log, &msg);
                        failures += 1;
                        if !backoff(&statuses, &spec, failures, msg, &stop_token, &ctx.detach).await
                        {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        inode_out.store(running.inode, Ordering::Relaxed);
        let pid = running.id.pid;
        statuses
            .update(&spec.name, |s| {
                s.pid = Some(pid);
                s.restarts = restarts;
            })
            .await;
        let since = running.since;
        let mut running = running;
        let ended = watch(&spec, &mut running, &statuses, &stop_token, &ctx.detach).await;
        match ended {
            Ended::Detach => return,
            Ended::Stop => {
                set_state(&statuses, &spec.name, ServiceState::Stopping, None, None).await;
                spawn::log_line(&log, "stopping");
                let inode = Some(running.inode).filter(|i| *i != 0);
                stop::terminate(Some(running.id), spec.stop_signal, inode, STOP_GRACE).await;
                if let Some(mut child) = running.child {
                    let _ = child.try_wait();
                }
                let _ = record::remove(&ctx.instance, &spec.name);
                break;
            }
            Ended::Exited(how) => {
                let _ = record::remove(&ctx.instance, &spec.name);
                // What it left in its namespace goes with it.
                stop::terminate(None, spec.stop_signal, Some(running.inode), Duration::ZERO).await;
                restarts += 1;
                if since.elapsed() >= STABLE_AFTER {
                    failures = 0;
                }
                failures += 1;
                let msg = format!("{how}; restarting");
                tracing::warn!(name = spec.name, "{msg}");
                spawn::log_line(&log, &msg);
                statuses.update(&spec.name, |s| s.restarts = restarts).await;
                if !backoff(&statuses, &spec, failures, how, &stop_token, &ctx.detach).await {
                    break;
                }
            }
        }
    }
    statuses.remove(&spec.name).await;
}

/// Waits before the next start; false when told to stop meanwhile.
async fn backoff(
    statuses: &Statuses,
    spec: &ProcessSpec,
    failures: u32,
    why: String,
    stop: &CancellationToken,
    detach: &CancellationToken,
) -> bool {
    let delay = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    set_state(
        statuses,
        &spec.name,
        ServiceState::Backoff,
        Some(why),
        Some(None),
    )
    .await;
    tokio::select! {
        () = stop.cancelled() => false,
        () = detach.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

async fn set_state(
    statuses: &Statuses,
    name: &str,
    state: ServiceState,
    error: Option<String>,
    pid: Option<Option<u32>>,
) {
    statuses
        .update(name, |s| {
            if s.state != state {
                s.state = state;
                s.since_ms = now_ms();
            }
            if error.is_some() {
                s.last_error = error;
            }
            if let Some(p) = pid {
                s.pid = p;
            }
        })
        .await;
}

async fn start_once(ctx: &Ctx, spec: &ProcessSpec, restarts: u32) -> anyhow::Result<Running> {
    let instance = ctx.instance.clone();
    let prepared = spec.clone();
    tokio::task::spawn_blocking(move || builtin::prepare(&prepared, &instance))
        .await
        .map_err(|e| anyhow::anyhow!("preparing: {e}"))??;
    let mut env = spec.env.clone();
    env.extend(builtin::secrets(spec, &ctx.instance)?);
    let inode = stop::netns_inode(&spec.netns)
        .ok_or_else(|| anyhow::anyhow!("network namespace {} does not exist", spec.netns))?;
    let log = paths::service_log(&ctx.instance, &spec.name);
    spawn::log_line(&log, &format!("starting {}", spec.argv.join(" ")));
    let child = spawn::spawn(spec, &env, &log)?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the process exited at once"))?;
    // A process that already exited is a zombie until reaped: watching it finds the exit.
    let id = ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0 });
    Record {
        name: spec.name.clone(),
        pid,
        start_time: id.start_time,
        netns: spec.netns.clone(),
        netns_inode: inode,
        fingerprint: spec.fingerprint(),
        stop_signal: spec.stop_signal as i32,
        started_at_ms: now_ms(),
        restarts,
    }
    .save(&ctx.instance)?;
    tracing::info!(name = spec.name, pid, "started");
    Ok(Running {
        id,
        child: Some(child),
        inode,
        since: Instant::now(),
    })
}

type ProbeFuture = Pin<Box<dyn Future<Output = probe::Outcome> + Send>>;

/// Watches a running process until it exits or supervision is told to stop or detach;
/// probes its health meanwhile.
async fn watch(
    spec: &ProcessSpec,
    running: &mut Running,
    statuses: &Statuses,
    stop: &CancellationToken,
    detach: &CancellationToken,
) -> Ended {
    if spec.health.is_none() {
        set_state(statuses, &spec.name, ServiceState::Running, None, None).await;
    }
    let mut probing: Option<ProbeFuture> = None;
    let mut next_probe = tokio::time::Instant::now();
    let mut healthy_once = false;
    let mut failures: u32 = 0;
    let mut state = ServiceState::Starting;
    loop {
        tokio::select! {
            how = exited(running) => return Ended::Exited(how),
            () = stop.cancelled() => return Ended::Stop,
            () = detach.cancelled() => return Ended::Detach,
            outcome = async { match probing.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probing.is_some() => {
                probing = None;
                let Some(check) = &spec.health else { continue };
                if outcome.ok {
                    failures = 0;
                    healthy_once = true;
                    state = ServiceState::Healthy;
                } else {
                    failures += 1;
                    if state == ServiceState::Healthy && failures >= check.retries {
                        state = ServiceState::Unhealthy;
                        tracing::warn!(name = spec.name, "unhealthy: {}", outcome.detail);
                    }
                }
                let result = HealthResult {
                    ok: outcome.ok,
                    latency_ms: outcome.latency.as_secs_f64() * 1000.0,
                    checked_at_ms: now_ms(),
                    detail: outcome.detail,
                    failures,
                };
                let s = state;
                statuses.update(&spec.name, |st| {
                    if st.state != s {
                        st.state = s;
                        st.since_ms = now_ms();
                    }
                    st.health = Some(result);
                }).await;
                let wait = if healthy_once { check.interval() } else { STARTUP_PROBE };
                next_probe = tokio::time::Instant::now() + wait;
            }
            () = tokio::time::sleep_until(next_probe), if probing.is_none() && spec.health.is_some() => {
                if let Some(check) = spec.health.clone() {
                    let address = spec.address;
                    probing = Some(Box::pin(async move { probe::check(address, &check).await }));
                }
            }
        }
    }
}

/// Resolves when the process ends, describing how.
fn exited(running: &mut Running) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
    match running.child.as_mut() {
        Some(child) => Box::pin(async move {
            match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("lost track of the process: {e}"),
            }
        }),
        None => {
            let id = running.id;
            Box::pin(async move {
                while id.is_alive() {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "exited (adopted from an earlier controller: status unknown)".to_string()
            })
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| sig.to_string(), |s| s.as_str().to_string());
            format!("killed by {name}")
        }
        _ => "ended".to_string(),
    }
}
