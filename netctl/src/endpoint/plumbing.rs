//! The kernel side of an endpoint, the same for the topology's namespaces and for those
//! the agent attaches: a veth pair with its host end on the network's bridge and its other
//! end in the namespace, loopback up, the address, and a default route via the gateway.

use std::{fs::File, net::Ipv4Addr, os::fd::AsFd};

use anyhow::Context;
use ipnet::Ipv4Net;

use super::EndpointError;
use crate::net::netlink::Netlink;

/// What to make.
pub struct Plumbing<'a> {
    /// The open namespace file.
    pub netns: &'a File,
    /// Names the namespace in errors.
    pub netns_label: &'a str,
    /// The interface inside the namespace.
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub bridge: &'a str,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Makes the pair, or nothing: on a failure the host end (and with it the pair) is
/// removed again. Returns the namespace side's hardware address. A namespace that has an
/// interface named `ifname` already (its topology veth, say) fails with
/// [`EndpointError::IfnameTaken`], a conflict for the caller to report.
pub async fn create(host: &Netlink, p: &Plumbing<'_>) -> anyhow::Result<Option<String>> {
    let made = create_inner(host, p).await;
    if made.is_err() {
        let _ = host.delete_link(p.host_ifname).await;
    }
    made
}

async fn create_inner(host: &Netlink, p: &Plumbing<'_>) -> anyhow::Result<Option<String>> {
    let ns = p
        .netns
        .try_clone()
        .context("duplicating the namespace file")?;
    let inside = Netlink::in_netns_file(ns, p.netns_label)?;
    // Before the veth: the kernel would refuse it with a bare EEXIST.
    if inside.link(p.ifname).await?.is_some() {
        return Err(EndpointError::IfnameTaken {
            netns: p.netns_label.to_string(),
            ifname: p.ifname.to_string(),
        }
        .into());
    }
    let bridge_index = host.index_of(p.bridge).await?;
    let index = host
        .create_veth_into(p.host_ifname, p.ifname, p.netns.as_fd())
        .await?;
    host.attach_to_bridge(index, bridge_index).await?;

    let lo = inside.index_of("lo").await?;
    inside.set_up(lo).await?;
    let link = inside
        .link(p.ifname)
        .await?
        .with_context(|| format!("{} vanished from namespace {}", p.ifname, p.netns_label))?;
    inside
        .add_address(link.index, p.address.addr(), p.address.prefix_len())
        .await?;
    inside.set_up(link.index).await?;
    inside
        .add_default_route(p.gateway)
        .await
        .with_context(|| format!("in namespace {}", p.netns_label))?;
    Ok(link.mac)
}

/// Removes the pair by its host end (which destroys both ends now, even while a process
/// holds the namespace). True when it was there.
pub async fn delete(host: &Netlink, host_ifname: &str) -> anyhow::Result<bool> {
    host.delete_link(host_ifname).await
}

/// Whether the host end is still there, on a bridge.
pub async fn exists(host: &Netlink, host_ifname: &str) -> anyhow::Result<bool> {
    Ok(host
        .link(host_ifname)
        .await?
        .is_some_and(|l| l.master.is_some()))
}
