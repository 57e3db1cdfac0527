//! Bounds-checked parsing of Ethernet + IPv4 + TCP/UDP headers with `bpf_skb_load_bytes`
//! (through `TcContext::load`), which keeps the verifier happy without manual
//! `data_end` arithmetic.

use aya_ebpf::programs::TcContext;
use netctl_common::{FlowKey, flow};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IP: u16 = 0x0800;
/// Offset of the TCP flags byte inside the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// What later stages need to know about one IPv4 packet.
pub struct Packet {
    pub key: FlowKey,
    /// TCP flag byte, 0 for other protocols.
    pub tcp_flags: u8,
}

#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Option<Packet> {
    let eth: EthHdr = ctx.load(0).ok()?;
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = ctx.load(EthHdr::LEN).ok()?;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return None;
    }
    let l4 = EthHdr::LEN + ihl;
    // Only the first fragment carries the L4 header; later ones count under port 0.
    let first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff == 0;

    let mut key = FlowKey::new(ip.src_addr, ip.dst_addr, 0, 0, ip.proto);
    let mut tcp_flags = 0;
    if first_fragment && (ip.proto == flow::IPPROTO_TCP || ip.proto == flow::IPPROTO_UDP) {
        // Source and destination ports are the first four bytes of both TCP and UDP.
        let ports: [u8; 4] = ctx.load(l4).ok()?;
        key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        if ip.proto == flow::IPPROTO_TCP {
            tcp_flags = ctx.load::<u8>(l4 + TCP_FLAGS_OFFSET).ok()?;
        }
    }
    Some(Packet { key, tcp_flags })
}
