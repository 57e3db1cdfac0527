//! HTTP from the host to the platform, and the data stores' own clients (psql,
//! redis-cli) for checking what the services stored.

use std::{process::Command, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::{
    client::legacy::{Client as Legacy, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

use super::{Platform, assert_success};

pub type Client = Legacy<HttpConnector, Full<Bytes>>;

/// A keep-alive client.
pub fn client() -> Client {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Legacy::builder(TokioExecutor::new()).build(c)
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request; `Err` for transport failures and timeouts (20 s, above the platform's own).
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&str>,
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| format!("{url}: no answer within 20 s"))?
}

pub async fn get(client: &Client, url: &str) -> Reply {
    send(client, Method::GET, url, None)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn post(client: &Client, url: &str, body: &str) -> Reply {
    send(client, Method::POST, url, Some(body))
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs SQL with `psql` against the platform's PostgreSQL, as the shop's role; the rows,
/// unaligned, one per line.
pub fn psql(platform: &Platform, sql: &str) -> String {
    let pg = platform.endpoint("postgres");
    let password = std::fs::read_to_string(format!(
        "/var/lib/netctl/{}/secrets/postgres.password",
        platform.plan.instance()
    ))
    .expect("the generated PostgreSQL password");
    let url = format!(
        "postgresql://shop:{}@{}:{}/shop",
        password.trim(),
        pg.address,
        pg.ports[0].port
    );
    let out = Command::new("psql")
        .args([&url, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("running psql");
    assert_success(&out, &format!("psql -c {sql:?}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `redis-cli` against the platform's Redis.
pub fn redis_cli(platform: &Platform, args: &[&str]) -> String {
    let r = platform.endpoint("redis");
    let out = Command::new("redis-cli")
        .args([
            "-h",
            &r.address.to_string(),
            "-p",
            &r.ports[0].port.to_string(),
        ])
        .args(args)
        .output()
        .expect("running redis-cli");
    assert_success(&out, &format!("redis-cli {args:?}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A counter from Redis `INFO stats`, e.g. `keyspace_hits`.
pub fn redis_stat(platform: &Platform, name: &str) -> u64 {
    redis_cli(platform, &["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in redis INFO stats"))
}

/// One HTTP/1.1 request sent from inside namespace `ns` (so its source address is the
/// namespace's): status and body.
pub fn from_namespace(
    ns: &str,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    from_namespace_or_host(Some(ns), addr, method, path, body)
}

/// [`from_namespace`], or from the host when `ns` is `None`.
pub fn from_namespace_or_host(
    ns: Option<&str>,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = move || -> anyhow::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    };
    let raw = match ns {
        Some(ns) => netctl::net::netns::run_in(ns, exchange),
        None => exchange(),
    }
    .expect("HTTP request");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
    )
}
