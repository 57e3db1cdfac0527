//! Writing and reading the load-balancing maps (`LB_SERVICES`, `LB_BACKENDS`,
//! `LB_BACKEND_ADDRS`, `LB_MAGLEV`, `CONFIG`). The write order keeps every state the
//! dataplane can observe valid: slots before the master entry that counts them, the Maglev
//! table before the master that points at it, and deletions after the master no longer
//! covers them.

use std::net::Ipv4Addr;

use anyhow::{Context, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError},
};
use netctl_common::{
    Backend, ServiceKey, ServiceValue,
    lb::{ALG_MAGLEV, BackendAddr, MAGLEV_M, MAGLEV_TABLES, MAX_SLOTS},
    maps::{
        CFG_FLAGS, CFG_HOST_NETNS_HI, CFG_HOST_NETNS_LO, CONFIG, LB_BACKEND_ADDRS, LB_BACKENDS,
        LB_MAGLEV, LB_SERVICES,
    },
};
use serde::Serialize;

use super::Pins;

/// A frontend as the controller wants it in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub service_id: u32,
    pub algorithm: u8,
    pub flags: u8,
    /// Backend ids, one per slot (a backend with weight w appears w times).
    pub slots: Vec<u32>,
    /// Maglev: the table index and its cells (backend ids).
    pub maglev: Option<(u32, Vec<u32>)>,
}

impl Frontend {
    pub fn key(&self, slot: u16) -> ServiceKey {
        ServiceKey::new(self.addr.octets(), self.port, self.proto, slot)
    }
}

/// A frontend as found in the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub service_id: u32,
    pub algorithm: u8,
    pub flags: u8,
    pub maglev_table: u32,
    pub slots: Vec<u32>,
}

pub struct LbMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    backend_addrs: HashMap<MapData, BackendAddr, u32>,
    maglev: Array<MapData, u32>,
    config: Array<MapData, u32>,
}

