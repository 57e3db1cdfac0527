//! `netctl topology`: the platform as it is in the kernel now (bridges, namespaces and
//! their addresses as netlink reports them, the uplinks; VIPs and port forwards as the
//! dataplane serves them: the LB maps, or the iptables chains), as a terminal diagram,
//! Graphviz DOT, or SVG (through Graphviz's `dot`). What the plan has and the kernel lacks
//! is marked MISSING; what the kernel serves and the plan does not, "not in the plan".

use std::{
    io::Write,
    net::Ipv4Addr,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::load_state;
use crate::{
    dataplane::ServedFrontend,
    dataplane::host_facts::HostFacts,
    net::{netlink::Netlink, netns, sysctl},
    output,
    reconcile::preflight,
    topology::{Plan, plan::ENDPOINT_IFNAME},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `text` (default), `dot` or `svg`.
    #[arg(long, default_value = "text", value_parser = ["text", "dot", "svg"])]
    format: String,
}

/// What the kernel says, for one instance.
#[derive(Debug, Serialize)]
struct Live {
    platform: String,
    instance: String,
    ip_forward: String,
    uplinks: Vec<(String, Vec<Ipv4Net>)>,
    bridges: Vec<BridgeLive>,
    port_forwards: Vec<PortForwardLive>,
}

#[derive(Debug, Serialize)]
struct PortForwardLive {
    text: String,
    /// In the plan, not in the dataplane.
    missing: bool,
    /// In the dataplane, not in the plan.
    unplanned: bool,
}

#[derive(Debug, Serialize)]
struct BridgeLive {
    network: String,
    name: String,
    subnet: Ipv4Net,
    addresses: Vec<Ipv4Net>,
    up: Option<bool>,
    namespaces: Vec<NamespaceLive>,
}

#[derive(Debug, Serialize)]
struct NamespaceLive {
    name: String,
    netns: String,
    service: String,
    exists: bool,
    /// eth0's addresses inside the namespace.
    addresses: Vec<Ipv4Net>,
    /// The service's VIPs the dataplane serves.
    vips: Vec<Ipv4Addr>,
    /// The plan's `VIP:port/proto` frontends of the service the dataplane lacks.
    missing_frontends: Vec<String>,
    ports: Vec<String>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("topology")?;
    let Some(state) = load_state(prefix)? else {
        bail!("no netctl platform is up");
    };
    let frontends = crate::dataplane::open(&state.plan, &state.instance).frontends()?;
    let live = gather(&state.plan, &frontends).await?;
    match args.format.as_str() {
        "dot" => output::print_line(&dot(&live))?,
        "svg" => output::print_line(&svg(&dot(&live))?)?,
        _ => output::print_line(&text(&live))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan's port forwards checked against the live host ports, then the live host ports
/// the plan does not have.
fn port_forwards(plan: &Plan, live: &[ServedFrontend]) -> Vec<PortForwardLive> {
    let served = |port: u16, proto: &str| {
        live.iter()
            .any(|f| f.host_port && f.port == port && f.proto == proto)
    };
    let mut out: Vec<PortForwardLive> = plan
        .port_forwards
        .iter()
        .map(|f| {
            let vip = plan
                .service(&f.service)
                .map(|s| format!(" (VIP {})", s.vip))
                .unwrap_or_default();
            PortForwardLive {
                text: format!(
                    "{}/{} -> {}:{}{vip}",
                    f.host_port,
                    f.proto.name(),
                    f.service,
                    f.port
                ),
                missing: !served(f.host_port, f.proto.name()),
                unplanned: false,
            }
        })
        .collect();
    for f in live.iter().filter(|f| f.host_port) {
        let planned = plan
            .port_forwards
            .iter()
            .any(|p| p.host_port == f.port && p.proto.name() == f.proto);
        if !planned {
            out.push(PortForwardLive {
                text: format!("{}/{} -> {}", f.port, f.proto, f.service),
                missing: false,
                unplanned: true,
            });
        }
    }
    out
}

/// The live VIPs of `service`, and the plan's frontends of it that the dataplane lacks.
fn vips_of(plan: &Plan, service: &str, live: &[ServedFrontend]) -> (Vec<Ipv4Addr>, Vec<String>) {
    let mut vips: Vec<Ipv4Addr> = live
        .iter()
        .filter(|f| !f.host_port && f.service == service)
        .map(|f| f.addr)
        .collect();
    vips.sort_unstable();
    vips.dedup();
    let missing = plan
        .service(service)
        .map(|s| {
            s.ports
                .iter()
                .filter(|p| {
                    !live.iter().any(|f| {
                        !f.host_port
                            && f.addr == s.vip
                            && f.port == p.port
                            && f.proto == p.proto.name()
                    })
                })
                .map(|p| format!("{}:{}/{}", s.vip, p.port, p.proto.name()))
                .collect()
        })
        .unwrap_or_default();
    (vips, missing)
}

async fn gather(plan: &Plan, frontends: &[ServedFrontend]) -> anyhow::Result<Live> {
    let host = Netlink::current()?;
    let links = host.links().await?;
    let facts = HostFacts::discover(&host, plan).await?;
    let mut uplinks = Vec::new();
    for name in &facts.uplinks {
        let addrs = match links.iter().find(|l| l.name == *name) {
            Some(l) => host.addresses(l.index).await?,
            None => Vec::new(),
        };
        uplinks.push((name.clone(), addrs));
    }
    let mut bridges = Vec::new();
    for n in &plan.networks {
        let link = links.iter().find(|l| l.name == n.bridge);
        let addresses = match link {
            Some(l) => host.addresses(l.index).await?,
            None => Vec::new(),
        };
        let mut namespaces = Vec::new();
        for e in plan.endpoints.iter().filter(|e| e.network == n.name) {
            let exists = netns::exists(&e.netns);
            let addresses = if exists {
                inside_addresses(&e.netns).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            let (vips, missing_frontends) = vips_of(plan, &e.service, frontends);
            namespaces.push(NamespaceLive {
                name: e.name.clone(),
                netns: e.netns.clone(),
                service: e.service.clone(),
                exists,
                addresses,
                vips,
                missing_frontends,
                ports: e.ports.iter().map(ToString::to_string).collect(),
            });
        }
        bridges.push(BridgeLive {
            network: n.name.clone(),
            name: n.bridge.clone(),
            subnet: n.subnet,
            addresses,
            up: link.map(|l| l.up),
            namespaces,
        });
    }
    let port_forwards = port_forwards(plan, frontends);
    Ok(Live {
        platform: plan.platform.clone(),
        instance: plan.instance(),
        ip_forward: sysctl::read(sysctl::IP_FORWARD).unwrap_or_else(|_| "?".into()),
        uplinks,
        bridges,
        port_forwards,
    })
}

async fn inside_addresses(ns: &str) -> anyhow::Result<Vec<Ipv4Net>> {
    let nl = Netlink::in_netns(ns)?;
    let index = nl.index_of(ENDPOINT_IFNAME).await?;
    nl.addresses(index).await
}

fn list(addrs: &[Ipv4Net]) -> String {
    if addrs.is_empty() {
        "no address".into()
    } else {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn text(l: &Live) -> String {
    let mut s = format!(
        "{} (instance {})\nhost  ip_forward={}\n",
        l.platform, l.instance, l.ip_forward
    );
    for (name, addrs) in &l.uplinks {
        s.push_str(&format!(" ├─ uplink {name}  {}\n", list(addrs)));
    }
    for pf in &l.port_forwards {
        s.push_str(&format!(" │    └─ port {}{}\n", pf.text, pf_mark(pf)));
    }
    for (bi, b) in l.bridges.iter().enumerate() {
        let last_bridge = bi + 1 == l.bridges.len();
        let state = match b.up {
            Some(true) => "up",
            Some(false) => "DOWN",
            None => "MISSING",
        };
        s.push_str(&format!(
            " {}─ {} {} ({}, bridge {state}, {})\n",
            if last_bridge { "└" } else { "├" },
            b.network,
            b.subnet,
            b.name,
            list(&b.addresses)
        ));
        for (ni, n) in b.namespaces.iter().enumerate() {
            let branch = if ni + 1 == b.namespaces.len() {
                "└"
            } else {
                "├"
            };
            let vip = vip_text(n, "  ");
            let ports = if n.ports.is_empty() {
                String::new()
            } else {
                format!("  {}", n.ports.join(" "))
            };
            let missing = if n.exists {
                ""
            } else {
                "  (namespace MISSING)"
            };
            s.push_str(&format!(
                " {}    {branch}─ {:<16} {:<18} {}{vip}{ports}{missing}\n",
                if last_bridge { " " } else { "│" },
                n.netns,
                list(&n.addresses),
                n.name
            ));
        }
    }
    s
}

/// A quoted DOT string. Backslashes pass through: labels use DOT's `\n` line breaks,
/// and names are validated to hold none.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

fn dot(l: &Live) -> String {
    let mut s = String::from(
        "digraph netctl {\n  rankdir=LR;\n  node [shape=box, fontname=\"DejaVu Sans\", fontsize=10];\n  edge [dir=none];\n",
    );
    s.push_str(&format!(
        "  host [label={}, shape=box3d];\n",
        q(&format!(
            "host\\n{} ({})\\nip_forward={}",
            l.platform, l.instance, l.ip_forward
        ))
    ));
    for (name, addrs) in &l.uplinks {
        let id = q(&format!("uplink:{name}"));
        s.push_str(&format!(
            "  {id} [label={}, shape=ellipse];\n  host -> {id};\n",
            q(&format!("{name}\\n{}", list(addrs)))
        ));
    }
    for (i, pf) in l.port_forwards.iter().enumerate() {
        let id = q(&format!("pf:{i}"));
        s.push_str(&format!(
            "  {id} [label={}, shape=note{}];\n  host -> {id} [style=dashed];\n",
            q(&format!("port {}{}", pf.text, pf_mark(pf))),
            if pf.missing { ", color=red" } else { "" }
        ));
    }
    for b in &l.bridges {
        let bid = q(&format!("bridge:{}", b.name));
        s.push_str(&format!(
            "  subgraph {} {{\n    label={};\n",
            q(&format!("cluster_{}", b.network)),
            q(&format!("{} {}", b.network, b.subnet))
        ));
        s.push_str(&format!(
            "    {bid} [label={}, shape=hexagon];\n",
            q(&format!("{}\\n{}", b.name, list(&b.addresses)))
        ));
        for n in &b.namespaces {
            let nid = q(&format!("ns:{}", n.netns));
            let vip = vip_text(n, "\\n");
            s.push_str(&format!(
                "    {nid} [label={}{}];\n    {bid} -> {nid};\n",
                q(&format!(
                    "{}\\n{}\\n{}{vip}",
                    n.name,
                    n.netns,
                    list(&n.addresses)
                )),
                if n.exists && n.missing_frontends.is_empty() {
                    ""
                } else {
                    ", color=red"
                }
            ));
        }
        s.push_str("  }\n");
        s.push_str(&format!("  host -> {bid};\n"));
    }
    s.push_str("}\n");
    s
}

fn pf_mark(pf: &PortForwardLive) -> &'static str {
    if pf.missing {
        "  (MISSING in the dataplane)"
    } else if pf.unplanned {
        "  (not in the plan)"
    } else {
        ""
    }
}

/// `VIP a` for each live VIP, then what the plan has that the dataplane lacks; each part
/// after `sep`.
fn vip_text(n: &NamespaceLive, sep: &str) -> String {
    let mut s = String::new();
    for v in &n.vips {
        s.push_str(&format!("{sep}VIP {v}"));
    }
    if !n.missing_frontends.is_empty() {
        s.push_str(&format!(
            "{sep}(MISSING in the dataplane: {})",
            n.missing_frontends.join(" ")
        ));
    }
    s
}

fn svg(dot_text: &str) -> anyhow::Result<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dot (install graphviz: cargo xtask setup)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot_text.as_bytes())
            .context("writing to dot")?;
    }
    let out = child.wait_with_output().context("waiting for dot")?;
    if !out.status.success() {
        bail!("dot: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
