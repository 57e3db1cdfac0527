//! Connection tracking: the `CT` map.
//!
//! Every TCP/UDP connection the endpoint pipeline sees gets two entries, keyed by the
//! 5-tuple ([`crate::FlowKey`]) of each direction as it appears on the wire at the hook that
//! handles it:
//! - the *forward* entry, keyed by the client's original tuple (client -> VIP:port for a
//!   service), holds the DNAT target (backend);
//! - the *reverse* entry, keyed by the reply's tuple before un-NAT (backend -> client),
//!   holds the frontend to put back as the source.
//!
//! The backend of a connection is chosen once, on its first packet, and kept for its life,
//! whatever happens to the service's backend set (graceful drain).

/// `CtEntry::flags`.
pub const CT_F_REVERSE: u8 = 0x01;
/// Rewrite the destination (forward entry of a service connection).
pub const CT_F_DNAT: u8 = 0x02;
/// Rewrite the source (reverse entry of a service connection).
pub const CT_F_SNAT: u8 = 0x04;
/// A host-port connection that came in through an uplink: the reply is un-NATed at the
/// uplink's egress, not at the backend's veth.
pub const CT_F_UPLINK: u8 = 0x08;
/// The entry's direction has seen a FIN or RST: the connection is closing.
pub const CT_F_CLOSING: u8 = 0x10;
/// The reverse direction has answered (for TCP: the connection is established).
pub const CT_F_REPLIED: u8 = 0x20;

/// How long an idle entry lives, by state. Both the dataplane (on lookup) and the
/// controller's garbage collector apply them.
pub const CT_TIMEOUT_TCP_SYN_NS: u64 = 60 * NS;
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * NS;
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * NS;
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * NS;
const NS: u64 = 1_000_000_000;

/// Value of `CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `CLOCK_BOOTTIME` ns of the first packet.
    pub created_ns: u64,
    /// `CLOCK_BOOTTIME` ns of the latest packet of this direction.
    pub last_seen_ns: u64,
    /// Forward: the backend to send to. Reverse: the frontend to answer from.
    pub nat_addr: [u8; 4],
    /// Host byte order.
    pub nat_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    /// OR of the TCP flags this direction has carried.
    pub tcp_flags: u8,
    /// `LB_BACKENDS` id of the chosen backend (0 without a service).
    pub backend_id: u32,
    /// Service id of the frontend (0 without a service).
    pub service_id: u32,
    /// Identities the policy judged the connection by (forward entries).
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Destination port and protocol the policy judged (the service port for services).
    pub policy_port: u16,
    pub _pad: u16,
    /// `CONFIG[CFG_POLICY_GEN]` when the verdict was taken: after a policy change the
    /// connection is checked again on its next packet.
    pub policy_gen: u32,
}
crate::assert_size!(CtEntry, 48);

impl CtEntry {
    /// Idle lifetime of this entry given its state and protocol.
    pub const fn timeout_ns(&self, proto: u8) -> u64 {
        if proto != crate::flow::IPPROTO_TCP {
            return CT_TIMEOUT_UDP_NS;
        }
        if self.flags & CT_F_CLOSING != 0 {
            CT_TIMEOUT_TCP_CLOSING_NS
        } else if self.flags & CT_F_REPLIED != 0 {
            CT_TIMEOUT_TCP_ESTABLISHED_NS
        } else {
            CT_TIMEOUT_TCP_SYN_NS
        }
    }

    pub const fn is_expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns > self.last_seen_ns && now_ns - self.last_seen_ns > self.timeout_ns(proto)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays, no implicit padding.
    unsafe impl aya::Pod for super::CtEntry {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::flow::{IPPROTO_TCP, IPPROTO_UDP};

    #[test]
    fn layout() {
        assert_eq!(offset_of!(CtEntry, last_seen_ns), 8);
        assert_eq!(offset_of!(CtEntry, nat_addr), 16);
        assert_eq!(offset_of!(CtEntry, nat_port), 20);
        assert_eq!(offset_of!(CtEntry, flags), 22);
        assert_eq!(offset_of!(CtEntry, tcp_flags), 23);
        assert_eq!(offset_of!(CtEntry, backend_id), 24);
        assert_eq!(offset_of!(CtEntry, service_id), 28);
        assert_eq!(offset_of!(CtEntry, src_identity), 32);
        assert_eq!(offset_of!(CtEntry, dst_identity), 36);
        assert_eq!(offset_of!(CtEntry, policy_port), 40);
        assert_eq!(offset_of!(CtEntry, policy_gen), 44);
    }

    #[test]
    fn timeouts_follow_the_connection_state() {
        let mut e = CtEntry::default();
        assert_eq!(e.timeout_ns(IPPROTO_UDP), CT_TIMEOUT_UDP_NS);
        assert_eq!(e.timeout_ns(IPPROTO_TCP), CT_TIMEOUT_TCP_SYN_NS);
        e.flags |= CT_F_REPLIED;
        assert_eq!(e.timeout_ns(IPPROTO_TCP), CT_TIMEOUT_TCP_ESTABLISHED_NS);
        e.flags |= CT_F_CLOSING;
        assert_eq!(e.timeout_ns(IPPROTO_TCP), CT_TIMEOUT_TCP_CLOSING_NS);
        e.last_seen_ns = 1000;
        assert!(!e.is_expired(IPPROTO_TCP, 1000 + CT_TIMEOUT_TCP_CLOSING_NS));
        assert!(e.is_expired(IPPROTO_TCP, 1001 + CT_TIMEOUT_TCP_CLOSING_NS));
        assert!(
            !e.is_expired(IPPROTO_TCP, 10),
            "clock before last_seen is not expiry"
        );
    }
}
