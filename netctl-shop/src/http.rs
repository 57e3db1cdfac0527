//! HTTP plumbing shared by the reference services: JSON answers and errors, request bodies
//! read with a size limit and a deadline, and a server loop with keep-alive, a header
//! timeout, a cap on concurrent connections and a graceful shutdown. Handlers take any
//! request body type, so tests call them in-process.
//!
//! Slow clients cannot hold a service: the request head must arrive within
//! `HTTP_HEADER_TIMEOUT_MS` (10 s), a body within `HTTP_BODY_TIMEOUT_MS` (10 s, else 408),
//! and past `HTTP_MAX_CONNECTIONS` open connections (4096, or what the open-file limit
//! allows) a new connection is answered 503 at once and closed.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use serde::Serialize;
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// Every answer the services build: a complete body.
pub type Resp = Response<Full<Bytes>>;

/// An answer that ends a request early (boxed: answers are large for a `Result`).
pub type Rejected = Box<Resp>;

/// Largest request body any service reads; above it the answer is 413 (the nginx edge in
/// front of the gateway refuses the same, hence the contract's).
pub use netctl_shop_contract::MAX_BODY;

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections a service keeps open at most, unless the open-file limit is lower.
const MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept for everything but client connections (pools, logs, Redis).
const RESERVED_FDS: usize = 128;

/// What one slow or greedy client may take from a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// A request body must arrive within this (from the end of the head); else 408.
    pub body_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: MAX_CONNECTIONS.min(fd_budget()),
        }
    }
}

/// Connections the open-file limit leaves room for.
fn fd_budget() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(MAX_CONNECTIONS, |(soft, _)| {
            (soft as usize).saturating_sub(RESERVED_FDS).max(16)
        })
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

impl Limits {
    /// The defaults, changed by `HTTP_HEADER_TIMEOUT_MS`, `HTTP_BODY_TIMEOUT_MS` and
    /// `HTTP_MAX_CONNECTIONS`.
    pub fn from_env() -> anyhow::Result<Self> {
        use super::env;
        let d = Self::default();
        let limits = Self {
            header_timeout: env::millis("HTTP_HEADER_TIMEOUT_MS", d.header_timeout)?,
            body_timeout: env::millis("HTTP_BODY_TIMEOUT_MS", d.body_timeout)?,
            max_connections: env::parsed("HTTP_MAX_CONNECTIONS", d.max_connections)?,
        };
        if limits.header_timeout.is_zero()
            || limits.body_timeout.is_zero()
            || limits.max_connections == 0
        {
            anyhow::bail!(
                "HTTP_HEADER_TIMEOUT_MS, HTTP_BODY_TIMEOUT_MS and HTTP_MAX_CONNECTIONS must be above 0"
            );
        }
        Ok(limits)
    }

    /// Reads the environment once, at a service's start (a bad value stops the start).
    pub fn init_from_env() -> anyhow::Result<Self> {
        let limits = Self::from_env()?;
        Ok(*LIMITS.get_or_init(|| limits))
    }

    /// The limits in force: the environment's once read, else the defaults.
    pub fn current() -> Self {
        *LIMITS.get_or_init(Self::default)
    }
}

/// A request body of the server loop: the client's, cut off when it does not arrive
/// within its deadline.
pub type Body = Deadline<Incoming>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A body that fails with [`BodyTimeout`] once its deadline passes. Requests without a
/// body carry no timer.
pub struct Deadline<B> {
    inner: B,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl<B: hyper::body::Body> Deadline<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        let timer = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(limit)));
        Self {
            inner,
            timer,
            limit,
        }
    }
}

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(t) = this.timer.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// One problem with one field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A JSON answer.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, Bytes::from(body)),
        Err(e) => {
            tracing::error!("encoding a JSON answer: {e}");
            json_bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"{\"error\":\"internal error\"}"),
            )
        }
    }
}

