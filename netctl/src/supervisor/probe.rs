//! Health probes, from the host to an endpoint's address, shared by the supervisor and by
//! load balancing: a TCP connect, an HTTP GET that must answer 2xx, Redis' `PING`, or a
//! PostgreSQL startup message. Each has the check's timeout and reports its latency.
//!
//! Every probe's socket carries `MARK_PROBE` (`SO_MARK`): both dataplanes let its
//! connections through without judging them by the policy or a rate limit, so that the
//! platform's own checks never spend the buckets of the traffic they watch (the gateway's
//! 100/minute would otherwise flap it DOWN and UP).
//!
//! A TCP connect proves little for a data store: a stopped (SIGSTOP) or loading Redis, or
//! a PostgreSQL still starting up, accepts connections in the kernel and answers nothing
//! useful. Their probes speak a word of the protocol instead.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use netctl_common::maps::MARK_PROBE;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::topology::{HealthCheck, Probe};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub latency: Duration,
    /// What went wrong, or what answered (the HTTP status, `PONG`, ...).
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
    match &check.probe {
        Probe::Tcp => {
            let s = connect_fixed_port(addr).await?;
            let _ = s.set_zero_linger();
            Ok("connected".into())
        }
        Probe::Http { path } => http_get(addr, path).await,
        Probe::Redis => redis_ping(addr).await,
        Probe::Postgres => postgres_startup(addr).await,
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let stream = connect_marked(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "netctl-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"));
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(e);
        }
    };
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    conn.abort();
    if status.is_success() {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("GET {path}: HTTP {}", status.as_u16()))
    }
}

/// `PING` as an inline command; the first line of the answer decides.
async fn redis_ping(addr: SocketAddr) -> Result<String, String> {
    let mut s = connect_fixed_port(addr).await?;
    let _ = s.set_zero_linger();
    s.write_all(b"PING\r\n")
        .await
        .map_err(|e| format!("redis {addr}: {e}"))?;
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    while !line.ends_with(b"\r\n") && line.len() < 1024 {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("redis {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("redis {addr}: closed without answering PING"));
        }
        line.extend_from_slice(&buf[..n]);
    }
    judge_redis(&line)
}

/// `+PONG` serves; so does a server that wants a password first (`-NOAUTH`): it answers.
/// `-LOADING` (the dataset is still being read), `-BUSY` (a script runs) or anything else
/// does not.
pub fn judge_redis(answer: &[u8]) -> Result<String, String> {
    let line = String::from_utf8_lossy(answer);
    let line = line.trim_end();
    if line == "+PONG" {
        Ok("PONG".into())
    } else if line.starts_with("-NOAUTH") || line.starts_with("-WRONGPASS") {
        Ok("answers (wants a password)".into())
    } else {
        Err(format!("PING answered {line:?}"))
    }
}

/// What PostgreSQL answers a startup message with decides, as `pg_isready` does: an
/// authentication request, or any error but "cannot connect now", means it serves.
async fn postgres_startup(addr: SocketAddr) -> Result<String, String> {
    let mut s = connect_marked(addr).await?;
    s.write_all(&startup_message("netctl-health", "postgres"))
        .await
        .map_err(|e| format!("postgres {addr}: {e}"))?;
    // Type byte and length, then the rest of that one message (read whole, so closing
    // leaves nothing unread and ends with a FIN, which the server does not log).
    let mut head = [0u8; 5];
    s.read_exact(&mut head)
        .await
        .map_err(|e| format!("postgres {addr}: no answer to the startup message: {e}"))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=64 * 1024).contains(&len) {
        return Err(format!("postgres {addr}: not the PostgreSQL protocol"));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("postgres {addr}: {e}"))?;
    let _ = s.shutdown().await;
    judge_postgres(head[0], &body)
}

/// A protocol 3.0 startup message for `user` on `database`.
pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut params = Vec::new();
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "netctl-health"),
    ] {
        params.extend_from_slice(k.as_bytes());
        params.push(0);
        params.extend_from_slice(v.as_bytes());
        params.push(0);
    }
    params.push(0);
    let len = (8 + params.len()) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&196_608u32.to_be_bytes()); // 3.0
    out.extend_from_slice(&params);
    out
}

/// SQLSTATE of "the database system is starting up" / "is shutting down" / "not yet
/// accepting connections".
const CANNOT_CONNECT_NOW: &str = "57P03";

