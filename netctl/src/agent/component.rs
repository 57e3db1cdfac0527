//! The contract between the agent and its components: what a component is given
//! ([`AgentCtx`]), how it adds API endpoints ([`Routes`], [`Handler`], [`StreamHandler`]) and
//! answers errors ([`ApiError`]). Components and the API server import this, not the agent
//! that runs them, so that the agent alone lists the components and nothing imports it back.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use serde_json::Value;
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    endpoint::{Endpoint, store},
    instance::StatusBoard,
    topology::Plan,
};

/// What every component gets.
#[derive(Clone)]
pub struct AgentCtx {
    pub instance: String,
    /// The plan the components follow: the recorded plan with the attached endpoints
    /// added as instances of their services; changes when `up` reconciles and signals a
    /// reload, and when an endpoint is attached or detached.
    pub plan: watch::Receiver<Arc<Plan>>,
    /// The plan as the reconcile recorded it (the topology's endpoints only).
    pub recorded: watch::Receiver<Arc<Plan>>,
    /// The endpoints attached through the API.
    pub attached: Attached,
    pub board: StatusBoard,
    /// API endpoints components add for themselves.
    pub routes: Routes,
    pub shutdown: CancellationToken,
}

/// The attached endpoints, shared by the component (which changes them) and the runtime
/// (which adds them to the plan the other components follow).
#[derive(Clone)]
pub struct Attached(Arc<watch::Sender<Arc<Vec<Endpoint>>>>);

impl Attached {
    /// Starts from what the store holds, so that the first plan the components see
    /// already has the endpoints a previous agent attached.
    pub fn load(instance: &str) -> Self {
        let recorded = store::load_all(instance).unwrap_or_else(|e| {
            tracing::warn!("reading the attached endpoints: {e:#}");
            Vec::new()
        });
        Self(Arc::new(watch::Sender::new(Arc::new(recorded))))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Endpoint>>> {
        self.0.subscribe()
    }

    pub fn current(&self) -> Arc<Vec<Endpoint>> {
        self.0.borrow().clone()
    }

    /// Replaces the list (the endpoints component alone does).
    pub fn set(&self, list: Vec<Endpoint>) {
        self.0.send_replace(Arc::new(list));
    }
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

    /// The handler of a route registered as `PREFIX/{id}` that `path` (`PREFIX/x`)
    /// matches, with the last segment (`x`).
    pub async fn get_with_id(&self, method: &str, path: &str) -> Option<(Handler, String)> {
        let (prefix, id) = path.rsplit_once('/')?;
        if id.is_empty() {
            return None;
        }
        let handler = self.get(method, &format!("{prefix}/{{id}}")).await?;
        Some((handler, id.to_string()))
    }

    /// Whether any method is registered for `path` (405 rather than 404).
    pub async fn has_path(&self, path: &str) -> bool {
        let pattern = path
            .rsplit_once('/')
            .map(|(prefix, _)| format!("{prefix}/{{id}}"));
        self.0
            .read()
            .await
            .keys()
            .any(|(_, p)| p == path || Some(p) == pattern.as_ref())
            || self.1.read().await.contains_key(path)
    }

    /// A streaming `GET path`.
    pub async fn add_stream(&self, path: &str, handler: StreamHandler) {
        self.1.write().await.insert(path.to_string(), handler);
    }

    pub async fn stream(&self, path: &str) -> Option<StreamHandler> {
        self.1.read().await.get(path).cloned()
    }
}

pub type ComponentFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// A component: its name and how to start it.
pub type Component = (&'static str, fn(AgentCtx) -> ComponentFuture);
