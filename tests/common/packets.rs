//! Hand-built Ethernet/IPv4/TCP/UDP/ICMP frames for BPF_PROG_TEST_RUN, and checks of the
//! frames the programs send back.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

fn eth_ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + IPV4_LEN + l4_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (IPV4_LEN + l4_len) as u16;
    let mut ip = [0u8; IPV4_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// A TCP segment with valid IP and TCP checksums.
pub fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let mut f = eth_ipv4(6, src, dst, TCP_LEN + payload);
    let mut tcp = [0u8; TCP_LEN];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend(std::iter::repeat_n(0x61, payload));
    let sum = l4_checksum(&f);
    let at = ETH_LEN + IPV4_LEN + 16;
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A UDP datagram without checksum (0: allowed for UDP over IPv4).
pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = eth_ipv4(17, src, dst, UDP_LEN + payload);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((UDP_LEN + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0x62, payload));
    f
}

/// An ICMP message: echo request/reply with identifier `id`, or (other types) the
/// header with `id` in the unused word, then `payload` (for an error: the quoted packet).
pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut msg = vec![icmp_type, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes()); // sequence number
    msg.extend_from_slice(payload);
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = eth_ipv4(1, src, dst, msg.len());
    f.extend_from_slice(&msg);
    f
}

/// An IPv4 packet of protocol `proto` (no ports) with `payload` bytes.
pub fn ip_proto(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: usize) -> Vec<u8> {
    let mut f = eth_ipv4(proto, src, dst, payload);
    f.extend(std::iter::repeat_n(0x63, payload));
    f
}

/// Turns a frame into a later fragment (offset 8 bytes): no L4 header of its own.
pub fn later_fragment(mut frame: Vec<u8>) -> Vec<u8> {
    let ip = ETH_LEN;
    frame[ip + 6] = 0x00;
    frame[ip + 7] = 0x01;
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    let sum = checksum(&frame[ip..ip + IPV4_LEN]);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// A UDP datagram with a valid checksum.
pub fn udp_checked(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: usize,
) -> Vec<u8> {
    let mut f = udp(src, sport, dst, dport, payload);
    let sum = l4_checksum(&f);
    let at = ETH_LEN + IPV4_LEN + 6;
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Internet checksum of a byte string.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP checksum a frame's L4 header should carry (pseudo header included),
/// computed with the checksum field taken as zero.
pub fn l4_checksum(frame: &[u8]) -> u16 {
    let ip = &frame[ETH_LEN..ETH_LEN + IPV4_LEN];
    let l4 = &frame[ETH_LEN + IPV4_LEN..];
    let proto = ip[9];
    let csum_at = if proto == 6 { 16 } else { 6 };
    let mut data = Vec::with_capacity(12 + l4.len());
    data.extend_from_slice(&ip[12..20]);
    data.push(0);
    data.push(proto);
    data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    data.extend_from_slice(l4);
    data[12 + csum_at] = 0;
    data[12 + csum_at + 1] = 0;
    let sum = checksum(&data);
    if proto == 17 && sum == 0 { 0xffff } else { sum }
}

/// True when the frame's IPv4 header checksum and L4 checksum are both right. A UDP
/// checksum of 0 ("none") does not count as right: use [`udp_checksum_absent`] for a
/// frame that was sent without one.
pub fn checksums_valid(frame: &[u8]) -> bool {
    let carried = l4_checksum_carried(frame);
    ip_checksum_valid(frame) && carried != 0 && carried == l4_checksum(frame)
}

/// True when the IPv4 header checksum is right and the UDP datagram carries no checksum
/// (0), as it was sent.
pub fn udp_checksum_absent(frame: &[u8]) -> bool {
    ip_checksum_valid(frame) && frame[ETH_LEN + 9] == 17 && l4_checksum_carried(frame) == 0
}

pub fn ip_checksum_valid(frame: &[u8]) -> bool {
    checksum(&frame[ETH_LEN..ETH_LEN + IPV4_LEN]) == 0
}

fn l4_checksum_carried(frame: &[u8]) -> u16 {
    let proto = frame[ETH_LEN + 9];
    let at = ETH_LEN + IPV4_LEN + if proto == 6 { 16 } else { 6 };
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Source and destination of a frame: `(src, sport, dst, dport)`.
pub fn endpoints(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let ip = &frame[ETH_LEN..ETH_LEN + IPV4_LEN];
    let l4 = &frame[ETH_LEN + IPV4_LEN..];
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([l4[0], l4[1]]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

/// A `struct __sk_buff` prefix for `ctx_in`: the kernel takes `mark` and `gso_segs` from it
/// (fields before `mark` must be zero).
pub fn skb_ctx(mark: u32, gso_segs: u32) -> Vec<u8> {
    const MARK: usize = 8;
    const GSO_SEGS: usize = 164;
    let mut ctx = vec![0u8; GSO_SEGS + 4];
    ctx[MARK..MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx
}
