//! Shared helpers of the integration tests: slots that give each test its own name prefix
//! and subnets (so tests run in parallel, next to a real platform, and after a crashed
//! run), the `netctl` binary, namespace-bound sockets, and host snapshots for leak checks.
#![allow(dead_code)]

pub mod http;
pub mod internet;
pub mod load;
pub mod monitor;
pub mod packets;
pub mod snapshot;
pub mod traffic;

use std::{
    fs::{self, File, OpenOptions},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use ipnet::Ipv4Net;
use netctl::topology::{DEFAULT_TOPOLOGY, Topology, TopologyBuilder};
use nix::fcntl::{Flock, FlockArg};

pub const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");
const SLOT_DIR: &str = "/tmp/netctl-test-slots";
const SLOTS: u32 = 48;

/// Set to 1 to let tests that need root pass without running when not root.
pub const SKIP_ROOT_TESTS: &str = "NETCTL_SKIP_ROOT_TESTS";

/// A test that needs root fails without it, saying so: a suite run as a normal user must
/// not report success for tests that never ran. With `NETCTL_SKIP_ROOT_TESTS=1` it is
/// skipped instead (returns early, with a note).
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var($crate::common::SKIP_ROOT_TESTS).as_deref() == Ok("1") {
                eprintln!("skipped: needs root (namespaces, links and eBPF programs)");
                return;
            }
            panic!(
                "this test needs root (namespaces, links and eBPF programs): run the suite \
                 as root (sudo -E cargo xtask test), or set {}=1 to skip it",
                $crate::common::SKIP_ROOT_TESTS
            );
        }
    };
}

/// One of [`SLOTS`] test identities, held with `flock` for the test's lifetime: prefix
/// `tNN-`, subnets `10.(200+NN).x.0`. A slot left by a crashed test is cleaned on acquire.
pub struct Slot {
    pub n: u32,
    _lock: Flock<File>,
}

impl Slot {
    pub fn acquire() -> Slot {
        fs::create_dir_all(SLOT_DIR).expect("creating the slot directory");
        // Start at a pid-dependent slot so parallel tests rarely contend.
        let start = std::process::id() % SLOTS;
        for i in 0..SLOTS * 20 {
            let n = (start + i) % SLOTS;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(SLOT_DIR).join(format!("{n:02}.lock")))
                .expect("opening a slot lock");
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let slot = Slot { n, _lock: lock };
                slot.clean_leftovers();
                return slot;
            }
            if i % SLOTS == SLOTS - 1 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        panic!("no free test slot");
    }

    pub fn prefix(&self) -> String {
        format!("t{:02}-", self.n)
    }

    pub fn instance(&self) -> String {
        format!("t{:02}", self.n)
    }

    /// The i-th host port this slot may forward: 18000 + 10 * slot + i.
    pub fn host_port(&self, i: usize) -> u16 {
        18_000 + 10 * self.n as u16 + i as u16
    }

    /// Where this slot's controller serves Prometheus metrics.
    pub fn metrics_port(&self) -> u16 {
        19_000 + self.n as u16
    }

    /// The /16 this slot's subnets come from.
    pub fn block(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 200 + self.n as u8, 0, 0), 16).expect("valid block")
    }

    /// Runs `netctl` with this slot's prefix.
    pub fn netctl(&self, args: &[&str]) -> Output {
        self.netctl_env(args, &[])
    }

    pub fn netctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(NETCTL);
        cmd.arg("--prefix").arg(self.prefix()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running netctl")
    }

    /// Whatever a crashed earlier holder of this slot left: its platform (through the
    /// journal), its data, and any extra namespace or link a test made with the prefix.
    fn clean_leftovers(&self) {
        let _ = self.netctl(&["down", "--volumes"]);
        let prefix = self.prefix();
        for ns in netctl::net::netns::list() {
            if ns.starts_with(&prefix) {
                let _ = netctl::net::netns::delete(&ns);
            }
        }
        block_on(async {
            let nl = netctl::net::netlink::Netlink::current().expect("netlink");
            for link in nl.links().await.unwrap_or_default() {
                if link.name.starts_with(&prefix) {
                    let _ = nl.delete_link(&link.name).await;
                }
            }
        });
    }
}

/// Takes away what the topology's namespaces run (kind, command, env, health checks):
/// the network stays, for tests that bind their own sockets there.
pub fn run_nothing(topology: &mut Topology) {
    for svc in topology.services.values_mut() {
        svc.kind = None;
        svc.command = None;
        svc.env.clear();
        svc.health = None;
    }
}

/// The suite's usual shape: a client at 10.0.1.10 on network `front`, and network `back`
/// (10.0.2.0/24) for the services a test adds.
pub fn two_tiers() -> TopologyBuilder {
    TopologyBuilder::new()
        .network("front", "10.0.1.0/24")
        .network("back", "10.0.2.0/24")
        .service("client", |s| s.network("front").address("10.0.1.10"))
}

