//! Supervision: the controller component that runs what the topology says runs in each
//! namespace — netctl's own services, redis, PostgreSQL, nginx, or any command.
//!
//! - **Start**: each process is forked with the namespace's file already open; the child
//!   enters the namespace (`setns`), its own process group, and its user, then execs. No
//!   tokio worker ever changes namespace.
//! - **Watch**: a crashed process is restarted with exponential backoff; its health check
//!   runs from the host; its output goes to `/var/log/netctl/<instance>/<name>.log`.
//! - **Remember**: each process is recorded (`/run/netctl/<instance>/services/<name>.json`:
//!   pid + start time + what it was started with), so a restarted controller adopts what is
//!   still running, and `netctl down` stops everything even with no controller.
//! - **Stop**: the process's clean signal, a grace period, then SIGKILL to whatever is
//!   left in its namespace.
//!
//! Status (state, pid, restarts, last health result and latency) is published on the
//! controller's status board as the `services` component.

pub mod builtin;
pub mod probe;
pub mod process;
mod reconcile;
pub mod record;
pub mod spawn;
pub mod spec;
pub mod specs;
pub mod status;
pub mod stop;

use std::time::Duration;

pub use reconcile::{Supervision, run};
pub use status::{ServiceState, ServiceStatus};

use crate::{instance::paths, topology::Plan};

/// How long a process gets to stop after its clean signal.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Stops every recorded process of `instance` and anything else running in the namespaces
/// of its `plan` (when its state still tells it), then forgets the records. Works without
/// a controller (`netctl down`).
pub async fn stop_all(instance: &str, plan: Option<&Plan>) -> anyhow::Result<()> {
    let records = record::all(instance);
    let mut stops = Vec::new();
    for r in records {
        stops.push(async move {
            let signal = nix::sys::signal::Signal::try_from(r.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let inode = stop::netns_inode_matching(&r);
            let main = r.is_alive().then(|| r.process());
            stop::terminate(main, signal, inode, STOP_GRACE).await;
            record::remove(instance, &r.name)
        });
    }
    let results = futures::future::join_all(stops).await;
    // Anything else in the platform's namespaces (a record lost in a crash, a shell).
    if let Some(plan) = plan {
        let sweeps = plan.endpoints.iter().filter_map(|e| {
            stop::netns_inode(&e.netns).map(|inode| {
                stop::terminate(
                    None,
                    nix::sys::signal::Signal::SIGKILL,
                    Some(inode),
                    Duration::ZERO,
                )
            })
        });
        futures::future::join_all(sweeps).await;
    }
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    let dir = paths::services_dir(instance);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
