//! Writing and reading the load-balancing maps (`LB_SERVICES`, `LB_BACKENDS`, `LB_MAGLEV`,
//! `CONFIG`). The write order keeps every state the dataplane can observe valid: slots
//! before the master entry that counts them, the Maglev table before the master that
//! points at it, and deletions after the master no longer covers them.

use std::net::Ipv4Addr;

use anyhow::{Context, anyhow};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use netctl_common::{
    Backend, ServiceKey, ServiceValue,
    lb::{ALG_MAGLEV, MAGLEV_M, MAGLEV_TABLES},
    maps::{
        CFG_FLAGS, CFG_HOST_NETNS_HI, CFG_HOST_NETNS_LO, CONFIG, LB_BACKENDS, LB_MAGLEV,
        LB_SERVICES,
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
        Self::from_maps(
            Map::HashMap(open(LB_SERVICES)?),
            Map::HashMap(open(LB_BACKENDS)?),
            Map::Array(open(LB_MAGLEV)?),
            Map::Array(open(CONFIG)?),
        )
    }

    /// Maps taken from a loaded object (tests load one without pinning).
    pub fn from_maps(
        services: Map,
        backends: Map,
        maglev: Map,
        config: Map,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            services: HashMap::try_from(services).context("LB_SERVICES")?,
            backends: HashMap::try_from(backends).context("LB_BACKENDS")?,
            maglev: Array::try_from(maglev).context("LB_MAGLEV")?,
            config: Array::try_from(config).context("CONFIG")?,
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

    pub fn set_backend(&mut self, id: u32, backend: Backend) -> anyhow::Result<()> {
        self.backends
            .insert(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    pub fn remove_backend(&mut self, id: u32) -> anyhow::Result<()> {
        ignore_missing(self.backends.remove(&id)).with_context(|| format!("removing backend {id}"))
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
        let count = u16::try_from(fe.slots.len())
            .map_err(|_| anyhow!("{}:{} has too many backend slots", fe.addr, fe.port))?;
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
        let master = ServiceValue {
            backend_id: 0,
            service_id: fe.service_id,
            maglev_table,
            rr_next: 0,
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

    /// Every frontend with its slots.
    pub fn frontends(&self) -> Vec<FrontendView> {
        let entries: Vec<(ServiceKey, ServiceValue)> =
            self.services.iter().filter_map(Result::ok).collect();
        let mut out: Vec<FrontendView> = entries
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(k, v)| {
                let slots = (1..=v.count)
                    .map(|slot| {
                        entries
                            .iter()
                            .find(|(sk, _)| *sk == ServiceKey { slot, ..*k })
                            .map_or(0, |(_, sv)| sv.backend_id)
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
