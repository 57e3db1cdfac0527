//! The endpoints an agent attached, one JSON file each under
//! `/run/netctl/<instance>/endpoints/`, written before the agent answers, so that a
//! restarted agent adopts them and `down` finds them.

use std::{fs, io, path::PathBuf};

use anyhow::Context;

use super::Endpoint;
use crate::instance::{
    paths::endpoints_dir,
    private_file::{remove_if_exists, write_private},
};

fn file(instance: &str, id: &str) -> PathBuf {
    endpoints_dir(instance).join(format!("{id}.json"))
}

pub fn save(instance: &str, ep: &Endpoint) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(ep).context("encoding an endpoint")?;
    write_private(&file(instance, &ep.id), &text)
}

pub fn remove(instance: &str, id: &str) -> anyhow::Result<()> {
    remove_if_exists(&file(instance, id))
}

/// Every recorded endpoint, by id; a file that does not parse is reported and skipped
/// (and left in place for a person to look at).
pub fn load_all(instance: &str) -> anyhow::Result<Vec<Endpoint>> {
    let dir = endpoints_dir(instance);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let parsed = fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str::<Endpoint>(&t).map_err(anyhow::Error::from));
        match parsed {
            Ok(ep) => out.push(ep),
            Err(e) => tracing::warn!("skipping {}: {e:#}", path.display()),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Removes the directory (after its endpoints were detached).
pub fn remove_all(instance: &str) -> anyhow::Result<()> {
    let dir = endpoints_dir(instance);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
