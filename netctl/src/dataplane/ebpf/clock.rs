//! The kernel's `CLOCK_BOOTTIME` nanoseconds (what the dataplane stamps) as ages and
//! wall-clock times.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use nix::time::{ClockId, clock_gettime};

pub struct BootClock {
    pub boot_ns: u64,
    wall: SystemTime,
}

impl BootClock {
    pub fn now() -> anyhow::Result<Self> {
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).context("clock_gettime(BOOTTIME)")?;
        let boot_ns = (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64);
        Ok(Self {
            boot_ns,
            wall: SystemTime::now(),
        })
    }

    /// Seconds since `boot_ns`.
    pub fn age_s(&self, boot_ns: u64) -> f64 {
        self.boot_ns.saturating_sub(boot_ns) as f64 / 1e9
    }

    /// Unix time (seconds) of `boot_ns`.
    pub fn unix(&self, boot_ns: u64) -> f64 {
        let age = Duration::from_nanos(self.boot_ns.saturating_sub(boot_ns));
        self.wall
            .checked_sub(age)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }
}
