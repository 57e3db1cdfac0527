//! The agent's API server: HTTP/1.1 with JSON bodies on a unix socket only root can reach,
//! `/run/netctl/<instance>/controller.sock`. `curl --unix-socket` works on it too;
//! [`crate::instance::agent_client`] is the client.
//!
//! - `GET /v1/status`: process facts and each component's status.
//! - whatever components register (e.g. `POST /v1/lb/drain`).

use std::{convert::Infallible, fs, os::unix::fs::PermissionsExt, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::component::Routes;
use crate::instance::{StatusBoard, agent_client::socket_path};

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
    let (handler, id) = match routes.get(method.as_str(), &path).await {
        Some(h) => (h, None),
        None => match routes.get_with_id(method.as_str(), &path).await {
            Some((h, id)) => (h, Some(id)),
            None => {
                return if routes.has_path(&path).await {
                    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                } else {
                    error(StatusCode::NOT_FOUND, "no such endpoint")
                };
            }
        },
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let mut value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
        }
    };
    // A route `PREFIX/{id}` gets the id as the body's `id`.
    if let Some(id) = id {
        match &mut value {
            serde_json::Value::Object(o) => {
                o.insert("id".into(), id.into());
            }
            _ => value = serde_json::json!({ "id": id }),
        }
    }
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
