//! `netctl topology`: the platform as it is in the kernel now (bridges, namespaces and
//! their addresses as netlink reports them, VIPs, the uplinks, port forwards), as a
//! terminal diagram, Graphviz DOT, or SVG (through Graphviz's `dot`).

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
    controller::{preflight, resource::HostFacts},
    net::{netlink::Netlink, netns, sysctl},
    output,
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
    port_forwards: Vec<String>,
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
    vip: Option<Ipv4Addr>,
    ports: Vec<String>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("topology")?;
    let Some(state) = load_state(prefix)? else {
        bail!("no netctl platform is up");
    };
    let live = gather(&state.plan).await?;
    match args.format.as_str() {
        "dot" => output::print_line(&dot(&live))?,
        "svg" => output::print_line(&svg(&dot(&live))?)?,
        _ => output::print_line(&text(&live))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn gather(plan: &Plan) -> anyhow::Result<Live> {
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
            let svc = plan.service(&e.service);
            namespaces.push(NamespaceLive {
                name: e.name.clone(),
                netns: e.netns.clone(),
                service: e.service.clone(),
                exists,
                addresses,
                vip: svc.map(|s| s.vip),
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
    let port_forwards = plan
        .port_forwards
        .iter()
        .map(|f| {
            let vip = plan
                .service(&f.service)
                .map(|s| format!(" (VIP {})", s.vip))
                .unwrap_or_default();
            format!(
                "{}/{} -> {}:{}{vip}",
                f.host_port,
                f.proto.name(),
                f.service,
                f.port
            )
        })
        .collect();
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
        s.push_str(&format!(" │    └─ port {pf}\n"));
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
            let vip = n.vip.map(|v| format!("  VIP {v}")).unwrap_or_default();
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
            "  {id} [label={}, shape=note];\n  host -> {id} [style=dashed];\n",
            q(&format!("port {pf}"))
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
            let vip = n.vip.map(|v| format!("\\nVIP {v}")).unwrap_or_default();
            s.push_str(&format!(
                "    {nid} [label={}{}];\n    {bid} -> {nid};\n",
                q(&format!(
                    "{}\\n{}\\n{}{vip}",
                    n.name,
                    n.netns,
                    list(&n.addresses)
                )),
                if n.exists { "" } else { ", color=red" }
            ));
        }
        s.push_str("  }\n");
        s.push_str(&format!("  host -> {bid};\n"));
    }
    s.push_str("}\n");
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
