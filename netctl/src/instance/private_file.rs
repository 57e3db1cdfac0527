//! Files of an instance that only root may read, written whole or not at all.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;

use super::paths::RUN_ROOT;

/// The runtime root, made root-only.
pub fn ensure_run_root() -> anyhow::Result<()> {
    fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
    fs::set_permissions(RUN_ROOT, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {RUN_ROOT} to root"))?;
    Ok(())
}

/// Atomic write (temp file + rename) of a file only root can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        ensure_run_root()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

pub fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
