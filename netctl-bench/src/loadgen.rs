//! Our load generator: an echo server and the two TCP workloads, each running on threads
//! inside a network namespace.
//!
//! - request/response: one connection, `n` round trips of a small message, each timed;
//! - connection rate: `clients` threads each looping connect + one round trip + close,
//!   for a fixed time; every connection is timed.
//!
//! Every socket has a connect, read and write timeout ([`IO_TIMEOUT`]): a stalled
//! connection costs a client at most that long, and is counted as a stall (a failure),
//! never waited out (one 27 s stall once turned a round's ~8,700 conn/s into 891).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;
use netctl::net::netns;

use crate::pin::{self, LatencyRun, Side};

pub const MESSAGE: usize = 64;

/// How long a connect, a read or a write may take before it counts as a stall.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// More failed round trips than this in one request/response run: the path is broken.
const MAX_RR_FAILURES: usize = 20;

/// A timeout, as the socket calls report it (`WouldBlock` for SO_RCVTIMEO/SO_SNDTIMEO).
fn is_stall(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A connection to `addr` with [`IO_TIMEOUT`] on connect, reads and writes.
fn connect(addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.into(), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Echo server on `addr:port` inside `ns`, until dropped. The accept loop blocks (no
/// polling delay in the measured path); dropping wakes it with a connection of its own.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ns: String,
    addr: SocketAddrV4,
}

impl EchoServer {
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16) -> anyhow::Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (ns_name, stop2) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let result = netns::run_in(&ns_name, move || {
                let listener = TcpListener::bind(SocketAddrV4::new(addr, port))?;
                let _ = tx.send(Ok(()));
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        std::thread::spawn(move || {
                            pin::pin_accepted();
                            echo(conn)
                        });
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                tracing::error!("echo server: {e:#}");
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .context("echo server did not start")?
            .map_err(|e: anyhow::Error| e)?;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
            ns: ns.to_string(),
            addr: SocketAddrV4::new(addr, port),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let addr = self.addr;
        let _ = netns::run_in(&self.ns, move || Ok(TcpStream::connect(addr).map(drop)));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn round_trip(s: &mut TcpStream, msg: &[u8; MESSAGE]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut got = [0u8; MESSAGE];
    s.read_exact(&mut got)
}

/// What a request/response run measured.
#[derive(Debug, Default)]
pub struct RequestResponse {
    /// One per successful timed round trip.
    pub samples: Vec<Duration>,
    /// Round trips (or reconnects) that failed, stalls included; each costs a reconnect.
    pub failures: usize,
    /// Failures that were timeouts.
    pub stalls: usize,
}

/// `n` timed round trips on one connection from `ns` (after `warmup` untimed ones); the
/// client and the echo server's side run on CPUs of their own (see [`pin`]).
pub fn request_response(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    warmup: usize,
    n: usize,
) -> anyhow::Result<RequestResponse> {
    let _pinned = LatencyRun::start();
    netns::run_in(ns, move || {
        pin::pin_thread(Side::Client)?;
        request_response_here(SocketAddrV4::new(addr, port), warmup, n)
    })
}

/// [`request_response`] in the calling thread's namespace. A failed round trip (a stall
/// included) is counted, and the run goes on over a new connection: a reply that arrives
/// late must not be read as the answer to the next message.
pub fn request_response_here(
    addr: SocketAddrV4,
    warmup: usize,
    n: usize,
) -> anyhow::Result<RequestResponse> {
    let mut s = connect(addr).context("connecting")?;
    let msg = [0x42u8; MESSAGE];
    for _ in 0..warmup {
        round_trip(&mut s, &msg).context("warm-up round trip")?;
    }
    let mut out = RequestResponse {
        samples: Vec::with_capacity(n),
        ..RequestResponse::default()
    };
    while out.samples.len() < n {
        let t = Instant::now();
        match round_trip(&mut s, &msg) {
            Ok(()) => out.samples.push(t.elapsed()),
            Err(e) => {
                out.failures += 1;
                if is_stall(&e) {
                    out.stalls += 1;
                }
                tracing::warn!("round trip failed after {:?}: {e}", t.elapsed());
                if out.failures > MAX_RR_FAILURES {
                    anyhow::bail!("{} round trips to {addr} failed (last: {e})", out.failures);
                }
                s = connect(addr).context("reconnecting")?;
            }
        }
    }
    Ok(out)
}

/// What a connection-rate run measured.
pub struct ConnRate {
    pub connections: usize,
    /// Connections that failed, stalls included.
    pub failures: usize,
    /// Failures that were timeouts ([`IO_TIMEOUT`]).
    pub stalls: usize,
    pub elapsed: Duration,
    /// connect + one round trip + close, per connection.
    pub latencies: Vec<Duration>,
}

/// `clients` threads in `ns`, each opening connections to `addr:port` for `duration`.
/// Unpinned, even with one client: pinning the echo server's new thread for every
/// connection costs more than the path does (new-connection p50 150 -> 190 µs, bimodal).
pub fn connection_rate(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<ConnRate> {
    netns::run_in(ns, move || {
        connection_rate_here(SocketAddrV4::new(addr, port), clients, duration)
    })
}

/// [`connection_rate`] in the calling thread's namespace.
pub fn connection_rate_here(
    addr: SocketAddrV4,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<ConnRate> {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            // Threads inherit the namespace of the thread that creates them.
            std::thread::spawn(move || {
                let msg = [0x43u8; MESSAGE];
                let mut lat = Vec::new();
                let (mut failures, mut stalls) = (0, 0);
                while start.elapsed() < duration {
                    let t = Instant::now();
                    let ok = connect(addr).and_then(|mut s| {
                        round_trip(&mut s, &msg)?;
                        // Close with RST (zero linger): no TIME_WAIT, so thousands
                        // of connections a second never run out of ports or reuse
                        // one the server still remembers.
                        set_zero_linger(&s)
                    });
                    match ok {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => {
                            if failures == 0 {
                                tracing::warn!("connection failed after {:?}: {e}", t.elapsed());
                            }
                            failures += 1;
                            if is_stall(&e) {
                                stalls += 1;
                            }
                        }
                    }
                }
                (lat, failures, stalls)
            })
        })
        .collect();
    let mut out = ConnRate {
        connections: 0,
        failures: 0,
        stalls: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for h in handles {
        let (l, f, st) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        out.latencies.extend(l);
        out.failures += f;
        out.stalls += st;
    }
    out.connections = out.latencies.len();
    out.elapsed = start.elapsed();
    Ok(out)
}

fn set_zero_linger(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &linger).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts (the kernel completes the handshake) and never answers.
    fn silent_server() -> (TcpListener, SocketAddrV4) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(a) = l.local_addr().expect("addr") else {
            unreachable!("bound to IPv4")
        };
        (l, a)
    }

    #[test]
    fn a_stalled_connection_is_a_counted_stall_not_a_wait() {
        let (_l, addr) = silent_server();
        let t = Instant::now();
        let r = connection_rate_here(addr, 1, Duration::from_millis(50)).expect("runs");
        assert!(t.elapsed() < IO_TIMEOUT * 3, "gave up after the timeout");
        assert_eq!(r.connections, 0);
        assert!(
            r.failures >= 1 && r.stalls == r.failures,
            "{} {}",
            r.failures,
            r.stalls
        );
    }

    #[test]
    fn an_echo_server_answers_every_round_trip() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
            unreachable!("bound to IPv4")
        };
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || echo(c));
            }
        });
        let r = request_response_here(addr, 5, 50).expect("runs");
        assert_eq!((r.samples.len(), r.failures, r.stalls), (50, 0, 0));
        let c = connection_rate_here(addr, 2, Duration::from_millis(100)).expect("runs");
        assert!(c.connections > 0 && c.failures == 0, "{}", c.failures);
    }
}