/// An answer whose body is already JSON.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// `{"error": message, "details": [{"field", "message"}...]}`: every problem at once.
pub fn invalid(message: &str, details: &[FieldError]) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": message, "details": details }),
    )
}

pub fn not_found(what: impl Into<String>) -> Resp {
    error(StatusCode::NOT_FOUND, what)
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Adds a header to an answer (values that are not valid header text are dropped).
pub fn with_header(mut resp: Resp, name: &'static str, value: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

/// Refuses bodies that say they are something else than JSON (415). A missing
/// `Content-Type` is accepted.
pub fn require_json(headers: &HeaderMap) -> Result<(), Rejected> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let is_json = ct.to_str().is_ok_and(|v| {
        let mime = v.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/json")
    });
    if is_json {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send Content-Type: application/json",
        )))
    }
}

/// Reads a whole request body of at most `limit` bytes; 413 above, 400 when the client
/// breaks off.
pub async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Rejected>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) if e.is::<BodyTimeout>() => {
            let mut resp = error(StatusCode::REQUEST_TIMEOUT, e.to_string());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(Box::new(resp))
        }
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        ))),
    }
}

/// Parses a JSON body into a value, or answers 400 saying where the JSON is broken.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, Rejected> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        ))
    })
}

/// Reads a JSON body as `require_json`, `read_body` and `parse_json` do, in that order.
pub async fn json_body<B>(req: hyper::Request<B>) -> Result<serde_json::Value, Rejected>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    require_json(&parts.headers)?;
    let body = read_body(&parts.headers, body, MAX_BODY).await?;
    parse_json(&body)
}

/// Binds a listener (SO_REUSEADDR, so a restarted service can rebind at once).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    let socket = tokio::net::TcpSocket::new_v4().context("creating a socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(4096)
        .with_context(|| format!("listening on {addr}"))
}

/// Serves HTTP/1.1 with keep-alive on `listener` until `shutdown`, then lets in-flight
/// requests finish (up to a grace period). `handler` gets each request and the peer's
/// address. [`Limits::current`] bounds slow and surplus clients.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F, shutdown: CancellationToken)
where
    F: Fn(Request<Body>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let limits = Limits::current();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: say so at once rather than leave the client waiting in the backlog.
            tracing::debug!(%peer, "{} connections open: refusing", limits.max_connections);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let body_timeout = limits.body_timeout;
        let service = service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            let req = req.map(|b| Deadline::new(b, body_timeout));
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}");
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    const BODY: &str = "{\"error\":\"too many connections; try again\"}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A token cancelled by SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(resp: Resp) -> serde_json::Value {
        let bytes = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn errors_are_json_with_a_message() {
        let r = error(StatusCode::BAD_GATEWAY, "upstream broke");
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(body_json(r)["error"], "upstream broke");
        let r = method_not_allowed("GET");
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }

    #[test]
    fn bodies_over_the_limit_are_refused_with_413() {
        let headers = HeaderMap::new();
        let big = Full::new(Bytes::from(vec![b'x'; 100]));
        let r = futures::executor::block_on(read_body(&headers, big, 10)).unwrap_err();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            body_json(*r)["error"]
                .as_str()
                .unwrap()
                .contains("10 bytes")
        );

        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        let small = Full::new(Bytes::from_static(b"{}"));
        let r = futures::executor::block_on(read_body(&declared, small, 10)).unwrap_err();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let ok = Full::new(Bytes::from_static(b"{}"));
        let got = futures::executor::block_on(read_body(&headers, ok, 10)).unwrap();
        assert_eq!(&got[..], b"{}");
    }

    #[test]
    fn only_json_content_types_pass() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(require_json(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            require_json(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn broken_json_says_where() {
        let r = parse_json(b"{\"a\": ").unwrap_err();
        assert_eq!(r.status(), 400);
        let msg = body_json(*r)["error"].as_str().unwrap().to_string();
        assert!(
            msg.contains("not valid JSON") && msg.contains("line 1"),
            "{msg}"
        );
    }
}
