//! The supervision component: keeps the set of supervised processes equal to what the
//! current state's plan says, at start (adopting what still runs from an earlier
//! controller) and after every reload.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    STOP_GRACE,
    process::{self, Ctx, Handle, Statuses},
    record,
    spec::ProcessSpec,
    stop,
};
use crate::{instance::StatusBoard, topology::Plan};

/// What supervision follows and where it tells what it does: the controller, which runs it
/// as its `services` component, hands these over.
pub struct Supervision {
    pub instance: String,
    /// The plan the instance runs with: supervision keeps the processes it says, and
    /// follows it when it changes.
    pub plan: watch::Receiver<Arc<Plan>>,
    pub board: StatusBoard,
    /// Cancelled when the controller stops; the processes stay, for the next controller.
    pub shutdown: CancellationToken,
}

/// Supervises the processes of `supervision.plan` until shutdown.
pub async fn run(mut supervision: Supervision) -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding the netctl binary: {e}"))?
        .display()
        .to_string();
    let ctx = Arc::new(Ctx {
        instance: supervision.instance.clone(),
        statuses: Statuses::new(supervision.board.clone()),
        detach: supervision.shutdown.child_token(),
    });
    ctx.statuses.publish().await;
    let mut running: HashMap<String, Handle> = HashMap::new();
    reconcile(&supervision, &ctx, &exe, &mut running).await;
    loop {
        tokio::select! {
            () = supervision.shutdown.cancelled() => break,
            changed = supervision.plan.changed() => {
                if changed.is_err() {
                    break;
                }
                reconcile(&supervision, &ctx, &exe, &mut running).await;
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
    supervision: &Supervision,
    ctx: &Arc<Ctx>,
    exe: &str,
    running: &mut HashMap<String, Handle>,
) {
    let plan = supervision.plan.borrow().clone();
    let specs = super::specs::for_plan(&plan, exe);
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
    supervision
        .board
        .publish(
            "supervisor",
            serde_json::json!({
                "plan": plan.fingerprint(),
                "processes": running.len(),
                "reconciled_at_ms": process::now_ms(),
            }),
        )
        .await;
}
