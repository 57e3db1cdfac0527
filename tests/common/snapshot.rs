//! What a test can leave behind on the host, to compare before and after.

use std::{collections::BTreeSet, path::Path};

/// Host objects netctl could create. Names of other tests' slots (`tNN-` prefixes other
/// than ours) and of any other platform that is up (a benchmark, a person's platform) are
/// left out, so that what runs beside a test does not count as its leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub netns: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub pins: BTreeSet<String>,
    pub nft_tables: BTreeSet<String>,
    pub state_files: BTreeSet<String>,
    /// Instances with data under /var/lib/netctl.
    pub volumes: BTreeSet<String>,
}

impl Snapshot {
    pub fn take(own_prefix: &str) -> Snapshot {
        let own = netctl::topology::plan::instance_name(own_prefix);
        // Other platforms up right now: their instance names and prefixes. (A platform's
        // state file exists before its first object and goes after its last.)
        let others: Vec<(String, String)> = netctl::controller::state::instances()
            .into_iter()
            .filter(|i| *i != own)
            .filter_map(|i| {
                let state = netctl::controller::state::State::load(&i).ok()??;
                Some((i, state.plan.prefix))
            })
            .collect();
        let theirs = |name: &str| {
            others.iter().any(|(inst, prefix)| {
                (!prefix.is_empty() && name.starts_with(prefix.as_str()))
                    || name == inst
                    || name == format!("netctl_{inst}")
                    || name.starts_with(&format!("/sys/fs/bpf/netctl/{inst}/"))
                    || name == format!("/sys/fs/bpf/netctl/{inst}")
            })
        };
        let keep = |name: &String| !is_other_test(name, own_prefix) && !theirs(name);
        Snapshot {
            netns: netctl::net::netns::list()
                .into_iter()
                .filter(keep)
                .collect(),
            links: link_names().into_iter().filter(keep).collect(),
            pins: walk(Path::new("/sys/fs/bpf/netctl"))
                .into_iter()
                .filter(keep)
                .collect(),
            nft_tables: netctl::net::nat::netctl_tables()
                .unwrap_or_default()
                .into_iter()
                .filter(keep)
                .collect(),
            state_files: netctl::controller::state::instances()
                .into_iter()
                .filter(keep)
                .collect(),
            volumes: std::fs::read_dir(netctl::supervisor::paths::VOLUME_ROOT)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(keep)
                .collect(),
        }
    }

    /// Everything that differs, one line per object.
    pub fn diff(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>| {
            for x in b.difference(a) {
                out.push(format!("{what} left behind: {x}"));
            }
            for x in a.difference(b) {
                out.push(format!("{what} removed that was there before: {x}"));
            }
        };
        cmp("namespace", &self.netns, &after.netns);
        cmp("link", &self.links, &after.links);
        cmp("pin", &self.pins, &after.pins);
        cmp("nft table", &self.nft_tables, &after.nft_tables);
        cmp("state file", &self.state_files, &after.state_files);
        cmp("volume", &self.volumes, &after.volumes);
        out
    }

    pub fn assert_same(&self, after: &Snapshot) {
        let diff = self.diff(after);
        assert!(diff.is_empty(), "host changed:\n  {}", diff.join("\n  "));
    }
}

/// Names like `t07-edge`, `netctl_t07`, `/sys/fs/bpf/netctl/t07/...` of a slot other than ours.
fn is_other_test(name: &str, own_prefix: &str) -> bool {
    let own = own_prefix.trim_end_matches('-');
    let candidates = [
        name,
        name.strip_prefix("netctl_").unwrap_or(""),
        name.strip_prefix("/sys/fs/bpf/netctl/").unwrap_or(""),
    ];
    // The benchmarks' own prefixes (`bn-`, `bs-`, ...): their quick modes run beside the
    // tests and make namespaces of their own.
    let bench = |c: &str| {
        let b = c.as_bytes();
        b.len() >= 2
            && b[0] == b'b'
            && b[1].is_ascii_lowercase()
            && (b.len() == 2 || b[2] == b'-' || b[2] == b'/')
    };
    candidates.iter().any(|c| bench(c))
        || candidates.iter().any(|c| {
            let b = c.as_bytes();
            b.len() >= 3
                && b[0] == b't'
                && b[1].is_ascii_digit()
                && b[2].is_ascii_digit()
                && (b.len() == 3 || !b[3].is_ascii_alphanumeric())
                && !c.starts_with(own)
        })
}

/// Names of the host's links, over netlink.
pub fn link_names() -> Vec<String> {
    super::block_on(async {
        let nl = netctl::net::netlink::Netlink::current().expect("netlink");
        nl.links().await.expect("listing links")
    })
    .into_iter()
    .map(|l| l.name)
    .collect()
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}
