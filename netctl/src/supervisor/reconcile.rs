//! The supervision component: keeps the set of supervised processes equal to what the
//! current state's plan says, at start (adopting what still runs from an earlier
//! controller) and after every reload.

use std::{collections::HashMap, sync::Arc};

use super::{
    STOP_GRACE,
    process::{self, Ctx, Handle, Statuses},
    record,
    spec::ProcessSpec,
    stop,
};
use crate::controller::agent::{AgentCtx, ComponentFuture};

pub fn component(ctx: AgentCtx) -> ComponentFuture {
    Box::pin(run(ctx))
}

async fn run(mut agent: AgentCtx) -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding the netctl binary: {e}"))?
        .display()
        .to_string();
    let ctx = Arc::new(Ctx {
        instance: agent.instance.clone(),
        statuses: Statuses::new(agent.board.clone()),
        detach: agent.shutdown.child_token(),
    });
    ctx.statuses.publish().await;
    let mut running: HashMap<String, Handle> = HashMap::new();
    reconcile(&agent, &ctx, &exe, &mut running).await;
    loop {
        tokio::select! {
            () = agent.shutdown.cancelled() => break,
            changed = agent.state.changed() => {
                if changed.is_err() {
                    break;
                }
                reconcile(&agent, &ctx, &exe, &mut running).await;
            }
        }
    }
    // The controller stops; the processes stay, for the next controller or `down`.
    ctx.detach.cancel();
    for (_, h) in running {
        h.join().await;
    }
    Ok(())
}

async fn reconcile(
    agent: &AgentCtx,
    ctx: &Arc<Ctx>,
    exe: &str,
    running: &mut HashMap<String, Handle>,
) {
    let state = agent.state.borrow().clone();
    let specs = ProcessSpec::for_plan(&state.plan, exe);
    ctx.statuses
        .set_order(specs.iter().map(|s| s.name.clone()).collect());
    let desired: HashMap<&str, &ProcessSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();

    // Stop what is no longer wanted, or wanted differently, or whose namespace was
    // made anew.
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, h)| match desired.get(name.as_str()) {
            None => true,
            Some(spec) => {
                let inode = h.netns_inode.load(std::sync::atomic::Ordering::Relaxed);
                h.fingerprint != spec.fingerprint()
                    || (inode != 0 && stop::netns_inode(&spec.netns) != Some(inode))
            }
        })
        .map(|(name, _)| name.clone())
        .collect();
    let stops = stale.into_iter().filter_map(|name| {
        tracing::info!(name, "stopping (removed or changed)");
        running.remove(&name).map(Handle::stop)
    });
    futures::future::join_all(stops).await;

    // Processes recorded by an earlier controller that nobody supervises now.
    for r in record::all(&ctx.instance) {
        if running.contains_key(&r.name) {
            continue;
        }
        let adoptable = desired.get(r.name.as_str()).is_some_and(|spec| {
            r.is_alive()
                && r.fingerprint == spec.fingerprint()
                && stop::netns_inode(&spec.netns) == Some(r.netns_inode)
        });
        if !adoptable {
            tracing::info!(
                name = r.name,
                pid = r.pid,
                "stopping a process left by an earlier run"
            );
            let signal = nix::sys::signal::Signal::try_from(r.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let main = r.is_alive().then(|| r.process());
            stop::terminate(main, signal, stop::netns_inode_matching(&r), STOP_GRACE).await;
            let _ = record::remove(&ctx.instance, &r.name);
        }
    }

    for spec in specs {
        if running.contains_key(&spec.name) {
            continue;
        }
        let adopt = record::load(&ctx.instance, &spec.name).filter(|r| r.is_alive());
        let name = spec.name.clone();
        running.insert(name, process::start(ctx.clone(), spec, adopt).await);
    }
    // Now the board shows this plan's processes: say which plan that is.
    agent
        .board
        .publish(
            "supervisor",
            serde_json::json!({
                "plan": state.plan.fingerprint(),
                "processes": running.len(),
                "reconciled_at_ms": process::now_ms(),
            }),
        )
        .await;
}
