//! Service lookup and backend selection (random, round-robin, Maglev) over
//! `LB_SERVICES`, `LB_BACKENDS` and `LB_MAGLEV`; `LB_BACKEND_ADDRS` tells backends by
//! address.

use core::intrinsics::{AtomicOrdering::SeqCst, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, HashMap},
};
use netctl_common::{
    Backend, ServiceKey, ServiceValue,
    lb::{ALG_MAGLEV, ALG_ROUND_ROBIN, BackendAddr, MAGLEV_M, MAGLEV_TABLES},
    maps,
};

#[map(name = "LB_SERVICES")]
static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(maps::LB_SERVICES_MAX_ENTRIES, 0);

#[map(name = "LB_BACKENDS")]
static LB_BACKENDS: HashMap<u32, Backend> =
    HashMap::with_max_entries(maps::LB_BACKENDS_MAX_ENTRIES, 0);

#[map(name = "LB_BACKEND_ADDRS")]
static LB_BACKEND_ADDRS: HashMap<BackendAddr, u32> =
    HashMap::with_max_entries(maps::LB_BACKENDS_MAX_ENTRIES, 0);

#[map(name = "LB_MAGLEV")]
static LB_MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_TABLES * MAGLEV_M, 0);

/// A frontend's master entry.
pub struct Frontend {
    pub key: ServiceKey,
    pub master: *mut ServiceValue,
}

impl Frontend {
    pub fn flags(&self) -> u8 {
        // SAFETY: `master` points into a map value valid for this program run.
        unsafe { (*self.master).flags }
    }

    pub fn service_id(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.master).service_id }
    }
}

/// The frontend `addr:port/proto`, if there is one.
#[inline(always)]
pub fn frontend(addr: [u8; 4], port: u16, proto: u8) -> Option<Frontend> {
    let key = ServiceKey::new(addr, port, proto, 0);
    let master = LB_SERVICES.get_ptr_mut(key)?;
    Some(Frontend { key, master })
}

/// Picks a backend for a new connection; `hash` feeds Maglev. `None`: no usable backend.
#[inline(always)]
pub fn select(fe: &Frontend, hash: u32) -> Option<(u32, Backend)> {
    // SAFETY: `master` points into a map value valid for this program run; `rr_next` is
    // only changed with an atomic add.
    let (count, algorithm, table) = unsafe {
        (
            (*fe.master).count as u32,
            (*fe.master).algorithm,
            (*fe.master).maglev_table,
        )
    };
    if count == 0 {
        return None;
    }
    let backend_id = if algorithm == ALG_MAGLEV {
        if table >= MAGLEV_TABLES {
            return None;
        }
        *LB_MAGLEV.get(table * MAGLEV_M + hash % MAGLEV_M)?
    } else {
        let n = if algorithm == ALG_ROUND_ROBIN {
            // SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed fetch-add to the
            // legacy XADD, which does not return the old value (seen with LLVM 22).
            // SAFETY: see above.
            unsafe { atomic_xadd::<u32, u32, { SeqCst }>(&raw mut (*fe.master).rr_next, 1) }
        } else {
            // SAFETY: helper without arguments.
            unsafe { bpf_get_prandom_u32() }
        };
        let mut slot_key = fe.key;
        slot_key.slot = (n % count + 1) as u16;
        // SAFETY: plain read of a map value.
        unsafe { LB_SERVICES.get(slot_key)? }.backend_id
    };
    backend(backend_id).map(|b| (backend_id, b))
}

/// A backend by id, if it still exists (active or draining).
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: plain read of a map value.
    unsafe { LB_BACKENDS.get(id).copied() }
}

/// Whether `addr:port/proto` is a backend of some service (so a packet from it is a reply).
#[inline(always)]
pub fn is_backend_addr(addr: [u8; 4], port: u16, proto: u8) -> bool {
    // SAFETY: plain read of a map value.
    unsafe { LB_BACKEND_ADDRS.get(BackendAddr::new(addr, port, proto)) }.is_some()
}
