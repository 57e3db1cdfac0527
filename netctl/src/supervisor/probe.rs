//! Health probes, from the host to an endpoint's address: a TCP connect, or an HTTP GET
//! that must answer 2xx. Each has the check's timeout and reports its latency.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::topology::{HealthCheck, Probe};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub latency: Duration,
    /// What went wrong, or the HTTP status.
    pub detail: String,
}

pub async fn check(address: Ipv4Addr, check: &HealthCheck) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(check.timeout(), attempt(address, check)).await;
    let latency = started.elapsed();
    match result {
        Ok(Ok(detail)) => Outcome {
            ok: true,
            latency,
            detail,
        },
        Ok(Err(e)) => Outcome {
            ok: false,
            latency,
            detail: e,
        },
        Err(_) => Outcome {
            ok: false,
            latency,
            detail: format!("no answer within {} ms", check.timeout_ms),
        },
    }
}

async fn attempt(address: Ipv4Addr, check: &HealthCheck) -> Result<String, String> {
    let addr = SocketAddr::from((address, check.port));
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let Probe::Http { path } = &check.probe else {
        return Ok("connected".into());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path.as_str())
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "netctl-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    conn.abort();
    if status.is_success() {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("GET {path}: HTTP {}", status.as_u16()))
    }
}
