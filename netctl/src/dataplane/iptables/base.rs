//! The base of an instance's iptables dataplane, made and removed by `up`/`down` as one
//! journaled resource: the base chains and the jumps into them (one `iptables-restore`
//! transaction), plus the settings Kubernetes needs for the same rules:
//!
//! - bridge `nf_call_iptables` (bridged traffic between namespaces of one bridge goes
//!   through netfilter, so replies are un-DNATed: Kubernetes' `br_netfilter` requirement);
//! - bridge `route_localnet` (a connection from 127.0.0.1 may be DNATed onto the bridge, as
//!   kube-proxy enables for node ports);
//! - `hairpin_mode` on every bridge port (a namespace reaching its own service through the
//!   VIP gets its packet back out of the port it came in by, as kubelet's hairpin-veth).

use std::path::PathBuf;

use anyhow::Context;

use super::{
    names::Chains,
    rules::{self, BaseSpec},
};
use crate::net::{conntrack, iptables, sysctl};

/// Creates the base; removes whatever of the instance was there first, so a half-made
/// earlier attempt never doubles a jump.
pub fn install(c: &Chains, spec: &BaseSpec) -> anyhow::Result<()> {
    remove(c)?;
    // Entries of the platform's addresses from before (another dataplane) would keep
    // connections that reuse their ports away from these rules.
    conntrack::flush(&spec.subnets)?;
    for b in &spec.bridges {
        set_bridge(b, true, spec.host_ports)?;
    }
    for p in &spec.ports {
        set_hairpin(p, true)?;
    }
    iptables::restore(&rules::base_script(c, spec))
        .with_context(|| format!("creating the iptables chains of {}", c.instance()))
}

/// Removes every chain of the instance and every jump into them; true when there was
/// something. Bridges that still exist get their settings back.
pub fn remove(c: &Chains) -> anyhow::Result<bool> {
    let nat = iptables::save("nat")?;
    let filter = iptables::save("filter")?;
    let Some(script) = rules::remove_script(c, &nat, &filter) else {
        return Ok(false);
    };
    iptables::restore(&script)
        .with_context(|| format!("removing the iptables chains of {}", c.instance()))?;
    Ok(true)
}

/// Forgets the NAT bindings these rules made, so that whatever comes next (another
/// dataplane, nothing) starts clean.
pub fn forget_connections(subnets: &[ipnet::Ipv4Net]) -> anyhow::Result<()> {
    conntrack::flush(subnets)
}

/// Puts the bridges' and ports' settings back (after `remove`, for those that stay).
pub fn reset_bridges(bridges: &[String], ports: &[String]) -> anyhow::Result<()> {
    for b in bridges {
        if bridge_dir(b).exists() {
            set_bridge(b, false, false)?;
        }
    }
    for p in ports {
        if hairpin_file(p).exists() {
            set_hairpin(p, false)?;
        }
    }
    Ok(())
}

pub fn exists(c: &Chains) -> anyhow::Result<bool> {
    Ok(rules::base_present(
        c,
        &iptables::save("nat")?,
        &iptables::save("filter")?,
    ))
}

/// Names of this instance's chains already in the kernel (for conflict checks).
pub fn chains(c: &Chains) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = iptables::save("nat")?
        .chains
        .into_iter()
        .chain(iptables::save("filter")?.chains)
        .filter(|ch| c.owns(ch))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn bridge_dir(bridge: &str) -> PathBuf {
    PathBuf::from("/sys/class/net").join(bridge).join("bridge")
}

fn hairpin_file(port: &str) -> PathBuf {
    PathBuf::from("/sys/class/net")
        .join(port)
        .join("brport")
        .join("hairpin_mode")
}

pub(crate) fn set_hairpin(port: &str, on: bool) -> anyhow::Result<()> {
    let path = hairpin_file(port);
    std::fs::write(&path, if on { "1" } else { "0" })
        .with_context(|| format!("writing {}", path.display()))
}

fn set_bridge(bridge: &str, nf_call: bool, localnet: bool) -> anyhow::Result<()> {
    let path = bridge_dir(bridge).join("nf_call_iptables");
    std::fs::write(&path, if nf_call { "1" } else { "0" })
        .with_context(|| format!("writing {}", path.display()))?;
    sysctl::write(
        &format!("net.ipv4.conf.{bridge}.route_localnet"),
        if localnet { "1" } else { "0" },
    )
}
