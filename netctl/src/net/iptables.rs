//! Running the iptables tools: `iptables-restore --noflush` (one transaction per call, the
//! way kube-proxy writes its rules) and `iptables-save` parsed into chains and rules.
//! Nothing here knows what netctl's chains mean; see [`crate::iptables`].

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

/// Seconds `iptables-restore` waits for the xtables lock another writer holds.
const LOCK_WAIT_S: &str = "10";
/// Attempts when a concurrent writer changed the ruleset under a transaction.
const ATTEMPTS: usize = 5;

/// Applies `script` (iptables-restore input: `*table`, `:CHAIN`, `-A`, `-X`, `COMMIT`)
/// without flushing anything it does not name.
pub fn restore(script: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match run_restore(script)? {
            None => return Ok(()),
            Some(err) => {
                // Another iptables-nft writer committed between our cache fetch and our
                // commit (or held the lock longer than we waited): try again.
                let transient = err.contains("Resource temporarily unavailable")
                    || err.contains("try again")
                    || err.contains("xtables lock");
                last = err;
                if !transient {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50 * (attempt as u64 + 1)));
            }
        }
    }
    bail!("iptables-restore: {}", last.trim());
}

/// `None` on success, the error output otherwise.
fn run_restore(script: &str) -> anyhow::Result<Option<String>> {
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "-w", LOCK_WAIT_S])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (install the iptables package: cargo xtask setup)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing to iptables-restore")?;
    }
    let out = child
        .wait_with_output()
        .context("waiting for iptables-restore")?;
    if out.status.success() {
        Ok(None)
    } else {
        Ok(Some(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// The policy of built-in `chain` in `table` (`ACCEPT`, `DROP`); `None` for a user chain.
pub fn policy(table: &str, chain: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("iptables")
        .args(["-w", LOCK_WAIT_S, "-t", table, "-S", chain])
        .output()
        .context("running iptables -S (install the iptables package: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "iptables -t {table} -S {chain}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(policy_of(&String::from_utf8_lossy(&out.stdout), chain))
}

fn policy_of(listing: &str, chain: &str) -> Option<String> {
    listing.lines().find_map(|l| {
        let rest = l.strip_prefix("-P ")?.strip_prefix(chain)?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// One table as `iptables-save -t TABLE` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Chain names in the order printed (built-in ones first).
    pub chains: Vec<String>,
    /// Every `-A CHAIN ...` line, without the leading `-A `.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Everything after the chain name, as printed (`-d 10.96.0.1/32 -p tcp ... -j X`).
    pub spec: String,
    /// Packets the rule matched (read with [`save_counted`]; 0 otherwise).
    pub packets: u64,
}

impl Rule {
    /// The `-j`/`-g` target.
    pub fn target(&self) -> Option<String> {
        self.value("-j").or_else(|| self.value("-g"))
    }

    /// The value after `option` (e.g. `--dport`), quotes removed.
    pub fn value(&self, option: &str) -> Option<String> {
        let words = split_words(&self.spec);
        words
            .iter()
            .position(|w| w == option)
            .and_then(|i| words.get(i + 1).cloned())
    }

    /// True when `option` appears (e.g. `--mode`).
    pub fn has(&self, option: &str) -> bool {
        split_words(&self.spec).iter().any(|w| w == option)
    }
}

/// Splits a rule spec into words, keeping `"quoted strings"` whole (without the quotes).
pub fn split_words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses `iptables-save` output of one table.
pub fn parse_table(text: &str) -> Table {
    let mut t = Table::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                t.chains.push(name.to_string());
            }
        } else {
            // `iptables-save -c` puts `[packets:bytes] ` before each rule.
            let (packets, line) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
                Some((counts, rest)) => (
                    counts
                        .split_once(':')
                        .and_then(|(p, _)| p.parse().ok())
                        .unwrap_or(0),
                    rest,
                ),
                None => (0, line),
            };
            if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                t.rules.push(Rule {
                    chain: chain.to_string(),
                    spec: spec.to_string(),
                    packets,
                });
            }
        }
    }
    t
}

/// `iptables-save -t table`, parsed. A table the kernel never created is empty.
pub fn save(table: &str) -> anyhow::Result<Table> {
    save_with(table, false)
}

/// [`save`] with each rule's packet counter.
pub fn save_counted(table: &str) -> anyhow::Result<Table> {
    save_with(table, true)
}

fn save_with(table: &str, counters: bool) -> anyhow::Result<Table> {
    let mut cmd = Command::new("iptables-save");
    cmd.args(["-t", table]);
    if counters {
        cmd.arg("-c");
    }
    let out = cmd
        .output()
        .context("running iptables-save (install the iptables package: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "iptables-save -t {table}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_table(&String::from_utf8_lossy(&out.stdout)))
}

/// True when the iptables tools are installed.
pub fn available() -> bool {
    Command::new("iptables-restore")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chains_policy_is_read_from_its_listing() {
        let listing = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n";
        assert_eq!(policy_of(listing, "FORWARD").as_deref(), Some("DROP"));
        assert_eq!(policy_of("-N DOCKER-USER\n", "DOCKER-USER"), None);
    }

    const SAVED: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NCTL-t1-SERVICES - [0:0]
-A PREROUTING -m comment --comment "netctl t1: services" -j NCTL-t1-SERVICES
-A NCTL-t1-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "web:80/tcp" -m tcp --dport 80 -j NCTL-t1-SVC-ABC
COMMIT
"#;

    #[test]
    fn save_output_parses_into_chains_and_rules() {
        let t = parse_table(SAVED);
        assert_eq!(t.chains, ["PREROUTING", "OUTPUT", "NCTL-t1-SERVICES"]);
        assert_eq!(t.rules.len(), 2);
        let r = &t.rules[1];
        assert_eq!(r.chain, "NCTL-t1-SERVICES");
        assert_eq!(r.target().as_deref(), Some("NCTL-t1-SVC-ABC"));
        assert_eq!(r.value("--dport").as_deref(), Some("80"));
        assert_eq!(r.value("--comment").as_deref(), Some("web:80/tcp"));
        assert_eq!(r.value("-d").as_deref(), Some("10.96.0.1/32"));
        assert!(!r.has("--mode"));
    }

    #[test]
    fn counters_are_read_when_saved_with_them() {
        let t = parse_table(
            "*filter\n:FORWARD ACCEPT [9:99]\n[12:720] -A FORWARD -j NCTL-t1-FIREWALL\n-A X -j DROP\nCOMMIT\n",
        );
        assert_eq!(t.chains, ["FORWARD"]);
        assert_eq!(t.rules[0].packets, 12);
        assert_eq!(t.rules[0].chain, "FORWARD");
        assert_eq!(t.rules[0].target().as_deref(), Some("NCTL-t1-FIREWALL"));
        assert_eq!(t.rules[1].packets, 0);
    }

    #[test]
    fn quoted_words_stay_whole() {
        assert_eq!(
            split_words(r#"-m comment --comment "a b \"c\"" -j X"#),
            ["-m", "comment", "--comment", "a b \"c\"", "-j", "X"]
        );
    }
}
