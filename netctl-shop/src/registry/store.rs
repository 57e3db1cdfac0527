//! The registry's table of instances, in memory, with heartbeat TTLs and the ownership
//! rule: an instance belongs to its address, and only requests from that address may
//! change it. Time is passed in, so the rules are tested without waiting.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use super::model::{Instance, Registration, ServiceSummary};

/// Dead instances stay listed (alive = false) this long, then are forgotten.
pub const FORGET_AFTER_MS: u64 = 60_000;
/// Instances one address may hold (one namespace runs a handful of services).
pub const MAX_PER_ADDRESS: usize = 64;
/// Instances in all.
pub const MAX_INSTANCES: usize = 4096;

/// A moment, on the monotonic clock (for TTLs) and the wall clock (for people).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("instance {service}/{id} is not registered")]
    NotFound { service: String, id: String },
    #[error("requests from {peer} may only change instances at {peer}; {what} is at {owner}")]
    Forbidden {
        peer: Ipv4Addr,
        owner: Ipv4Addr,
        what: String,
    },
    #[error("instance {service}/{id} is alive at {owner}; it cannot be taken over from {peer}")]
    Taken {
        service: String,
        id: String,
        owner: Ipv4Addr,
        peer: Ipv4Addr,
    },
    #[error("{0}")]
    Full(String),
}

#[derive(Debug, Clone)]
struct Entry {
    reg: Registration,
    address: Ipv4Addr,
    ttl_ms: u64,
    registered_at_ms: u64,
    last_heartbeat_ms: u64,
    /// Monotonic time of the last heartbeat.
    beat_mono_ms: u64,
}

impl Entry {
    fn expires_at(&self) -> u64 {
        self.beat_mono_ms.saturating_add(self.ttl_ms)
    }

    fn alive(&self, now: Now) -> bool {
        now.mono_ms < self.expires_at()
    }

    fn view(&self, now: Now) -> Instance {
        Instance {
            service: self.reg.service.clone(),
            id: self.reg.id.clone(),
            address: self.address,
            port: self.reg.port,
            metadata: self.reg.metadata.clone(),
            ttl_secs: self.ttl_ms / 1000,
            registered_at_ms: self.registered_at_ms,
            last_heartbeat_ms: self.last_heartbeat_ms,
            alive: self.alive(now),
            expires_in_ms: self.expires_at().saturating_sub(now.mono_ms),
        }
    }
}

/// Instances by (service, id).
#[derive(Debug, Default)]
pub struct Store {
    entries: HashMap<(String, String), Entry>,
}

/// What `register` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    Created(Instance),
    /// The same instance registered again (e.g. after a restart): refreshed.
    Refreshed(Instance),
}

impl Store {
    /// Registers (or refreshes) an instance announced by `peer`. The registration's
    /// address, when given, must be `peer`.
    pub fn register(
        &mut self,
        reg: Registration,
        peer: Ipv4Addr,
        ttl_secs: u64,
        now: Now,
    ) -> Result<Registered, StoreError> {
        self.forget_old(now);
        let address = reg.address.unwrap_or(peer);
        if address != peer {
            return Err(StoreError::Forbidden {
                peer,
                owner: address,
                what: "the address registered".into(),
            });
        }
        let key = (reg.service.clone(), reg.id.clone());
        let existing = self.entries.get(&key);
        if let Some(e) = existing
            && e.address != peer
            && e.alive(now)
        {
            return Err(StoreError::Taken {
                service: key.0,
                id: key.1,
                owner: e.address,
                peer,
            });
        }
        let registered_at_ms = match existing {
            Some(e) if e.address == peer => e.registered_at_ms,
            _ => {
                self.check_room(peer, &key)?;
                now.wall_ms
            }
        };
        let refreshed = existing.is_some_and(|e| e.address == peer);
        let entry = Entry {
            reg: Registration {
                address: Some(address),
                ttl_secs: Some(ttl_secs),
                ..reg
            },
            address,
            ttl_ms: ttl_secs * 1000,
            registered_at_ms,
            last_heartbeat_ms: now.wall_ms,
            beat_mono_ms: now.mono_ms,
        };
        let view = entry.view(now);
        self.entries.insert(key, entry);
        Ok(if refreshed {
            Registered::Refreshed(view)
        } else {
            Registered::Created(view)
        })
    }

