//! Where supervision keeps things: process records under `/run` (gone at reboot, like
//! the processes), logs under `/var/log`, data (volumes) under `/var/lib`.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::controller::{daemon, state::instance_dir};

/// Root of every instance's volumes.
pub const VOLUME_ROOT: &str = "/var/lib/netctl";

/// `/run/netctl/<instance>/services/`: one record per supervised process, generated
/// configuration (nginx).
pub fn run_dir(instance: &str) -> PathBuf {
    instance_dir(instance).join("services")
}

/// `/run/netctl/<instance>/services/<name>.json`
pub fn record(instance: &str, name: &str) -> PathBuf {
    run_dir(instance).join(format!("{name}.json"))
}

/// `/var/log/netctl/<instance>/<name>.log`
pub fn log(instance: &str, name: &str) -> PathBuf {
    daemon::log_dir(instance).join(format!("{name}.log"))
}

/// Root of every instance's logs.
pub const LOG_ROOT: &str = "/var/log/netctl";

/// Opens a log for appending, readable by root alone: logs carry what services print
/// (connection strings, errors with data in them). Its directories, up to
/// `/var/log/netctl`, are made 0700, and a file left more open by an older build is
/// narrowed to 0600.
pub fn open_private_log(path: &Path) -> anyhow::Result<fs::File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut d = Some(dir);
        while let Some(at) = d.filter(|d| d.starts_with(LOG_ROOT)) {
            fs::set_permissions(at, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to root", at.display()))?;
            d = at.parent();
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(file)
}

/// Narrows every log of `instance` to root (files 0600, directories 0700): logs left by
/// an older build, or of services no longer in the topology, stay readable otherwise.
pub fn restrict_logs(instance: &str) {
    fn walk(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p),
                Ok(t) if t.is_file() => {
                    let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o600));
                }
                _ => {}
            }
        }
    }
    let _ = fs::set_permissions(LOG_ROOT, fs::Permissions::from_mode(0o700));
    walk(&daemon::log_dir(instance));
}

/// `/var/lib/netctl/<instance>/`: everything `down --volumes` removes.
pub fn volumes(instance: &str) -> PathBuf {
    Path::new(VOLUME_ROOT).join(instance)
}

/// `/var/lib/netctl/<instance>/<name>/`: the data directory of one endpoint.
pub fn data(instance: &str, name: &str) -> PathBuf {
    volumes(instance).join(name)
}

/// `/var/lib/netctl/<instance>/secrets/` (root only).
pub fn secrets(instance: &str) -> PathBuf {
    volumes(instance).join("secrets")
}
