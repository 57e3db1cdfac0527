//! The client of an instance's agent API (served by `agent::api` on
//! `/run/netctl/<instance>/controller.sock`): what the command line, `up` and the tests use
//! to ask the running controller.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::paths::run_dir;

pub fn socket_path(instance: &str) -> PathBuf {
    run_dir(instance).join("controller.sock")
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

/// `DELETE path`.
pub async fn delete(instance: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    call(instance, Method::DELETE, path, None).await
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
