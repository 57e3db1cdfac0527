//! Address/port rewriting with incremental checksum updates by the kernel helpers, which
//! also handle offloaded (CHECKSUM_PARTIAL) packets correctly.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::parse::{L3_OFF, Packet};

/// Offsets inside the IPv4 header.
const IP_CSUM_OFF: usize = L3_OFF + 10;
const IP_SRC_OFF: usize = L3_OFF + 12;
const IP_DST_OFF: usize = L3_OFF + 16;

pub enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port of `pkt`, fixing the IP and L4
/// checksums. `pkt.key` is updated to the new tuple.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &mut Packet,
    side: Side,
    addr: [u8; 4],
    port: u16,
) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (pkt.key.src_addr, pkt.key.src_port, IP_SRC_OFF, pkt.l4_off),
        Side::Destination => (
            pkt.key.dst_addr,
            pkt.key.dst_port,
            IP_DST_OFF,
            pkt.l4_off + 2,
        ),
    };
    let from_addr = u32::from_ne_bytes(old_addr) as u64;
    let to_addr = u32::from_ne_bytes(addr) as u64;
    // A UDP checksum of 0 means "none" and must stay 0 (BPF_F_MARK_MANGLED_0).
    let l4_flags = if pkt.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    let csum = pkt.l4_csum_off();
    if old_addr != addr {
        ctx.l4_csum_replace(
            csum,
            from_addr,
            to_addr,
            l4_flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )?;
        ctx.l3_csum_replace(IP_CSUM_OFF, from_addr, to_addr, 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
        let from_port = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
        let to_port = u16::from_ne_bytes(port.to_be_bytes()) as u64;
        ctx.l4_csum_replace(csum, from_port, to_port, l4_flags | 2)?;
        ctx.store(port_off, &port.to_be_bytes(), 0)?;
    }
    match side {
        Side::Source => {
            pkt.key.src_addr = addr;
            pkt.key.src_port = port;
        }
        Side::Destination => {
            pkt.key.dst_addr = addr;
            pkt.key.dst_port = port;
        }
    }
    Ok(())
}
