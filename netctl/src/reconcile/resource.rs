//! Everything `up` creates, as data: each resource knows how to create itself (undoing its
//! own partial work on failure), delete itself (treating "already gone" as success), tell
//! whether it exists, and whether an object of its name exists that netctl did not make.

use std::{fmt, net::Ipv4Addr, path::PathBuf};

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::state::State;
use crate::{
    dataplane,
    dataplane::ebpf::{LoadOptions, Pins, SockProgram, TcProgram, loader},
    dataplane::host_facts::HostFacts,
    dataplane::iptables::{Chains, base as ipt_base, rules::BaseSpec},
    endpoint::{self, plumbing},
    instance::{daemon, paths},
    net::{host_firewall, nat, netlink::Netlink, netns},
    supervisor,
    topology::{DataplaneMode, Plan, plan::ENDPOINT_IFNAME},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A bridge with the network's gateway address.
    Bridge { name: String, address: Ipv4Net },
    /// A namespace with a veth: `host_ifname` on `bridge`, `eth0` inside with `address`,
    /// loopback up and a default route via `gateway`.
    Endpoint {
        netns: String,
        host_ifname: String,
        bridge: String,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    },
    /// The nftables table that masquerades traffic leaving through the uplink.
    Masquerade {
        table: String,
        subnets: Vec<Ipv4Net>,
        bridges: Vec<String>,
    },
    /// The eBPF object loaded with programs and maps pinned under `pins`. `object` is the
    /// object's fingerprint: a new build is upgraded in place (see `up`).
    Dataplane {
        pins: Pins,
        options: LoadOptions,
        #[serde(default)]
        object: String,
    },
    /// A pinned TCX link of a TC program on an interface (host-side veth or uplink).
    TcHook {
        ifname: String,
        program: TcProgram,
        pins: Pins,
    },
    /// A pinned cgroup link of a socket-level load-balancing program.
    SockHook {
        program: SockProgram,
        cgroup: PathBuf,
        pins: Pins,
    },
    /// The iptables dataplane (`--dataplane iptables`): base chains `NCTL-<tag>-*` and the
    /// jumps into them, masquerade, and the per-bridge settings it needs. The controller
    /// writes the per-service chains; deleting this removes every chain of the instance.
    Iptables {
        instance: String,
        bridges: Vec<String>,
        /// Host-side veths (bridge ports), set to hairpin mode.
        #[serde(default)]
        ports: Vec<String>,
        subnets: Vec<Ipv4Net>,
        masquerade: bool,
        uplinks: Vec<String>,
        host_ports: bool,
    },
    /// The host-firewall accept chain (`NCTL-FWD-<tag>`): the platform's forwarded traffic
    /// accepted in the host's FORWARD chain whatever its policy (Docker sets DROP), right
    /// after the dataplane's own jumps; on both dataplanes, so made after them.
    HostForward {
        instance: String,
        bridges: Vec<String>,
    },
    /// The processes that run in the namespaces, supervised by the controller. Created
    /// before the controller (so removed after it): removing it stops every process the
    /// records name, and anything else in the platform's namespaces, with or without a
    /// controller.
    Services { instance: String },
    /// The endpoints the controller attaches on request (`/v1/endpoints`): their records'
    /// directory. Made before the controller, removed after it: removing it removes every
    /// endpoint recorded there (veth and dataplane hooks), whoever asked for it.
    AttachedEndpoints { instance: String },
    /// The background controller process (`netctl controller`).
    Controller { instance: String, prefix: String },
}

/// How long the controller gets to stop after SIGTERM before it is killed.
const CONTROLLER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What every resource operation needs.
pub struct Ctx {
    pub host: Netlink,
}

