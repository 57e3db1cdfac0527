//! The iptables implementation of [`LbWriter`]: turns the desired frontends into per-service
//! chains and applies each change as one `iptables-restore --noflush` transaction.
//!
//! Like kube-proxy's "minimal" sync, a change of backends rewrites only the frontends it
//! touches (their SVC chain, new SEP chains, removal of unused ones); the SERVICES chains
//! are rewritten only when the set of frontends, or whether one has backends, changes.
//! The first pass after a (re)start writes everything and removes chains of the instance
//! that are no longer wanted. Drained and dead backends simply leave their SVC chain:
//! kernel conntrack keeps established connections on their backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use super::{
    names::Chains,
    rules::{self, Frontend, View},
};
use crate::{
    dataplane::lb::{BackendKey, Changes, Desired, LbWriter, Refs},
    net::iptables,
};

pub struct IptablesWriter {
    chains: Chains,
    /// What the kernel holds, as of the last successful apply (`None`: not known yet).
    applied: Option<View>,
    drained: BTreeSet<BackendKey>,
}

impl IptablesWriter {
    pub fn new(instance: &str) -> Self {
        Self {
            chains: Chains::for_instance(instance),
            applied: None,
            drained: BTreeSet::new(),
        }
    }

    pub fn chains(&self) -> &Chains {
        &self.chains
    }
}

impl LbWriter for IptablesWriter {
    fn apply(&mut self, desired: &Desired, _refs: Option<&Refs>) -> anyhow::Result<Changes> {
        self.drained = desired.drained.clone();
        let view = view_of(desired);
        if self.applied.as_ref() == Some(&view) {
            return Ok(Changes::default());
        }
        let existing = match self.applied {
            Some(_) => None,
            None => Some(iptables::save("nat")?.chains),
        };
        let (script, changes) = script(
            &self.chains,
            self.applied.as_ref(),
            &view,
            existing.as_deref(),
        );
        if let Some(script) = script {
            iptables::restore(&script)?;
        }
        self.applied = Some(view);
        Ok(changes)
    }

    fn backend_id(&self, _key: &BackendKey) -> Option<u32> {
        None
    }

    fn is_draining(&self, key: &BackendKey) -> bool {
        self.drained.contains(key)
    }
}

/// The frontends and host ports of a desired state, as iptables serves them.
pub fn view_of(desired: &Desired) -> View {
    let mut view = View::default();
    for fe in desired.frontends.values() {
        match fe.target {
            Some(target) => {
                view.host_ports.insert((fe.key.port, fe.key.proto), target);
            }
            None => {
                view.frontends.insert(
                    fe.key,
                    Frontend {
                        key: fe.key,
                        service: fe.service.clone(),
                        algorithm: fe.algorithm,
                        backends: fe.backends.clone(),
                    },
                );
            }
        }
    }
    view
}

/// What decides the SERVICES and HOSTPORTS chains: frontends, their service names, whether
/// each has backends, and the host ports.
fn shape(
    view: &View,
) -> (
    Vec<(&crate::dataplane::lb::FrontendKey, &str, bool)>,
    Vec<String>,
) {
    let fes = view
        .frontends
        .values()
        .map(|f| (&f.key, f.service.as_str(), !f.backends.is_empty()))
        .collect();
    let hps = view
        .host_ports
        .iter()
        .map(|((p, proto), fe)| format!("{p}/{} {fe:?}", proto.name()))
        .collect();
    (fes, hps)
}

fn seps(c: &Chains, fe: &Frontend) -> BTreeSet<String> {
    fe.backends.iter().map(|(b, _)| c.sep(&fe.key, b)).collect()
}

