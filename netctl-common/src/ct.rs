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

use crate::FlowKey;

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
/// Hairpin: a backend connected to its own service and was chosen for itself. Its source
/// is rewritten too (to the frontend address, port kept), or the packet would come back
/// from its own address and be dropped as martian; the reverse entry is keyed by that
/// tuple (`backend -> frontend:client_port`) and rewrites the destination back.
pub const CT_F_HAIRPIN: u8 = 0x40;

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

/// Byte offset in [`CtEntry`] of the aligned 32-bit word that holds `nat_port` (bytes
/// 0-1), `flags` (byte 2) and `tcp_flags` (byte 3). BPF atomic instructions work on 32-
/// and 64-bit words only, so the dataplane sets flags bits with one atomic OR on this
/// word ([`CtEntry::flags_word_bits`]): several CPUs updating one connection at once never
/// lose each other's bits, and OR-ing zeros leaves `nat_port` alone.
pub const CT_FLAGS_WORD_OFFSET: usize = 20;
const _: () = {
    assert!(core::mem::offset_of!(CtEntry, nat_port) == CT_FLAGS_WORD_OFFSET);
    assert!(core::mem::offset_of!(CtEntry, flags) == CT_FLAGS_WORD_OFFSET + 2);
    assert!(core::mem::offset_of!(CtEntry, tcp_flags) == CT_FLAGS_WORD_OFFSET + 3);
    assert!(CT_FLAGS_WORD_OFFSET.is_multiple_of(4));
};

impl CtEntry {
    /// The value to OR into the word at [`CT_FLAGS_WORD_OFFSET`] to set `flags` bits and
    /// `tcp_flags` bits (bytes in memory order, so it holds for either byte order).
    #[inline(always)]
    pub const fn flags_word_bits(flags: u8, tcp_flags: u8) -> u32 {
        u32::from_ne_bytes([0, 0, flags, tcp_flags])
    }

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

    /// The key of the other direction of the connection this entry (found at `key`)
    /// belongs to. Both the dataplane and the controller pair entries with it.
    #[inline(always)]
    pub const fn peer_key(&self, key: &FlowKey) -> FlowKey {
        // The address choices are made on values with a mask, not by picking one of two
        // fields: LLVM turns the latter into pointer arithmetic the verifier refuses.
        let hairpin = pick_mask(self.flags & CT_F_HAIRPIN != 0);
        let src = u32::from_ne_bytes(key.src_addr);
        let dst = u32::from_ne_bytes(key.dst_addr);
        if self.flags & CT_F_REVERSE != 0 {
            // Reverse: server -> client (hairpin: backend -> frontend:client_port).
            // Forward: client -> frontend (or server).
            let client = ((src & hairpin) | (dst & !hairpin)).to_ne_bytes();
            if self.flags & CT_F_SNAT != 0 {
                FlowKey::new(
                    client,
                    self.nat_addr,
                    key.dst_port,
                    self.nat_port,
                    key.proto,
                )
            } else {
                FlowKey::new(client, key.src_addr, key.dst_port, key.src_port, key.proto)
            }
        } else if self.flags & CT_F_DNAT != 0 {
            // Forward: client -> frontend. Reverse: backend -> client (hairpin: backend ->
            // frontend, the address the forward direction's source became).
            let client = ((dst & hairpin) | (src & !hairpin)).to_ne_bytes();
            FlowKey::new(
                self.nat_addr,
                client,
                self.nat_port,
                key.src_port,
                key.proto,
            )
        } else {
            FlowKey::new(
                key.dst_addr,
                key.src_addr,
                key.dst_port,
                key.src_port,
                key.proto,
            )
        }
    }

    /// Whether `peer`, found at `peer_key` (= `self.peer_key(key)`), is the other half of
    /// this entry's connection and not an unrelated entry that happens to hold that key
    /// (e.g. a plain flow that reused the tuple after this connection's reverse entry
    /// went).
    #[inline(always)]
    pub fn is_partner(&self, key: &FlowKey, peer_key: &FlowKey, peer: &CtEntry) -> bool {
        (self.flags ^ peer.flags) & CT_F_REVERSE != 0 && peer.peer_key(peer_key).same(key)
    }

    /// Expiry of a connection from both its entries: the state of the two directions
    /// together (flags OR-ed) and the latest packet of either. A connection where only
    /// one side speaks (a UDP stream from the backend) lives as long as that side does.
    #[inline(always)]
    pub const fn pair_expired(&self, peer: Option<&CtEntry>, proto: u8, now_ns: u64) -> bool {
        let merged = match peer {
            Some(p) => CtEntry {
                flags: self.flags | p.flags,
                last_seen_ns: if p.last_seen_ns > self.last_seen_ns {
                    p.last_seen_ns
                } else {
                    self.last_seen_ns
                },
                ..*self
            },
            None => *self,
        };
        merged.is_expired(proto, now_ns)
    }
}