/// Judges the first message a PostgreSQL server sent back (type byte, body).
pub fn judge_postgres(kind: u8, body: &[u8]) -> Result<String, String> {
    match kind {
        b'R' => Ok("accepts connections".into()),
        b'E' => {
            let mut code = None;
            let mut message = None;
            for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
                let text = String::from_utf8_lossy(&field[1..]).into_owned();
                match field[0] {
                    b'C' => code = Some(text),
                    b'M' => message = Some(text),
                    _ => {}
                }
            }
            let message = message.unwrap_or_default();
            match code.as_deref() {
                Some(CANNOT_CONNECT_NOW) => Err(format!("rejects connections: {message}")),
                Some(code) => Ok(format!("answers ({code}: {message})")),
                None => Err(format!("an error without a code: {message}")),
            }
        }
        other => Err(format!(
            "answered message type {:?}, not PostgreSQL's",
            char::from(other)
        )),
    }
}

/// A TCP socket whose packets carry `MARK_PROBE`.
fn probe_socket(dst: SocketAddr) -> std::io::Result<TcpSocket> {
    let sock = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    setsockopt(&sock, sockopt::Mark, &MARK_PROBE).map_err(std::io::Error::from)?;
    Ok(sock)
}

/// A probe's connection from any source port.
async fn connect_marked(dst: SocketAddr) -> Result<TcpStream, String> {
    let sock = probe_socket(dst).map_err(|e| format!("probe socket for {dst}: {e}"))?;
    sock.connect(dst)
        .await
        .map_err(|e| format!("connect {dst}: {e}"))
}

/// Connects from one fixed source port per target: a check every interval then reuses one
/// 5-tuple (closed with RST, so no TIME_WAIT), which takes one entry in the flow and
/// conntrack maps per target instead of one per check. When the port is busy (another
/// checker of the same target), any port will do.
async fn connect_fixed_port(dst: SocketAddr) -> Result<TcpStream, String> {
    let SocketAddr::V4(v4) = dst else {
        return connect_marked(dst).await;
    };
    let fixed = || -> std::io::Result<TcpSocket> {
        let sock = probe_socket(dst)?;
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            source_port(*v4.ip(), v4.port()),
        )))?;
        Ok(sock)
    };
    let first = match fixed() {
        Ok(sock) => sock.connect(dst).await,
        Err(e) => Err(e),
    };
    match first {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
            ) =>
        {
            connect_marked(dst).await
        }
        Err(e) => Err(format!("connect {dst}: {e}")),
    }
}

/// A source port in 45000..49999 chosen by the target, stable across checks.
fn source_port(addr: Ipv4Addr, port: u16) -> u16 {
    let h = u32::from(addr).wrapping_mul(0x9e37_79b1) ^ u32::from(port).wrapping_mul(0x85eb_ca6b);
    45_000 + (h % 5_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_answers_are_judged_by_their_first_line() {
        assert!(judge_redis(b"+PONG\r\n").is_ok());
        assert!(judge_redis(b"-NOAUTH Authentication required.\r\n").is_ok());
        let loading = judge_redis(b"-LOADING Redis is loading the dataset in memory\r\n");
        assert!(loading.unwrap_err().contains("LOADING"));
        assert!(judge_redis(b"-BUSY Redis is busy running a script\r\n").is_err());
        assert!(judge_redis(b"HTTP/1.1 400 Bad Request\r\n").is_err());
    }

    fn error_response(code: &str, message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in [(b'S', "FATAL"), (b'C', code), (b'M', message)] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn postgres_starting_up_is_down_and_an_auth_request_or_refused_role_is_up() {
        // AuthenticationSASL: type 'R', int32 10, mechanisms.
        let mut sasl = 10u32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert!(judge_postgres(b'R', &sasl).is_ok());
        let starting = error_response("57P03", "the database system is starting up");
        assert!(
            judge_postgres(b'E', &starting)
                .unwrap_err()
                .contains("starting up")
        );
        let no_role = error_response("28000", "role \"netctl-health\" does not exist");
        assert!(judge_postgres(b'E', &no_role).is_ok());
        assert!(judge_postgres(b'H', b"").is_err());
    }

    #[test]
    fn the_startup_message_is_protocol_3_with_its_length_first() {
        let m = startup_message("u", "d");
        assert_eq!(
            u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(&m[4..8], &[0, 3, 0, 0]);
        assert!(m.ends_with(b"netctl-health\0\0"));
        assert!(m.windows(7).any(|w| w == b"user\0u\0"));
    }
}
