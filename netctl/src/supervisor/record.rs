//! A supervised process as written down: enough to find it again after the controller
//! restarts (adoption) or dies (`down` stops it), and never to mistake another process
//! for it (pid *and* start time, like the controller's own pid file).

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::instance::{ProcessId, paths};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub pid: u32,
    /// Clock ticks since boot, from `/proc/PID/stat`.
    pub start_time: u64,
    /// The named network namespace it runs in, and that namespace's inode when it started.
    pub netns: String,
    pub netns_inode: u64,
    /// What it was started with (see `ProcessSpec::fingerprint`).
    pub fingerprint: String,
    /// The signal that stops it cleanly.
    pub stop_signal: i32,
    pub started_at_ms: u64,
    pub restarts: u32,
}

impl Record {
    pub fn process(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.process().is_alive()
    }

    /// Writes the record atomically, root-only.
    pub fn save(&self, instance: &str) -> anyhow::Result<()> {
        let dir = paths::services_dir(instance);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = paths::service_record(instance, &self.name);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&text)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    pub fn load(path: &Path) -> Option<Record> {
        let text = fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

pub fn remove(instance: &str, name: &str) -> anyhow::Result<()> {
    let path = paths::service_record(instance, name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

pub fn load(instance: &str, name: &str) -> Option<Record> {
    Record::load(&paths::service_record(instance, name))
}

/// Every record of the instance (unreadable ones are skipped).
pub fn all(instance: &str) -> Vec<Record> {
    let mut out: Vec<Record> = fs::read_dir(paths::services_dir(instance))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Record::load(&p))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
