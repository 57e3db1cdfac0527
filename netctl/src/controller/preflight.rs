//! Checks against the host, after validation and before any change.

use anyhow::bail;

use crate::{net::netlink::Netlink, topology::Plan};

/// Creating namespaces, links and BPF programs needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN,
/// CAP_BPF); say so plainly instead of failing on the first syscall.
pub fn require_root(command: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "netctl {command} needs root: it manages network namespaces, links and eBPF \
             programs. Run it with sudo."
        );
    }
    Ok(())
}

/// Refuses subnets that overlap a route the host already has on an interface that is not
/// one of the plan's own bridges: both would claim the same addresses.
pub async fn check_routes(host: &Netlink, plan: &Plan) -> anyhow::Result<()> {
    let links = host.links().await?;
    let own_bridge = |index: Option<u32>| {
        index.is_some_and(|i| {
            links
                .iter()
                .any(|l| l.index == i && plan.networks.iter().any(|n| n.bridge == l.name))
        })
    };
    let mut problems = Vec::new();
    for route in host.routes().await? {
        if route.destination.prefix_len() == 0 || own_bridge(route.oif) {
            continue;
        }
        for n in &plan.networks {
            if n.subnet.contains(&route.destination) || route.destination.contains(&n.subnet) {
                let dev = route
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map_or_else(|| "?".to_string(), |l| l.name.clone());
                problems.push(format!(
                    "networks.{}.subnet {} overlaps the host's route {} on {dev}",
                    n.name, n.subnet, route.destination
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the topology collides with this host's networks:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}
