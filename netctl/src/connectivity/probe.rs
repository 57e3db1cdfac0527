//! Sending the checks: a TCP connect, a UDP datagram, an ICMP echo, each from its source's
//! namespace (a thread that entered it makes the sockets there) or from the host. Plain
//! sockets, without netctl's probe mark: these connections are judged like any other.
//!
//! A check that did not pass is looked at again, longer, before it counts as dropped: a
//! drop can only make a check fail, never pass. Each check is one connection (two when it
//! is retried), so a run spends little of any rate limit it crosses.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::unix::AsyncFd, net::UdpSocket};

use super::checks::{Check, Kind};
use crate::net::netns;

/// First look, then the second, longer one for what did not pass.
const QUICK: Duration = Duration::from_millis(800);
const SURE: Duration = Duration::from_millis(2000);

/// What a check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "seen", content = "detail")]
pub enum Seen {
    /// TCP: the connection was accepted.
    Connected,
    /// TCP: reset, or UDP: port unreachable. The destination was reached; nothing listens.
    Refused,
    /// UDP or ICMP: an answer came back.
    Answered,
    /// Nothing came back in time.
    NoAnswer,
    /// The kernel refused to send or route it (`EPERM`, `EHOSTUNREACH`, ...).
    Unreachable(String),
}

impl Seen {
    /// Whether the packets got through; `None` when silence proves nothing (a UDP
    /// service need not answer).
    pub fn passed(&self, kind: Kind) -> Option<bool> {
        match self {
            Seen::Connected | Seen::Refused | Seen::Answered => Some(true),
            Seen::NoAnswer if kind == Kind::Udp => None,
            Seen::NoAnswer | Seen::Unreachable(_) => Some(false),
        }
    }
}

/// Runs every check, those of one namespace together on a thread inside it; results in
/// the order of `checks`.
pub fn run_all(checks: &[Check]) -> anyhow::Result<Vec<Seen>> {
    let mut by_netns: BTreeMap<Option<String>, Vec<(usize, Check)>> = BTreeMap::new();
    for (i, c) in checks.iter().enumerate() {
        by_netns
            .entry(c.netns.clone())
            .or_default()
            .push((i, c.clone()));
    }
    let handles: Vec<_> = by_netns
        .into_iter()
        .map(|(ns, group)| {
            std::thread::spawn(move || -> anyhow::Result<Vec<(usize, Seen)>> {
                match ns {
                    Some(ns) => netns::run_in(&ns, move || run_group(group)),
                    None => run_group(group),
                }
            })
        })
        .collect();
    let mut seen = vec![Seen::NoAnswer; checks.len()];
    for h in handles {
        let results = h
            .join()
            .map_err(|_| anyhow::anyhow!("a connectivity thread panicked"))??;
        for (i, s) in results {
            seen[i] = s;
        }
    }
    Ok(seen)
}

/// One namespace's checks, concurrently, on a runtime of this thread (so that every socket
/// is made in the namespace the thread is in).
fn run_group(group: Vec<(usize, Check)>) -> anyhow::Result<Vec<(usize, Seen)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let runs = group.into_iter().map(|(i, c)| async move {
            let mut seen = once(&c, QUICK).await;
            if seen.passed(c.kind) != Some(true) {
                seen = once(&c, SURE).await;
            }
            (i, seen)
        });
        Ok(futures::future::join_all(runs).await)
    })
}

async fn once(c: &Check, timeout: Duration) -> Seen {
    match c.kind {
        Kind::Tcp => tcp(c.target, timeout).await,
        Kind::Udp => udp(c.target, timeout).await,
        Kind::Icmp => icmp(*c.target.ip(), timeout).await,
    }
}

async fn tcp(target: SocketAddrV4, timeout: Duration) -> Seen {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Err(_) => Seen::NoAnswer,
        Ok(Ok(stream)) => {
            // Close with RST: no TIME_WAIT left behind by a self-test.
            let _ = stream.set_zero_linger();
            Seen::Connected
        }
        Ok(Err(e)) => io_error(&e),
    }
}

async fn udp(target: SocketAddrV4, timeout: Duration) -> Seen {
    let attempt = async {
        let sock = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
        sock.connect(target).await?;
        sock.send(b"netctl connectivity\n").await?;
        let mut buf = [0u8; 512];
        sock.recv(&mut buf).await.map(|_| ())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Seen::NoAnswer,
        Ok(Ok(())) => Seen::Answered,
        Ok(Err(e)) => io_error(&e),
    }
}

fn io_error(e: &std::io::Error) -> Seen {
    match e.kind() {
        ErrorKind::ConnectionRefused => Seen::Refused,
        ErrorKind::TimedOut => Seen::NoAnswer,
        _ => Seen::Unreachable(e.to_string()),
    }
}

/// An ICMP echo request on a raw socket, answered by an echo reply with its id.
async fn icmp(addr: Ipv4Addr, timeout: Duration) -> Seen {
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = NEXT_ID
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add((std::process::id() as u16) << 8);
    let attempt = async {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        sock.set_nonblocking(true)?;
        // SAFETY: `sock` owns its descriptor, which nothing replaces or closes while the
        // AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(sock)? };
        let request = echo_request(id);
        let to = SocketAddr::from((addr, 0)).into();
        loop {
            let mut guard = fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(&request, &to)) {
                Ok(sent) => {
                    sent?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
        loop {
            let mut guard = fd.readable().await?;
            let got = guard.try_io(|s| s.get_ref().recv_from(&mut buf));
            let Ok(got) = got else { continue };
            let (n, from) = got?;
            // SAFETY: recv_from initialised the first `n` bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let from_addr = from.as_socket_ipv4().map(|a| *a.ip());
            if from_addr == Some(addr) && is_echo_reply(&data, id) {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Seen::NoAnswer,
        Ok(Ok(())) => Seen::Answered,
        Ok(Err(e)) => Seen::Unreachable(e.to_string()),
    }
}

fn echo_request(id: u16) -> [u8; 16] {
    let mut msg = [0u8; 16];
    msg[0] = 8; // echo request
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&1u16.to_be_bytes());
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// A raw ICMP socket reads whole IPv4 packets: the header, then the ICMP message.
fn is_echo_reply(packet: &[u8], id: u16) -> bool {
    let Some(first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    match packet.get(ihl..ihl + 8) {
        Some(icmp) => icmp[0] == 0 && icmp[4..6] == id.to_be_bytes(),
        None => false,
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checks_out_and_only_our_reply_counts() {
        let req = echo_request(0x1234);
        assert_eq!(
            checksum(&req),
            0,
            "a message with its checksum sums to zero"
        );
        let mut reply = vec![0x45u8; 1];
        reply.extend_from_slice(&[0; 19]);
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert!(is_echo_reply(&reply, 0x1234));
        assert!(!is_echo_reply(&reply, 0x1235));
        reply[20] = 8; // a request, not a reply
        assert!(!is_echo_reply(&reply, 0x1234));
        assert!(!is_echo_reply(&[0x45, 0, 0], 0x1234));
    }

    #[test]
    fn silence_proves_a_drop_except_for_udp() {
        assert_eq!(Seen::NoAnswer.passed(Kind::Tcp), Some(false));
        assert_eq!(Seen::NoAnswer.passed(Kind::Icmp), Some(false));
        assert_eq!(Seen::NoAnswer.passed(Kind::Udp), None);
        assert_eq!(Seen::Refused.passed(Kind::Tcp), Some(true));
        assert_eq!(
            Seen::Unreachable("EPERM".into()).passed(Kind::Udp),
            Some(false)
        );
    }
}
