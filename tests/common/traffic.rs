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
