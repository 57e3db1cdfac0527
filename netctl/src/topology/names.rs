//! Names for the addresses and identity numbers the dataplane reports, indexed once per
//! plan. Every drop and new-flow event, every flow and conntrack row is named; a scan of
//! the plan's services per name made the controller's event reader cost more than the
//! dataplane itself at 10,000 services.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, OnceLock},
};

use netctl_common::policy::{ID_ANY, ID_HOST, ID_SERVICE_BASE, ID_WORLD};

use super::Plan;

/// The index a [`Plan`] builds on first use ([`Plan::names`]) and keeps: derived from the
/// plan, so it is neither serialized nor compared.
#[derive(Debug, Clone, Default)]
pub struct NamesCache(OnceLock<Arc<Names>>);

impl PartialEq for NamesCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NamesCache {}

impl Plan {
    /// Names for addresses and identities, indexed on first use.
    pub fn names(&self) -> &Names {
        self.names.0.get_or_init(|| Arc::new(Names::new(self)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Names {
    addrs: HashMap<Ipv4Addr, String>,
    identities: HashMap<u32, String>,
}

impl Names {
    pub fn new(plan: &Plan) -> Self {
        let mut addrs = HashMap::new();
        let mut identities = HashMap::new();
        // Later inserts win: an endpoint's own name beats a VIP, which beats the host's
        // gateway addresses (the order `Plan::name_of` always answered in).
        for n in &plan.networks {
            addrs.insert(n.gateway, "host".to_string());
        }
        for svc in plan.services.iter().rev() {
            // `rev`: with two services on one VIP (invalid, but named anyway) the first wins.
            addrs.insert(svc.vip, format!("{}(vip)", svc.name));
            identities.insert(ID_SERVICE_BASE + svc.id, svc.name.clone());
        }
        for e in plan.endpoints.iter().rev() {
            addrs.insert(e.address, e.display_name());
            identities.insert(ID_SERVICE_BASE + e.service_id, e.service.clone());
        }
        identities.insert(ID_HOST, "host".into());
        identities.insert(ID_WORLD, "world".into());
        identities.insert(ID_ANY, "*".into());
        Self { addrs, identities }
    }

    /// The endpoint, VIP (`web(vip)`) or `host` at `addr`, or the address itself.
    pub fn addr(&self, addr: Ipv4Addr) -> String {
        self.addrs
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }

    /// The service, `host`, `world` or `*` an identity number stands for (`#N` unknown).
    pub fn identity(&self, id: u32) -> String {
        self.identities
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Source;

    #[test]
    fn endpoints_vips_host_and_identities_are_named() {
        let plan = Source::embedded_default().plan(None).unwrap();
        let names = Names::new(&plan);
        let product = plan.services.iter().find(|s| s.name == "product").unwrap();
        assert_eq!(names.addr(product.vip), "product(vip)");
        assert_eq!(names.addr(Ipv4Addr::new(172, 21, 0, 11)), "product-2");
        assert_eq!(names.addr(plan.networks[0].gateway), "host");
        assert_eq!(names.addr(Ipv4Addr::new(192, 0, 2, 77)), "192.0.2.77");
        assert_eq!(names.identity(ID_SERVICE_BASE + product.id), "product");
        assert_eq!(names.identity(ID_HOST), "host");
        assert_eq!(names.identity(ID_WORLD), "world");
        assert_eq!(names.identity(ID_ANY), "*");
        assert_eq!(names.identity(77), "#77");
        assert_eq!(
            names.identity(ID_SERVICE_BASE + 999),
            format!("#{}", ID_SERVICE_BASE + 999)
        );
    }
}