/// All ones when `yes`, else zero.
#[inline(always)]
const fn pick_mask(yes: bool) -> u32 {
    (yes as u32).wrapping_neg()
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
    use crate::{
        FlowKey,
        flow::{IPPROTO_TCP, IPPROTO_UDP},
    };

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
    fn the_flags_word_sets_flags_and_tcp_flags_and_keeps_the_port() {
        let mut e = CtEntry {
            nat_port: 0xBEEF,
            flags: CT_F_DNAT,
            tcp_flags: 0x02,
            ..CtEntry::default()
        };
        let p = (&raw mut e).cast::<u8>();
        // SAFETY: an aligned word inside `e` (offsets asserted above).
        unsafe {
            let w = p.add(CT_FLAGS_WORD_OFFSET).cast::<u32>();
            *w |= CtEntry::flags_word_bits(CT_F_CLOSING, 0x01);
        }
        assert_eq!(
            (e.nat_port, e.flags, e.tcp_flags),
            (0xBEEF, CT_F_DNAT | CT_F_CLOSING, 0x03)
        );
    }

    const CLIENT: [u8; 4] = [10, 1, 0, 10];
    const VIP: [u8; 4] = [10, 96, 0, 1];
    const BACKEND: [u8; 4] = [10, 2, 0, 20];

    fn pair(flags: u8, client: [u8; 4]) -> [(FlowKey, CtEntry); 2] {
        let hairpin = flags & CT_F_HAIRPIN;
        let fwd_key = FlowKey::new(client, VIP, 40000, 80, IPPROTO_TCP);
        let fwd = CtEntry {
            nat_addr: BACKEND,
            nat_port: 8080,
            flags: CT_F_DNAT | hairpin,
            ..CtEntry::default()
        };
        let rev_dst = if hairpin != 0 { VIP } else { client };
        let rev_key = FlowKey::new(BACKEND, rev_dst, 8080, 40000, IPPROTO_TCP);
        let rev = CtEntry {
            nat_addr: VIP,
            nat_port: 80,
            flags: CT_F_REVERSE | CT_F_SNAT | hairpin,
            ..CtEntry::default()
        };
        [(fwd_key, fwd), (rev_key, rev)]
    }

    #[test]
    fn the_two_entries_of_a_connection_point_at_each_other() {
        for [(fk, f), (rk, r)] in [pair(0, CLIENT), pair(CT_F_HAIRPIN, BACKEND)] {
            assert_eq!(f.peer_key(&fk), rk, "forward -> reverse ({:#x})", f.flags);
            assert_eq!(r.peer_key(&rk), fk, "reverse -> forward ({:#x})", r.flags);
            assert!(f.is_partner(&fk, &rk, &r));
            assert!(r.is_partner(&rk, &fk, &f));
        }
        // A plain (un-NATed) connection.
        let k = FlowKey::new(CLIENT, BACKEND, 40000, 8080, IPPROTO_TCP);
        let e = CtEntry::default();
        let rk = FlowKey::new(BACKEND, CLIENT, 8080, 40000, IPPROTO_TCP);
        let r = CtEntry {
            flags: CT_F_REVERSE,
            ..CtEntry::default()
        };
        assert_eq!(e.peer_key(&k), rk);
        assert_eq!(r.peer_key(&rk), k);
        // A plain entry holding the reverse key of a NATed connection is not its partner.
        let [(fk, f), (rk, _)] = pair(0, CLIENT);
        let stranger = CtEntry::default();
        assert!(!f.is_partner(&fk, &rk, &stranger));
    }

    #[test]
    fn a_pair_lives_as_long_as_either_direction_is_active() {
        let s = 1_000_000_000u64;
        let quiet = CtEntry {
            last_seen_ns: s,
            ..CtEntry::default()
        };
        let talking = CtEntry {
            last_seen_ns: s + CT_TIMEOUT_UDP_NS,
            flags: CT_F_REVERSE,
            ..CtEntry::default()
        };
        let now = s + CT_TIMEOUT_UDP_NS + 1;
        assert!(quiet.is_expired(IPPROTO_UDP, now));
        assert!(!quiet.pair_expired(Some(&talking), IPPROTO_UDP, now));
        assert!(quiet.pair_expired(None, IPPROTO_UDP, now));
        assert!(quiet.pair_expired(Some(&talking), IPPROTO_UDP, now + CT_TIMEOUT_UDP_NS));
        // A FIN seen by either direction closes both.
        let established = CtEntry {
            last_seen_ns: s,
            flags: CT_F_REPLIED,
            ..CtEntry::default()
        };
        let closing = CtEntry {
            last_seen_ns: s,
            flags: CT_F_REVERSE | CT_F_CLOSING,
            ..CtEntry::default()
        };
        let later = s + CT_TIMEOUT_TCP_CLOSING_NS + 1;
        assert!(!established.is_expired(IPPROTO_TCP, later));
        assert!(established.pair_expired(Some(&closing), IPPROTO_TCP, later));
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
