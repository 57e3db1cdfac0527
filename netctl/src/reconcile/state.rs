//! The state file `/run/netctl/<instance>/state.json`: the plan an instance was brought
//! up with and the journal of resources made for it (beside it, the controller's pid file
//! and API socket, and the supervisor's records). `/run` is a tmpfs, like the namespaces
//! and pins it describes, so a reboot clears both together; the last `down` removes
//! `/run/netctl` itself.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::Resource;
use crate::{
    instance::{
        paths::{self, RUN_ROOT, run_dir},
        private_file::{ensure_run_root, remove_if_exists, write_private},
    },
    topology::Plan,
};

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub instance: String,
    pub plan: Plan,
    /// In creation order; `done == false` means creation started and may be partial.
    pub resources: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub resource: Resource,
    pub done: bool,
}

/// Host-wide settings netctl changed for its platforms (`/run/netctl/host.json`). They are
/// shared by every instance and restored when the last instance goes down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostChanges {
    /// Value of net.ipv4.ip_forward before netctl set it to 1, when it was not 1.
    pub ip_forward_before: Option<String>,
    /// netctl mounted bpffs on /sys/fs/bpf.
    pub mounted_bpffs: bool,
}

impl HostChanges {
    fn path() -> PathBuf {
        Path::new(RUN_ROOT).join("host.json")
    }

    pub fn load() -> anyhow::Result<Self> {
        let path = Self::path();
        match fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{} is not a netctl host file", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> anyhow::Result<()> {
        if *self == Self::default() {
            return self.remove();
        }
        let text = serde_json::to_string_pretty(self).context("encoding host settings")?;
        write_private(&Self::path(), text.as_bytes())
    }

    pub fn remove(&self) -> anyhow::Result<()> {
        remove_if_exists(&Self::path())
    }
}

impl State {
    pub fn new(plan: Plan) -> Self {
        Self {
            version: FORMAT_VERSION,
            instance: plan.instance(),
            plan,
            resources: Vec::new(),
        }
    }

    pub fn path(instance: &str) -> PathBuf {
        paths::state_file(instance)
    }

    /// The state of `instance`, or `None` when it is not up.
    pub fn load(instance: &str) -> anyhow::Result<Option<Self>> {
        let path = Self::path(instance);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a netctl state file", path.display()))?;
        if state.version != FORMAT_VERSION {
            bail!(
                "{} has format version {}, this netctl reads {FORMAT_VERSION}",
                path.display(),
                state.version
            );
        }
        Ok(Some(state))
    }

    /// Writes atomically (temp file + rename), readable by root only.
    pub fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("encoding state")?;
        write_private(&Self::path(&self.instance), text.as_bytes())
    }

    /// Removes the state file and the instance's runtime directory.
    pub fn remove(&self) -> anyhow::Result<()> {
        remove_if_exists(&Self::path(&self.instance))?;
        let dir = run_dir(&self.instance);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    pub fn push(&mut self, resource: Resource) -> anyhow::Result<()> {
        self.resources.push(Record {
            resource,
            done: false,
        });
        self.save()
    }

    pub fn mark_done(&mut self, resource: &Resource) -> anyhow::Result<()> {
        if let Some(r) = self.resources.iter_mut().find(|r| &r.resource == resource) {
            r.done = true;
        }
        self.save()
    }

    pub fn forget(&mut self, resource: &Resource) -> anyhow::Result<()> {
        self.resources.retain(|r| &r.resource != resource);
        self.save()
    }
}

/// Instances with a state file, sorted.
pub fn instances() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(RUN_ROOT)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

/// Exclusive lock for the length of an `up` or `down`: a `flock` on the state directory
/// itself, so there is no lock file to leave behind. It is host-wide rather than per
/// instance; both operations take about a second. The last `down` removes the directory
/// (under the lock): a waiter that then gets a lock on the removed directory sees that
/// it is no longer the one at the path, and locks the new one instead.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    pub fn acquire() -> anyhow::Result<Self> {
        Self::acquire_in(Path::new(RUN_ROOT))
    }

    /// The lock, without creating the directory: `None` when there is none (nothing up).
    pub fn acquire_existing() -> anyhow::Result<Option<Self>> {
        if !Path::new(RUN_ROOT).exists() {
            return Ok(None);
        }
        Self::acquire().map(Some)
    }

    fn acquire_in(dir: &Path) -> anyhow::Result<Self> {
        loop {
            if dir == Path::new(RUN_ROOT) {
                ensure_run_root()?;
            } else {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((file, _)) => {
                    tracing::info!("waiting for another netctl up/down to finish");
                    Flock::lock(file, FlockArg::LockExclusive)
                        .map_err(|(_, e)| e)
                        .with_context(|| format!("locking {}", dir.display()))?
                }
            };
            if is_at(&lock, dir) {
                return Ok(Self { _lock: lock });
            }
            // Removed (and maybe made anew) while we waited: lock what is there now.
        }
    }
}

/// True when the open directory `file` is still the one at `path`.
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the state directory when nothing is left in it (the last `down`, holding the
/// lock), so that a host netctl was used on keeps no trace in /run.
pub fn remove_dir_if_empty() -> anyhow::Result<()> {
    remove_empty_dir(Path::new(RUN_ROOT))
}

fn remove_empty_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_waiter_on_a_removed_directory_locks_the_new_one() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        let first = StateLock::acquire_in(&dir).expect("first lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let (asking_tx, asking) = std::sync::mpsc::channel();
        let d = dir.clone();
        let waiter = std::thread::spawn(move || {
            asking_tx.send(()).expect("send");
            let lock = StateLock::acquire_in(&d).expect("second lock");
            tx.send(()).expect("send");
            lock
        });
        // Once the waiter is about to ask, it gets nothing while the first lock is held.
        asking.recv().expect("the waiter runs");
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the waiter waits"
        );
        // The last `down`: the empty directory goes, then the lock is released.
        remove_empty_dir(&dir).expect("removed");
        assert!(!dir.exists());
        drop(first);
        let second = waiter.join().expect("waiter");
        assert!(
            dir.exists(),
            "the waiter made the directory anew and locked it"
        );
        assert!(is_at(&second._lock, &dir));
        // A directory with something in it stays.
        fs::write(dir.join("x"), b"").expect("write");
        remove_empty_dir(&dir).expect("kept");
        assert!(dir.exists());
    }
}
