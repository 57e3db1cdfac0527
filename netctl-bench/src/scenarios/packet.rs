//! `bench packet`: the per-packet cost of the TC ingress program, timed by the kernel
//! (BPF_PROG_TEST_RUN's `duration`), for the paths a packet can take:
//!
//! - `new flow to a VIP`: a SYN from a new source port: backend choice, conntrack entry
//!   pair, DNAT;
//! - `established flow to a VIP`: an ACK of a tracked connection: conntrack hit, DNAT;
//! - `reply from a backend`: conntrack hit, reverse NAT;
//! - `established, no service`: a tracked plain connection: conntrack hit, accounting.
//!
//! With 1 and with 10,000 services (3 backends each) in the maps. The program rewrites the
//! packet in place, so a run repeated by the kernel (`repeat`) would see the rewritten
//! packet; the NAT paths are therefore timed one run per call (N calls, a fresh copy each);
//! the path that changes nothing is also timed with `repeat = N` in one call.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, bail};
use aya::programs::{TestRun, TestRunOptions};
use netctl::{
    dataplane::ebpf::lb_writer::Reconciler,
    dataplane::ebpf::{LoadOptions, lb::LbMaps, loader},
};
use netctl_common::maps::PROG_TC_INGRESS;
use serde::Serialize;

use super::control::desired;
use crate::{
    report::{self, Section, Table},
    stats::{median, micros},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 254, 1, 10);
const BACKEND_PORT: u16 = 7000;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Debug, Serialize, Clone)]
pub struct PathCost {
    pub services: usize,
    pub path: String,
    pub runs: u32,
    pub mean_ns: f64,
    pub median_ns: f64,
    /// `repeat = runs` in one call, where the packet is not rewritten.
    pub repeat_mean_ns: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PacketResult {
    pub date: String,
    pub quick: bool,
    pub costs: Vec<PathCost>,
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<PacketResult> {
    let runs: u32 = if quick { 2_000 } else { 20_000 };
    let mut costs = Vec::new();
    for n in [1usize, 10_000] {
        costs.extend(measure(n, runs)?);
    }
    let result = PacketResult {
        date: report::today(),
        quick,
        costs,
    };
    let sections = vec![section(&result)];
    let w = report::write(
        out,
        "packet",
        "netctl benchmark: per-packet cost",
        &result,
        &sections,
    )?;
    report::print(&sections);
    tracing::info!("wrote {} and {}", w.json.display(), w.html.display());
    Ok(result)
}

fn measure(n: usize, runs: u32) -> anyhow::Result<Vec<PathCost>> {
    let mut ebpf = loader::load(None, LoadOptions::default()).context("loading the eBPF object")?;
    let maps = LbMaps::take_from(&mut ebpf)?;
    let d = desired(n);
    let mut rec = Reconciler::adopt(maps);
    rec.apply(&d, None)?;
    let fe = d
        .frontends
        .values()
        .nth(n / 2)
        .context("a frontend")?
        .clone();
    let vip = fe.key.addr;
    let prog = loader::classifier(&mut ebpf, PROG_TC_INGRESS)?;
    let run_once = |frame: &[u8], repeat: u32| -> anyhow::Result<(Duration, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.duration, out))
    };
    let mut out = Vec::new();
    let mut record = |path: &str, times: &mut Vec<f64>, repeat_mean: Option<f64>| {
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        out.push(PathCost {
            services: n,
            path: path.to_string(),
            runs,
            mean_ns: mean,
            median_ns: median(times),
            repeat_mean_ns: repeat_mean,
        });
    };

    // New flows: a SYN from a new source port each time (the first checked for its DNAT).
    let backend_list: Vec<(Ipv4Addr, u16)> =
        fe.backends.iter().map(|(b, _)| (b.addr, b.port)).collect();
    let mut times = Vec::new();
    for i in 0..runs {
        let port = 10_000 + (i % 50_000) as u16;
        let (t, out) = run_once(&tcp(CLIENT, port, vip, 7000, TCP_SYN), 1)?;
        if i == 0 {
            dnat_target(&out, &backend_list).context("the first new-flow SYN")?;
        }
        times.push(micros(t) * 1e3);
    }
    record("new flow to a VIP (SYN)", &mut times, None);

