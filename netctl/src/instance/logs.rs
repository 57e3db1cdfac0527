//! An instance's log files are readable by root alone: they carry what services print
//! (connection strings, errors with data in them).

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;

use super::paths::{LOG_ROOT, log_dir};

/// Opens a log for appending, readable by root alone. Its directories, up to
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
    walk(&log_dir(instance));
}
