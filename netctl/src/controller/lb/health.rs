//! Health checks of backends, run from the host: a TCP connect, or an HTTP GET that must
//! answer 2xx. A backend is down after `FALL` failures in a row and up again after one
//! success, so a killed replica leaves the maps within `FALL * INTERVAL + TIMEOUT`.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::RwLock,
    task::JoinHandle,
};

pub const INTERVAL: Duration = Duration::from_millis(500);
pub const TIMEOUT: Duration = Duration::from_millis(400);
pub const FALL: u32 = 2;

/// What to check on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    Tcp {
        addr: Ipv4Addr,
        port: u16,
    },
    Http {
        addr: Ipv4Addr,
        port: u16,
        path: String,
    },
    /// Nothing to check (e.g. UDP-only services): always up.
    None {
        addr: Ipv4Addr,
    },
}

impl Probe {
    pub fn addr(&self) -> Ipv4Addr {
        match self {
            Probe::Tcp { addr, .. } | Probe::Http { addr, .. } | Probe::None { addr } => *addr,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub up: bool,
    /// Latency of the last successful check, milliseconds.
    pub latency_ms: Option<f64>,
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the last change between up and down.
    pub since: f64,
    pub checks: u64,
}

/// Runs one task per probe and keeps the latest results.
#[derive(Default)]
pub struct Checker {
    results: Arc<RwLock<HashMap<Probe, Health>>>,
    tasks: HashMap<Probe, JoinHandle<()>>,
}

impl Checker {
    /// Starts probes that are new, stops those no longer wanted.
    pub async fn set_probes(&mut self, probes: &[Probe]) {
        self.tasks.retain(|p, task| {
            let keep = probes.contains(p);
            if !keep {
                task.abort();
            }
            keep
        });
        {
            let mut results = self.results.write().await;
            results.retain(|p, _| probes.contains(p));
        }
        for p in probes {
            if !self.tasks.contains_key(p) {
                let task = tokio::spawn(run(p.clone(), self.results.clone()));
                self.tasks.insert(p.clone(), task);
            }
        }
    }

    /// Latest result of every probe; a probe not yet checked is absent.
    pub async fn results(&self) -> HashMap<Probe, Health> {
        self.results.read().await.clone()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

async fn run(probe: Probe, results: Arc<RwLock<HashMap<Probe, Health>>>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(TIMEOUT, check(&probe))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", TIMEOUT.as_millis())));
        let latency = started.elapsed().as_secs_f64() * 1000.0;
        let mut map = results.write().await;
        let now = unix_now();
        let h = map.entry(probe.clone()).or_insert(Health {
            up: false,
            latency_ms: None,
            failures: FALL,
            last_error: None,
            since: now,
            checks: 0,
        });
        h.checks += 1;
        match outcome {
            Ok(()) => {
                if !h.up {
                    h.since = now;
                }
                h.up = true;
                h.failures = 0;
                h.latency_ms = Some(latency);
                h.last_error = None;
            }
            Err(e) => {
                h.failures = h.failures.saturating_add(1);
                h.last_error = Some(e);
                if h.up && h.failures >= FALL {
                    h.up = false;
                    h.since = now;
                }
            }
        }
    }
}

async fn check(probe: &Probe) -> Result<(), String> {
    match probe {
        Probe::None { .. } => Ok(()),
        Probe::Tcp { addr, port } => connect(*addr, *port).await.map(drop),
        Probe::Http { addr, port, path } => {
            let mut s = connect(*addr, *port).await?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
            // "HTTP/1.1 200"
            match head.get(9) {
                Some(b'2') => Ok(()),
                _ => Err(format!("answered {}", String::from_utf8_lossy(&head[9..]))),
            }
        }
    }
}

/// Connects from one fixed source port per target and closes with RST (zero linger): a
/// check every 500 ms then reuses one 5-tuple, so it takes one entry in the flow and
/// conntrack maps per backend instead of one per check, and leaves no TIME_WAIT. When the
/// port is busy, any port will do.
async fn connect(addr: Ipv4Addr, port: u16) -> Result<TcpStream, String> {
    let dst = SocketAddr::from((addr, port));
    let fixed = || -> std::io::Result<tokio::net::TcpSocket> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            source_port(addr, port),
        )))?;
        Ok(sock)
    };
    let stream = match fixed() {
        Ok(sock) => sock.connect(dst).await,
        Err(_) => TcpStream::connect(dst).await,
    }
    .map_err(|e| e.to_string())?;
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// A source port in 45000..49999 chosen by the target, stable across checks.
fn source_port(addr: Ipv4Addr, port: u16) -> u16 {
    let h = u32::from(addr).wrapping_mul(0x9e37_79b1) ^ u32::from(port).wrapping_mul(0x85eb_ca6b);
    45_000 + (h % 5_000) as u16
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
