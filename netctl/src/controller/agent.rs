//! The long-running controller of one instance (`netctl controller`, or `up --foreground`).
//!
//! It holds the instance's state (re-read on SIGHUP, which `up` sends after a change),
//! runs its components as tasks, and serves the API. SIGTERM or SIGINT stops it; the
//! dataplane (pinned programs, links and maps) keeps forwarding without it.
//!
//! A component is an async function given an [`AgentCtx`]: it watches the state through
//! `ctx.state`, publishes what it knows on `ctx.board`, and returns when
//! `ctx.shutdown` is cancelled.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc, time::SystemTime};

use anyhow::Context;
use serde_json::Value;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{RwLock, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{api, daemon, state::State};

/// What every component gets.
#[derive(Clone)]
pub struct AgentCtx {
    pub instance: String,
    /// The current state; changes when `up` reconciles and signals a reload.
    pub state: watch::Receiver<Arc<State>>,
    pub board: StatusBoard,
    /// API endpoints components add for themselves.
    pub routes: Routes,
    pub shutdown: CancellationToken,
}

/// An API error: HTTP status and message (sent as `{"error": message}`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send>>;
/// Handles a request's JSON body (`null` without one).
pub type Handler = Arc<dyn Fn(Value) -> HandlerFuture + Send + Sync>;

/// Opens a stream of chunks (e.g. NDJSON lines) for one client; the stream ends when the
/// sender is dropped.
pub type StreamHandler = Arc<dyn Fn() -> tokio::sync::mpsc::Receiver<bytes::Bytes> + Send + Sync>;

/// `(method, path)` -> handler, for the endpoints components register.
#[derive(Clone, Default)]
pub struct Routes(
    Arc<RwLock<BTreeMap<(String, String), Handler>>>,
    Arc<RwLock<BTreeMap<String, StreamHandler>>>,
);

impl Routes {
    pub async fn add(&self, method: &str, path: &str, handler: Handler) {
        self.0
            .write()
            .await
            .insert((method.to_string(), path.to_string()), handler);
    }

    pub async fn get(&self, method: &str, path: &str) -> Option<Handler> {
        self.0
            .read()
            .await
            .get(&(method.to_string(), path.to_string()))
            .cloned()
    }

    /// Whether any method is registered for `path` (405 rather than 404).
    pub async fn has_path(&self, path: &str) -> bool {
        self.0.read().await.keys().any(|(_, p)| p == path) || self.1.read().await.contains_key(path)
    }

    /// A streaming `GET path`.
    pub async fn add_stream(&self, path: &str, handler: StreamHandler) {
        self.1.write().await.insert(path.to_string(), handler);
    }

    pub async fn stream(&self, path: &str) -> Option<StreamHandler> {
        self.1.read().await.get(path).cloned()
    }
}

/// Component name -> its latest status, served at `/v1/status`.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<BTreeMap<String, Value>>>,
    header: Arc<RwLock<Value>>,
}

impl StatusBoard {
    pub async fn publish(&self, component: &str, status: Value) {
        self.inner
            .write()
            .await
            .insert(component.to_string(), status);
    }

    pub async fn snapshot(&self) -> Value {
        let mut out = self.header.read().await.clone();
        let components: serde_json::Map<String, Value> = self
            .inner
            .read()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Value::Object(map) = &mut out {
            map.insert("components".into(), Value::Object(components));
        }
        out
    }
}

pub type ComponentFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// A component: its name and how to start it.
pub type Component = (&'static str, fn(AgentCtx) -> ComponentFuture);

/// The components every controller runs.
pub fn components() -> Vec<Component> {
    vec![
        ("services", crate::supervisor::component),
        ("lb", super::lb::component),
        ("policy", super::policy::component),
        ("events", super::events::component),
        ("metrics", super::metrics::component),
    ]
}

/// Runs the controller of `instance` until SIGTERM/SIGINT.
pub async fn run(instance: &str) -> anyhow::Result<()> {
    let state = State::load(instance)?
        .with_context(|| format!("instance {instance} is not up (no state file)"))?;
    daemon::write_pid_file(instance)?;
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let shutdown = CancellationToken::new();
    let board = StatusBoard::default();
    *board.header.write().await = serde_json::json!({
        "instance": instance,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let routes = Routes::default();
    let ctx = AgentCtx {
        instance: instance.to_string(),
        state: state_rx,
        board: board.clone(),
        routes: routes.clone(),
        shutdown: shutdown.clone(),
    };

    let mut tasks = JoinSet::new();
    {
        let (instance, board, shutdown) = (instance.to_string(), board.clone(), shutdown.clone());
        tasks.spawn(async move { ("api", api::serve(&instance, board, routes, shutdown).await) });
    }
    for (name, start) in components() {
        let fut = start(ctx.clone());
        tasks.spawn(async move { (name, fut.await) });
    }
    tracing::info!(instance, pid = std::process::id(), "controller running");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match State::load(instance) {
                Ok(Some(s)) => {
                    tracing::info!("state reloaded");
                    let _ = state_tx.send(Arc::new(s));
                }
                Ok(None) => break,
                Err(e) => tracing::error!("reloading state: {e:#}"),
            },
            Some(done) = tasks.join_next() => match done {
                Ok((name, Ok(()))) => tracing::info!(component = name, "finished"),
                Ok((name, Err(e))) => {
                    tracing::error!(component = name, "failed: {e:#}");
                    board.publish(name, serde_json::json!({ "error": format!("{e:#}") })).await;
                }
                Err(e) => tracing::error!("component task panicked: {e}"),
            },
        }
    }
    tracing::info!("controller stopping");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(daemon::pid_file(instance));
    Ok(())
}