impl Resource {
    /// The resources of a plan, in creation order. The controller comes last (and so goes
    /// first); `with_controller` is false when the caller itself becomes the controller.
    /// `host` says what of the host the plan uses: uplinks for port forwards, the cgroup
    /// for socket-level load balancing.
    pub fn for_plan(
        plan: &Plan,
        pins: &Pins,
        host: &HostFacts,
        with_controller: bool,
    ) -> Vec<Resource> {
        let mut out = Vec::new();
        for n in &plan.networks {
            out.push(Resource::Bridge {
                name: n.bridge.clone(),
                address: Ipv4Net::new(n.gateway, n.subnet.prefix_len()).unwrap_or(n.subnet),
            });
        }
        for e in &plan.endpoints {
            out.push(Resource::Endpoint {
                netns: e.netns.clone(),
                host_ifname: e.host_ifname.clone(),
                bridge: e.bridge.clone(),
                address: Ipv4Net::new(e.address, e.prefix_len).unwrap_or_default(),
                gateway: e.gateway,
            });
        }
        match plan.dataplane.mode {
            DataplaneMode::Ebpf => Self::ebpf_resources(plan, pins, host, &mut out),
            DataplaneMode::Iptables => out.push(Resource::Iptables {
                instance: plan.instance(),
                bridges: plan.networks.iter().map(|n| n.bridge.clone()).collect(),
                ports: plan
                    .endpoints
                    .iter()
                    .map(|e| e.host_ifname.clone())
                    .collect(),
                subnets: plan.networks.iter().map(|n| n.subnet).collect(),
                masquerade: plan.masquerade,
                uplinks: host.uplinks.clone(),
                host_ports: !plan.port_forwards.is_empty(),
            }),
        }
        out.push(Resource::HostForward {
            instance: plan.instance(),
            bridges: plan.networks.iter().map(|n| n.bridge.clone()).collect(),
        });
        out.push(Resource::Services {
            instance: plan.instance(),
        });
        out.push(Resource::AttachedEndpoints {
            instance: plan.instance(),
        });
        if with_controller {
            out.push(Resource::Controller {
                instance: plan.instance(),
                prefix: plan.prefix.clone(),
            });
        }
        out
    }

