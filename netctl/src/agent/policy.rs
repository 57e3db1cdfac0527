//! The controller's policy component: compiles the topology's policy and identities and
//! installs them as a new generation whenever they change (state reload, host addresses):
//! into the policy maps, or, on the iptables dataplane, as iptables rules.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::Context;
use netctl_common::policy::ID_HOST;

use super::component::{AgentCtx, ComponentFuture};
use crate::{
    dataplane::ebpf::{Pins, policy::PolicyMaps},
    dataplane::host_facts::HostFacts,
    dataplane::iptables::{Chains, policy as ipt_policy},
    instance::agent_status::PolicyStatus,
    net::{iptables, netlink::Netlink},
    policy::{compile, identity},
    topology::{DataplaneMode, Plan},
};

const RESCAN: Duration = Duration::from_secs(5);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    if ctx.plan.borrow().dataplane.mode == DataplaneMode::Iptables {
        return run_iptables(ctx).await;
    }
    let mut maps = PolicyMaps::open(&Pins::for_instance(&ctx.instance))?;
    let netlink = Netlink::current()?;
    let mut plan = ctx.plan.clone();
    let mut installed: Option<Wanted> = None;
    let mut failed: Option<Wanted> = None;
    let mut ticker = tokio::time::interval(RESCAN);
    loop {
        let changed = tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            _ = plan.changed() => true,
            _ = ticker.tick() => false,
        };
        let plan = (**plan.borrow()).clone();
        let wanted = wanted(&netlink, &plan).await;
        // A refused install is tried again when the state changes, not at every rescan
        // (the kernel refuses the same entries the same way).
        if installed.as_ref() == Some(&wanted) || (!changed && failed.as_ref() == Some(&wanted)) {
            continue;
        }
        let (compiled, ids) = (&wanted.0, &wanted.1);
        let list: Vec<(Ipv4Addr, u32)> = ids.iter().copied().collect();
        let generation = match maps.install(&list, compiled) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("policy not installed: {e:#}");
                publish_failure(&ctx, maps.generation().unwrap_or(0), &e).await;
                failed = Some(wanted);
                continue;
            }
        };
        tracing::info!(
            generation,
            entries = compiled.entries.len(),
            "policy installed"
        );
        ctx.board
            .publish(
                "policy",
                status_value(&PolicyStatus {
                    generation: Some(generation),
                    entries: Some(compiled.entries.len()),
                    identities: Some(list.len()),
                    rate_limits: Some(compiled.rate_limits.len()),
                    ..PolicyStatus::default()
                }),
            )
            .await;
        failed = None;
        installed = Some(wanted);
    }
}

/// What a policy install writes: the compiled entries and address -> identity.
type Wanted = (compile::Compiled, BTreeSet<(Ipv4Addr, u32)>);

async fn wanted(netlink: &Netlink, plan: &Plan) -> Wanted {
    let compiled = compile::compile(plan);
    let mut ids: BTreeSet<(Ipv4Addr, u32)> = identity::addresses(plan).into_iter().collect();
    for addr in host_addresses(netlink, plan).await {
        ids.insert((addr, ID_HOST));
    }
    (compiled, ids)
}

/// Tells `netctl policy apply` (which watches `/v1/status`) that an install failed and
/// why; the generation in force stays.
async fn publish_failure(ctx: &AgentCtx, generation: u32, e: &anyhow::Error) {
    let failed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ctx.board
        .publish(
            "policy",
            status_value(&PolicyStatus {
                generation: Some(generation),
                error: Some(format!("{e:#}")),
                failed_at_ms: Some(failed_at_ms),
                ..PolicyStatus::default()
            }),
        )
        .await;
}

/// The iptables dataplane's policy: the same compiled entries and identities, written as
/// chains (see [`crate::dataplane::iptables::policy`]), the whole policy one `iptables-restore`
/// transaction. A failed install is retried at the next rescan.
async fn run_iptables(ctx: AgentCtx) -> anyhow::Result<()> {
    let chains = Chains::for_instance(&ctx.instance);
    let netlink = Netlink::current()?;
    let mut plan = ctx.plan.clone();
    let mut generation = {
        let c = chains.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<u32> {
            Ok(ipt_policy::read(&c, &iptables::save("filter")?).map_or(0, |i| i.generation))
        })
        .await
        .context("policy task")??
    };
    let mut installed: Option<(compile::Compiled, BTreeSet<(Ipv4Addr, u32)>)> = None;
    let mut ticker = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            _ = plan.changed() => {},
            _ = ticker.tick() => {},
        }
        let plan = (**plan.borrow()).clone();
        let (compiled, ids) = wanted(&netlink, &plan).await;
        if installed
            .as_ref()
            .is_some_and(|(c, i)| *c == compiled && *i == ids)
        {
            continue;
        }
        let list: Vec<(Ipv4Addr, u32)> = ids.iter().copied().collect();
        let next = generation.wrapping_add(1);
        let (c, p, comp, l) = (chains.clone(), plan.clone(), compiled.clone(), list.clone());
        let applied = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let rendered = ipt_policy::render(
                &c,
                &ipt_policy::Input {
                    plan: &p,
                    compiled: &comp,
                    identities: &l,
                    generation: next,
                },
            );
            let existing = iptables::save("filter")?.chains;
            iptables::restore(&ipt_policy::script(&c, &rendered, &existing))
                .context("installing the policy's iptables rules")?;
            Ok(rendered.chains.values().map(Vec::len).sum())
        })
        .await
        .context("policy task")?;
        let rules = match applied {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("policy not installed (retrying): {e:#}");
                publish_failure(&ctx, generation, &e).await;
                continue;
            }
        };
        generation = next;
        tracing::info!(
            generation,
            entries = compiled.entries.len(),
            rules,
            "policy installed as iptables rules"
        );
        ctx.board
            .publish(
                "policy",
                status_value(&PolicyStatus {
                    generation: Some(generation),
                    entries: Some(compiled.entries.len()),
                    identities: Some(list.len()),
                    rate_limits: Some(compiled.rate_limits.len()),
                    iptables_rules: Some(rules),
                    ..PolicyStatus::default()
                }),
            )
            .await;
        installed = Some((compiled, ids));
    }
}

/// The uplinks' addresses: traffic from them is the host's.
async fn host_addresses(netlink: &Netlink, plan: &Plan) -> Vec<Ipv4Addr> {
    let Ok(facts) = HostFacts::discover(netlink, plan).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for uplink in &facts.uplinks {
        if let Ok(Some(link)) = netlink.link(uplink).await
            && let Ok(addrs) = netlink.addresses(link.index).await
        {
            out.extend(addrs.iter().map(|a| a.addr()));
        }
    }
    out
}

/// A status part as the board holds it (serializing these plain structs cannot fail).
fn status_value(status: &PolicyStatus) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}
