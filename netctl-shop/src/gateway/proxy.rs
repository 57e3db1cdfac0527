//! Forwarding one request to an upstream: pick an instance, send over a pooled keep-alive
//! connection, and turn failures into JSON errors — 503 when no instance is known, 502
//! when none could be reached or the exchange broke, 504 on timeout. A refused connection
//! (nothing sent) is tried on the next instance (or again on a fixed VIP); a broken
//! exchange or a 503 answer only for idempotent requests.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::json;

use super::upstream::Upstream;
use crate::{
    client::{self, CallError, HttpClient},
    http::{self, Resp},
};

/// Instances tried for one request.
const MAX_ATTEMPTS: usize = 3;
/// Answer headers passed back to the client.
const PASS_BACK: [&str; 6] = [
    "x-instance-id",
    "x-cache",
    "retry-after",
    "idempotent-replayed",
    "x-client-ip",
    "x-client-chain",
];

/// How long a request may take upstream: `total` in all, `attempt` on one instance
/// when a read can still go to another.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub total: Duration,
    pub attempt: Duration,
}

pub struct Forward<'a> {
    pub method: Method,
    /// Path on the upstream, e.g. `/products/1`.
    pub path: String,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// The peer is the edge (nginx): its `X-Real-IP` / `X-Forwarded-For` are believed.
    pub from_proxy: bool,
}

pub async fn forward(
    http_client: &HttpClient,
    upstream: &Upstream,
    limits: Timeouts,
    f: Forward<'_>,
) -> Resp {
    let idempotent = matches!(f.method, Method::GET | Method::HEAD);
    let deadline = Instant::now() + limits.total;
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<CallError> = None;
    let mut unavailable: Option<(Response<Bytes>, String)> = None;
    for attempt in 0..MAX_ATTEMPTS {
        let Some(target) = upstream.pick(&tried) else {
            break;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        // A read that another instance could answer does not wait the whole budget on
        // one that hangs (stopped, overloaded): it moves on after `attempt`.
        let another = idempotent && attempt + 1 < MAX_ATTEMPTS && {
            let mut next = tried.clone();
            next.push(target.authority.clone());
            upstream.has_untried(&next)
        };
        let wait = if another {
            remaining.min(limits.attempt)
        } else {
            remaining
        };
        let req = match request(&f, &target.authority) {
            Ok(r) => r,
            Err(e) => return http::error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        match client::call(http_client, req, wait).await {
            // An instance that cannot serve right now (its database pool still filling
            // after a restart, say): a read goes to the next one; the last answer stands.
            Ok(resp) if idempotent && resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::debug!(upstream = upstream.name, target = target.authority, "503");
                unavailable = Some((resp, target.authority.clone()));
                tried.push(target.authority);
            }
            Ok(resp) => return answer(resp, &target.authority),
            Err(e) => {
                tracing::debug!(upstream = upstream.name, target = target.authority, "{e}");
                let timed_out = matches!(e, CallError::Timeout(_));
                let retry = e.not_sent()
                    || (idempotent && (timed_out || matches!(e, CallError::Broken(_))));
                // Refusing or not answering: passed over by the next requests for a while.
                if e.not_sent() || timed_out {
                    upstream.eject(&target.authority);
                }
                tried.push(target.authority);
                last = Some(e);
                if !retry {
                    break;
                }
            }
        }
    }
    if let Some((resp, authority)) = unavailable {
        return answer(resp, &authority);
    }
    let name = upstream.name;
    match last {
        None => http::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "error": format!("no {name} instance is available"),
                "upstream": name,
            }),
        ),
        Some(CallError::Timeout(_)) => http::json(
            StatusCode::GATEWAY_TIMEOUT,
            &json!({
                "error": format!("{name} did not answer within {} ms", limits.total.as_millis()),
                "upstream": name,
                "tried": tried,
            }),
        ),
        Some(e) => http::json(
            StatusCode::BAD_GATEWAY,
            &json!({
                "error": format!("{name} failed: {e}"),
                "upstream": name,
                "tried": tried,
            }),
        ),
    }
}

fn request(f: &Forward<'_>, authority: &str) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(f.method.clone())
        .uri(format!("http://{authority}{}", f.path))
        .header(header::HOST, authority);
    if let Some(ct) = f.headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let (real_ip, forwarded_for) = client_address(f);
    req = req
        .header("x-forwarded-for", forwarded_for)
        .header("x-real-ip", real_ip);
    for name in ["x-request-id", "idempotency-key"] {
        if let Some(v) = f.headers.get(name) {
            req = req.header(name, v);
        }
    }
    Ok(req.body(Full::new(f.body.clone()))?)
}

/// Who the client is (`X-Real-IP`) and the proxies on the way (`X-Forwarded-For`): as
/// the edge said, appending the edge; from anyone else, only what the gateway sees, since
/// a client calling the gateway directly could claim any address.
pub fn client_address(f: &Forward<'_>) -> (String, String) {
    let peer = f.peer.ip().to_canonical().to_string();
    if !f.from_proxy {
        return (peer.clone(), peer);
    }
    let said = |name: &str| {
        f.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let real_ip = said("x-real-ip").unwrap_or(&peer).to_string();
    let chain = match said("x-forwarded-for") {
        Some(chain) => format!("{chain}, {peer}"),
        None => peer,
    };
    (real_ip, chain)
}

fn answer(resp: Response<Bytes>, authority: &str) -> Resp {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Full::new(body));
    *out.status_mut() = parts.status;
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/json"));
    out.headers_mut().insert(header::CONTENT_TYPE, ct);
    for name in PASS_BACK {
        if let Some(v) = parts.headers.get(name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    http::with_header(out, "x-upstream", authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(headers: &HeaderMap, from_proxy: bool) -> (String, String) {
        client_address(&Forward {
            method: Method::GET,
            path: "/products".into(),
            headers,
            body: Bytes::new(),
            peer: "10.0.0.7:5555".parse().unwrap(),
            from_proxy,
        })
    }

    #[test]
    fn only_the_edge_may_say_who_the_client_is() {
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        // From the edge: believed, the edge appended.
        assert_eq!(
            forward(&h, true),
            (
                "6.6.6.6".to_string(),
                "6.6.6.6, 1.2.3.4, 10.0.0.7".to_string()
            )
        );
        // From anyone else: a claim is ignored; the peer is the client.
        assert_eq!(
            forward(&h, false),
            ("10.0.0.7".to_string(), "10.0.0.7".to_string())
        );
        // The edge without the headers: the peer.
        assert_eq!(
            forward(&HeaderMap::new(), true),
            ("10.0.0.7".to_string(), "10.0.0.7".to_string())
        );
    }
}