    fn check_room(&self, peer: Ipv4Addr, key: &(String, String)) -> Result<(), StoreError> {
        let replacing = usize::from(self.entries.contains_key(key));
        if self.entries.len() - replacing >= MAX_INSTANCES {
            return Err(StoreError::Full(format!(
                "the registry holds {MAX_INSTANCES} instances already"
            )));
        }
        let mine = self.entries.values().filter(|e| e.address == peer).count();
        if mine >= MAX_PER_ADDRESS {
            return Err(StoreError::Full(format!(
                "{peer} has {MAX_PER_ADDRESS} instances registered already"
            )));
        }
        Ok(())
    }

    /// A heartbeat from `peer` for its instance; revives an instance that just died.
    pub fn heartbeat(
        &mut self,
        service: &str,
        id: &str,
        peer: Ipv4Addr,
        now: Now,
    ) -> Result<Instance, StoreError> {
        self.forget_old(now);
        let entry = self.owned_mut(service, id, peer)?;
        entry.last_heartbeat_ms = now.wall_ms;
        entry.beat_mono_ms = now.mono_ms;
        Ok(entry.view(now))
    }

    /// Removes `peer`'s instance.
    pub fn deregister(
        &mut self,
        service: &str,
        id: &str,
        peer: Ipv4Addr,
        now: Now,
    ) -> Result<Instance, StoreError> {
        let view = self.owned_mut(service, id, peer)?.view(now);
        self.entries.remove(&(service.to_string(), id.to_string()));
        Ok(view)
    }

    fn owned_mut(
        &mut self,
        service: &str,
        id: &str,
        peer: Ipv4Addr,
    ) -> Result<&mut Entry, StoreError> {
        let entry = self
            .entries
            .get_mut(&(service.to_string(), id.to_string()))
            .ok_or_else(|| StoreError::NotFound {
                service: service.into(),
                id: id.into(),
            })?;
        if entry.address != peer {
            return Err(StoreError::Forbidden {
                peer,
                owner: entry.address,
                what: format!("instance {service}/{id}"),
            });
        }
        Ok(entry)
    }

