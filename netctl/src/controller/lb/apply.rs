//! Keeps the load-balancing maps equal to a [`Desired`] state, writing only what changed.
//!
//! Backends get stable ids for as long as they are in the maps. A backend that leaves
//! every frontend for a reason other than a failed health check is *draining*: it stays in
//! `LB_BACKENDS` (state DRAINING) so that established connections still reach it, until
//! conntrack holds no connection to it or the drain timeout passes.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use netctl_common::{
    Backend,
    lb::{ALG_MAGLEV, BACKEND_ACTIVE, BACKEND_DRAINING, MAGLEV_M, MAGLEV_TABLES},
};

use super::desired::{BackendKey, Desired, DesiredFrontend, FrontendKey};
use crate::{
    dataplane::{
        lb::{Frontend, FrontendView, LbMaps},
        maglev::{self, Candidate},
    },
    topology::{Algorithm, Proto},
};

/// How long a removed backend may keep its established connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Reconciler {
    maps: LbMaps,
    ids: HashMap<BackendKey, u32>,
    backends: HashMap<u32, Backend>,
    frontends: BTreeMap<FrontendKey, FrontendView>,
    maglev_tables: HashMap<FrontendKey, u32>,
    /// Backends on their way out, and since when.
    draining: HashMap<BackendKey, Instant>,
    next_id: u32,
    /// What the last pass wrote for each frontend, to skip the unchanged ones cheaply.
    applied: BTreeMap<FrontendKey, DesiredFrontend>,
    /// How many frontends use each backend (a backend at 0 is unused: it drains or goes).
    uses: HashMap<BackendKey, usize>,
}

/// Live connections per backend id, as of one conntrack pass.
#[derive(Debug, Clone)]
pub struct Refs {
    pub per_backend: HashMap<u32, usize>,
    /// When the pass started.
    pub taken: Instant,
}

/// What one pass changed, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

impl Reconciler {
    /// Adopts what the maps already hold (after a controller restart nothing is rewritten
    /// that is still right).
    pub fn adopt(maps: LbMaps) -> Self {
        let mut r = Reconciler {
            ids: HashMap::new(),
            backends: HashMap::new(),
            frontends: BTreeMap::new(),
            maglev_tables: HashMap::new(),
            draining: HashMap::new(),
            next_id: 1,
            applied: BTreeMap::new(),
            uses: HashMap::new(),
            maps,
        };
        for (id, b) in r.maps.backends() {
            let Some(proto) = Proto::from_number(b.proto) else {
                continue;
            };
            let key = BackendKey {
                addr: b.addr.into(),
                port: b.port,
                proto,
            };
            if b.state == BACKEND_DRAINING {
                r.draining.insert(key, Instant::now());
            }
            r.ids.insert(key, id);
            r.backends.insert(id, b);
            r.next_id = r.next_id.max(id + 1);
        }
        for fe in r.maps.frontends() {
            let Some(proto) = Proto::from_number(fe.proto) else {
                continue;
            };
            let key = FrontendKey {
                addr: fe.addr,
                port: fe.port,
                proto,
            };
            if fe.algorithm == ALG_MAGLEV {
                r.maglev_tables.insert(key, fe.maglev_table);
            }
            r.frontends.insert(key, fe);
        }
        let keys: Vec<FrontendKey> = r.frontends.keys().copied().collect();
        for key in keys {
            let uses = r.uses_of(key);
            r.count_uses(&uses, 1);
        }
        r
    }

    /// Addresses of the backends that frontends use now (not draining): after a controller
    /// restart, what was serving before it.
    pub fn serving_addrs(&self) -> std::collections::HashSet<std::net::Ipv4Addr> {
        self.frontends
            .values()
            .flat_map(|fe| fe.slots.iter())
            .filter_map(|id| self.backends.get(id))
            .filter(|b| b.state != BACKEND_DRAINING)
            .map(|b| std::net::Ipv4Addr::from(b.addr))
            .collect()
    }

    pub fn maps(&mut self) -> &mut LbMaps {
        &mut self.maps
    }

