//! The controller's API: HTTP/1.1 with JSON bodies on a unix socket only root can reach,
//! `/run/netctl/<instance>/controller.sock`. `curl --unix-socket` works on it too.
//!
//! - `GET /v1/status`: process facts and each component's status.
//! - whatever components register (e.g. `POST /v1/lb/drain`).

use std::{
    convert::Infallible, fs, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc, time::Duration,
};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::component::Routes;
use crate::instance::{StatusBoard, paths::run_dir};

pub fn socket_path(instance: &str) -> PathBuf {
    run_dir(instance).join("controller.sock")
}

/// Serves the API until `shutdown`; removes the socket afterwards.
pub async fn serve(
    instance: &str,
    board: StatusBoard,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let path = socket_path(instance);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let board = Arc::new(board);
    let routes = Arc::new(routes);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("controller API accept: {e}");
                    continue;
                }
            },
        };
        let (board, routes) = (board.clone(), routes.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (board, routes) = (board.clone(), routes.clone());
                async move { Ok::<_, Infallible>(route(req, &board, &routes).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("controller API connection: {e}");
            }
        });
    }
    let _ = fs::remove_file(&path);
    Ok(())
}

/// Request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

type Body = BoxBody<Bytes, Infallible>;

async fn route(req: Request<Incoming>, board: &StatusBoard, routes: &Routes) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::GET
        && let Some(open) = routes.stream(&path).await
    {
        let rx = open();
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-ndjson"),
        );
        return resp;
    }
    if path == "/v1/status" {
        return if method == Method::GET {
            json(StatusCode::OK, &board.snapshot().await)
        } else {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        };
    }
    let Some(handler) = routes.get(method.as_str(), &path).await else {
        return if routes.has_path(&path).await {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        } else {
            error(StatusCode::NOT_FOUND, "no such endpoint")
        };
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
        }
    };
    match handler(value).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e.message,
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET path` on the controller of `instance`; the JSON body of a 2xx answer.
pub async fn get(instance: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    call(instance, Method::GET, path, None).await
}

/// `POST path` with a JSON body.
pub async fn post(
    instance: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    call(instance, Method::POST, path, Some(body)).await
}

async fn call(
    instance: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let socket = socket_path(instance);
    let stream = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&socket))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
        .with_context(|| format!("connecting to the controller at {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("controller API handshake")?;
    let conn = tokio::spawn(conn);
    let bytes = match body {
        Some(b) => Bytes::from(serde_json::to_vec(b).context("encoding the request")?),
        None => Bytes::new(),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "netctl")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))
        .context("building the request")?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("the controller did not answer {path} within 10 s"))?
        .context("controller API request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the controller's answer")?
        .to_bytes();
    conn.abort();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("the controller refused {path}: {message} ({status})");
    }
    serde_json::from_slice(&body).context("the controller's answer is not JSON")
}

/// `GET path` as a stream: calls `on_line` with each newline-terminated line until the
/// controller ends the stream or `on_line` returns false.
/// `on_open` runs once the controller has answered, so the stream is subscribed: nothing
/// the controller sends from then on is missed.
pub async fn stream_lines(
    instance: &str,
    path: &str,
    on_open: impl FnOnce(),
    mut on_line: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let socket = socket_path(instance);
    let stream = UnixStream::connect(&socket)
        .await
        .with_context(|| format!("connecting to the controller at {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("controller API handshake")?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "netctl")
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("controller API request")?;
    if !resp.status().is_success() {
        bail!("the controller refused {path}: {}", resp.status());
    }
    on_open();
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if !on_line(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref()) {
                conn.abort();
                return Ok(());
            }
        }
    }
    conn.abort();
    Ok(())
}
