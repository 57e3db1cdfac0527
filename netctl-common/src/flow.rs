//! Per-flow counters: the `FLOWS` map (5-tuple -> packets, bytes, first/last seen, TCP flags).

/// IP protocol numbers the dataplane distinguishes.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// ICMP message types the dataplane tells apart.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// ICMP errors (destination unreachable, source quench, redirect, time exceeded,
/// parameter problem): they concern a packet of another connection and pass without a
/// policy check, as related traffic.
pub const fn icmp_is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// One direction of a flow: the IPv4 5-tuple as the packet carries it.
///
/// Addresses are the four bytes as on the wire (`Ipv4Addr::from(addr)`); ports are in host
/// byte order (0 for protocols without ports and for non-first IP fragments). An ICMP echo
/// carries its identifier in place of a port: `src_port` of a request, `dst_port` of a
/// reply, so that a reply's key is its request's reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(FlowKey, 16);

/// Counters of one flow direction. Times are `CLOCK_BOOTTIME` nanoseconds
/// (`bpf_ktime_get_boot_ns`), so they keep counting across suspend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Packets on the wire: a GSO super-packet counts as its segments.
    pub packets: u64,
    /// Bytes of the packets including the Ethernet header (`skb->len`).
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of every TCP flag byte seen (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20).
    /// Only the low byte is used; the field is 32 bits wide because eBPF atomics are.
    pub tcp_flags: u32,
    pub _pad: u32,
}
crate::assert_size!(FlowStats, 40);

impl FlowKey {
    pub const fn new(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16, proto: u8) -> Self {
        Self {
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        }
    }

    /// Field-wise equality, usable in `const fn` and cheap for the verifier.
    #[inline(always)]
    pub const fn same(&self, other: &FlowKey) -> bool {
        u32::from_ne_bytes(self.src_addr) == u32::from_ne_bytes(other.src_addr)
            && u32::from_ne_bytes(self.dst_addr) == u32::from_ne_bytes(other.dst_addr)
            && self.src_port == other.src_port
            && self.dst_port == other.dst_port
            && self.proto == other.proto
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding fields:
    // every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    /// The layouts `bpf-maps.md` documents, field by field.
    #[test]
    fn flow_key_layout() {
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(offset_of!(FlowKey, src_addr), 0);
        assert_eq!(offset_of!(FlowKey, dst_addr), 4);
        assert_eq!(offset_of!(FlowKey, src_port), 8);
        assert_eq!(offset_of!(FlowKey, dst_port), 10);
        assert_eq!(offset_of!(FlowKey, proto), 12);
    }

    #[test]
    fn flow_stats_layout() {
        assert_eq!(size_of::<FlowStats>(), 40);
        assert_eq!(offset_of!(FlowStats, packets), 0);
        assert_eq!(offset_of!(FlowStats, bytes), 8);
        assert_eq!(offset_of!(FlowStats, first_seen_ns), 16);
        assert_eq!(offset_of!(FlowStats, last_seen_ns), 24);
        assert_eq!(offset_of!(FlowStats, tcp_flags), 32);
    }

    #[test]
    fn flow_key_new_zeroes_padding() {
        let k = FlowKey::new([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, IPPROTO_UDP);
        assert_eq!(k._pad, [0; 3]);
        assert_eq!(
            k,
            FlowKey {
                src_addr: [10, 0, 0, 1],
                dst_addr: [10, 0, 0, 2],
                src_port: 1,
                dst_port: 2,
                proto: 17,
                _pad: [0; 3]
            }
        );
    }
}
