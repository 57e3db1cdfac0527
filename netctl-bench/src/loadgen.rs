//! Our load generator: an echo server and the two TCP workloads, each running on threads
//! inside a network namespace.
//!
//! - request/response: one connection, `n` round trips of a small message, each timed;
//! - connection rate: `clients` threads each looping connect + one round trip + close,
//!   for a fixed time; every connection is timed.

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

pub const MESSAGE: usize = 64;

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
                        std::thread::spawn(move || echo(conn));
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

/// `n` timed round trips on one connection from `ns` (after `warmup` untimed ones).
pub fn request_response(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(addr, port)).context("connecting")?;
        s.set_nodelay(true)?;
        let msg = [0x42u8; MESSAGE];
        for _ in 0..warmup {
            round_trip(&mut s, &msg)?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            round_trip(&mut s, &msg)?;
            out.push(t.elapsed());
        }
        Ok(out)
    })
}

/// What a connection-rate run measured.
pub struct ConnRate {
    pub connections: usize,
    pub failures: usize,
    pub elapsed: Duration,
    /// connect + one round trip + close, per connection.
    pub latencies: Vec<Duration>,
}

/// `clients` threads in `ns`, each opening connections to `addr:port` for `duration`.
pub fn connection_rate(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<ConnRate> {
    netns::run_in(ns, move || {
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                // Threads inherit the namespace of the thread that creates them.
                std::thread::spawn(move || {
                    let msg = [0x43u8; MESSAGE];
                    let mut lat = Vec::new();
                    let mut failures = 0;
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        let ok = TcpStream::connect_timeout(
                            &SocketAddrV4::new(addr, port).into(),
                            Duration::from_secs(1),
                        )
                        .and_then(|mut s| {
                            s.set_nodelay(true)?;
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
                                    tracing::warn!(
                                        "connection failed after {:?}: {e}",
                                        t.elapsed()
                                    );
                                }
                                failures += 1;
                            }
                        }
                    }
                    (lat, failures)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut failures = 0;
        for h in handles {
            let (l, f) = h
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
            latencies.extend(l);
            failures += f;
        }
        Ok(ConnRate {
            connections: latencies.len(),
            failures,
            elapsed: start.elapsed(),
            latencies,
        })
    })
}

fn set_zero_linger(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live `linger`.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
