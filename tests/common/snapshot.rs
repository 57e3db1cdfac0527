//! What a test can leave behind on the host, to compare before and after.

use std::{collections::BTreeSet, path::Path};

/// Host objects netctl could create. Names of other tests' slots (`tNN-` prefixes other
/// than ours) are left out so parallel tests do not see each other.
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
        let keep = |name: &String| !is_other_test(name, own_prefix);
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
/// Instances of test-like runs that do not take a slot: netctl-bench's unit test brings up
/// its `bn-` platform, in parallel with the tests.
const OTHER_INSTANCES: [&str; 1] = ["bn"];

fn is_other_test(name: &str, own_prefix: &str) -> bool {
    let own = own_prefix.trim_end_matches('-');
    let candidates = [
        name,
        name.strip_prefix("netctl_").unwrap_or(""),
        name.strip_prefix("/sys/fs/bpf/netctl/").unwrap_or(""),
    ];
    let other_instance = |c: &str| {
        OTHER_INSTANCES.iter().any(|i| {
            c.strip_prefix(i)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '/']))
        })
    };
    candidates.iter().any(|c| other_instance(c))
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