/// The restore script from `old` (what the kernel holds; `None`: unknown, write all and
/// remove chains in `existing` that are not wanted) to `new`, and what it changes.
pub fn script(
    c: &Chains,
    old: Option<&View>,
    new: &View,
    existing: Option<&[String]>,
) -> (Option<String>, Changes) {
    let mut changes = Changes::default();
    // chain -> its rules (rewritten), in order; chains to delete.
    let mut write: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut delete: BTreeSet<String> = BTreeSet::new();
    let services_changed = old.is_none_or(|o| shape(o) != shape(new));

    let empty = View::default();
    let before = old.unwrap_or(&empty);
    for fe in new.frontends.values().filter(|f| !f.backends.is_empty()) {
        let prev = before
            .frontends
            .get(&fe.key)
            .filter(|p| !p.backends.is_empty());
        if old.is_some() && prev == Some(fe) {
            continue;
        }
        write.insert(c.svc(&fe.key), rules::svc_rules(c, fe));
        changes.frontends_written += 1;
        let had = match (old, prev) {
            (Some(_), Some(p)) => seps(c, p),
            _ => BTreeSet::new(),
        };
        for (b, _) in &fe.backends {
            let sep = c.sep(&fe.key, b);
            if !had.contains(&sep) {
                write.insert(sep, rules::sep_rules(c, &fe.key, b));
                changes.backends_written += 1;
            }
        }
        for gone in had.difference(&seps(c, fe)) {
            delete.insert(gone.clone());
            changes.backends_removed += 1;
        }
    }
    for prev in before.frontends.values().filter(|f| !f.backends.is_empty()) {
        let still = new
            .frontends
            .get(&prev.key)
            .is_some_and(|f| !f.backends.is_empty());
        if !still {
            delete.insert(c.svc(&prev.key));
            changes.frontends_removed += 1;
            for sep in seps(c, prev) {
                delete.insert(sep);
                changes.backends_removed += 1;
            }
        }
    }
    let mut filter = None;
    if services_changed {
        write.insert(c.services(), rules::services_rules(c, new));
        for (chain, rules) in rules::host_port_rules(c, new) {
            write.insert(chain, rules);
        }
        for (chain, _) in rules::host_port_rules(c, before) {
            if !write.contains_key(&chain) {
                delete.insert(chain);
            }
        }
        filter = Some(rules::reject_rules(c, new));
    }
    if let Some(existing) = existing {
        // After a restart: chains of a previous controller that nothing wants now.
        let base = [c.services(), c.host_ports(), c.mark_masq(), c.postrouting()];
        let wanted: BTreeSet<String> = new
            .frontends
            .values()
            .filter(|f| !f.backends.is_empty())
            .flat_map(|f| std::iter::once(c.svc(&f.key)).chain(seps(c, f)))
            .chain(rules::host_port_rules(c, new).into_iter().map(|(ch, _)| ch))
            .collect();
        for ch in existing {
            if c.owns(ch) && !base.contains(ch) && !wanted.contains(ch) {
                delete.insert(ch.clone());
            }
        }
    }
    delete.retain(|ch| !write.contains_key(ch));
    if write.is_empty() && delete.is_empty() && filter.is_none() {
        return (None, changes);
    }
    let mut s = String::from("*nat\n");
    for ch in write.keys().chain(delete.iter()) {
        let _ = writeln!(s, ":{ch} - [0:0]");
    }
    // SERVICES first: the jumps to chains removed below are gone before the `-X`.
    for rules in write.values() {
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
    }
    for ch in &delete {
        let _ = writeln!(s, "-X {ch}");
    }
    s.push_str("COMMIT\n");
    if let Some(rejects) = filter {
        let _ = writeln!(s, "*filter\n:{} - [0:0]", c.services());
        for r in rejects {
            s.push_str(&r);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
    }
    (Some(s), changes)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        dataplane::lb::FrontendKey,
        topology::{Algorithm, Proto},
    };

    fn fe(i: u8, backends: &[u8]) -> Frontend {
        let key = FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, i),
            port: 80,
            proto: Proto::Tcp,
        };
        Frontend {
            key,
            service: format!("s{i}"),
            algorithm: Algorithm::Random,
            backends: backends
                .iter()
                .map(|b| {
                    (
                        BackendKey {
                            addr: Ipv4Addr::new(10, 0, 2, *b),
                            port: 7000,
                            proto: Proto::Tcp,
                        },
                        1,
                    )
                })
                .collect(),
        }
    }

    fn view(fes: &[Frontend]) -> View {
        View {
            frontends: fes.iter().map(|f| (f.key, f.clone())).collect(),
            host_ports: BTreeMap::new(),
        }
    }

    #[test]
    fn the_first_pass_writes_everything_and_removes_strays() {
        let c = Chains::for_instance("t1");
        let v = view(&[fe(1, &[10, 11]), fe(2, &[])]);
        let stray = c.svc(&fe(9, &[]).key);
        let existing = vec![c.services(), stray.clone(), "KUBE-SVC-X".to_string()];
        let (s, ch) = script(&c, None, &v, Some(&existing));
        let s = s.expect("a script");
        assert_eq!(ch.frontends_written, 1);
        assert_eq!(ch.backends_written, 2);
        assert!(s.contains(&format!("-X {stray}")));
        assert!(!s.contains("KUBE-SVC-X"));
        assert!(
            s.contains("*filter"),
            "the frontend without backends is refused"
        );
    }

    #[test]
    fn a_backend_change_rewrites_one_frontend_only() {
        let c = Chains::for_instance("t1");
        let old = view(&[fe(1, &[10, 11]), fe(2, &[10, 11])]);
        let new = view(&[fe(1, &[10, 12]), fe(2, &[10, 11])]);
        let (s, ch) = script(&c, Some(&old), &new, None);
        let s = s.expect("a script");
        assert_eq!(
            ch,
            Changes {
                frontends_written: 1,
                frontends_removed: 0,
                backends_written: 1,
                backends_removed: 1,
                errors: Vec::new(),
            }
        );
        assert!(!s.contains(&c.services()), "SERVICES untouched:\n{s}");
        assert!(!s.contains(&c.svc(&fe(2, &[]).key)));
        let gone = c.sep(&fe(1, &[]).key, &fe(1, &[11]).backends[0].0);
        assert!(s.contains(&format!("-X {gone}")));
        assert!(!s.contains("*filter"));
    }

    #[test]
    fn losing_every_backend_rewrites_services_and_rejects() {
        let c = Chains::for_instance("t1");
        let old = view(&[fe(1, &[10])]);
        let new = view(&[fe(1, &[])]);
        let (s, ch) = script(&c, Some(&old), &new, None);
        let s = s.expect("a script");
        assert_eq!(ch.frontends_removed, 1);
        assert!(s.contains(&format!(":{} - [0:0]", c.services())));
        assert!(s.contains(&format!("-X {}", c.svc(&fe(1, &[]).key))));
        assert!(s.contains("-j REJECT"));
        // Nothing to do when nothing changed.
        assert_eq!(script(&c, Some(&new), &new, None).0, None);
    }
}
