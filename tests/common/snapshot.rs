//! What a test can leave behind on the host, to compare before and after: namespaces,
//! links, pins, nft tables, state files, volumes, and what outlives them: file descriptors
//! of the test process and of any process into the instance's pins or namespaces, eBPF
//! programs on the host's uplink and socket programs on the root cgroup that no platform
//! pins, `ip rule`s, and mounts.

use std::{collections::BTreeSet, path::Path};

use aya::programs::{SchedClassifier, TcAttachType, links::FdLink, links::PinnedLink};

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
    /// Open descriptors of this test process into netctl's objects: the slot's
    /// namespaces, pins, state, logs and data (and, when each test has its own process as
    /// under nextest, any eBPF object), by target.
    pub fds: BTreeSet<String>,
    /// Other processes with a descriptor into the slot's namespaces or pins.
    pub holders: BTreeSet<String>,
    /// eBPF programs on the host's uplink (the default route's interface) that no
    /// platform's pinned link holds: tests never attach there.
    pub uplink_programs: BTreeSet<String>,
    /// netctl socket programs attached to a cgroup by a link that no platform pins.
    pub cgroup_programs: BTreeSet<String>,
    /// `ip rule` lines.
    pub rules: BTreeSet<String>,
    /// Mount points under /run/netns, /sys/fs/bpf and netctl's directories (the two
    /// shared mount points themselves stay, made once per boot).
    pub mounts: BTreeSet<String>,
}

impl Snapshot {
    pub fn take(own_prefix: &str) -> Snapshot {
        let own = netctl::topology::plan::instance_name(own_prefix);
        // Other platforms up right now: their instance names and prefixes. (A platform's
        // state file exists before its first object and goes after its last.)
        let others: Vec<(String, String)> = netctl::reconcile::state::instances()
            .into_iter()
            .filter(|i| *i != own)
            .filter_map(|i| {
                let state = netctl::reconcile::state::State::load(&i).ok()??;
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
            state_files: netctl::reconcile::state::instances()
                .into_iter()
                .filter(keep)
                .collect(),
            volumes: std::fs::read_dir(netctl::instance::paths::VOLUME_ROOT)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(keep)
                .collect(),
            fds: own_fds(own_prefix, &own),
            holders: holders(own_prefix, &own),
            uplink_programs: unpinned_uplink_programs(),
            cgroup_programs: unpinned_cgroup_programs(),
            rules: ip_rules(),
            mounts: mounts()
                .into_iter()
                .filter(|m| {
                    let name = m.strip_prefix("/run/netns/").unwrap_or(m);
                    keep(&name.to_string()) && keep(m)
                })
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
        cmp("open descriptor", &self.fds, &after.fds);
        cmp("process holding", &self.holders, &after.holders);
        cmp(
            "program on the uplink",
            &self.uplink_programs,
            &after.uplink_programs,
        );
        cmp(
            "cgroup socket program",
            &self.cgroup_programs,
            &after.cgroup_programs,
        );
        cmp("ip rule", &self.rules, &after.rules);
        cmp("mount", &self.mounts, &after.mounts);
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

/// Whether `target` (a descriptor's link) is one of the slot's objects.
fn is_own(target: &str, own_prefix: &str, own: &str) -> bool {
    target.starts_with(&format!("/run/netns/{own_prefix}"))
        || [
            format!("/sys/fs/bpf/netctl/{own}/"),
            format!("/run/netctl/{own}/"),
            format!("/var/log/netctl/{own}/"),
            format!("/var/lib/netctl/{own}/"),
        ]
        .iter()
        .any(|p| target.starts_with(p.as_str()))
}

/// The targets of a process's descriptors.
fn fd_targets(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

fn own_fds(own_prefix: &str, own: &str) -> BTreeSet<String> {
    // Under nextest every test is a process of its own: any eBPF object it still holds
    // is its own. (`cargo test` runs a binary's tests as threads of one process.)
    let alone = std::env::var_os("NEXTEST").is_some();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for t in fd_targets("self") {
        if is_own(&t, own_prefix, own) || (alone && t.starts_with("anon_inode:bpf")) {
            *counts.entry(t).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(t, n)| format!("{t} (x{n})"))
        .collect()
}

fn holders(own_prefix: &str, own: &str) -> BTreeSet<String> {
    let me = std::process::id().to_string();
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        for t in fd_targets(&pid) {
            if is_own(&t, own_prefix, own) && !t.starts_with("/var/log/") {
                out.insert(format!("{} (pid {pid}) -> {t}", comm.trim()));
            }
        }
    }
    out
}

/// Program ids that the pinned links of every platform hold.
fn pinned_link_programs() -> BTreeSet<u32> {
    walk(Path::new("/sys/fs/bpf/netctl"))
        .into_iter()
        .filter(|p| p.contains("/links/"))
        .filter_map(|p| PinnedLink::from_pin(&p).ok())
        .filter_map(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id())
        .collect()
}

/// The interface of the host's default route.
fn uplink() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
    })
}

fn unpinned_uplink_programs() -> BTreeSet<String> {
    let Some(uplink) = uplink() else {
        return BTreeSet::new();
    };
    let pinned = pinned_link_programs();
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .filter_map(|t| SchedClassifier::query_tcx(&uplink, t).ok())
        .flat_map(|(_, programs)| programs)
        .filter(|p| !pinned.contains(&p.id()))
        .map(|p| {
            format!(
                "{uplink}: {} (id {})",
                p.name_as_str().unwrap_or("?"),
                p.id()
            )
        })
        .collect()
}

fn unpinned_cgroup_programs() -> BTreeSet<String> {
    let pinned = pinned_link_programs();
    cgroup_programs()
        .into_iter()
        .filter(|(program, _)| !pinned.contains(program))
        .map(|(_, shown)| shown)
        .collect()
}

/// Every netctl socket program attached to a cgroup by a link: (program id, description).
pub fn cgroup_programs() -> Vec<(u32, String)> {
    let names: std::collections::BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| l.link_type().ok() == Some(aya::programs::links::LinkType::Cgroup))
        .filter_map(|l| {
            let name = names.get(&l.program_id())?;
            name.starts_with("netctl").then(|| {
                (
                    l.program_id(),
                    format!("{name} (link {}, program {})", l.id(), l.program_id()),
                )
            })
        })
        .collect()
}

fn ip_rules() -> BTreeSet<String> {
    std::process::Command::new("ip")
        .args(["-o", "rule", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| {
            [
                "/run/netns/",
                "/sys/fs/bpf/",
                "/run/netctl",
                "/var/lib/netctl",
                "/var/log/netctl",
            ]
            .iter()
            .any(|p| m.starts_with(p))
        })
        .collect()
}