    pub fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        self.ids.get(key).copied()
    }

    pub fn is_draining(&self, key: &BackendKey) -> bool {
        self.draining.contains_key(key)
    }

    /// True while some backend drains (a conntrack pass may let it go).
    pub fn any_draining(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Brings the maps to `desired`. `refs` (live connections per backend id, from the last
    /// conntrack pass, and when that pass ran) lets draining backends go once idle.
    ///
    /// Only frontends that differ from what the last pass wrote are looked at further (a
    /// merge of two sorted maps, no allocation per frontend), so one changed backend among
    /// 10,000 services costs a few map writes, not a pass over every frontend's slots.
    pub fn apply(&mut self, desired: &Desired, refs: Option<&Refs>) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        let (changed, removed) = self.diff(desired);

        // 1. Backends of changed frontends exist (active) before any slot names them.
        for fe in &changed {
            for (key, _) in &fe.backends {
                self.draining.remove(key);
                let id = self.id_for(key);
                changes.backends_written += self.write_backend(id, key, BACKEND_ACTIVE)?;
            }
        }

        // 2. Changed frontends.
        for fe in changed {
            let key = &fe.key;
            let slots: Vec<u32> = fe
                .backends
                .iter()
                .flat_map(|(b, w)| std::iter::repeat_n(self.ids[b], *w as usize))
                .collect();
            let maglev = if fe.algorithm == Algorithm::Maglev {
                let table = match self.maglev_tables.get(key) {
                    Some(t) => *t,
                    None => self.free_maglev_table()?,
                };
                self.maglev_tables.insert(*key, table);
                let candidates: Vec<Candidate> = fe
                    .backends
                    .iter()
                    .map(|(b, w)| Candidate {
                        name: b.name(),
                        weight: *w,
                    })
                    .collect();
                let cells: Vec<u32> = maglev::table(&candidates, MAGLEV_M)
                    .into_iter()
                    .map(|i| self.ids[&fe.backends[i as usize].0])
                    .collect();
                // An empty table still needs cells; count 0 keeps the dataplane off them.
                let cells = if cells.is_empty() {
                    vec![0; MAGLEV_M as usize]
                } else {
                    cells
                };
                Some((table, cells))
            } else {
                None
            };
            let want = Frontend {
                addr: key.addr,
                port: key.port,
                proto: key.proto.number(),
                service_id: fe.service_id,
                algorithm: fe.algorithm.code(),
                flags: fe.flags,
                slots,
                maglev,
            };
            let old = self.frontends.get(key);
            let uses_before = self.uses_of(*key);
            if !old.is_some_and(|o| same(o, &want)) {
                self.maps.write_frontend(&want, old)?;
                self.frontends.insert(*key, view(&want));
                changes.frontends_written += 1;
            }
            self.count_uses(&uses_before, -1);
            self.count_uses(&distinct(fe.backends.iter().map(|(b, _)| *b)), 1);
            self.applied.insert(*key, fe.clone());
        }

        // 3. Frontends no longer wanted.
        for key in removed {
            let uses_before = self.uses_of(key);
            self.count_uses(&uses_before, -1);
            self.applied.remove(&key);
            if let Some(old) = self.frontends.remove(&key) {
                self.maps.remove_frontend(&old)?;
                self.maglev_tables.remove(&key);
                changes.frontends_removed += 1;
            }
        }

        // 4. Backends no frontend uses any more: dead ones go now, others drain.
        let unused: Vec<BackendKey> = self
            .ids
            .keys()
            .filter(|k| self.uses.get(k).is_none_or(|n| *n == 0))
            .copied()
            .collect();
        for key in unused {
            let id = self.ids[&key];
            let since = *self.draining.entry(key).or_insert_with(Instant::now);
            // Idle only by a conntrack pass that started after the drain did.
            let idle = refs
                .is_some_and(|r| r.taken > since && r.per_backend.get(&id).is_none_or(|n| *n == 0));
            let drained_out = idle || since.elapsed() > DRAIN_TIMEOUT;
            if desired.dead.contains(&key) || drained_out {
                self.maps.remove_backend(id)?;
                self.ids.remove(&key);
                self.backends.remove(&id);
                self.draining.remove(&key);
                self.uses.remove(&key);
                changes.backends_removed += 1;
            } else {
                changes.backends_written += self.write_backend(id, &key, BACKEND_DRAINING)?;
            }
        }
        Ok(changes)
    }

    /// Frontends of `desired` that differ from the last pass (or were never written by
    /// this reconciler), and frontends in the maps that `desired` does not have: one walk
    /// over both sorted maps.
    fn diff<'d>(&self, desired: &'d Desired) -> (Vec<&'d DesiredFrontend>, Vec<FrontendKey>) {
        let mut changed = Vec::new();
        let mut applied = self.applied.iter().peekable();
        for (key, fe) in &desired.frontends {
            while applied.next_if(|(k, _)| *k < key).is_some() {}
            let same = applied
                .next_if(|(k, _)| *k == key)
                .is_some_and(|(_, a)| a == fe);
            if !same {
                changed.push(fe);
            }
        }
        let mut wanted = desired.frontends.keys().peekable();
        let mut removed = Vec::new();
        for key in self.frontends.keys() {
            while wanted.next_if(|k| *k < key).is_some() {}
            if wanted.next_if(|k| *k == key).is_none() {
                removed.push(*key);
            }
        }
        (changed, removed)
    }

    /// The distinct backends a frontend uses now (as last applied, or as the maps say).
    fn uses_of(&self, key: FrontendKey) -> Vec<BackendKey> {
        if let Some(fe) = self.applied.get(&key) {
            return distinct(fe.backends.iter().map(|(b, _)| *b));
        }
        let Some(view) = self.frontends.get(&key) else {
            return Vec::new();
        };
        distinct(view.slots.iter().filter_map(|id| {
            let b = self.backends.get(id)?;
            Some(BackendKey {
                addr: b.addr.into(),
                port: b.port,
                proto: Proto::from_number(b.proto)?,
            })
        }))
    }

    fn count_uses(&mut self, keys: &[BackendKey], delta: isize) {
        for k in keys {
            let n = self.uses.entry(*k).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
    }

    fn id_for(&mut self, key: &BackendKey) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(*key, id);
        id
    }

    /// Writes a backend if it differs from what the map holds; 1 when written.
    fn write_backend(&mut self, id: u32, key: &BackendKey, state: u8) -> anyhow::Result<usize> {
        let b = Backend {
            addr: key.addr.octets(),
            port: key.port,
            proto: key.proto.number(),
            state,
        };
        if self.backends.get(&id) == Some(&b) {
            return Ok(0);
        }
        self.maps.set_backend(id, b)?;
        self.backends.insert(id, b);
        Ok(1)
    }

    fn free_maglev_table(&self) -> anyhow::Result<u32> {
        (0..MAGLEV_TABLES)
            .find(|t| !self.maglev_tables.values().any(|used| used == t))
            .ok_or_else(|| anyhow::anyhow!("all {MAGLEV_TABLES} Maglev tables are in use"))
    }
}

fn view(fe: &Frontend) -> FrontendView {
    FrontendView {
        addr: fe.addr,
        port: fe.port,
        proto: fe.proto,
        service_id: fe.service_id,
        algorithm: fe.algorithm,
        flags: fe.flags,
        maglev_table: fe.maglev.as_ref().map_or(0, |(t, _)| *t),
        slots: fe.slots.clone(),
    }
}

/// True when the map already holds `want` (Maglev cells follow from the slots).
fn same(old: &FrontendView, want: &Frontend) -> bool {
    let mut sorted_old = old.slots.clone();
    let mut sorted_new = want.slots.clone();
    sorted_old.sort_unstable();
    sorted_new.sort_unstable();
    old.service_id == want.service_id
        && old.algorithm == want.algorithm
        && old.flags == want.flags
        && old.maglev_table == want.maglev.as_ref().map_or(0, |(t, _)| *t)
        && if want.algorithm == ALG_MAGLEV {
            sorted_old == sorted_new
        } else {
            old.slots == want.slots
        }
}

fn distinct(keys: impl Iterator<Item = BackendKey>) -> Vec<BackendKey> {
    let mut v: Vec<BackendKey> = keys.collect();
    v.sort_unstable();
    v.dedup();
    v
}
