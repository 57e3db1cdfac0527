//! The long-running controller of one instance (`netctl controller`, or `up --foreground`).
//!
//! It holds the instance's state (re-read on SIGHUP, which `up` sends after a change),
//! runs its components as tasks, and serves the API. SIGTERM or SIGINT stops it; the
//! dataplane (pinned programs, links and maps) keeps forwarding without it.
//!
//! A component is an async function given an [`AgentCtx`]: it watches the state through
//! `ctx.state`, publishes what it knows on `ctx.board`, and returns when
//! `ctx.shutdown` is cancelled.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{
    api,
    component::{AgentCtx, Attached, Component, ComponentFuture, Routes},
};
use crate::instance::{StatusBoard, daemon, paths::controller_pid_file, recorded_plan};
use crate::{endpoint::attached_plan, topology::Plan};

/// The components every controller runs.
pub fn components() -> Vec<Component> {
    vec![
        ("services", supervision),
        ("endpoints", super::endpoints::component),
        ("lb", super::lb::component),
        ("policy", super::policy::component),
        ("events", super::events::component),
        ("metrics", super::metrics::component),
    ]
}

/// The supervisor, as the `services` component: it follows the state and reports on the
/// board, and knows nothing else of the controller.
fn supervision(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(crate::supervisor::run(crate::supervisor::Supervision {
        instance: ctx.instance,
        plan: ctx.plan,
        board: ctx.board,
        shutdown: ctx.shutdown,
    }))
}

/// The plan the components follow: the recorded one with the attached endpoints added,
/// made again whenever either changes.
fn follow_attached(
    mut recorded: watch::Receiver<Arc<Plan>>,
    attached: Attached,
) -> watch::Receiver<Arc<Plan>> {
    let mut endpoints = attached.subscribe();
    let merge = |r: &Plan, a: &[crate::endpoint::Endpoint]| Arc::new(attached_plan(r, a));
    let first = merge(
        &recorded.borrow_and_update(),
        &endpoints.borrow_and_update(),
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = recorded.changed() => if r.is_err() { return },
                r = endpoints.changed() => if r.is_err() { return },
            }
            let next = merge(
                &recorded.borrow_and_update(),
                &endpoints.borrow_and_update(),
            );
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    rx
}

/// A component that ran this long before failing restarts after the shortest delay.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// Delay before the `n`-th restart in a row of a failing component: 1 s, 2 s, 4 s ... 30 s.
fn restart_delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(5)).min(Duration::from_secs(30))
}

/// Starts a component after `delay` (unless the controller stops meanwhile); the task
/// reports its name, result and how long it ran.
fn spawn_component(
    tasks: &mut JoinSet<(&'static str, anyhow::Result<()>, Duration)>,
    (name, start): Component,
    ctx: &AgentCtx,
    delay: Duration,
) -> tokio::task::Id {
    let ctx = ctx.clone();
    tasks
        .spawn(async move {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return (name, Ok(()), Duration::ZERO),
                () = tokio::time::sleep(delay) => {}
            }
            let started = Instant::now();
            let result = start(ctx).await;
            (name, result, started.elapsed())
        })
        .id()
}

/// Runs the controller of `instance` until SIGTERM/SIGINT.
pub async fn run(instance: &str) -> anyhow::Result<()> {
    let plan = recorded_plan::load(instance)?
        .with_context(|| format!("instance {instance} is not up (no state file)"))?;
    daemon::write_pid_file(instance)?;
    let (recorded_tx, recorded_rx) = watch::channel(Arc::new(plan));
    let attached = Attached::load(instance);
    let plan_rx = follow_attached(recorded_rx.clone(), attached.clone());
    let shutdown = CancellationToken::new();
    let board = StatusBoard::default();
    board
        .set_header(serde_json::json!({
        "instance": instance,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        }))
        .await;
    let routes = Routes::default();
    let ctx = AgentCtx {
        instance: instance.to_string(),
        plan: plan_rx,
        recorded: recorded_rx,
        attached,
        board: board.clone(),
        routes: routes.clone(),
        shutdown: shutdown.clone(),
    };

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>, Duration)> = JoinSet::new();
    // Which component each task runs, so one that fails (or panics) starts again.
    let mut running: HashMap<tokio::task::Id, Component> = HashMap::new();
    let mut restarts: HashMap<&'static str, u32> = HashMap::new();
    {
        let (instance, board, shutdown) = (instance.to_string(), board.clone(), shutdown.clone());
        tasks.spawn(async move {
            let r = api::serve(&instance, board, routes, shutdown).await;
            ("api", r, Duration::ZERO)
        });
    }
    for component in components() {
        let id = spawn_component(&mut tasks, component, &ctx, Duration::ZERO);
        running.insert(id, component);
    }
    tracing::info!(instance, pid = std::process::id(), "controller running");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match recorded_plan::load(instance) {
                Ok(Some(p)) => {
                    tracing::info!("plan reloaded");
                    let _ = recorded_tx.send(Arc::new(p));
                }
                Ok(None) => break,
                Err(e) => tracing::error!("reloading state: {e:#}"),
            },
            Some(done) = tasks.join_next_with_id() => {
                let (id, failure, ran) = match done {
                    Ok((id, (name, Ok(()), _))) => {
                        tracing::info!(component = name, "finished");
                        running.remove(&id);
                        continue;
                    }
                    Ok((id, (_, Err(e), ran))) => (id, format!("{e:#}"), ran),
                    Err(e) => (e.id(), format!("panicked: {e}"), Duration::ZERO),
                };
                let Some(component) = running.remove(&id) else {
                    tracing::error!("the API server failed: {failure}");
                    continue;
                };
                let name = component.0;
                // A component that ran a while before failing starts over from a short
                // delay; one that keeps failing waits longer each time (at most 30 s).
                let n = restarts.entry(name).or_insert(0);
                if ran >= RESTART_RESET_AFTER {
                    *n = 0;
                }
                let delay = restart_delay(*n);
                *n += 1;
                tracing::error!(component = name, "failed: {failure}; restarting in {delay:?}");
                board
                    .publish(name, serde_json::json!({ "error": failure, "restarts": *n }))
                    .await;
                let id = spawn_component(&mut tasks, component, &ctx, delay);
                running.insert(id, component);
            }
        }
    }
    tracing::info!("controller stopping");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(controller_pid_file(instance));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_thirty_seconds() {
        let delays: Vec<u64> = (0..8).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
