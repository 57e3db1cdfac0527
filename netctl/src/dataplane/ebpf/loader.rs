//! Loading the eBPF object once per instance, pinning it, and attaching its programs: TC
//! programs to host-side veths and uplinks with TCX links, socket programs to the cgroup v2
//! root with cgroup links. Links are pinned too: the dataplane keeps running when the
//! controller exits, and a later `netctl` finds everything in bpffs.

use std::{fs, io, path::Path};

use anyhow::{Context, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        cgroup_sock_addr::CgroupSockAddrAttachType,
        links::{FdLink, PinnedLink},
    },
};
use netctl_common::maps::{self, *};
use serde::{Deserialize, Serialize};

use super::{EBPF_OBJECT, Pins, bpf_sys};

/// A TC program and the hook it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcProgram {
    /// Ingress of a host-side veth: packets the namespace sends.
    EndpointIngress,
    /// Egress of a host-side veth: packets delivered into the namespace.
    EndpointEgress,
    /// Ingress of an uplink: outside traffic to host ports.
    UplinkIngress,
    /// Egress of an uplink: host-port replies.
    UplinkEgress,
}

impl TcProgram {
    pub const ENDPOINT: [TcProgram; 2] = [TcProgram::EndpointIngress, TcProgram::EndpointEgress];
    pub const UPLINK: [TcProgram; 2] = [TcProgram::UplinkIngress, TcProgram::UplinkEgress];
    pub const ALL: [TcProgram; 4] = [
        TcProgram::EndpointIngress,
        TcProgram::EndpointEgress,
        TcProgram::UplinkIngress,
        TcProgram::UplinkEgress,
    ];

    /// Directory of its links under `links/`.
    pub fn as_str(self) -> &'static str {
        match self {
            TcProgram::EndpointIngress => "ingress",
            TcProgram::EndpointEgress => "egress",
            TcProgram::UplinkIngress => "uplink-ingress",
            TcProgram::UplinkEgress => "uplink-egress",
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            TcProgram::EndpointIngress => PROG_TC_INGRESS,
            TcProgram::EndpointEgress => PROG_TC_EGRESS,
            TcProgram::UplinkIngress => PROG_UPLINK_INGRESS,
            TcProgram::UplinkEgress => PROG_UPLINK_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcProgram::EndpointIngress | TcProgram::UplinkIngress => TcAttachType::Ingress,
            TcProgram::EndpointEgress | TcProgram::UplinkEgress => TcAttachType::Egress,
        }
    }
}

/// A cgroup socket program of socket-level load balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SockProgram {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
}

impl SockProgram {
    pub const ALL: [SockProgram; 4] = [
        SockProgram::Connect4,
        SockProgram::Sendmsg4,
        SockProgram::Recvmsg4,
        SockProgram::Getpeername4,
    ];

    pub fn program(self) -> &'static str {
        match self {
            SockProgram::Connect4 => PROG_SOCK_CONNECT4,
            SockProgram::Sendmsg4 => PROG_SOCK_SENDMSG4,
            SockProgram::Recvmsg4 => PROG_SOCK_RECVMSG4,
            SockProgram::Getpeername4 => PROG_SOCK_GETPEERNAME4,
        }
    }

    fn attach_type(self) -> CgroupSockAddrAttachType {
        match self {
            SockProgram::Connect4 => CgroupSockAddrAttachType::Connect4,
            SockProgram::Sendmsg4 => CgroupSockAddrAttachType::UDPSendMsg4,
            SockProgram::Recvmsg4 => CgroupSockAddrAttachType::UDPRecvMsg4,
            SockProgram::Getpeername4 => CgroupSockAddrAttachType::GetPeerName4,
        }
    }
}

/// Settings that shape the loaded object (map sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub conntrack_max: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_max: CT_MAX_ENTRIES,
        }
    }
}

