//! Service load balancing: the `LB_SERVICES`, `LB_BACKENDS` and `LB_MAGLEV` maps.
//!
//! A service *frontend* (VIP:port/proto, or a host port) owns consecutive entries of
//! `LB_SERVICES` keyed by slot: slot 0 is the master entry (count, algorithm, ...), slots
//! `1..=count` each name one backend. Backends live once in `LB_BACKENDS`, by id. The
//! controller grows a frontend by writing new slots before raising the count, and shrinks it
//! by lowering the count before deleting slots, so the dataplane never sees a slot that is
//! not there (the make-before-break order Cilium uses).

/// Backend selection algorithms (`ServiceValue::algorithm`).
pub const ALG_RANDOM: u8 = 0;
pub const ALG_ROUND_ROBIN: u8 = 1;
pub const ALG_MAGLEV: u8 = 2;

/// `ServiceValue::flags`: the frontend is a host port (port forward), not a VIP. The TC
/// programs on uplinks serve only these; the socket-level LB serves both.
pub const SVC_F_HOST_PORT: u8 = 0x01;

/// Size of one Maglev lookup table (a prime, as Maglev requires).
pub const MAGLEV_M: u32 = 16_381;
/// Number of Maglev tables in `LB_MAGLEV` (one per Maglev frontend).
pub const MAGLEV_TABLES: u32 = 64;

/// `Backend::state`.
pub const BACKEND_ACTIVE: u8 = 0;
/// Removed from its services' slots; established connections still reach it.
pub const BACKEND_DRAINING: u8 = 1;

/// Key of `LB_SERVICES`: a frontend and a slot of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Frontend address, bytes as on the wire.
    pub addr: [u8; 4],
    /// Frontend port, host byte order.
    pub port: u16,
    /// 0 = master entry, 1..=count = backend slots.
    pub slot: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(ServiceKey, 12);

impl ServiceKey {
    pub const fn new(addr: [u8; 4], port: u16, proto: u8, slot: u16) -> Self {
        Self {
            addr,
            port,
            slot,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Value of `LB_SERVICES`. In the master entry (slot 0) every field but `backend_id` is
/// used; in a backend slot only `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Slot > 0: the backend in this slot (key of `LB_BACKENDS`).
    pub backend_id: u32,
    /// Master: identity of the service this frontend belongs to (names, stats, policy).
    pub service_id: u32,
    /// Master: Maglev table index (`ALG_MAGLEV` only).
    pub maglev_table: u32,
    /// Master: round-robin position, advanced atomically by the dataplane.
    pub rr_next: u32,
    /// Master: number of backend slots; 0 means the frontend has no backend.
    pub count: u16,
    pub algorithm: u8,
    pub flags: u8,
    pub _pad: u32,
}
crate::assert_size!(ServiceValue, 24);

/// Value of `LB_BACKENDS` (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: [u8; 4],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_ACTIVE` or `BACKEND_DRAINING`.
    pub state: u8,
}
crate::assert_size!(Backend, 8);

/// Key of `LB_BACKEND_ADDRS` (value: the backend's id): a backend by its address, so the
/// dataplane can tell a reply from a backend whose connection it lost (a conntrack miss
/// on a packet from a service backend's address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendAddr {
    pub addr: [u8; 4],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
crate::assert_size!(BackendAddr, 8);

impl BackendAddr {
    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }

    pub const fn of(b: &Backend) -> Self {
        Self::new(b.addr, b.port, b.proto)
    }
}

/// Most slots (backends counted by weight) one frontend can have: slot numbers are `u16`
/// and slot 0 is the master entry.
pub const MAX_SLOTS: usize = u16::MAX as usize;

/// A 32-bit hash of a 5-tuple for Maglev (the dataplane and tests compute it the same way).
/// Murmur3's finalizer over the mixed fields: cheap for the verifier, well spread.
#[inline(always)]
pub fn tuple_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = u32::from_ne_bytes(src) ^ 0x9e37_79b9;
    h = fmix(h ^ u32::from_ne_bytes(dst));
    h = fmix(h ^ ((sport as u32) << 16 | dport as u32));
    fmix(h ^ proto as u32)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::BackendAddr {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, slot), 6);
        assert_eq!(offset_of!(ServiceKey, proto), 8);
        assert_eq!(offset_of!(ServiceValue, service_id), 4);
        assert_eq!(offset_of!(ServiceValue, maglev_table), 8);
        assert_eq!(offset_of!(ServiceValue, rr_next), 12);
        assert_eq!(offset_of!(ServiceValue, count), 16);
        assert_eq!(offset_of!(ServiceValue, algorithm), 18);
        assert_eq!(offset_of!(ServiceValue, flags), 19);
        assert_eq!(offset_of!(Backend, port), 4);
        assert_eq!(offset_of!(Backend, proto), 6);
        assert_eq!(offset_of!(Backend, state), 7);
        assert_eq!(offset_of!(BackendAddr, port), 4);
        assert_eq!(offset_of!(BackendAddr, proto), 6);
    }

    #[test]
    fn tuple_hash_depends_on_every_field() {
        let base = tuple_hash([10, 0, 0, 1], [10, 96, 0, 1], 40000, 80, 6);
        assert_ne!(
            base,
            tuple_hash([10, 0, 0, 2], [10, 96, 0, 1], 40000, 80, 6)
        );
        assert_ne!(
            base,
            tuple_hash([10, 0, 0, 1], [10, 96, 0, 2], 40000, 80, 6)
        );
        assert_ne!(
            base,
            tuple_hash([10, 0, 0, 1], [10, 96, 0, 1], 40001, 80, 6)
        );
        assert_ne!(
            base,
            tuple_hash([10, 0, 0, 1], [10, 96, 0, 1], 40000, 81, 6)
        );
        assert_ne!(
            base,
            tuple_hash([10, 0, 0, 1], [10, 96, 0, 1], 40000, 80, 17)
        );
    }
}
