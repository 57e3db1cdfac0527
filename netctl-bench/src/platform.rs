//! A platform brought up for a benchmark with the real `netctl` binary (built next to this
//! one by `cargo xtask bench`), under its own prefix and subnets; down when dropped.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use netctl::topology::{Plan, Source};

pub struct BenchPlatform {
    pub prefix: String,
    pub plan: Plan,
    file: PathBuf,
    netctl: PathBuf,
    /// `down --volumes` rather than `down` when dropped.
    remove_data: bool,
}

impl BenchPlatform {
    pub fn up(prefix: &str, topology: &str) -> anyhow::Result<BenchPlatform> {
        let netctl = netctl_binary()?;
        let file = std::env::temp_dir().join(format!("netctl-bench-{prefix}topology.toml"));
        let mut p = BenchPlatform {
            prefix: prefix.to_string(),
            plan: Source::embedded_default()
                .plan(None)
                .context("default plan")?,
            file,
            netctl,
            remove_data: false,
        };
        p.apply(topology)?;
        Ok(p)
    }

    /// Also removes the platform's data (PostgreSQL) when dropped.
    pub fn remove_data_on_drop(&mut self) {
        self.remove_data = true;
    }

    /// Writes `topology` and runs `netctl up` with it (a change is a map update).
    pub fn apply(&mut self, topology: &str) -> anyhow::Result<()> {
        std::fs::write(&self.file, topology)
            .with_context(|| format!("writing {}", self.file.display()))?;
        self.plan = Source::read(&self.file)?.plan(Some(&self.prefix))?;
        let file = self.file.display().to_string();
        self.netctl(&["up", "-f", &file])?;
        Ok(())
    }

    pub fn netctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.netctl)
            .arg("--prefix")
            .arg(&self.prefix)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.netctl.display()))?;
        if !out.status.success() {
            bail!(
                "netctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the frontend `service`:`port` has `n` active backends.
    pub fn wait_backends(&self, service: &str, port: u16, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.netctl(&["services", "--json", "--service", service])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let active = v["frontends"]
                .as_array()
                .and_then(|fs| fs.iter().find(|f| f["port"] == port))
                .and_then(|f| f["backends"].as_array())
                .map_or(0, |b| b.iter().filter(|b| b["state"] == "active").count());
            if active == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{service}:{port} has {active} active backends, waiting for {n}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `services` frontends have backends and `service`:`port` has `n` active:
    /// the controller has applied the whole plan.
    pub fn wait_ready(
        &self,
        services: usize,
        service: &str,
        port: u16,
        n: usize,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let out = self.netctl(&["services", "--json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let fes = v["frontends"].as_array().cloned().unwrap_or_default();
            let active = |f: &serde_json::Value| {
                f["backends"]
                    .as_array()
                    .map_or(0, |b| b.iter().filter(|b| b["state"] == "active").count())
            };
            let served = fes
                .iter()
                .filter(|f| f["host_port"] == false && active(f) > 0)
                .count();
            let mine = fes
                .iter()
                .find(|f| f["service"] == service && f["port"] == port)
                .map_or(0, active);
            if served == services && mine == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{served} of {services} frontends served, {service}:{port} has {mine} of {n} backends"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn endpoint(&self, name: &str) -> anyhow::Result<&netctl::topology::Endpoint> {
        self.plan
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .with_context(|| format!("no endpoint {name}"))
    }
}

impl Drop for BenchPlatform {
    fn drop(&mut self) {
        let down: &[&str] = if self.remove_data {
            &["down", "--volumes"]
        } else {
            &["down"]
        };
        if let Err(e) = self.netctl(down) {
            tracing::warn!("{e:#}");
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `NETCTL_BIN`, or `netctl` next to this binary.
fn netctl_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETCTL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating netctl-bench")?;
    let candidate = me.with_file_name("netctl");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "no netctl binary next to {} (build it, or set NETCTL_BIN)",
            me.display()
        )
    }
}
