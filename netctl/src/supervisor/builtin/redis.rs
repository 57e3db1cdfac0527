//! `redis-server` as the product cache: bound to the namespace address, no persistence
//! (it is a cache; PostgreSQL holds the data), memory capped with LRU eviction, run as
//! the `redis` user.

use super::{own_dir, user, volume_root};
use crate::{instance::paths, supervisor::spec::ProcessSpec, topology::Endpoint};

pub const MAX_MEMORY: &str = "64mb";

pub fn configure(spec: &mut ProcessSpec, e: &Endpoint, port: u16, instance: &str) {
    let dir = paths::data(instance, &e.name);
    spec.argv = [
        "redis-server",
        "--bind",
        &e.address.to_string(),
        "--port",
        &port.to_string(),
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--logfile",
        "",
        "--maxmemory",
        MAX_MEMORY,
        "--maxmemory-policy",
        "allkeys-lru",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spec.user = Some("redis".into());
    spec.url = Some(format!("redis://{}:{port}", e.address));
}

pub fn prepare(spec: &ProcessSpec, instance: &str) -> anyhow::Result<()> {
    let redis = user("redis", "redis-server")?;
    volume_root(instance)?;
    own_dir(&paths::data(instance, &spec.name), &redis, 0o700)
}
