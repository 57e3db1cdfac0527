//! Which path a measurement really took, from the eBPF dataplane's own counters
//! (`COUNTERS`: `ct_created`, `lb_tc`, `lb_sock`), read before and after it:
//!
//! - `bare`: programs detached, so nothing is counted at all;
//! - `direct`: conntrack tracks the connections (at least half of them create an entry:
//!   a new connection on a 5-tuple whose closed entry is still in the LRU map reuses it),
//!   neither LB counter moves;
//! - TC LB: `lb_tc` counts every connection, `lb_sock` none;
//! - socket LB: `lb_sock` counts every connection (connect() went straight to a backend:
//!   with socket LB the peer *looks* like the VIP, the getpeername hook sees to that, so
//!   the address cannot tell), `lb_tc` none.
//!
//! A cell whose counters disagree with its path is flagged, not reported as measured.
//! Also here: detaching every program of an instance for `bare`, and waiting for the
//! controller to switch socket LB (the `CONFIG` flag) instead of sleeping.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::maps::{Array, Map, MapData};
use netctl::dataplane::ebpf::{Pins, stats};
use netctl_common::maps::{CFG_F_SOCKET_LB, CFG_FLAGS, CONFIG};

/// The counters a path check compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub ct_created: u64,
    pub lb_tc: u64,
    pub lb_sock: u64,
}

impl Counters {
    pub fn read(instance: &str) -> anyhow::Result<Counters> {
        let mut c = Counters::default();
        for (name, n) in stats::counters(&Pins::for_instance(instance))? {
            match name {
                "ct_created" => c.ct_created = n,
                "lb_tc" => c.lb_tc = n,
                "lb_sock" => c.lb_sock = n,
                _ => {}
            }
        }
        Ok(c)
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            ct_created: self.ct_created.saturating_sub(before.ct_created),
            lb_tc: self.lb_tc.saturating_sub(before.lb_tc),
            lb_sock: self.lb_sock.saturating_sub(before.lb_sock),
        }
    }
}

/// The path a measurement is meant to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Bare,
    Direct,
    TcLb,
    SocketLb,
}

/// `Ok` when the counters moved as `expect` says for `connections` connections made
/// between `before` and `after`; otherwise what is wrong.
pub fn check(
    expect: Expect,
    before: Counters,
    after: Counters,
    connections: u64,
) -> Result<(), String> {
    let d = after.since(before);
    let problem = match expect {
        Expect::Bare if d != Counters::default() => {
            Some("the dataplane counted traffic: programs still attached")
        }
        Expect::Direct if d.lb_tc > 0 || d.lb_sock > 0 => Some("connections were load-balanced"),
        Expect::Direct if d.ct_created * 2 < connections => {
            Some("conntrack missed connections: programs not attached")
        }
        Expect::TcLb if d.lb_sock > 0 => Some("socket LB took connections: it is still on"),
        Expect::TcLb if d.lb_tc < connections => Some("the TC program balanced too few"),
        Expect::SocketLb if d.lb_tc > 0 => {
            Some("the TC program balanced connections: socket LB is off")
        }
        Expect::SocketLb if d.lb_sock < connections => Some("socket LB balanced too few"),
        _ => None,
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!(
            "{p} ({connections} connections; ct_created +{}, lb_tc +{}, lb_sock +{})",
            d.ct_created, d.lb_tc, d.lb_sock
        )),
    }
}

/// Detaches every TC and socket program of `instance` (removes its pinned links: they
/// hold the last reference). `netctl up` of the same topology attaches them again.
pub fn detach_all(instance: &str) -> anyhow::Result<usize> {
    let links = Pins::for_instance(instance).links_dir();
    let mut n = 0;
    for dir in std::fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))? {
        let dir = dir?.path();
        for link in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let link = link?.path();
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("no pinned link under {}", links.display());
    }
    Ok(n)
}

/// Waits until the instance's programs count nothing any more. Removing a link's pin
/// detaches it asynchronously (the kernel frees the link from a work queue), so the first
/// connections after [`detach_all`] may still be seen; `probe` makes a few connections.
pub fn wait_detached(instance: &str, probe: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = Counters::read(instance)?;
        probe()?;
        if Counters::read(instance)? == before {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the programs still count traffic 5 s after their links were removed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the instance's `CONFIG` flag for socket LB is `on` (the controller writes
/// it within a tick of `netctl up`).
pub fn wait_socket_lb(instance: &str, on: bool) -> anyhow::Result<()> {
    let path = Pins::for_instance(instance).map(CONFIG);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let config: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flags = config.get(&CFG_FLAGS, 0).context("reading CONFIG")?;
        if (flags & CFG_F_SOCKET_LB != 0) == on {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "socket LB is still {} after 20 s",
                if on { "off" } else { "on" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ct_created: u64, lb_tc: u64, lb_sock: u64) -> Counters {
        Counters {
            ct_created,
            lb_tc,
            lb_sock,
        }
    }

    #[test]
    fn each_path_is_told_by_its_counters() {
        let z = Counters::default();
        assert!(check(Expect::Bare, z, z, 100).is_ok());
        assert!(check(Expect::Bare, z, c(1, 0, 0), 100).is_err());
        assert!(check(Expect::Direct, z, c(105, 0, 0), 100).is_ok());
        assert!(
            check(Expect::Direct, z, c(60, 0, 0), 100).is_ok(),
            "entries reused"
        );
        assert!(check(Expect::Direct, z, c(10, 0, 0), 100).is_err());
        assert!(check(Expect::Direct, z, c(100, 1, 0), 100).is_err());
        assert!(check(Expect::TcLb, z, c(100, 100, 0), 100).is_ok());
        let e = check(Expect::TcLb, z, c(100, 0, 100), 100).unwrap_err();
        assert!(e.contains("socket LB") && e.contains("lb_sock +100"), "{e}");
        assert!(check(Expect::SocketLb, z, c(0, 0, 100), 100).is_ok());
        let e = check(Expect::SocketLb, z, c(100, 100, 0), 100).unwrap_err();
        assert!(e.contains("socket LB is off"), "{e}");
        // Counters are read as deltas.
        assert!(check(Expect::SocketLb, c(5, 5, 5), c(5, 5, 105), 100).is_ok());
    }
}
