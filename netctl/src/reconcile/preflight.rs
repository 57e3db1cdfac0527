//! Checks against the host, after validation and before any change.

use anyhow::bail;

use super::state::{State, instances};
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

/// Refuses host ports another platform forwards, or that a process on the host listens on:
/// both would compete for the same connections.
pub fn check_host_ports(plan: &Plan) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for other in instances().into_iter().filter(|i| *i != plan.instance()) {
        let Ok(Some(state)) = State::load(&other) else {
            continue;
        };
        for pf in &plan.port_forwards {
            if state
                .plan
                .port_forwards
                .iter()
                .any(|o| o.host_port == pf.host_port && o.proto == pf.proto)
            {
                problems.push(format!(
                    "host port {}/{} is already forwarded by platform instance {other}",
                    pf.host_port,
                    pf.proto.name()
                ));
            }
        }
    }
    let listening = listening_tcp_ports();
    for pf in &plan.port_forwards {
        if pf.proto == crate::topology::Proto::Tcp && listening.contains(&pf.host_port) {
            problems.push(format!(
                "host port {}/tcp is in use by a process on the host",
                pf.host_port
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "port_forwards collide with this host:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// TCP ports with a listening socket in the host's network namespace.
fn listening_tcp_ports() -> Vec<u16> {
    const LISTEN: &str = "0A";
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            (state == LISTEN).then_some(())?;
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}
