//! Reading and writing `/proc/sys` (of the calling thread's network namespace).

use std::path::PathBuf;

use anyhow::Context;

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> anyhow::Result<String> {
    let p = path(key);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

pub fn write(key: &str, value: &str) -> anyhow::Result<()> {
    let p = path(key);
    std::fs::write(&p, value).with_context(|| format!("writing {value} to {}", p.display()))
}
