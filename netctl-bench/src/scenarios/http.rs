//! `bench http`: requests/s at concurrency 50 through the edge (nginx -> gateway -> product
//! service), eBPF vs iptables: the figure the seed measured (54 req/s through its Flask
//! stack). It needs the reference app (edge, gateway and product services started by
//! `netctl up`), which is not part of this build yet; until then this says so and fails,
//! rather than measuring something else under the same name.
//!
//! The hook, once the app is there: bring the default platform up under a bench prefix in
//! each dataplane (as `scale` does), wait for the edge's health check, then run `wrk -t2
//! -c50 -d10s --latency http://<host>:<port>/api/products` from a client namespace against
//! the port forward (and against the edge VIP), both dataplanes in every round.

use std::path::Path;

use anyhow::bail;

pub fn run(_quick: bool, _out: &Path) -> anyhow::Result<()> {
    let default = netctl::topology::Source::embedded_default().plan(None)?;
    bail!(
        "the HTTP benchmark needs the reference app (edge, gateway and product services run \
         by `netctl up`); the embedded platform of this build ({} services) does not start \
         them yet",
        default.services.len()
    )
}
