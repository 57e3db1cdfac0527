//! Loading the eBPF object once per instance, pinning it, and attaching its TC programs to
//! host-side veths with TCX links that are pinned too: the dataplane keeps running when the
//! controller exits, and a later `netctl` finds everything in bpffs.

use std::{fs, io, path::Path};

use anyhow::{Context, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use netctl_common::maps::{self, PROG_TC_EGRESS, PROG_TC_INGRESS};
use serde::{Deserialize, Serialize};

use super::{EBPF_OBJECT, Pins};

/// A direction of a host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Packets the namespace sends (ingress of the host end).
    Ingress,
    /// Packets delivered into the namespace (egress of the host end).
    Egress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Hook::Ingress => PROG_TC_INGRESS,
            Hook::Egress => PROG_TC_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

/// Loads the embedded object and every TC program in it into the kernel. With `pins`, each
/// map is pinned under it, reusing a map already pinned there (so counters survive a
/// reload); without, the maps are private to the returned object (tests).
pub fn load(pins: Option<&Pins>) -> anyhow::Result<Ebpf> {
    let map_paths: Vec<(&str, std::path::PathBuf)> = match pins {
        Some(pins) => {
            let links = pins.links_dir();
            for dir in [
                pins.maps_dir(),
                pins.progs_dir(),
                links.join("ingress"),
                links.join("egress"),
            ] {
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            maps::ALL
                .iter()
                .map(|name| (*name, pins.map(name)))
                .collect()
        }
        None => Vec::new(),
    };
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object into the kernel")?;
    if let Some((name, _)) = ebpf.maps().find(|(name, _)| !maps::ALL.contains(name)) {
        return Err(anyhow!(
            "the eBPF object has a map {name} that netctl_common::maps::ALL does not list"
        ));
    }
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        classifier(&mut ebpf, name)?
            .load()
            .with_context(|| format!("verifying and loading program {name}"))?;
    }
    Ok(ebpf)
}

/// Loads the object and pins its programs, replacing older pins of the same name.
pub fn load_and_pin(pins: &Pins) -> anyhow::Result<()> {
    let mut ebpf = load(Some(pins))?;
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        let path = pins.prog(name);
        remove_pin(&path)?;
        classifier(&mut ebpf, name)?
            .pin(&path)
            .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    }
    Ok(())
}

/// True when the instance's programs are pinned.
pub fn is_loaded(pins: &Pins) -> bool {
    [PROG_TC_INGRESS, PROG_TC_EGRESS]
        .iter()
        .all(|name| pins.prog(name).exists())
}

pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

/// Attaches the pinned program for `hook` to `ifname` with a TCX link pinned in bpffs.
pub fn attach(pins: &Pins, ifname: &str, hook: Hook) -> anyhow::Result<()> {
    let prog_path = pins.prog(hook.program());
    let mut prog = SchedClassifier::from_pin(&prog_path)
        .with_context(|| format!("opening pinned program {}", prog_path.display()))?;
    let id = prog.attach(ifname, hook.attach_type()).with_context(|| {
        format!(
            "attaching {} to {ifname} ({})",
            hook.program(),
            hook.as_str()
        )
    })?;
    let link = prog.take_link(id).context("taking the TC link")?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("TC link of {ifname} is not a bpf_link (kernel without TCX?): {e}"))?;
    let link_path = pins.link(ifname, hook);
    remove_pin(&link_path)?;
    fd_link
        .pin(&link_path)
        .with_context(|| format!("pinning link {}", link_path.display()))?;
    Ok(())
}

/// True when the pinned link for `ifname`/`hook` exists and the kernel still has it.
pub fn is_attached(pins: &Pins, ifname: &str, hook: Hook) -> bool {
    PinnedLink::from_pin(pins.link(ifname, hook)).is_ok()
}

/// Detaches by removing the pinned link (the last reference). False when not pinned.
pub fn detach(pins: &Pins, ifname: &str, hook: Hook) -> anyhow::Result<bool> {
    remove_pin(&pins.link(ifname, hook))
}

/// Removes the whole pin directory of an instance: maps, programs, links.
pub fn unpin_all(pins: &Pins) -> anyhow::Result<bool> {
    match fs::remove_dir_all(&pins.root) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing pins under {}", pins.root.display())),
    }
}

fn remove_pin(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing pin {}", path.display())),
    }
}