    /// NAT table, eBPF object, TC and socket hooks.
    fn ebpf_resources(plan: &Plan, pins: &Pins, host: &HostFacts, out: &mut Vec<Resource>) {
        if plan.masquerade {
            out.push(Resource::Masquerade {
                table: nat::table_name(&plan.instance()),
                subnets: plan.networks.iter().map(|n| n.subnet).collect(),
                bridges: plan.networks.iter().map(|n| n.bridge.clone()).collect(),
            });
        }
        out.push(Resource::Dataplane {
            pins: pins.clone(),
            options: LoadOptions {
                conntrack_max: plan.dataplane.conntrack_max,
            },
            object: host.object.clone(),
        });
        for e in &plan.endpoints {
            for program in TcProgram::ENDPOINT {
                out.push(Resource::TcHook {
                    ifname: e.host_ifname.clone(),
                    program,
                    pins: pins.clone(),
                });
            }
        }
        if !plan.port_forwards.is_empty() {
            for uplink in &host.uplinks {
                for program in TcProgram::UPLINK {
                    out.push(Resource::TcHook {
                        ifname: uplink.clone(),
                        program,
                        pins: pins.clone(),
                    });
                }
            }
        }
        if let Some(cgroup) = &host.cgroup {
            for program in SockProgram::ALL {
                out.push(Resource::SockHook {
                    program,
                    cgroup: cgroup.clone(),
                    pins: pins.clone(),
                });
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Bridge { .. } => "bridge",
            Resource::Endpoint { .. } => "namespace",
            Resource::Masquerade { .. } => "nat",
            Resource::Dataplane { .. } => "dataplane",
            Resource::TcHook { .. } => "tc-hook",
            Resource::SockHook { .. } => "sock-hook",
            Resource::Iptables { .. } => "iptables",
            Resource::HostForward { .. } => "host-firewall",
            Resource::Services { .. } => "services",
            Resource::AttachedEndpoints { .. } => "endpoints",
            Resource::Controller { .. } => "controller",
        }
    }

    pub fn name(&self) -> String {
        match self {
            Resource::Bridge { name, .. } => name.clone(),
            Resource::Endpoint { netns, .. } => netns.clone(),
            Resource::Masquerade { table, .. } => format!("ip {table}"),
            Resource::Dataplane { pins, .. } => pins.root.display().to_string(),
            Resource::TcHook {
                ifname, program, ..
            } => format!("{ifname}/{}", program.as_str()),
            Resource::SockHook { program, .. } => program.program().to_string(),
            Resource::Iptables { instance, .. } => {
                format!(
                    "{}*",
                    Chains::for_instance(instance)
                        .services()
                        .trim_end_matches("SERVICES")
                )
            }
            Resource::HostForward { instance, .. } => Chains::for_instance(instance).host_forward(),
            Resource::Services { instance }
            | Resource::AttachedEndpoints { instance }
            | Resource::Controller { instance, .. } => instance.clone(),
        }
    }

    /// A short description of the resource's settings.
    pub fn detail(&self) -> String {
        match self {
            Resource::Bridge { address, .. } => address.to_string(),
            Resource::Endpoint {
                host_ifname,
                bridge,
                address,
                gateway,
                ..
            } => format!("{address} via {gateway}, {host_ifname} on {bridge}"),
            Resource::Masquerade { subnets, .. } => {
                let s: Vec<String> = subnets.iter().map(ToString::to_string).collect();
                format!("masquerade {}", s.join(" "))
            }
            Resource::Dataplane { options, .. } => {
                format!(
                    "programs + maps pinned, conntrack {} entries",
                    options.conntrack_max
                )
            }
            Resource::TcHook {
                pins,
                ifname,
                program,
            } => pins.tc_link(ifname, *program).display().to_string(),
            Resource::SockHook {
                pins,
                program,
                cgroup,
            } => format!(
                "{} on {}",
                pins.sock_link(*program).display(),
                cgroup.display()
            ),
            Resource::Iptables {
                masquerade,
                host_ports,
                ..
            } => format!(
                "kube-proxy-style chains{}{}",
                if *masquerade { ", masquerade" } else { "" },
                if *host_ports { ", host ports" } else { "" }
            ),
            Resource::HostForward { bridges, .. } => format!(
                "FORWARD accepts {}, ahead of the host's policy",
                bridges.join(" ")
            ),
            Resource::Services { instance } => {
                let records = supervisor::record::all(instance);
                let alive = records.iter().filter(|r| r.is_alive()).count();
                format!("{alive} running, {} recorded", records.len())
            }
            Resource::AttachedEndpoints { instance } => {
                let n = endpoint::store::load_all(instance).map_or(0, |l| l.len());
                format!("{n} attached through the API")
            }
            Resource::Controller { instance, .. } => match daemon::running(instance) {
                Some(id) => format!("pid {}", id.pid),
                None => "not running".into(),
            },
        }
    }

    /// True when `self` cannot exist without `other` (and must be remade with it).
    pub fn depends_on(&self, other: &Resource) -> bool {
        match (self, other) {
            (Resource::Endpoint { bridge, .. }, Resource::Bridge { name, .. }) => bridge == name,
            (Resource::TcHook { ifname, .. }, Resource::Endpoint { host_ifname, .. }) => {
                ifname == host_ifname
            }
            (Resource::TcHook { pins: a, .. }, Resource::Dataplane { pins: b, .. }) => a == b,
            (Resource::SockHook { pins: a, .. }, Resource::Dataplane { pins: b, .. }) => a == b,
            (Resource::Iptables { bridges, .. }, Resource::Bridge { name, .. }) => {
                bridges.contains(name)
            }
            (Resource::Iptables { ports, .. }, Resource::Endpoint { host_ifname, .. }) => {
                ports.contains(host_ifname)
            }
            // The controller holds the maps (or knows the chains) of the dataplane it
            // started with: a new dataplane gets a new controller.
            (
                Resource::Controller { .. },
                Resource::Dataplane { .. } | Resource::Iptables { .. },
            ) => true,
            _ => false,
        }
    }

    pub async fn create(&self, ctx: &Ctx) -> anyhow::Result<()> {
        match self {
            Resource::Bridge { name, address } => {
                let index = ctx.host.create_bridge(name).await?;
                let addr = ctx
                    .host
                    .add_address(index, address.addr(), address.prefix_len());
                if let Err(e) = addr.await {
                    let _ = ctx.host.delete_link(name).await;
                    return Err(e);
                }
                Ok(())
            }
            Resource::Endpoint { .. } => {
                let made = self.create_endpoint(ctx).await;
                if made.is_err() {
                    let _ = self.delete(ctx).await;
                }
                made
            }
            Resource::Masquerade {
                table,
                subnets,
                bridges,
            } => nat::apply(&nat::MasqueradeSpec {
                table: table.clone(),
                subnets: subnets.clone(),
                bridges: bridges.clone(),
            }),
            Resource::Dataplane { pins, options, .. } => {
                let loaded = loader::load_and_pin(pins, *options);
                if loaded.is_err() {
                    let _ = loader::unpin_all(pins);
                }
                loaded
            }
            Resource::TcHook {
                ifname,
                program,
                pins,
            } => loader::attach_tc(pins, ifname, *program),
            Resource::SockHook {
                program,
                cgroup,
                pins,
            } => loader::attach_sock(pins, cgroup, *program),
            Resource::Iptables { .. } => {
                let made = self.create_iptables();
                if made.is_err() {
                    let _ = self.delete_iptables();
                }
                made
            }
            Resource::HostForward { .. } => self.with_host_forward(host_firewall::install),
            Resource::Services { instance } => {
                let dir = paths::services_dir(instance);
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
            }
            Resource::AttachedEndpoints { instance } => {
                let dir = paths::endpoints_dir(instance);
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
            }
            Resource::Controller { instance, prefix } => {
                daemon::spawn(instance, prefix).await.map(drop)
            }
        }
    }

    /// Detaches every recorded endpoint of `instance` (the controller is stopped by now),
    /// then forgets them all.
    async fn delete_attached(ctx: &Ctx, instance: &str) -> anyhow::Result<()> {
        let state = State::load(instance).ok().flatten();
        for ep in endpoint::store::load_all(instance)? {
            if let Some(state) = &state {
                dataplane::open(&state.plan, instance).detach_endpoint(&ep.host_ifname)?;
            }
            endpoint::plumbing::delete(&ctx.host, &ep.host_ifname).await?;
            endpoint::store::remove(instance, &ep.id)?;
        }
        endpoint::store::remove_all(instance)
    }

    fn create_iptables(&self) -> anyhow::Result<()> {
        let Resource::Iptables {
            instance,
            bridges,
            ports,
            subnets,
            masquerade,
            uplinks,
            host_ports,
        } = self
        else {
            return Ok(());
        };
        ipt_base::install(
            &Chains::for_instance(instance),
            &BaseSpec {
                bridges: bridges.clone(),
                ports: ports.clone(),
                subnets: subnets.clone(),
                masquerade: *masquerade,
                uplinks: uplinks.clone(),
                host_ports: *host_ports,
            },
        )
    }

    fn delete_iptables(&self) -> anyhow::Result<()> {
        let Resource::Iptables {
            instance,
            bridges,
            ports,
            subnets,
            ..
        } = self
        else {
            return Ok(());
        };
        let removed = ipt_base::remove(&Chains::for_instance(instance));
        let reset = ipt_base::reset_bridges(bridges, ports);
        let forgotten = ipt_base::forget_connections(subnets);
        removed.map(drop).and(reset).and(forgotten)
    }

    async fn create_endpoint(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let Resource::Endpoint {
            netns: ns,
            host_ifname,
            bridge,
            address,
            gateway,
        } = self
        else {
            return Ok(());
        };
        netns::create(ns)?;
        let ns_file = netns::open(ns)?;
        // The same plumbing as every endpoint the agent attaches.
        plumbing::create(
            &ctx.host,
            &plumbing::Plumbing {
                netns: &ns_file,
                netns_label: ns,
                ifname: ENDPOINT_IFNAME,
                host_ifname,
                bridge,
                address: *address,
                gateway: *gateway,
            },
        )
        .await
        .map(drop)
    }

    /// Removes the resource; succeeds when it is already gone.
    pub async fn delete(&self, ctx: &Ctx) -> anyhow::Result<()> {
        match self {
            Resource::Bridge { name, .. } => ctx.host.delete_link(name).await.map(drop),
            Resource::Endpoint {
                netns: ns,
                host_ifname,
                ..
            } => {
                // Deleting the host end destroys the pair now, even if some process still
                // holds the namespace open.
                let link = ctx.host.delete_link(host_ifname).await;
                let ns = netns::delete(ns);
                link.map(drop).and(ns.map(drop))
            }
            Resource::Masquerade { table, .. } => nat::delete(table).map(drop),
            Resource::Dataplane { pins, .. } => loader::unpin_all(pins).map(drop),
            Resource::TcHook {
                ifname,
                program,
                pins,
            } => loader::unlink(&pins.tc_link(ifname, *program)).map(drop),
            Resource::SockHook { program, pins, .. } => {
                loader::unlink(&pins.sock_link(*program)).map(drop)
            }
            Resource::Iptables { .. } => self.delete_iptables(),
            Resource::HostForward { instance, .. } => {
                host_firewall::remove(&Chains::for_instance(instance).host_forward())
            }
            Resource::Services { instance } => {
                let state = State::load(instance).ok().flatten();
                supervisor::stop_all(instance, state.as_ref().map(|s| &s.plan)).await
            }
            Resource::AttachedEndpoints { instance } => Self::delete_attached(ctx, instance).await,
            Resource::Controller { instance, .. } => {
                daemon::stop(instance, CONTROLLER_GRACE).await.map(drop)
            }
        }
    }

    /// True when the resource is present in the kernel.
    pub async fn exists(&self, ctx: &Ctx) -> anyhow::Result<bool> {
        Ok(match self {
            Resource::Bridge { name, .. } => ctx
                .host
                .link(name)
                .await?
                .is_some_and(|l| l.kind.as_deref() == Some("bridge")),
            Resource::Endpoint {
                netns: ns,
                host_ifname,
                ..
            } => netns::exists(ns) && ctx.host.link(host_ifname).await?.is_some(),
            Resource::Masquerade { table, .. } => nat::exists(table)?,
            Resource::Dataplane { pins, .. } => loader::is_loaded(pins),
            Resource::TcHook {
                ifname,
                program,
                pins,
            } => loader::is_linked(&pins.tc_link(ifname, *program)),
            Resource::SockHook { program, pins, .. } => {
                loader::is_linked(&pins.sock_link(*program))
            }
            Resource::Iptables { instance, .. } => {
                ipt_base::exists(&Chains::for_instance(instance))?
            }
            Resource::HostForward { .. } => self.with_host_forward(host_firewall::present)?,
            Resource::Services { instance } => paths::services_dir(instance).is_dir(),
            Resource::AttachedEndpoints { instance } => paths::endpoints_dir(instance).is_dir(),
            Resource::Controller { instance, .. } => {
                daemon::running(instance).is_some_and(|id| daemon::is_current(&id))
            }
        })
    }

    /// Puts back in place what something else moved since it was made: Docker moves its
    /// jumps to the top of FORWARD when it starts, ahead of the host-firewall chain's.
    /// True when something was redone.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        match self {
            Resource::HostForward { .. } => {
                if self.with_host_forward(host_firewall::in_place)? {
                    return Ok(false);
                }
                self.with_host_forward(host_firewall::install)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// What the host's firewall does to this platform's forwarded traffic (for a
    /// `HostForward`; `None` for any other resource).
    pub fn host_firewall(&self) -> Option<anyhow::Result<host_firewall::Diagnosis>> {
        matches!(self, Resource::HostForward { .. })
            .then(|| self.with_host_forward(host_firewall::diagnose))
    }

    /// Calls `f` with the host-firewall spec of a `HostForward` and the test for the
    /// dataplane's own chains.
    fn with_host_forward<T: Default>(
        &self,
        f: impl Fn(&host_firewall::Spec, &dyn Fn(&str) -> bool) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Resource::HostForward { instance, bridges } = self else {
            return Ok(T::default());
        };
        let chains = Chains::for_instance(instance);
        let chain = chains.host_forward();
        let spec = host_firewall::Spec {
            chain: &chain,
            instance,
            bridges,
        };
        f(&spec, &|t: &str| chains.owns(t))
    }

    /// Describes an object that occupies this resource's name but is not netctl's.
    /// Only called for resources the state does not record.
    pub async fn conflict(&self, ctx: &Ctx) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Resource::Bridge { name, .. } => ctx
                .host
                .link(name)
                .await?
                .map(|_| format!("a link named {name} already exists")),
            Resource::Endpoint {
                netns: ns,
                host_ifname,
                ..
            } => {
                if netns::path(ns).exists() {
                    Some(format!("network namespace {ns} already exists"))
                } else if ctx.host.link(host_ifname).await?.is_some() {
                    Some(format!("a link named {host_ifname} already exists"))
                } else {
                    None
                }
            }
            Resource::Masquerade { table, .. } => {
                nat::exists(table)?.then(|| format!("nftables table ip {table} already exists"))
            }
            Resource::Dataplane { pins, .. } => pins
                .root
                .exists()
                .then(|| format!("{} already exists", pins.root.display())),
            Resource::TcHook { .. }
            | Resource::SockHook { .. }
            | Resource::Services { .. }
            | Resource::AttachedEndpoints { .. } => None,
            Resource::HostForward { instance, .. } => {
                let chain = Chains::for_instance(instance).host_forward();
                crate::net::iptables::save("filter")?
                    .chains
                    .contains(&chain)
                    .then(|| format!("iptables chain {chain} already exists"))
            }
            Resource::Iptables { instance, .. } => {
                let chains = ipt_base::chains(&Chains::for_instance(instance))?;
                (!chains.is_empty()).then(|| {
                    format!(
                        "iptables chains of instance {instance} already exist: {}",
                        chains.join(", ")
                    )
                })
            }
            Resource::Controller { instance, .. } => daemon::running(instance).map(|id| {
                format!(
                    "a controller of instance {instance} is running (pid {})",
                    id.pid
                )
            }),
        })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}