impl LbMaps {
    /// The pinned maps of an instance.
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<MapData> {
            MapData::from_pin(pins.map(name))
                .with_context(|| format!("opening pinned map {name} (is the platform up?)"))
        };
        Ok(Self {
            services: HashMap::try_from(Map::HashMap(open(LB_SERVICES)?)).context(LB_SERVICES)?,
            backends: HashMap::try_from(Map::HashMap(open(LB_BACKENDS)?)).context(LB_BACKENDS)?,
            backend_addrs: HashMap::try_from(Map::HashMap(open(LB_BACKEND_ADDRS)?))
                .context(LB_BACKEND_ADDRS)?,
            maglev: Array::try_from(Map::Array(open(LB_MAGLEV)?)).context(LB_MAGLEV)?,
            config: Array::try_from(Map::Array(open(CONFIG)?)).context(CONFIG)?,
        })
    }

    /// The maps of a loaded object, taken out of it (tests and benchmarks load one
    /// without pinning).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            services: HashMap::try_from(take(LB_SERVICES)?).context(LB_SERVICES)?,
            backends: HashMap::try_from(take(LB_BACKENDS)?).context(LB_BACKENDS)?,
            backend_addrs: HashMap::try_from(take(LB_BACKEND_ADDRS)?).context(LB_BACKEND_ADDRS)?,
            maglev: Array::try_from(take(LB_MAGLEV)?).context(LB_MAGLEV)?,
            config: Array::try_from(take(CONFIG)?).context(CONFIG)?,
        })
    }

    pub fn set_config_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        self.config
            .set(CFG_FLAGS, flags, 0)
            .context("writing CONFIG")
    }

    /// Records the host's network namespace cookie (see `CFG_HOST_NETNS_LO`).
    pub fn set_host_netns_cookie(&mut self, cookie: u64) -> anyhow::Result<()> {
        self.config
            .set(CFG_HOST_NETNS_LO, cookie as u32, 0)
            .and_then(|()| self.config.set(CFG_HOST_NETNS_HI, (cookie >> 32) as u32, 0))
            .context("writing CONFIG")
    }

    pub fn config_flags(&self) -> anyhow::Result<u32> {
        self.config.get(&CFG_FLAGS, 0).context("reading CONFIG")
    }

    /// Writes a backend and its address entry (`LB_BACKEND_ADDRS`).
    pub fn set_backend(&mut self, id: u32, backend: Backend) -> anyhow::Result<()> {
        self.backends
            .insert(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))?;
        self.backend_addrs
            .insert(BackendAddr::of(&backend), id, 0)
            .with_context(|| format!("writing the address of backend {id}"))
    }

    /// Removes a backend and its address entry.
    pub fn remove_backend(&mut self, id: u32) -> anyhow::Result<()> {
        let old = self.backends.get(&id, 0).ok();
        ignore_missing(self.backends.remove(&id))
            .with_context(|| format!("removing backend {id}"))?;
        if let Some(b) = old {
            let addr = BackendAddr::of(&b);
            if self.backend_addrs.get(&addr, 0).ok() == Some(id) {
                ignore_missing(self.backend_addrs.remove(&addr))
                    .with_context(|| format!("removing the address of backend {id}"))?;
            }
        }
        Ok(())
    }

    /// Whether `backend` has its address entry (maps of an older dataplane may lack it).
    pub fn has_backend_addr(&self, id: u32, backend: &Backend) -> bool {
        self.backend_addrs.get(&BackendAddr::of(backend), 0).ok() == Some(id)
    }

    pub fn backends(&self) -> Vec<(u32, Backend)> {
        self.backends.iter().filter_map(Result::ok).collect()
    }

    /// Writes `fe`, replacing `old` (what the maps held for the same key, if anything).
    pub fn write_frontend(
        &mut self,
        fe: &Frontend,
        old: Option<&FrontendView>,
    ) -> anyhow::Result<()> {
        if fe.slots.len() > MAX_SLOTS {
            return Err(anyhow!(
                "{}:{} has {} backend slots, more than the {MAX_SLOTS} a frontend can hold",
                fe.addr,
                fe.port,
                fe.slots.len()
            ));
        }
        let count = fe.slots.len() as u16;
        for (i, id) in fe.slots.iter().enumerate() {
            let value = ServiceValue {
                backend_id: *id,
                ..ServiceValue::default()
            };
            self.services
                .insert(fe.key(i as u16 + 1), value, 0)
                .context("writing a backend slot")?;
        }
        let mut maglev_table = 0;
        if let Some((table, cells)) = &fe.maglev {
            let previous = old
                .filter(|o| o.algorithm == ALG_MAGLEV && o.maglev_table == *table)
                .map(|_| self.read_maglev(*table))
                .transpose()?;
            self.write_maglev(*table, cells, previous.as_deref())?;
            maglev_table = *table;
        }
        // Round-robin carries on where it was: restarting at slot 1 on every change would
        // favour the first backends of a frontend whose set changes often.
        let rr_next = self
            .services
            .get(&fe.key(0), 0)
            .map_or(0, |m: ServiceValue| m.rr_next);
        let master = ServiceValue {
            backend_id: 0,
            service_id: fe.service_id,
            maglev_table,
            rr_next,
            count,
            algorithm: fe.algorithm,
            flags: fe.flags,
            _pad: 0,
        };
        self.services
            .insert(fe.key(0), master, 0)
            .context("writing a frontend")?;
        let old_count = old.map_or(0, |o| o.slots.len());
        for slot in fe.slots.len() + 1..=old_count {
            ignore_missing(self.services.remove(&fe.key(slot as u16)))
                .context("removing a backend slot")?;
        }
        Ok(())
    }

    /// Removes a frontend: master first, then its slots.
    pub fn remove_frontend(&mut self, old: &FrontendView) -> anyhow::Result<()> {
        let key = |slot: u16| ServiceKey::new(old.addr.octets(), old.port, old.proto, slot);
        ignore_missing(self.services.remove(&key(0))).context("removing a frontend")?;
        for slot in 1..=old.slots.len() {
            ignore_missing(self.services.remove(&key(slot as u16))).context("removing a slot")?;
        }
        Ok(())
    }

    /// The master entry (slot 0) of a frontend, as the dataplane sees it.
    pub fn master(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(&ServiceKey { slot: 0, ..*key }, 0).ok()
    }

    /// Every frontend with its slots.
    pub fn frontends(&self) -> Vec<FrontendView> {
        // Indexed, not searched: 10,000 frontends are 40,000 entries.
        let entries: std::collections::HashMap<ServiceKey, ServiceValue> =
            self.services.iter().filter_map(Result::ok).collect();
        let mut out: Vec<FrontendView> = entries
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(k, v)| {
                let slots = (1..=v.count)
                    .map(|slot| {
                        entries
                            .get(&ServiceKey { slot, ..*k })
                            .map_or(0, |sv| sv.backend_id)
                    })
                    .collect();
                FrontendView {
                    addr: Ipv4Addr::from(k.addr),
                    port: k.port,
                    proto: k.proto,
                    service_id: v.service_id,
                    algorithm: v.algorithm,
                    flags: v.flags,
                    maglev_table: v.maglev_table,
                    slots,
                }
            })
            .collect();
        out.sort_by_key(|f| (f.service_id, f.addr, f.port, f.proto));
        out
    }

    pub fn read_maglev(&self, table: u32) -> anyhow::Result<Vec<u32>> {
        check_table(table)?;
        (0..MAGLEV_M)
            .map(|i| {
                self.maglev
                    .get(&(table * MAGLEV_M + i), 0)
                    .context("reading LB_MAGLEV")
            })
            .collect()
    }

    /// Writes a Maglev table, only the cells that differ from `previous`.
    pub fn write_maglev(
        &mut self,
        table: u32,
        cells: &[u32],
        previous: Option<&[u32]>,
    ) -> anyhow::Result<()> {
        check_table(table)?;
        if cells.len() != MAGLEV_M as usize {
            return Err(anyhow!(
                "a Maglev table has {MAGLEV_M} cells, not {}",
                cells.len()
            ));
        }
        for (i, id) in cells.iter().enumerate() {
            if previous.is_some_and(|p| p.get(i) == Some(id)) {
                continue;
            }
            self.maglev
                .set(table * MAGLEV_M + i as u32, *id, 0)
                .context("writing LB_MAGLEV")?;
        }
        Ok(())
    }
}

fn check_table(table: u32) -> anyhow::Result<()> {
    if table >= MAGLEV_TABLES {
        return Err(anyhow!(
            "Maglev table {table} out of range (max {MAGLEV_TABLES})"
        ));
    }
    Ok(())
}

/// Deleting what is already gone is success.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        other => other,
    }
}
