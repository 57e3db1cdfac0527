//! Real sockets inside namespaces: each runs on a thread that entered the namespace.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use netctl::net::netns;

/// What a one-shot TCP server saw.
#[derive(Debug)]
pub struct Received {
    pub bytes: usize,
    pub peer: SocketAddr,
}

/// Listens on `addr:port` in `ns`, accepts one connection and reads it to the end.
/// Returns once the socket is listening.
pub fn tcp_sink(ns: &str, addr: Ipv4Addr, port: u16) -> JoinHandle<Received> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    let handle = std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            let listener = TcpListener::bind(SocketAddrV4::new(addr, port))?;
            let _ = ready_tx.send(());
            let (mut conn, peer) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf)?;
            Ok(Received {
                bytes: buf.len(),
                peer,
            })
        })
        .expect("tcp sink")
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("sink listening");
    handle
}

/// Connects from `ns` to `addr:port` and sends `bytes` bytes.
pub fn tcp_send(ns: &str, addr: Ipv4Addr, port: u16, bytes: usize) {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(addr, port).into(),
            Duration::from_secs(5),
        )?;
        s.write_all(&vec![0x5a; bytes])?;
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the peer's FIN so both directions are complete.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        Ok(())
    })
    .expect("tcp send");
}

/// Binds a UDP socket in `ns` (so datagrams to it are not answered with ICMP) and counts
/// what arrives until `expected` datagrams or a timeout.
pub fn udp_sink(ns: &str, addr: Ipv4Addr, port: u16, expected: usize) -> JoinHandle<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    let handle = std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            let sock = UdpSocket::bind(SocketAddrV4::new(addr, port))?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            let _ = ready_tx.send(());
            let mut got = 0;
            let mut buf = [0u8; 2048];
            while got < expected && sock.recv(&mut buf).is_ok() {
                got += 1;
            }
            Ok(got)
        })
        .expect("udp sink")
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("udp sink bound");
    handle
}

/// Sends `count` datagrams of `payload` bytes from `src_port` to `addr:port`, from `ns`
/// (or from the host when `ns` is `None`).
pub fn udp_send(
    ns: Option<&str>,
    src_port: u16,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
    payload: usize,
) {
    let send = move || -> anyhow::Result<()> {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, src_port))?;
        for _ in 0..count {
            sock.send_to(&vec![0xa5; payload], SocketAddrV4::new(addr, port))?;
            // Paced, so nothing is dropped on the way.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    match ns {
        Some(ns) => netns::run_in(ns, send).expect("udp send"),
        None => send().expect("udp send from host"),
    }
}

