//! The kernel's connection tracking table (`conntrack` from conntrack-tools): removing the
//! entries of a platform's addresses when its dataplane changes. A NAT binding made by one
//! dataplane (iptables DNAT), or an entry the kernel picked up half-way while the other
//! dataplane translated addresses itself (eBPF), would otherwise capture the next
//! connection that reuses its ports for minutes (kube-proxy clears stale entries the same
//! way).

use std::process::Command;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;

/// How many times one deletion is tried when entries vanish under it. Each run deletes
/// what it walks before the vanished entry, so the runs converge; after a benchmark's
/// flood, with thousands of closed connections expiring every second, that takes a few.
const ATTEMPTS: usize = 100;

/// Deletes every entry whose original source or destination is in one of `nets`.
pub fn flush(nets: &[Ipv4Net]) -> anyhow::Result<()> {
    for net in nets {
        for flag in ["-s", "-d"] {
            delete(flag, net)?;
        }
    }
    Ok(())
}

fn delete(flag: &str, net: &Ipv4Net) -> anyhow::Result<()> {
    for _ in 0..ATTEMPTS {
        let out = Command::new("conntrack")
            .args(["-D", flag, &net.to_string()])
            .output()
            .context("running conntrack (install the conntrack package: cargo xtask setup)")?;
        let text = String::from_utf8_lossy(&out.stderr);
        match outcome(out.status.success(), &text) {
            Outcome::Done => return Ok(()),
            Outcome::Again => continue,
            Outcome::Failed => bail!("conntrack -D {flag} {net}: {}", text.trim()),
        }
    }
    bail!("conntrack -D {flag} {net}: entries kept vanishing under it ({ATTEMPTS} attempts)")
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    /// An entry listed for deletion expired before its turn: conntrack stops there, so
    /// the rest may still be in the table. Run it again.
    Again,
    Failed,
}

fn outcome(success: bool, stderr: &str) -> Outcome {
    if success || stderr.contains("0 flow entries") {
        // It exits 1 when it found nothing to delete.
        Outcome::Done
    } else if stderr.contains("such conntrack doesn't exist") {
        Outcome::Again
    } else {
        Outcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_delete_is_done_and_a_vanished_entry_is_tried_again() {
        assert_eq!(
            outcome(true, "3 flow entries have been deleted."),
            Outcome::Done
        );
        assert_eq!(
            outcome(
                false,
                "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted."
            ),
            Outcome::Done
        );
        assert_eq!(
            outcome(
                false,
                "conntrack v1.4.7 (conntrack-tools): Operation failed: such conntrack doesn't exist"
            ),
            Outcome::Again
        );
        assert_eq!(
            outcome(
                false,
                "conntrack v1.4.7 (conntrack-tools): Operation not permitted"
            ),
            Outcome::Failed
        );
    }
}
