//! The controller's API: HTTP/1.1 with JSON bodies on a unix socket only root can reach,
//! `/run/netctl/<instance>/controller.sock`. `curl --unix-socket` works on it too.
//!
//! - `GET /v1/status`: process facts and each component's status.

use std::{
    convert::Infallible, fs, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc, time::Duration,
};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{agent::StatusBoard, state::instance_dir};

pub fn socket_path(instance: &str) -> PathBuf {
    instance_dir(instance).join("controller.sock")
}

/// Serves the API until `shutdown`; removes the socket afterwards.
pub async fn serve(
    instance: &str,
    board: StatusBoard,
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
        let board = board.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let board = board.clone();
                async move { Ok::<_, Infallible>(route(req, &board).await) }
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

async fn route(req: Request<Incoming>, board: &StatusBoard) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => json(StatusCode::OK, &board.snapshot().await),
        (_, "/v1/status") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "use GET" }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "no such endpoint" }),
        ),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET path` on the controller of `instance`; the JSON body of a 2xx answer.
pub async fn get(instance: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let socket = socket_path(instance);
    let stream = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&socket))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
        .with_context(|| format!("connecting to the controller at {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("controller API handshake")?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "netctl")
        .body(Full::new(Bytes::new()))
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
        bail!(
            "controller answered {status} to {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("the controller's answer is not JSON")
}
