//! The contract between the agent and its components: what a component is given
//! ([`AgentCtx`]), how it adds API endpoints ([`Routes`], [`Handler`], [`StreamHandler`]) and
//! answers errors ([`ApiError`]). Components and the API server import this, not the agent
//! that runs them, so that the agent alone lists the components and nothing imports it back.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use serde_json::Value;
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::{instance::StatusBoard, topology::Plan};

/// What every component gets.
#[derive(Clone)]
pub struct AgentCtx {
    pub instance: String,
    /// The plan the instance runs with; changes when `up` reconciles and signals a reload.
    pub plan: watch::Receiver<Arc<Plan>>,
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

pub type ComponentFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// A component: its name and how to start it.
pub type Component = (&'static str, fn(AgentCtx) -> ComponentFuture);
