//! Where the latency measurements run. Unpinned, the scheduler now and then puts the
//! client and the server of a request/response run on one CPU, and a round trip then takes
//! a third of its usual time (about 20 µs instead of 60 µs on a 2-core machine): a round's
//! median said where the threads landed, not what the path costs. So a latency run pins the
//! client to the first CPU it may use and the server's side of each connection to the
//! last, and every round trip crosses CPUs the same way (sockperf's and netperf's guides
//! advise the same). Connection runs stay unpinned: with several clients they measure the
//! whole machine, and with one, pinning the server's fresh thread for each connection
//! cost more than the path (p50 150 -> 190 µs).

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context;
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

/// Set while a latency run goes on: echo servers pin the connections they accept.
static LATENCY_RUN: AtomicBool = AtomicBool::new(false);

/// Which side of a measured connection a thread or process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// The CPU each side runs on, or `None` with fewer than two CPUs to choose from.
pub fn cpu(side: Side) -> Option<usize> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if cpus.len() < 2 {
        return None;
    }
    match side {
        Side::Client => cpus.first().copied(),
        Side::Server => cpus.last().copied(),
    }
}

/// Pins the calling thread to `side`'s CPU (nothing with a single CPU).
pub fn pin_thread(side: Side) -> anyhow::Result<()> {
    let Some(c) = cpu(side) else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(c).context("a CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {c}"))
}

/// `program` run through `taskset` on `side`'s CPU (for sockperf, beside our own tool).
pub fn command(side: Side, program: &str) -> Command {
    match cpu(side) {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// While alive, the connections echo servers accept are pinned to the server's CPU.
pub struct LatencyRun(());

impl LatencyRun {
    pub fn start() -> LatencyRun {
        LATENCY_RUN.store(true, Ordering::SeqCst);
        LatencyRun(())
    }
}

impl Drop for LatencyRun {
    fn drop(&mut self) {
        LATENCY_RUN.store(false, Ordering::SeqCst);
    }
}

/// Called by a server thread for a connection it just accepted.
pub fn pin_accepted() {
    if LATENCY_RUN.load(Ordering::SeqCst)
        && let Err(e) = pin_thread(Side::Server)
    {
        tracing::warn!("echo server: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_get_different_cpus_when_there_are_two() {
        match (cpu(Side::Client), cpu(Side::Server)) {
            (Some(c), Some(s)) => assert_ne!(c, s),
            (None, None) => {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                assert_eq!(n, 1, "two CPUs but no placement");
            }
            other => panic!("one side placed, the other not: {other:?}"),
        }
    }

    #[test]
    fn a_pinned_thread_runs_only_on_its_cpu() {
        let Some(c) = cpu(Side::Server) else { return };
        std::thread::spawn(move || {
            pin_thread(Side::Server).expect("pinning");
            let now = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
            let on: Vec<usize> = (0..CpuSet::count())
                .filter(|&i| now.is_set(i).unwrap_or(false))
                .collect();
            assert_eq!(on, [c]);
        })
        .join()
        .expect("thread");
    }
}
