//! Masquerade for traffic that leaves the platform through the host's uplink, as one
//! nftables table per instance: created in one transaction, removed with one command, and
//! never touching anybody else's rules.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;

/// What the NAT table has to know about the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeSpec {
    pub table: String,
    pub subnets: Vec<Ipv4Net>,
    pub bridges: Vec<String>,
}

/// nft table name of an instance (`netctl_nc`); nft identifiers take no `-`.
pub fn table_name(instance: &str) -> String {
    format!("netctl_{}", instance.replace('-', "_"))
}

/// The ruleset text: traffic from a platform subnet that leaves by any interface but a
/// platform bridge gets the uplink's address. Traffic between tiers keeps its source.
pub fn ruleset(spec: &MasqueradeSpec) -> String {
    let subnets: Vec<String> = spec.subnets.iter().map(ToString::to_string).collect();
    let bridges: Vec<String> = spec.bridges.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "table ip {t} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {{ {s} }} oifname != {{ {b} }} counter masquerade comment \"netctl: platform -> uplink\"\n\
         \t}}\n\
         }}\n",
        t = spec.table,
        s = subnets.join(", "),
        b = bridges.join(", "),
    )
}

/// Creates (or replaces) the table atomically.
pub fn apply(spec: &MasqueradeSpec) -> anyhow::Result<()> {
    // `add` + `delete` first makes the transaction replace an existing table instead of
    // failing or merging rules into it.
    let script = format!(
        "add table ip {t}\ndelete table ip {t}\n{rules}",
        t = spec.table,
        rules = ruleset(spec)
    );
    nft_stdin(&script).with_context(|| format!("creating nftables table ip {}", spec.table))
}

pub fn exists(table: &str) -> anyhow::Result<bool> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running nft (install the nftables package: cargo xtask setup)")?;
    Ok(out.success())
}

/// Deletes the table; false when it was not there.
pub fn delete(table: &str) -> anyhow::Result<bool> {
    if !exists(table)? {
        return Ok(false);
    }
    nft_stdin(&format!("delete table ip {table}\n"))
        .with_context(|| format!("deleting nftables table ip {table}"))?;
    Ok(true)
}

/// Names of every `netctl_*` table, for leak checks.
pub fn netctl_tables() -> anyhow::Result<Vec<String>> {
    let out = Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .context("running nft list tables")?;
    if !out.status.success() {
        bail!(
            "nft list tables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .filter(|t| t.starts_with("netctl_"))
        .map(str::to_string)
        .collect())
}

fn nft_stdin(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package: cargo xtask setup)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_platform() {
        let spec = MasqueradeSpec {
            table: table_name("t1-x"),
            subnets: vec![
                "10.1.0.0/24".parse().unwrap(),
                "10.2.0.0/24".parse().unwrap(),
            ],
            bridges: vec!["t1-a".into(), "t1-b".into()],
        };
        let text = ruleset(&spec);
        assert!(text.starts_with("table ip netctl_t1_x {"));
        assert!(text.contains("ip saddr { 10.1.0.0/24, 10.2.0.0/24 }"));
        assert!(text.contains("oifname != { \"t1-a\", \"t1-b\" }"));
        assert!(text.contains("masquerade"));
    }
}
