//! The plan an instance runs with, as the reconcile recorded it in its state file: all the
//! agent needs of that journal (the resources in it are the reconcile's business).

use std::{fs, io};

use anyhow::Context;
use serde::Deserialize;

use super::paths::state_file;
use crate::topology::Plan;

#[derive(Deserialize)]
struct Recorded {
    plan: Plan,
}

/// The recorded plan of `instance`, or `None` when it is not up.
pub fn load(instance: &str) -> anyhow::Result<Option<Plan>> {
    let path = state_file(instance);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let recorded: Recorded = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a netctl state file", path.display()))?;
    Ok(Some(recorded.plan))
}
