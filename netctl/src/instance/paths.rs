//! Where an instance keeps things: its run directory under `/run` (state file, controller
//! pid file and socket, supervision records; gone at reboot, like the processes and
//! namespaces they describe), logs under `/var/log`, data (volumes) under `/var/lib`.

use std::path::{Path, PathBuf};

/// Root of every instance's run directory; the last `down` removes it.
pub const RUN_ROOT: &str = "/run/netctl";

/// Root of every instance's logs.
pub const LOG_ROOT: &str = "/var/log/netctl";

/// Root of every instance's volumes.
pub const VOLUME_ROOT: &str = "/var/lib/netctl";

/// `/run/netctl/<instance>/`: state file, controller pid file and API socket, and the
/// services directory.
pub fn run_dir(instance: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(instance)
}

/// `/run/netctl/<instance>/controller.pid`
/// The reconcile's journal: the plan the instance runs with and the resources made for it.
pub fn state_file(instance: &str) -> PathBuf {
    run_dir(instance).join("state.json")
}

/// Where the agent keeps one file per endpoint it serves.
pub fn endpoints_dir(instance: &str) -> PathBuf {
    run_dir(instance).join("endpoints")
}

pub fn controller_pid_file(instance: &str) -> PathBuf {
    run_dir(instance).join("controller.pid")
}

/// `/run/netctl/<instance>/services/`: one record per supervised process, generated
/// configuration (nginx).
pub fn services_dir(instance: &str) -> PathBuf {
    run_dir(instance).join("services")
}

/// `/run/netctl/<instance>/services/<name>.json`
pub fn service_record(instance: &str, name: &str) -> PathBuf {
    services_dir(instance).join(format!("{name}.json"))
}

/// `/var/log/netctl/<instance>/`: where the controller and the services of an instance
/// write their logs.
pub fn log_dir(instance: &str) -> PathBuf {
    Path::new(LOG_ROOT).join(instance)
}

/// `/var/log/netctl/<instance>/controller.log`
pub fn controller_log(instance: &str) -> PathBuf {
    log_dir(instance).join("controller.log")
}

/// `/var/log/netctl/<instance>/<name>.log`
pub fn service_log(instance: &str, name: &str) -> PathBuf {
    log_dir(instance).join(format!("{name}.log"))
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
