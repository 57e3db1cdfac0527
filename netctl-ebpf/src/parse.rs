//! Bounds-checked parsing of Ethernet + IPv4 + TCP/UDP/ICMP headers with
//! `bpf_skb_load_bytes` (through `TcContext::load`), which keeps the verifier happy
//! without manual `data_end` arithmetic.

use aya_ebpf::programs::TcContext;
use netctl_common::{DropReason, FlowKey, flow};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IP: u16 = 0x0800;
/// Offset of the TCP flags byte inside the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// Offsets of the checksum inside the TCP and UDP headers.
const TCP_CSUM_OFFSET: usize = 16;
const UDP_CSUM_OFFSET: usize = 6;

/// Offset of the IPv4 header (no VLAN tags on our veths).
pub const L3_OFF: usize = EthHdr::LEN;

/// What later stages need to know about one IPv4 packet.
pub struct Packet {
    /// The 5-tuple as on the wire (ports 0 when there are none).
    pub key: FlowKey,
    /// TCP flag byte, 0 for other protocols.
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// TCP or UDP with its ports (not a later fragment): load balancing and NAT apply.
    pub has_ports: bool,
    /// Conntrack and the policy apply: every first fragment but an ICMP error (related
    /// to another connection's packet, it passes). Later fragments carry no L4 header
    /// and pass: the receiver cannot reassemble them without the judged first one.
    pub tracked: bool,
}

impl Packet {
    pub fn is_tcp(&self) -> bool {
        self.key.proto == flow::IPPROTO_TCP
    }

    /// The destination port the policy judges: none (`ANY_PORT`) without ports, so that
    /// an ICMP echo reply's identifier is not taken for one.
    pub fn policy_port(&self) -> u16 {
        if self.has_ports { self.key.dst_port } else { 0 }
    }

    /// Offset of the L4 checksum field (meaningful when `has_ports`).
    pub fn l4_csum_off(&self) -> usize {
        if self.is_tcp() {
            self.l4_off + TCP_CSUM_OFFSET
        } else {
            self.l4_off + UDP_CSUM_OFFSET
        }
    }
}

/// `Ok(None)` for what is not IPv4 (ARP, IPv6, runt frames); `Err(Malformed)` for an
/// IPv4 packet whose headers are not what they claim.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Result<Option<Packet>, DropReason> {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return Ok(None);
    };
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return Ok(None);
    }
    let ip: Ipv4Hdr = ctx.load(L3_OFF).map_err(|_| DropReason::Malformed)?;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN || ip.vihl >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let l4_off = L3_OFF + ihl;
    // Only the first fragment carries the L4 header; later ones count under port 0.
    let first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff == 0;

    let mut pkt = Packet {
        key: FlowKey::new(ip.src_addr, ip.dst_addr, 0, 0, ip.proto),
        tcp_flags: 0,
        l4_off,
        has_ports: false,
        tracked: first_fragment,
    };
    if first_fragment && ip.proto == flow::IPPROTO_ICMP {
        // Type, code, checksum, then (echo) identifier and sequence number.
        let icmp: [u8; 8] = ctx.load(l4_off).map_err(|_| DropReason::Malformed)?;
        let id = u16::from_be_bytes([icmp[4], icmp[5]]);
        match icmp[0] {
            flow::ICMP_ECHO_REQUEST => pkt.key.src_port = id,
            flow::ICMP_ECHO_REPLY => pkt.key.dst_port = id,
            t if flow::icmp_is_error(t) => pkt.tracked = false,
            _ => {}
        }
    } else if first_fragment && (ip.proto == flow::IPPROTO_TCP || ip.proto == flow::IPPROTO_UDP) {
        // Source and destination ports are the first four bytes of both TCP and UDP.
        let ports: [u8; 4] = ctx.load(l4_off).map_err(|_| DropReason::Malformed)?;
        pkt.key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        pkt.key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        if ip.proto == flow::IPPROTO_TCP {
            pkt.tcp_flags = ctx
                .load::<u8>(l4_off + TCP_FLAGS_OFFSET)
                .map_err(|_| DropReason::Malformed)?;
        }
        pkt.has_ports = true;
    }
    Ok(Some(pkt))
}