    // One tracked connection, then its packets both ways. Its SYN must have been DNATed
    // to one of the service's backends, or the paths timed below are not the NAT paths.
    let (_, syn_out) = run_once(&tcp(CLIENT, 9_000, vip, 7000, TCP_SYN), 1)?;
    let backend = dnat_target(&syn_out, &backend_list)?;
    let ack = tcp(CLIENT, 9_000, vip, 7000, TCP_ACK);
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(micros(run_once(&ack, 1)?.0) * 1e3);
    }
    record("established flow to a VIP (ACK)", &mut times, None);
    let reply = tcp(backend, BACKEND_PORT, CLIENT, 9_000, TCP_ACK);
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(micros(run_once(&reply, 1)?.0) * 1e3);
    }
    record("reply from the backend (reverse NAT)", &mut times, None);

    // A plain connection (no service): nothing rewritten, so `repeat` works too.
    let server = Ipv4Addr::new(10, 254, 2, 99);
    run_once(&tcp(CLIENT, 9_001, server, 80, TCP_SYN), 1)?;
    let plain = tcp(CLIENT, 9_001, server, 80, TCP_ACK);
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(micros(run_once(&plain, 1)?.0) * 1e3);
    }
    let (total, _) = run_once(&plain, runs)?;
    // BPF_PROG_TEST_RUN's duration is already the mean over `repeat` runs.
    let repeat_mean = micros(total) * 1e3;
    record(
        "established, no service (ACK)",
        &mut times,
        Some(repeat_mean),
    );
    Ok(out)
}

/// The destination of a frame the program let through, which must be one of `backends`.
fn dnat_target(frame: &[u8], backends: &[(Ipv4Addr, u16)]) -> anyhow::Result<Ipv4Addr> {
    let (Some(ip), Some(port)) = (frame.get(30..34), frame.get(36..38)) else {
        bail!("the program returned a {}-byte frame", frame.len());
    };
    let addr = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    let port = u16::from_be_bytes([port[0], port[1]]);
    if !backends.contains(&(addr, port)) {
        bail!("the SYN went to {addr}:{port}, not to a backend ({backends:?}): it was not DNATed");
    }
    Ok(addr)
}

pub fn section(r: &PacketResult) -> Section {
    let mut t = Table::new(&[
        "services",
        "path",
        "runs",
        "mean ns",
        "median ns",
        "repeat=N mean ns",
    ]);
    for c in &r.costs {
        t.row(vec![
            c.services.to_string(),
            c.path.clone(),
            c.runs.to_string(),
            format!("{:.0}", c.mean_ns),
            format!("{:.0}", c.median_ns),
            c.repeat_mean_ns
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
        ]);
    }
    Section {
        title: "Per-packet cost (BPF_PROG_TEST_RUN)".into(),
        text: "The TC ingress program on crafted frames, timed by the kernel. NAT paths: one \
               run per call (the program rewrites the frame in place, so the kernel's `repeat` \
               would time a different path after the first run); the unchanged path also with \
               `repeat = N` in one call. The kernel's clock has a resolution of tens of ns per \
               single run."
            .into(),
        tables: vec![t],
        plots: Vec::new(),
    }
}

/// An Ethernet/IPv4/TCP frame with valid checksums.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let hi = chunk.first().copied().unwrap_or(0);
        let lo = chunk.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_valid_checksums() {
        let f = tcp(CLIENT, 1, Ipv4Addr::new(10, 96, 0, 1), 80, TCP_SYN);
        assert_eq!(f.len(), 54);
        assert_eq!(checksum(&f[14..34]), 0, "IP header sums to zero");
    }

    #[test]
    fn a_syn_must_leave_dnated_to_a_backend() {
        let b = Ipv4Addr::new(10, 254, 2, 11);
        let backends = [(b, BACKEND_PORT)];
        let dnated = tcp(CLIENT, 1, b, BACKEND_PORT, TCP_SYN);
        assert_eq!(dnat_target(&dnated, &backends).expect("a backend"), b);
        let vip = tcp(
            CLIENT,
            1,
            Ipv4Addr::new(10, 254, 64, 1),
            BACKEND_PORT,
            TCP_SYN,
        );
        assert!(dnat_target(&vip, &backends).is_err(), "still to the VIP");
        assert!(dnat_target(&vip[..20], &backends).is_err(), "truncated");
    }

    #[test]
    fn quick_run_times_every_path() {
        let Some(dir) = crate::scenarios::test_env("packet") else {
            return;
        };
        let r = run(true, &dir).expect("quick packet benchmark runs");
        assert_eq!(r.costs.len(), 8, "4 paths x 2 service counts");
        for c in &r.costs {
            assert!(c.mean_ns > 0.0, "{c:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
