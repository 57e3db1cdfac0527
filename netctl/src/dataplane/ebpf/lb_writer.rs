//! The eBPF dataplane's [`LbWriter`]: keeps the load-balancing maps equal to a [`Desired`]
//! state, writing only what changed.
//!
//! Backends get stable ids for as long as they are in the maps. A backend that leaves
//! every frontend for a reason other than a failed health check is *draining*: it stays in
//! `LB_BACKENDS` (state DRAINING) so that established connections still reach it, until
//! conntrack holds no connection to it or the drain timeout passes.
//!
//! One frontend that cannot be written (a full map, no free Maglev table) is reported in
//! [`Changes::errors`] and tried again on the next pass; it never stops the others.
//! A host-port frontend shares the Maglev table of the service frontend it forwards to
//! (same backends, same cells), so Maglev tables are one per Maglev service port.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netctl_common::{
    Backend,
    lb::{ALG_MAGLEV, BACKEND_ACTIVE, BACKEND_DRAINING, MAGLEV_M, MAGLEV_TABLES, MAX_SLOTS},
};

use super::{
    Pins, conntrack,
    lb::{Frontend, FrontendView, LbMaps},
    maglev::{self, Candidate},
};
use crate::{
    dataplane::lb::{
        BackendKey, Changes, Desired, DesiredFrontend, FrontendKey, GcJob, LbWriter, Refs,
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
    /// Frontends whose last write failed while the maps hold an older state of them.
    retry: HashSet<FrontendKey>,
    /// How many Maglev tables there are to hand out (`MAGLEV_TABLES`; fewer in tests,
    /// where writing 64 tables of 16,381 cells one syscall each takes seconds).
    maglev_table_count: u32,
    /// The instance's pins, for conntrack passes; `None` for maps not pinned (tests).
    pins: Option<Pins>,
}

impl Reconciler {
    /// The writer of an instance's pinned maps, adopting what they hold, with the host's
    /// network namespace cookie set (socket LB tells host sockets by it).
    pub fn for_instance(pins: Pins) -> anyhow::Result<Self> {
        let mut r = Self::adopt(LbMaps::open(&pins)?);
        r.maps
            .set_host_netns_cookie(crate::net::netns::current_cookie()?)?;
        r.pins = Some(pins);
        Ok(r)
    }

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
            retry: HashSet::new(),
            maglev_table_count: MAGLEV_TABLES,
            maps,
            pins: None,
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
            // Maps of an older dataplane have no address entries yet.
            if !r.maps.has_backend_addr(id, &b)
                && let Err(e) = r.maps.set_backend(id, b)
            {
                tracing::warn!("adding the address of backend {id}: {e:#}");
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
    pub fn serving_addrs(&self) -> HashSet<Ipv4Addr> {
        self.frontends
            .values()
            .flat_map(|fe| fe.slots.iter())
            .filter_map(|id| self.backends.get(id))
            .filter(|b| b.state != BACKEND_DRAINING)
            .map(|b| Ipv4Addr::from(b.addr))
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
        let mut unwritten: HashSet<BackendKey> = HashSet::new();
        for fe in &changed {
            for (key, _) in &fe.backends {
                if unwritten.contains(key) {
                    continue;
                }
                self.draining.remove(key);
                let id = self.id_for(key);
                match self.write_backend(id, key, BACKEND_ACTIVE) {
                    Ok(n) => changes.backends_written += n,
                    Err(e) => {
                        changes
                            .errors
                            .push(format!("backend {}: {e:#}", key.name()));
                        unwritten.insert(*key);
                    }
                }
            }
        }

        // 2. Frontends no longer wanted (first: what they free, a Maglev table or map
        //    entries, may be what a changed frontend needs).
        for key in removed {
            let Some(old) = self.frontends.get(&key) else {
                continue;
            };
            if let Err(e) = self.maps.remove_frontend(old) {
                changes
                    .errors
                    .push(format!("removing frontend {}: {e:#}", name(&key)));
                continue;
            }
            let uses_before = self.uses_of(key);
            self.count_uses(&uses_before, -1);
            self.applied.remove(&key);
            self.retry.remove(&key);
            self.frontends.remove(&key);
            self.maglev_tables.remove(&key);
            changes.frontends_removed += 1;
        }

        // 3. Changed frontends, each on its own: one that fails keeps what it had.
        for fe in changed {
            let result = match fe.backends.iter().find(|(b, _)| unwritten.contains(b)) {
                Some((b, _)) => Err(anyhow::anyhow!("backend {} is not written", b.name())),
                None => self.write_frontend(fe),
            };
            match result {
                Ok(written) => changes.frontends_written += usize::from(written),
                Err(e) => {
                    changes.errors.push(format!(
                        "frontend {} ({}): {e:#}",
                        name(&fe.key),
                        fe.service
                    ));
                    // The books still say what the maps hold; the next pass tries again.
                    self.retry.insert(fe.key);
                }
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
            let result = if desired.dead.contains(&key) || drained_out {
                self.maps.remove_backend(id).map(|()| {
                    self.ids.remove(&key);
                    self.backends.remove(&id);
                    self.draining.remove(&key);
                    self.uses.remove(&key);
                    changes.backends_removed += 1;
                })
            } else {
                self.write_backend(id, &key, BACKEND_DRAINING)
                    .map(|n| changes.backends_written += n)
            };
            if let Err(e) = result {
                changes
                    .errors
                    .push(format!("backend {}: {e:#}", key.name()));
            }
        }
        Ok(changes)
    }

    /// Writes one changed frontend (slots, Maglev table, master) if the maps do not hold
    /// it already; true when written. On error nothing about it is recorded as applied.
    fn write_frontend(&mut self, fe: &DesiredFrontend) -> anyhow::Result<bool> {
        let key = &fe.key;
        let slots = slots(fe, &self.ids)?;
        let maglev = if fe.algorithm == Algorithm::Maglev {
            // A host port shares the table of the service frontend it forwards to.
            let owner = fe.target.unwrap_or(*key);
            let table = match self.maglev_tables.get(&owner) {
                Some(t) => *t,
                None => self.free_maglev_table()?,
            };
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
            Some((owner, table, cells))
        } else {
            None
        };
        let owner = maglev.as_ref().map(|(owner, table, _)| (*owner, *table));
        let want = Frontend {
            addr: key.addr,
            port: key.port,
            proto: key.proto.number(),
            service_id: fe.service_id,
            algorithm: fe.algorithm.code(),
            flags: fe.flags,
            slots,
            maglev: maglev.map(|(_, table, cells)| (table, cells)),
        };
        let old = self.frontends.get(key);
        let written = if old.is_some_and(|o| same(o, &want)) {
            false
        } else {
            self.maps.write_frontend(&want, old)?;
            true
        };
        if written {
            self.frontends.insert(*key, view(&want));
        }
        if let Some((owner, table)) = owner {
            self.maglev_tables.insert(owner, table);
            if owner != *key {
                self.maglev_tables.remove(key);
            }
        } else {
            self.maglev_tables.remove(key);
        }
        let uses_before = self.uses_of(*key);
        self.count_uses(&uses_before, -1);
        self.count_uses(&distinct(fe.backends.iter().map(|(b, _)| *b)), 1);
        self.applied.insert(*key, fe.clone());
        self.retry.remove(key);
        Ok(written)
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
            if !same || self.retry.contains(key) {
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

    /// A table no frontend uses (by the reconciler's books or by what the maps hold).
    fn free_maglev_table(&self) -> anyhow::Result<u32> {
        let used: HashSet<u32> = self
            .maglev_tables
            .values()
            .copied()
            .chain(
                self.frontends
                    .values()
                    .filter(|f| f.algorithm == ALG_MAGLEV)
                    .map(|f| f.maglev_table),
            )
            .collect();
        let n = self.maglev_table_count;
        (0..n).find(|t| !used.contains(t)).ok_or_else(|| {
            anyhow::anyhow!("all {n} Maglev tables are in use (one per Maglev service port)")
        })
    }
}

/// The backend slots of a frontend: each backend's id repeated by its weight. When the
/// weights add up to more slots than a frontend holds, they are scaled down (each keeps
/// at least one slot), so a registry full of heavy instances still balances.
fn slots(fe: &DesiredFrontend, ids: &HashMap<BackendKey, u32>) -> anyhow::Result<Vec<u32>> {
    let total: u64 = fe.backends.iter().map(|(_, w)| u64::from(*w)).sum();
    let scale = |w: u32| -> usize {
        if total <= MAX_SLOTS as u64 {
            w as usize
        } else {
            ((u64::from(w) * MAX_SLOTS as u64 / total) as usize).max(1)
        }
    };
    let mut out = Vec::new();
    for (b, w) in &fe.backends {
        let id = ids
            .get(b)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("backend {} has no id", b.name()))?;
        out.extend(std::iter::repeat_n(id, scale(*w)));
    }
    if out.len() > MAX_SLOTS {
        anyhow::bail!(
            "{} backends are more than the {MAX_SLOTS} slots a frontend holds",
            fe.backends.len()
        );
    }
    Ok(out)
}

/// `addr:port/proto` of a frontend, for messages.
fn name(key: &FrontendKey) -> String {
    format!("{}:{}/{}", key.addr, key.port, key.proto.name())
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

impl LbWriter for Reconciler {
    fn apply(&mut self, desired: &Desired, refs: Option<&Refs>) -> anyhow::Result<Changes> {
        Reconciler::apply(self, desired, refs)
    }

    fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        Reconciler::backend_id(self, key)
    }

    fn is_draining(&self, key: &BackendKey) -> bool {
        Reconciler::is_draining(self, key)
    }

    fn any_draining(&self) -> bool {
        Reconciler::any_draining(self)
    }

    fn serving_addrs(&self) -> HashSet<Ipv4Addr> {
        Reconciler::serving_addrs(self)
    }

    fn set_config_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        self.maps.set_config_flags(flags)
    }

    fn conntrack_gc(&self) -> Option<GcJob> {
        let pins = self.pins.clone()?;
        Some(Box::new(move || {
            let mut map = conntrack::open(&pins)?;
            conntrack::gc(&mut map)
        }))
    }
}

/// Against the real maps of a loaded (unpinned) eBPF object: needs root; without it they
/// fail (as the integration tests' `require_root!`), unless NETCTL_SKIP_ROOT_TESTS=1.
#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netctl_common::{ServiceKey, lb::SVC_F_HOST_PORT};

    use super::*;
    use crate::dataplane::ebpf::loader::{self, LoadOptions};

    fn maps() -> Option<LbMaps> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("NETCTL_SKIP_ROOT_TESTS").as_deref() == Ok("1"),
                "this test loads the eBPF object: run it as root, or set \
                 NETCTL_SKIP_ROOT_TESTS=1 to skip it"
            );
            eprintln!("skipped: needs root (loads the eBPF object)");
            return None;
        }
        let mut ebpf = loader::load(None, LoadOptions::default()).expect("object loads");
        Some(LbMaps::take_from(&mut ebpf).expect("maps"))
    }

    fn backend(last: u8) -> BackendKey {
        BackendKey {
            addr: Ipv4Addr::new(10, 2, 0, last),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    fn frontend(n: u16, algorithm: Algorithm, backends: &[u8]) -> DesiredFrontend {
        let key = FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, 1),
            port: n,
            proto: Proto::Tcp,
        };
        DesiredFrontend {
            key,
            service: format!("s{n}"),
            service_id: u32::from(n),
            algorithm,
            flags: 0,
            backends: backends.iter().map(|b| (backend(*b), 1)).collect(),
            target: None,
        }
    }

    fn desired(frontends: impl IntoIterator<Item = DesiredFrontend>) -> Desired {
        Desired {
            frontends: frontends.into_iter().map(|f| (f.key, f)).collect(),
            ..Desired::default()
        }
    }

    fn slots(r: &mut Reconciler, fe: &DesiredFrontend) -> Vec<Ipv4Addr> {
        let views = r.maps().frontends();
        let view = views
            .iter()
            .find(|v| v.addr == fe.key.addr && v.port == fe.key.port)
            .expect("frontend in the maps");
        let backends: HashMap<u32, Backend> = r.maps().backends().into_iter().collect();
        view.slots
            .iter()
            .map(|id| Ipv4Addr::from(backends[id].addr))
            .collect()
    }

    #[test]
    fn writes_what_changed_and_nothing_when_nothing_did() {
        let Some(maps) = maps() else { return };
        let mut r = Reconciler::adopt(maps);
        let d = desired([frontend(80, Algorithm::RoundRobin, &[10, 11])]);
        let c = r.apply(&d, None).expect("apply");
        assert_eq!((c.frontends_written, c.backends_written), (1, 2), "{c:?}");
        assert!(c.errors.is_empty());
        assert_eq!(
            slots(&mut r, &d.frontends.values().next().unwrap().clone()),
            [Ipv4Addr::new(10, 2, 0, 10), Ipv4Addr::new(10, 2, 0, 11)]
        );
        assert_eq!(r.apply(&d, None).expect("again"), Changes::default());
        // A controller restarting adopts the maps and rewrites nothing that is right.
        let mut ebpf_maps = r.maps;
        let backends = ebpf_maps.backends();
        assert_eq!(backends.len(), 2);
        ebpf_maps.set_config_flags(0).expect("config");
        let mut adopted = Reconciler::adopt(ebpf_maps);
        let c = adopted.apply(&d, None).expect("adopted");
        assert_eq!((c.frontends_written, c.backends_written), (0, 0), "{c:?}");
    }

    #[test]
    fn a_dead_backend_goes_at_once_and_a_removed_one_drains_until_idle() {
        let Some(maps) = maps() else { return };
        let mut r = Reconciler::adopt(maps);
        r.apply(
            &desired([frontend(80, Algorithm::RoundRobin, &[10, 11, 12])]),
            None,
        )
        .expect("apply");
        let id_11 = r.backend_id(&backend(11)).expect("id");
        let id_12 = r.backend_id(&backend(12)).expect("id");
        // 11 failed its health check, 12 was drained.
        let mut d = desired([frontend(80, Algorithm::RoundRobin, &[10])]);
        d.dead.insert(backend(11));
        d.drained.insert(backend(12));
        let c = r.apply(&d, None).expect("apply");
        assert_eq!((c.frontends_written, c.backends_removed), (1, 1), "{c:?}");
        let backends: HashMap<u32, Backend> = r.maps().backends().into_iter().collect();
        assert!(!backends.contains_key(&id_11), "dead: gone at once");
        assert_eq!(backends[&id_12].state, BACKEND_DRAINING, "drained: kept");
        assert!(r.is_draining(&backend(12)));
        // A conntrack pass from before the drain proves nothing; one after it, with no
        // connection to 12, lets it go.
        let early = Refs {
            per_backend: HashMap::new(),
            taken: Instant::now() - Duration::from_secs(60),
        };
        r.apply(&d, Some(&early)).expect("apply");
        assert!(r.is_draining(&backend(12)));
        let busy = Refs {
            per_backend: [(id_12, 3)].into(),
            taken: Instant::now(),
        };
        r.apply(&d, Some(&busy)).expect("apply");
        assert!(r.is_draining(&backend(12)), "still has connections");
        let idle = Refs {
            per_backend: HashMap::new(),
            taken: Instant::now(),
        };
        let c = r.apply(&d, Some(&idle)).expect("apply");
        assert_eq!(c.backends_removed, 1);
        assert!(r.backend_id(&backend(12)).is_none());
    }

    #[test]
    fn a_frontend_that_cannot_be_written_never_stops_the_others_and_is_retried() {
        let Some(maps) = maps() else { return };
        // Three tables here (the logic is the same for 64, only slower to write).
        let mut r = Reconciler::adopt(maps);
        r.maglev_table_count = 3;
        // One Maglev frontend more than there are tables, and a round-robin one after.
        let mut all: Vec<DesiredFrontend> = (1..=4)
            .map(|n| frontend(n, Algorithm::Maglev, &[10, 11]))
            .collect();
        all.push(frontend(1000, Algorithm::RoundRobin, &[10]));
        let d = desired(all.clone());
        let c = r
            .apply(&d, None)
            .expect("a pass with an error still succeeds");
        assert_eq!(c.frontends_written, 4, "{c:?}");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(
            c.errors[0].contains("10.96.0.1:4/tcp") && c.errors[0].contains("Maglev tables"),
            "{}",
            c.errors[0]
        );
        assert_eq!(r.maps().frontends().len(), 4);
        // Backends still move on the frontends that were written.
        let mut next = all.clone();
        next[0] = frontend(1, Algorithm::Maglev, &[10]);
        let c = r.apply(&desired(next.clone()), None).expect("apply");
        assert!(c.frontends_written >= 1 && c.errors.len() == 1, "{c:?}");
        assert_eq!(slots(&mut r, &next[0]), [Ipv4Addr::new(10, 2, 0, 10)]);
        // A table frees up: the waiting frontend is written on the next pass.
        next.remove(1);
        let c = r.apply(&desired(next.clone()), None).expect("apply");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.frontends_removed, 1);
        let waiting = next.iter().find(|f| f.key.port == 4).expect("4");
        assert_eq!(slots(&mut r, waiting).len(), 2);
    }

    #[test]
    fn a_port_forward_shares_the_maglev_table_of_its_service() {
        let Some(maps) = maps() else { return };
        let mut r = Reconciler::adopt(maps);
        let svc = frontend(80, Algorithm::Maglev, &[10, 11, 12]);
        let mut host = frontend(8080, Algorithm::Maglev, &[10, 11, 12]);
        host.key.addr = Ipv4Addr::LOCALHOST;
        host.flags = SVC_F_HOST_PORT;
        host.target = Some(svc.key);
        let c = r
            .apply(&desired([svc.clone(), host.clone()]), None)
            .expect("apply");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let key = |f: &DesiredFrontend| ServiceKey::new(f.key.addr.octets(), f.key.port, 6, 0);
        let (a, b) = (
            r.maps().master(&key(&svc)).expect("svc"),
            r.maps().master(&key(&host)).expect("host port"),
        );
        assert_eq!(a.maglev_table, b.maglev_table, "one table for both");
        let used: HashSet<u32> = r.maglev_tables.values().copied().collect();
        assert_eq!(used, [a.maglev_table].into(), "no second table taken");
    }

    #[test]
    fn weights_beyond_the_slots_of_a_frontend_are_scaled_down() {
        let Some(maps) = maps() else { return };
        let mut r = Reconciler::adopt(maps);
        let mut fe = frontend(80, Algorithm::RoundRobin, &[]);
        // 200 instances of weight 1000: 200,000 slots asked, 65,535 possible.
        fe.backends = (0..200u8).map(|i| (backend(i), 1000)).collect();
        fe.backends[0].1 = 1;
        let c = r.apply(&desired([fe.clone()]), None).expect("apply");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let s = slots(&mut r, &fe);
        assert!(s.len() <= MAX_SLOTS, "{}", s.len());
        assert!(s.len() > MAX_SLOTS - 1000, "{}", s.len());
        let light = s.iter().filter(|a| **a == backend(0).addr).count();
        let heavy = s.iter().filter(|a| **a == backend(1).addr).count();
        assert_eq!(light, 1, "the lightest keeps one slot");
        assert!(heavy > 300, "{heavy}");
    }
}