/// Loads the embedded object and every program in it into the kernel. With `pins`, each
/// map is pinned under it, reusing a map already pinned there (so counters survive a
/// reload); without, the maps are private to the returned object (tests).
pub fn load(pins: Option<&Pins>, opts: LoadOptions) -> anyhow::Result<Ebpf> {
    let map_paths: Vec<(&str, std::path::PathBuf)> = match pins {
        Some(pins) => {
            fs::create_dir_all(pins.maps_dir())
                .with_context(|| format!("creating {}", pins.maps_dir().display()))?;
            fs::create_dir_all(pins.progs_dir())
                .with_context(|| format!("creating {}", pins.progs_dir().display()))?;
            maps::ALL
                .iter()
                .map(|name| (*name, pins.map(name)))
                .collect()
        }
        None => Vec::new(),
    };
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(CT, opts.conntrack_max);
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let object = object()?;
    let mut ebpf = loader
        .load(&object)
        .context("loading the eBPF object into the kernel")?;
    if let Some((name, _)) = ebpf.maps().find(|(name, _)| !maps::ALL.contains(name)) {
        return Err(anyhow!(
            "the eBPF object has a map {name} that netctl_common::maps::ALL does not list"
        ));
    }
    for p in TcProgram::ALL {
        classifier(&mut ebpf, p.program())?
            .load()
            .with_context(|| format!("verifying and loading program {}", p.program()))?;
    }
    for p in SockProgram::ALL {
        sock_program(&mut ebpf, p.program())?
            .load()
            .with_context(|| format!("verifying and loading program {}", p.program()))?;
    }
    Ok(ebpf)
}

/// Loads the object and pins its programs, replacing older pins of the same name.
pub fn load_and_pin(pins: &Pins, opts: LoadOptions) -> anyhow::Result<()> {
    let mut ebpf = load(Some(pins), opts)?;
    for name in program_names() {
        let path = pins.prog(name);
        remove_pin(&path)?;
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        program
            .pin(&path)
            .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    }
    Ok(())
}

fn program_names() -> impl Iterator<Item = &'static str> {
    TcProgram::ALL
        .into_iter()
        .map(TcProgram::program)
        .chain(SockProgram::ALL.into_iter().map(SockProgram::program))
}

/// The object to load: the embedded one, or `NETCTL_DATAPLANE_OBJECT` (a file) to run
/// another build of the dataplane without rebuilding `netctl`.
pub fn object() -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
    match std::env::var_os(OBJECT_ENV) {
        Some(path) => fs::read(&path)
            .map(std::borrow::Cow::Owned)
            .with_context(|| format!("reading {OBJECT_ENV}={}", path.to_string_lossy())),
        None => Ok(std::borrow::Cow::Borrowed(EBPF_OBJECT)),
    }
}

pub const OBJECT_ENV: &str = "NETCTL_DATAPLANE_OBJECT";

/// A short fingerprint of the object (FNV-1a 64), so a new build is recognised.
pub fn fingerprint(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Upgrades a running dataplane in place: loads the new object reusing every pinned map
/// (so conntrack, flows and services carry over), swaps the program of every pinned link
/// atomically (`BPF_LINK_UPDATE`), and re-pins the programs. Established connections do
/// not notice. Refused, before any change, when a map's layout differs.
pub fn upgrade(pins: &Pins, opts: LoadOptions) -> anyhow::Result<()> {
    check_map_layouts(pins, opts)?;
    let mut ebpf = load(Some(pins), opts)?;
    for which in TcProgram::ALL {
        let dir = pins.links_dir().join(which.as_str());
        let prog = classifier(&mut ebpf, which.program())?;
        let fd = prog.fd().context("program fd")?;
        for entry in fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            bpf_sys::link_update(&entry.path(), std::os::fd::AsFd::as_fd(fd))?;
        }
    }
    for which in SockProgram::ALL {
        let link = pins.sock_link(which);
        if link.exists() {
            let prog = sock_program(&mut ebpf, which.program())?;
            let fd = prog.fd().context("program fd")?;
            bpf_sys::link_update(&link, std::os::fd::AsFd::as_fd(fd))?;
        }
    }
    for name in program_names() {
        let path = pins.prog(name);
        remove_pin(&path)?;
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        program
            .pin(&path)
            .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    }
    Ok(())
}

