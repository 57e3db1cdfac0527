//! The HTTP client side of the services: one pooled keep-alive client per process, and
//! calls with a deadline that tell a refused connection (nothing was sent, safe to try
//! elsewhere) from a timeout or a broken exchange.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest answer body a service accepts from another.
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A client that keeps connections open between requests (per upstream address).
pub fn pooled(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke during the exchange: the request may have been processed.
    #[error("the exchange broke off: {0}")]
    Broken(String),
    #[error("the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

impl CallError {
    /// True when the request surely did not reach the upstream, so that it may be sent to
    /// another instance even when it is not idempotent.
    pub fn not_sent(&self) -> bool {
        matches!(self, CallError::Connect(_))
    }
}

/// Sends `req` and reads the whole answer, all within `timeout`.
pub async fn call(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<Bytes>, CallError> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                CallError::Connect(error_chain(&e))
            } else {
                CallError::Broken(error_chain(&e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::TooLarge
                } else {
                    CallError::Broken(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout(timeout))?
}

/// `GET url` answered 2xx with JSON, decoded.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<T> {
    let req = Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = call(client, req, timeout).await?;
    if resp.status() != StatusCode::OK {
        anyhow::bail!(
            "GET {url}: {} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body())
        );
    }
    Ok(serde_json::from_slice(resp.body())?)
}

/// An error and its causes on one line (hyper's own messages are terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
