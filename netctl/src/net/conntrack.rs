//! The kernel's connection tracking table (`conntrack` from conntrack-tools): removing the
//! entries of a platform's addresses when its dataplane changes. A NAT binding made by one
//! dataplane (iptables DNAT), or an entry the kernel picked up half-way while the other
//! dataplane translated addresses itself (eBPF), would otherwise capture the next
//! connection that reuses its ports for minutes (kube-proxy clears stale entries the same
//! way).

use std::process::Command;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;

/// Deletes every entry whose original source or destination is in one of `nets`.
pub fn flush(nets: &[Ipv4Net]) -> anyhow::Result<()> {
    for net in nets {
        for flag in ["-s", "-d"] {
            let out = Command::new("conntrack")
                .args(["-D", flag, &net.to_string()])
                .output()
                .context("running conntrack (install the conntrack package: cargo xtask setup)")?;
            let text = String::from_utf8_lossy(&out.stderr);
            // It exits 1 when it found nothing to delete.
            if !out.status.success() && !text.contains("0 flow entries") {
                bail!("conntrack -D {flag} {net}: {}", text.trim());
            }
        }
    }
    Ok(())
}