/// A TCP server in a namespace that greets every connection with its name and then echoes
/// lines, until dropped (which closes the listener, as a killed process would).
pub struct NamedServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NamedServer {
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16, name: &str) -> NamedServer {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, name, stop2) = (ns.to_string(), name.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ = netns::run_in(&ns, move || {
                let listener = TcpListener::bind(SocketAddrV4::new(addr, port))?;
                listener.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let name = name.clone();
                            let stop3 = stop2.clone();
                            std::thread::spawn(move || serve_named(conn, &name, &stop3));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
                Ok(())
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("named server listening");
        NamedServer {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve_named(mut conn: TcpStream, name: &str, stop: &std::sync::atomic::AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            // A killed server's connections die with it.
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let answer = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens `count` connections from `ns` to `addr:port`, one after another, and returns the
/// greeting (server name) of each; a failed connection gives `Err`.
pub fn greetings(ns: &str, addr: Ipv4Addr, port: u16, count: usize) -> Vec<Result<String, String>> {
    netns::run_in(ns, move || {
        Ok((0..count).map(|_| greeting(addr, port)).collect())
    })
    .expect("greetings")
}

fn greeting(addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let s = TcpStream::connect_timeout(
        &SocketAddrV4::new(addr, port).into(),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim().to_string())
}

/// A long-lived connection opened from inside a namespace (the socket keeps working from
/// any thread once connected).
pub struct Session {
    pub stream: TcpStream,
    pub server: String,
}

impl Session {
    pub fn open(ns: &str, addr: Ipv4Addr, port: u16) -> Session {
        let stream = netns::run_in(ns, move || {
            Ok(TcpStream::connect_timeout(
                &SocketAddrV4::new(addr, port).into(),
                Duration::from_secs(2),
            )?)
        })
        .expect("session connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)
            .expect("greeting");
        Session {
            stream,
            server: line.trim().to_string(),
        }
    }

    /// Sends `msg` and returns the echo (`server:msg`).
    pub fn ask(&mut self, msg: &str) -> std::io::Result<String> {
        self.stream.write_all(msg.as_bytes())?;
        let mut buf = [0u8; 1024];
        let n = self.stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// A UDP server that answers every datagram with its name, until dropped.
pub struct UdpNamedServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNamedServer {
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16, name: &str) -> UdpNamedServer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, name, stop2) = (ns.to_string(), name.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ = netns::run_in(&ns, move || {
                let sock = UdpSocket::bind(SocketAddrV4::new(addr, port))?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                let _ = ready_tx.send(());
                let mut buf = [0u8; 1500];
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(name.as_bytes(), peer);
                    }
                }
                Ok(())
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("udp server bound");
        UdpNamedServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpNamedServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From `ns`, sends `count` datagrams to `addr:port` on one unconnected socket and returns
/// each answer with the address it came from.
pub fn udp_ask(ns: &str, addr: Ipv4Addr, port: u16, count: usize) -> Vec<(String, SocketAddr)> {
    netns::run_in(ns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        for _ in 0..count {
            sock.send_to(b"hello", SocketAddrV4::new(addr, port))?;
            let (n, from) = sock.recv_from(&mut buf)?;
            out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
        }
        Ok(out)
    })
    .expect("udp ask")
}

/// What a connection attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Connected,
    /// Answered with a reset: the packet got through, nothing listens.
    Refused,
    /// No answer: dropped on the way.
    TimedOut,
}

impl Probe {
    /// Whether the network let the connection attempt through.
    pub fn passed(self) -> bool {
        self != Probe::TimedOut
    }
}

/// One TCP connection attempt from `ns` (or the host) with a short timeout.
pub fn probe(ns: Option<&str>, addr: Ipv4Addr, port: u16, timeout: Duration) -> Probe {
    let attempt = move || -> anyhow::Result<Probe> {
        Ok(
            match TcpStream::connect_timeout(&SocketAddrV4::new(addr, port).into(), timeout) {
                Ok(_) => Probe::Connected,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
                Err(_) => Probe::TimedOut,
            },
        )
    };
    match ns {
        Some(ns) => netns::run_in(ns, attempt).expect("probe"),
        None => attempt().expect("probe"),
    }
}

/// Starts `n` connection attempts from `ns` to `addr:port`, `spacing` apart, without
/// waiting for any; `settle` after the last, returns how many got connected.
pub fn burst_connects(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    n: usize,
    spacing: Duration,
    settle: Duration,
) -> usize {
    netns::run_in(ns, move || burst(addr, port, n, spacing, settle, 0)).expect("burst of connects")
}

/// [`burst_connects`] from the host's own namespace, each socket with `SO_MARK` `mark`
/// (0: none; `MARK_PROBE`: as netctl's own probes).
pub fn burst_connects_from_host(
    addr: Ipv4Addr,
    port: u16,
    n: usize,
    spacing: Duration,
    settle: Duration,
    mark: u32,
) -> usize {
    burst(addr, port, n, spacing, settle, mark).expect("burst of connects")
}

fn burst(
    addr: Ipv4Addr,
    port: u16,
    n: usize,
    spacing: Duration,
    settle: Duration,
    mark: u32,
) -> anyhow::Result<usize> {
    {
        let target = SocketAddr::from((addr, port));
        let mut socks = Vec::new();
        for _ in 0..n {
            let s = socket_nonblocking()?;
            if mark != 0 {
                // SAFETY: `mark` is a c_uint of the length given.
                let rc = unsafe {
                    libc::setsockopt(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_MARK,
                        (&raw const mark).cast(),
                        std::mem::size_of::<u32>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
            let (sa, len) = sockaddr(target);
            // SAFETY: `sa` is a valid sockaddr_in of `len` bytes.
            let rc = unsafe { libc::connect(s, (&raw const sa).cast(), len) };
            let err = std::io::Error::last_os_error();
            if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err.into());
            }
            socks.push(s);
            std::thread::sleep(spacing);
        }
        std::thread::sleep(settle);
        let connected = socks
            .iter()
            .filter(|s| {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt writes at most `len` bytes into `err`.
                let rc = unsafe {
                    libc::getsockopt(
                        **s,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&raw mut err).cast(),
                        &raw mut len,
                    )
                };
                let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut plen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: getpeername writes at most `plen` bytes into `peer`.
                let has_peer =
                    unsafe { libc::getpeername(**s, (&raw mut peer).cast(), &raw mut plen) } == 0;
                rc == 0 && err == 0 && has_peer
            })
            .count();
        for s in socks {
            // SAFETY: closing sockets this function opened.
            unsafe { libc::close(s) };
        }
        Ok(connected)
    }
}

fn socket_nonblocking() -> std::io::Result<libc::c_int> {
    // SAFETY: plain socket creation.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if s < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(s)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_in, libc::socklen_t) {
    let SocketAddr::V4(v4) = addr else {
        unreachable!("IPv4 only")
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    (
        sa,
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    )
}

/// A TCP listener that accepts and closes, until dropped.
pub struct Listener {
    _server: NamedServer,
}

impl Listener {
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16) -> Listener {
        Listener {
            _server: NamedServer::start(ns, addr, port, "listener"),
        }
    }
}

/// One ICMP echo from `ns` (or the host) to `addr`: whether its reply came back within
/// `timeout`. A raw socket (no `ping` binary needed), with an identifier of its own so
/// that concurrent pings in one namespace do not take each other's replies.
pub fn ping(ns: Option<&str>, addr: Ipv4Addr, timeout: Duration) -> bool {
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = NEXT_ID
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add((std::process::id() as u16) << 8);
    let attempt = move || -> anyhow::Result<bool> { ping_here(addr, id, timeout) };
    match ns {
        Some(ns) => netns::run_in(ns, attempt).expect("ping"),
        None => attempt().expect("ping from the host"),
    }
}

fn ping_here(addr: Ipv4Addr, id: u16, timeout: Duration) -> anyhow::Result<bool> {
    // SAFETY: plain socket creation; the fd is closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if s < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut msg = [0u8; 16];
    msg[0] = 8; // echo request
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&1u16.to_be_bytes());
    let sum = super::packets::checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let (sa, len) = sockaddr(SocketAddr::from((addr, 0)));
    // SAFETY: `msg` and `sa` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            s,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const sa).cast(),
            len,
        )
    };
    // A drop in the host's OUTPUT chain fails the send itself (EPERM): not through.
    let deadline = std::time::Instant::now() + timeout;
    let mut answered = false;
    while sent >= 0 && !answered {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut buf = [0u8; 1500];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            break; // timed out
        }
        // A raw socket gets the IP header too.
        let n = n as usize;
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n >= ihl + 8 {
            let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            let icmp = &buf[ihl..n];
            answered = from == addr && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes();
        }
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(s) };
    Ok(answered)
}

/// Sends an ICMP echo *reply* nobody asked for from `from_ns` to `to` (in `to_ns`): whether
/// it arrived there (a raw socket in `to_ns` sees every ICMP message delivered).
pub fn unsolicited_echo_reply_arrives(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    timeout: Duration,
) -> bool {
    let id: u16 = 0xbe00 | (std::process::id() as u16 & 0xff);
    let (ready_tx, ready_rx) = mpsc::channel();
    let to_ns = to_ns.to_string();
    let listener = std::thread::spawn(move || {
        netns::run_in(&to_ns, move || -> anyhow::Result<bool> {
            // SAFETY: plain socket creation; closed below.
            let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            if s < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO.
            unsafe {
                libc::setsockopt(
                    s,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            let _ = ready_tx.send(());
            let deadline = std::time::Instant::now() + timeout;
            let mut seen = false;
            while !seen && std::time::Instant::now() < deadline {
                let mut buf = [0u8; 1500];
                // SAFETY: `buf` is writable for its length.
                let n = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    let icmp = &buf[ihl..n as usize];
                    seen = icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes();
                }
            }
            // SAFETY: closing the socket opened above.
            unsafe { libc::close(s) };
            Ok(seen)
        })
        .expect("listener")
    });
    ready_rx.recv().expect("listener ready");
    netns::run_in(from_ns, move || -> anyhow::Result<()> {
        // SAFETY: plain socket creation; closed below.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if s < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut msg = [0u8; 16];
        msg[4..6].copy_from_slice(&id.to_be_bytes());
        let sum = super::packets::checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        let (sa, len) = sockaddr(SocketAddr::from((to, 0)));
        // SAFETY: `msg` and `sa` are valid for the lengths given.
        unsafe {
            libc::sendto(
                s,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                len,
            )
        };
        // SAFETY: closing the socket opened above.
        unsafe { libc::close(s) };
        Ok(())
    })
    .expect("sending the reply");
    listener.join().expect("listener thread")
}

/// An HTTP server in a namespace whose `GET /health` answers 200 or 503 as the test says
/// (the port stays open either way), until dropped.
pub struct HealthServer {
    pub healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16) -> HealthServer {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, h, stop2) = (ns.to_string(), healthy.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ = netns::run_in(&ns, move || {
                let listener = TcpListener::bind(SocketAddrV4::new(addr, port))?;
                listener.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => answer_health(conn, h.load(Ordering::Relaxed)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
                Ok(())
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("health server listening");
        HealthServer {
            healthy,
            stop,
            thread: Some(thread),
        }
    }
}

fn answer_health(mut conn: TcpStream, healthy: bool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let status = if !req.starts_with(b"GET /health ") || healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let _ = conn.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