    /// The live instances of `service`, by id.
    pub fn discover(&self, service: &str, now: Now) -> Vec<Instance> {
        let mut out: Vec<Instance> = self
            .entries
            .values()
            .filter(|e| e.reg.service == service && e.alive(now))
            .map(|e| e.view(now))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every instance, alive or recently dead, by service and id.
    pub fn list(&mut self, now: Now) -> Vec<Instance> {
        self.forget_old(now);
        let mut out: Vec<Instance> = self.entries.values().map(|e| e.view(now)).collect();
        out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        out
    }

    pub fn summary(&mut self, now: Now) -> Vec<ServiceSummary> {
        let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for i in self.list(now) {
            let c = by.entry(i.service).or_default();
            if i.alive {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        by.into_iter()
            .map(|(service, (alive, dead))| ServiceSummary {
                service,
                alive,
                dead,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn forget_old(&mut self, now: Now) {
        self.entries
            .retain(|_, e| now.mono_ms < e.expires_at().saturating_add(FORGET_AFTER_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

    fn at(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            wall_ms: 1_700_000_000_000 + ms,
        }
    }

    fn reg(service: &str, id: &str, address: Option<Ipv4Addr>) -> Registration {
        Registration {
            service: service.into(),
            id: id.into(),
            address,
            port: 5000,
            metadata: BTreeMap::new(),
            ttl_secs: None,
        }
    }

    #[test]
    fn several_instances_of_one_service_live_side_by_side() {
        let mut s = Store::default();
        s.register(reg("product", "p1", None), A, 10, at(0))
            .unwrap();
        s.register(reg("product", "p2", None), B, 10, at(0))
            .unwrap();
        let found = s.discover("product", at(1));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].address, A);
        assert_eq!(found[1].address, B);
        assert!(s.discover("order", at(1)).is_empty());
    }

    #[test]
    fn without_heartbeats_an_instance_dies_then_is_forgotten() {
        let mut s = Store::default();
        s.register(reg("product", "p1", None), A, 10, at(0))
            .unwrap();
        assert_eq!(s.discover("product", at(9_999)).len(), 1);
        s.heartbeat("product", "p1", A, at(9_000)).unwrap();
        assert_eq!(s.discover("product", at(18_999)).len(), 1);
        assert!(s.discover("product", at(19_000)).is_empty());
        let listed = s.list(at(19_000));
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].alive);
        assert_eq!(listed[0].expires_in_ms, 0);
        assert!(s.list(at(19_000 + FORGET_AFTER_MS)).is_empty());
    }

    #[test]
    fn only_the_owner_address_may_change_an_instance() {
        let mut s = Store::default();
        // Registering somebody else's address.
        let e = s
            .register(reg("product", "p1", Some(B)), A, 10, at(0))
            .unwrap_err();
        assert!(matches!(e, StoreError::Forbidden { .. }), "{e}");
        s.register(reg("product", "p1", None), A, 10, at(0))
            .unwrap();
        // Taking over a live instance by id.
        let e = s
            .register(reg("product", "p1", None), B, 10, at(1))
            .unwrap_err();
        assert!(matches!(e, StoreError::Taken { .. }), "{e}");
        assert!(matches!(
            s.heartbeat("product", "p1", B, at(1)),
            Err(StoreError::Forbidden { .. })
        ));
        assert!(matches!(
            s.deregister("product", "p1", B, at(1)),
            Err(StoreError::Forbidden { .. })
        ));
        // A dead instance's id may be taken by a new address.
        assert!(matches!(
            s.register(reg("product", "p1", None), B, 10, at(20_000)),
            Ok(Registered::Created(_))
        ));
    }

    #[test]
    fn registering_again_refreshes_and_deregistering_removes() {
        let mut s = Store::default();
        let first = s.register(reg("order", "o1", None), A, 10, at(0)).unwrap();
        let Registered::Created(first) = first else {
            panic!("created")
        };
        let again = s.register(reg("order", "o1", None), A, 10, at(5)).unwrap();
        let Registered::Refreshed(again) = again else {
            panic!("refreshed")
        };
        assert_eq!(again.registered_at_ms, first.registered_at_ms);
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.heartbeat("order", "nope", A, at(6)),
            Err(StoreError::NotFound { .. })
        ));
        s.deregister("order", "o1", A, at(6)).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn one_address_cannot_fill_the_registry() {
        let mut s = Store::default();
        for i in 0..MAX_PER_ADDRESS {
            s.register(reg("svc", &format!("i{i}"), None), A, 10, at(0))
                .unwrap();
        }
        let e = s
            .register(reg("svc", "one-more", None), A, 10, at(0))
            .unwrap_err();
        assert!(matches!(e, StoreError::Full(_)), "{e}");
        // Refreshing an existing one still works.
        s.register(reg("svc", "i0", None), A, 10, at(1)).unwrap();
        s.register(reg("svc", "other", None), B, 10, at(1)).unwrap();
    }

    #[test]
    fn summary_counts_alive_and_dead() {
        let mut s = Store::default();
        s.register(reg("product", "p1", None), A, 1, at(0)).unwrap();
        s.register(reg("product", "p2", None), B, 10, at(0))
            .unwrap();
        let sum = s.summary(at(2_000));
        assert_eq!(
            sum,
            vec![ServiceSummary {
                service: "product".into(),
                alive: 1,
                dead: 1
            }]
        );
    }
}
