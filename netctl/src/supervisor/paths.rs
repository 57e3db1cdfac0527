//! Where supervision keeps things: process records under `/run` (gone at reboot, like
//! the processes), logs under `/var/log`, data (volumes) under `/var/lib`.

use std::path::{Path, PathBuf};

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
