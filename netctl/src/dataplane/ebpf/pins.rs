//! Pin layout of one instance under bpffs:
//!
//! ```text
//! /sys/fs/bpf/netctl/<instance>/maps/FLOWS
//! /sys/fs/bpf/netctl/<instance>/progs/netctl_tc_ingress
//! /sys/fs/bpf/netctl/<instance>/links/ingress/<ifname>
//! /sys/fs/bpf/netctl/<instance>/links/cgroup/netctl_sock_connect4
//! ```
//!
//! (bpffs refuses names with a dot, which it keeps for its own `*.debug` files.)

use std::path::{Path, PathBuf};

use netctl_common::maps::PIN_ROOT;
use serde::{Deserialize, Serialize};

use super::loader::{SockProgram, TcProgram};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn for_instance(instance: &str) -> Self {
        Self::at(Path::new(PIN_ROOT).join(instance))
    }

    /// A pin root anywhere on bpffs (tests use private ones).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// Pinned TCX link of a TC program on `ifname`.
    pub fn tc_link(&self, ifname: &str, which: TcProgram) -> PathBuf {
        self.links_dir().join(which.as_str()).join(ifname)
    }

    /// Pinned cgroup link of a socket program.
    pub fn sock_link(&self, which: SockProgram) -> PathBuf {
        self.links_dir().join("cgroup").join(which.program())
    }

    /// Every pinned map of the instance, by name.
    pub fn pinned_maps(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.maps_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}