/// Every pinned map must have the type, key, value and size the new object declares.
fn check_map_layouts(pins: &Pins, opts: LoadOptions) -> anyhow::Result<()> {
    let fresh = load(None, opts).context("loading the new object to compare its maps")?;
    for (name, map) in fresh.maps() {
        let Ok(pinned) = aya::maps::MapInfo::from_pin(pins.map(name)) else {
            continue; // a new map: it will be created and pinned
        };
        let want = match map {
            aya::maps::Map::Array(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::RingBuf(d) => d.info().context("map info")?,
            _ => continue,
        };
        let same = pinned.map_type().ok() == want.map_type().ok()
            && pinned.key_size() == want.key_size()
            && pinned.value_size() == want.value_size()
            && pinned.max_entries() == want.max_entries();
        if !same {
            anyhow::bail!(
                "map {name} changed layout (key {} -> {}, value {} -> {}, entries {} -> {}): \
                 this upgrade needs `netctl down` and `netctl up`",
                pinned.key_size(),
                want.key_size(),
                pinned.value_size(),
                want.value_size(),
                pinned.max_entries(),
                want.max_entries()
            );
        }
    }
    Ok(())
}

/// True when the instance's programs are pinned.
pub fn is_loaded(pins: &Pins) -> bool {
    program_names().all(|name| pins.prog(name).exists())
}

pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

fn sock_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock_addr program"))
}

/// Attaches the pinned TC program to `ifname` with a TCX link pinned in bpffs.
pub fn attach_tc(pins: &Pins, ifname: &str, which: TcProgram) -> anyhow::Result<()> {
    let prog_path = pins.prog(which.program());
    let mut prog = SchedClassifier::from_pin(&prog_path)
        .with_context(|| format!("opening pinned program {}", prog_path.display()))?;
    let id = prog
        .attach(ifname, which.attach_type())
        .with_context(|| format!("attaching {} to {ifname}", which.program()))?;
    let link = prog.take_link(id).context("taking the TC link")?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("TC link of {ifname} is not a bpf_link (kernel without TCX?): {e}"))?;
    pin_link(fd_link, &pins.tc_link(ifname, which))
}

/// Attaches the pinned socket program to the cgroup at `cgroup` with a pinned link.
pub fn attach_sock(pins: &Pins, cgroup: &Path, which: SockProgram) -> anyhow::Result<()> {
    let prog_path = pins.prog(which.program());
    let mut prog = CgroupSockAddr::from_pin(&prog_path, which.attach_type())
        .with_context(|| format!("opening pinned program {}", prog_path.display()))?;
    let cgroup_dir =
        fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    // With bpf_link (kernel >= 5.7) programs always coexist; the kernel refuses the
    // legacy ALLOW_MULTI flag on a link, so the mode must be the default (no flags).
    let id = prog
        .attach(&cgroup_dir, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {} to {}", which.program(), cgroup.display()))?;
    let link = prog.take_link(id).context("taking the cgroup link")?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("cgroup link is not a bpf_link: {e}"))?;
    pin_link(fd_link, &pins.sock_link(which))
}

fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_pin(path)?;
    link.pin(path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    Ok(())
}

/// True when the pinned link exists and the kernel still has it.
pub fn is_linked(path: &Path) -> bool {
    PinnedLink::from_pin(path).is_ok()
}

/// Detaches by removing the pinned link (the last reference). False when not pinned.
pub fn unlink(path: &Path) -> anyhow::Result<bool> {
    remove_pin(path)
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