/// A platform a test brought up; `netctl down` when dropped, even on panic.
pub struct Platform<'a> {
    pub slot: &'a Slot,
    pub file: PathBuf,
    pub plan: netctl::topology::Plan,
    _dir: tempfile::TempDir,
}

impl<'a> Platform<'a> {
    /// The embedded default topology, moved into the slot's prefix and subnets: the whole
    /// reference platform, services included.
    pub fn default_topology(slot: &'a Slot) -> Platform<'a> {
        let mut topology = Topology::parse(DEFAULT_TOPOLOGY).expect("default parses");
        relocate(&mut topology, slot.block());
        Self::from_topology(slot, &topology)
    }

    /// The default topology's network only: the same namespaces, nothing running in them
    /// (for tests of the network and dataplane, which bind their own sockets there).
    pub fn network_only(slot: &'a Slot) -> Platform<'a> {
        let mut topology = Topology::parse(DEFAULT_TOPOLOGY).expect("default parses");
        relocate(&mut topology, slot.block());
        run_nothing(&mut topology);
        Self::from_topology(slot, &topology)
    }

    /// A topology written for the test (subnets anywhere, they are moved into the slot's).
    pub fn from_toml(slot: &'a Slot, text: &str) -> Platform<'a> {
        let mut topology = Topology::parse(text).expect("test topology parses");
        relocate(&mut topology, slot.block());
        Self::from_topology(slot, &topology)
    }

    /// A topology built for the test with [`TopologyBuilder`] (moved into the slot's
    /// subnets like `from_toml`).
    pub fn build(slot: &'a Slot, builder: TopologyBuilder) -> Platform<'a> {
        let mut topology = builder.build();
        relocate(&mut topology, slot.block());
        Self::from_topology(slot, &topology)
    }

    /// Uses `topology` with the slot's prefix, its host ports (`slot.host_port(i)`) and no
    /// uplink unless the topology names one: tests never hook the machine's real uplink.
    pub fn from_topology(slot: &'a Slot, topology: &Topology) -> Platform<'a> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("topology.toml");
        let plan = write_topology(slot, topology, &file);
        Platform {
            slot,
            file,
            plan,
            _dir: dir,
        }
    }

    /// Writes `topology` (already relocated) as the slot would run it, to a new temporary
    /// file; keep the returned directory alive while the file is used.
    pub fn write_file(slot: &Slot, topology: &Topology) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("topology.toml");
        write_topology(slot, topology, &file);
        (dir, file)
    }

    /// Replaces the topology (moved into the slot like `from_toml`) and runs `up` again.
    pub fn update_toml(&mut self, text: &str) {
        let mut topology = Topology::parse(text).expect("test topology parses");
        relocate(&mut topology, self.slot.block());
        self.plan = write_topology(self.slot, &topology, &self.file);
        self.up_ok();
    }

    /// Replaces the topology with a built one (moved into the slot) and runs `up` again.
    pub fn update(&mut self, builder: TopologyBuilder) {
        let mut topology = builder.build();
        relocate(&mut topology, self.slot.block());
        self.plan = write_topology(self.slot, &topology, &self.file);
        self.up_ok();
    }

    pub fn up(&self) -> Output {
        self.slot
            .netctl(&["up", "-f", self.file.to_str().expect("utf-8 path")])
    }

    pub fn up_ok(&self) -> String {
        let out = self.up();
        assert_success(&out, "netctl up");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The shop from the host: `http://localhost:<host port>` through the port forward to
    /// the edge (the slot's stand-in for 8080), or the edge's address without one.
    pub fn edge_url(&self) -> String {
        match self
            .plan
            .port_forwards
            .iter()
            .find(|pf| pf.service == "edge")
        {
            Some(pf) => format!("http://127.0.0.1:{}", pf.host_port),
            None => format!("http://{}", self.endpoint("edge").address),
        }
    }

    pub fn endpoint(&self, name: &str) -> &netctl::topology::Endpoint {
        self.plan
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    }
}

impl Drop for Platform<'_> {
    fn drop(&mut self) {
        let out = self.slot.netctl(&["down", "--volumes"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: netctl down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Writes `topology` to `file` with the slot's prefix, host ports and (unless it names one)
/// no uplink, and returns its plan.
fn write_topology(slot: &Slot, topology: &Topology, file: &Path) -> netctl::topology::Plan {
    let mut topology = topology.clone();
    topology.platform.prefix = slot.prefix();
    if topology.platform.uplinks.is_none() {
        topology.platform.uplinks = Some(Vec::new());
    }
    for (i, pf) in topology.port_forwards.iter_mut().enumerate() {
        pf.host_port = u32::from(slot.host_port(i));
    }
    topology.metrics.listen = format!("127.0.0.1:{}", slot.metrics_port());
    fs::write(file, toml::to_string(&topology).expect("serializes")).expect("write");
    netctl::topology::Source::read(file)
        .expect("read")
        .plan(None)
        .expect("relocated topology is valid")
}

/// Moves every network of `topology` into `block`, in file order, each to the next address
/// aligned to its size and at least a /24 apart (so /24s and smaller land at block + i*256),
/// keeping each address's offset in its subnet. A network wider than /17 is narrowed to a
/// /17 (the slot's VIPs sit at .240.0/20): its addresses must lie in its first /17.
pub fn relocate(topology: &mut Topology, block: Ipv4Net) {
    // Service VIPs too: 10.(200+NN).240.0/20.
    let vips =
        Ipv4Net::new(Ipv4Addr::from(u32::from(block.network()) + 240 * 256), 20).expect("valid");
    topology.platform.service_cidr = vips.to_string();
    for svc in topology.services.values_mut() {
        svc.vip = None;
    }
    let mut moves: Vec<(String, Ipv4Net, Ipv4Net)> = Vec::new();
    let mut next = u32::from(block.network());
    for (name, net) in topology.networks.iter_mut() {
        let old: Ipv4Net = net.subnet.parse().expect("valid subnet");
        let len = old.prefix_len().max(17);
        let size = (1u32 << (32 - len)).max(256);
        let base = next.div_ceil(size) * size;
        next = base + size;
        assert!(
            next <= u32::from(vips.network()),
            "the networks fit below the slot's VIPs"
        );
        let new = Ipv4Net::new(Ipv4Addr::from(base), len).expect("valid");
        net.subnet = new.to_string();
        if let Some(gw) = &net.gateway {
            net.gateway = Some(shift(gw, old, new));
        }
        moves.push((name.clone(), old, new));
    }
    for svc in topology.services.values_mut() {
        if let (Some(addr), Some(network)) = (&svc.address, &svc.network) {
            let (_, old, new) = moves
                .iter()
                .find(|(n, _, _)| n == network)
                .expect("service network exists");
            svc.address = Some(shift(addr, *old, *new));
        }
        // Backends listed by hand move with the network they are in.
        for b in svc.backends.iter_mut().flatten() {
            let (addr, port) = match b.split_once(':') {
                Some((a, p)) => (a.to_string(), Some(p.to_string())),
                None => (b.clone(), None),
            };
            let a: Ipv4Addr = addr.parse().expect("valid backend address");
            if let Some((_, old, new)) = moves.iter().find(|(_, old, _)| old.contains(&a)) {
                let moved = shift(&addr, *old, *new);
                *b = match port {
                    Some(p) => format!("{moved}:{p}"),
                    None => moved,
                };
            }
        }
    }
}

fn shift(addr: &str, old: Ipv4Net, new: Ipv4Net) -> String {
    let a: Ipv4Addr = addr.parse().expect("valid address");
    let offset = u32::from(a) - u32::from(old.network());
    let moved = Ipv4Addr::from(u32::from(new.network()) + offset);
    assert!(
        new.contains(&moved),
        "{addr} of {old} does not fit in {new}"
    );
    moved.to_string()
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs an async block on a private runtime (netlink needs one).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// `netctl flows --json` of the slot's platform.
pub fn flows(slot: &Slot) -> Vec<serde_json::Value> {
    let out = slot.netctl(&["flows", "--json"]);
    assert_success(&out, "netctl flows --json");
    serde_json::from_slice(&out.stdout).expect("flows --json is JSON")
}

/// Polls `cond` every 20 ms until it holds (panics after `timeout`); how long it took.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    started.elapsed()
}

/// SIGKILLs the slot's controller and waits until it is gone; which process it was.
pub fn kill_controller(slot: &Slot) -> netctl::instance::ProcessId {
    let controller =
        netctl::instance::daemon::running(&slot.instance()).expect("controller running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(controller.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the controller");
    wait_for(
        "the controller to die",
        std::time::Duration::from_secs(10),
        || !controller.is_alive(),
    );
    controller
}

/// The supervised processes of the slot's platform, from its controller.
pub fn services(slot: &Slot) -> Vec<netctl::supervisor::ServiceStatus> {
    let v = block_on(netctl::instance::agent_client::get(
        &slot.instance(),
        "/v1/status",
    ))
    .expect("controller answers");
    netctl::supervisor::status::from_status(&v).expect("services on the status board")
}

/// One supervised process of the slot's platform, by endpoint name.
pub fn service(slot: &Slot, name: &str) -> netctl::supervisor::ServiceStatus {
    services(slot)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}
