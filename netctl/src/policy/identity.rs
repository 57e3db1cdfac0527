//! Identity numbers: one per service (all its replicas and its VIP), one for the host,
//! one for the world (everything else).

use std::net::Ipv4Addr;

use netctl_common::policy::{ID_ANY, ID_HOST, ID_SERVICE_BASE, ID_WORLD};

use crate::topology::{Plan, plan::Peer};

/// The identity number of a named peer (0 for a service the plan does not know).
pub fn of(plan: &Plan, peer: &Peer) -> u32 {
    match peer {
        Peer::Host => ID_HOST,
        Peer::World => ID_WORLD,
        // A service of namespaces has endpoints; one of listed backends only its VIP.
        Peer::Service(name) => plan
            .endpoints
            .iter()
            .find(|e| e.service == *name)
            .map(|e| e.service_id)
            .or_else(|| plan.services.iter().find(|s| s.name == *name).map(|s| s.id))
            .map_or(ID_ANY, |id| ID_SERVICE_BASE + id),
    }
}

/// The peer an identity number stands for.
pub fn peer(plan: &Plan, id: u32) -> Option<Peer> {
    match id {
        ID_HOST => Some(Peer::Host),
        ID_WORLD => Some(Peer::World),
        id if id > ID_SERVICE_BASE => plan
            .endpoints
            .iter()
            .find(|e| ID_SERVICE_BASE + e.service_id == id)
            .map(|e| e.service.clone())
            .or_else(|| {
                plan.services
                    .iter()
                    .find(|s| ID_SERVICE_BASE + s.id == id)
                    .map(|s| s.name.clone())
            })
            .map(Peer::Service),
        _ => None,
    }
}

/// A readable name for an identity number (`*` for the wildcard).
pub fn name(plan: &Plan, id: u32) -> String {
    plan.names().identity(id)
}

/// Address -> identity for everything the plan knows: replicas and VIPs of each service,
/// and the bridges' gateway addresses (the host). The controller adds the host's uplink
/// addresses; anything missing is the world.
pub fn addresses(plan: &Plan) -> Vec<(Ipv4Addr, u32)> {
    let mut out: Vec<(Ipv4Addr, u32)> = plan
        .endpoints
        .iter()
        .map(|e| (e.address, ID_SERVICE_BASE + e.service_id))
        .collect();
    for svc in &plan.services {
        out.push((svc.vip, ID_SERVICE_BASE + svc.id));
    }
    for n in &plan.networks {
        out.push((n.gateway, ID_HOST));
    }
    out
}
