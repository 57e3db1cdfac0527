//! The controller's policy component: compiles the topology's policy and identities and
//! installs them as a new generation whenever they change (state reload, host addresses).

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use netctl_common::policy::ID_HOST;
use serde_json::json;

use super::{
    agent::{AgentCtx, ComponentFuture},
    resource::HostFacts,
};
use crate::{
    dataplane::{Pins, policy::PolicyMaps},
    net::netlink::Netlink,
    policy::{compile, identity},
    topology::Plan,
};

const RESCAN: Duration = Duration::from_secs(5);

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: AgentCtx) -> anyhow::Result<()> {
    let mut maps = PolicyMaps::open(&Pins::for_instance(&ctx.instance))?;
    let netlink = Netlink::current()?;
    let mut state = ctx.state.clone();
    let mut installed: Option<(compile::Compiled, BTreeSet<(Ipv4Addr, u32)>)> = None;
    let mut ticker = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(()),
            _ = state.changed() => {},
            _ = ticker.tick() => {},
        }
        let plan = state.borrow().plan.clone();
        let compiled = compile::compile(&plan);
        let mut ids: BTreeSet<(Ipv4Addr, u32)> = identity::addresses(&plan).into_iter().collect();
        for addr in host_addresses(&netlink, &plan).await {
            ids.insert((addr, ID_HOST));
        }
        if installed
            .as_ref()
            .is_some_and(|(c, i)| *c == compiled && *i == ids)
        {
            continue;
        }
        let list: Vec<(Ipv4Addr, u32)> = ids.iter().copied().collect();
        let generation = maps.install(&list, &compiled)?;
        tracing::info!(
            generation,
            entries = compiled.entries.len(),
            "policy installed"
        );
        ctx.board
            .publish(
                "policy",
                json!({
                    "generation": generation,
                    "entries": compiled.entries.len(),
                    "identities": list.len(),
                    "rate_limits": compiled.rate_limits.len(),
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
