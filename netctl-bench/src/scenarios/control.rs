//! `bench control`: the control plane. How long the load-balancing writer takes to apply
//! 1, 100, 1,000 and 10,000 services (3 backends each) from nothing, and to change one
//! backend of one service with 10,000 installed, for both dataplanes, through the same
//! [`LbWriter`] calls the controller makes:
//!
//! - eBPF: the `Reconciler` writing a freshly loaded (unpinned) object's maps;
//! - iptables: the `IptablesWriter` running `iptables-restore --noflush` into a bench
//!   instance's chains (`NCTL-bncp-…`, removed afterwards).
//!
//! Each apply is repeated (a fresh object and fresh chains each time, the two dataplanes
//! taking turns) and the median reported, every run kept in the JSON. A backend change
//! swaps one backend of the service in the middle for another address, then back, several
//! times; the median and the slowest are reported.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use netctl::{
    dataplane::{
        ebpf::{LoadOptions, lb::LbMaps, lb_writer::Reconciler, loader},
        iptables::{Chains, IptablesWriter, base, rules::BaseSpec},
        lb::{BackendKey, Desired, DesiredFrontend, FrontendKey, LbWriter},
    },
    topology::{Algorithm, Proto},
};
use serde::Serialize;

use crate::{
    plot::{self, Series},
    report::{self, Section, Table, ratio, show_ratio},
    stats::median,
};

/// The bench's own iptables instance (chains `NCTL-bncp-…`).
const INSTANCE: &str = "bncp";

#[derive(Debug, Serialize, Clone)]
pub struct ApplyTime {
    pub services: usize,
    /// Medians over the runs.
    pub ebpf_ms: f64,
    pub iptables_ms: f64,
    /// Every run, in order.
    #[serde(default)]
    pub ebpf_runs_ms: Vec<f64>,
    #[serde(default)]
    pub iptables_runs_ms: Vec<f64>,
}

#[derive(Debug, Serialize, Clone)]
pub struct ChangeTime {
    pub services: usize,
    pub changes: usize,
    pub ebpf_median_ms: f64,
    pub ebpf_max_ms: f64,
    pub iptables_median_ms: f64,
    pub iptables_max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ControlResult {
    pub date: String,
    pub quick: bool,
    /// Runs of each apply.
    pub rounds: usize,
    pub apply: Vec<ApplyTime>,
    pub change: ChangeTime,
}

fn backend(last: u8) -> BackendKey {
    BackendKey {
        addr: Ipv4Addr::new(10, 254, 2, last),
        port: 7000,
        proto: Proto::Tcp,
    }
}

/// `n` services on consecutive VIPs, each over the same three backends.
pub fn desired(n: usize) -> Desired {
    let mut frontends = BTreeMap::new();
    for i in 0..n {
        let key = FrontendKey {
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 254, 64, 1)) + i as u32),
            port: 7000,
            proto: Proto::Tcp,
        };
        frontends.insert(
            key,
            DesiredFrontend {
                key,
                service: format!("s{i:05}"),
                service_id: i as u32 + 1,
                algorithm: Algorithm::RoundRobin,
                flags: 0,
                backends: vec![(backend(10), 1), (backend(11), 1), (backend(12), 1)],
                target: None,
            },
        );
    }
    Desired {
        frontends,
        ..Desired::default()
    }
}

/// `d` with the third backend of its middle service replaced by `last`.
fn changed(d: &Desired, last: u8) -> Desired {
    let mut out = d.clone();
    let mid = d.frontends.len() / 2;
    if let Some(fe) = out.frontends.values_mut().nth(mid) {
        fe.backends[2] = (backend(last), 1);
        fe.backends.sort();
    }
    out
}

fn ebpf_writer() -> anyhow::Result<(aya::Ebpf, Reconciler)> {
    let mut ebpf = loader::load(None, LoadOptions::default()).context("loading the eBPF object")?;
    let maps = LbMaps::take_from(&mut ebpf)?;
    Ok((ebpf, Reconciler::adopt(maps)))
}

/// The bench instance's base chains, removed on drop.
struct IptablesBase(Chains);

impl IptablesBase {
    fn install() -> anyhow::Result<Self> {
        let chains = Chains::for_instance(INSTANCE);
        base::install(
            &chains,
            &BaseSpec {
                bridges: Vec::new(),
                ports: Vec::new(),
                subnets: Vec::new(),
                masquerade: false,
                uplinks: Vec::new(),
                host_ports: false,
            },
        )?;
        Ok(Self(chains))
    }
}

impl Drop for IptablesBase {
    fn drop(&mut self) {
        if let Err(e) = base::remove(&self.0) {
            tracing::warn!("removing the bench chains: {e:#}");
        }
    }
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<ControlResult> {
    let (counts, changes, rounds): (&[usize], usize, usize) = if quick {
        (&[1, 100], 4, 3)
    } else {
        (&[1, 100, 1_000, 10_000], 10, 5)
    };
    let mut apply = Vec::new();
    let bar = netctl::output::bar((counts.len() * rounds) as u64, "applies");
    for &n in counts {
        let d = desired(n);
        let (mut ebpf_runs, mut ipt_runs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            bar.set_message(format!("{n} services"));
            let ebpf_once = || -> anyhow::Result<f64> {
                let (_obj, mut rec) = ebpf_writer()?;
                Ok(ms(timed(|| rec.apply(&d, None).map(drop))?))
            };
            let ipt_once = || -> anyhow::Result<f64> {
                let _base = IptablesBase::install()?;
                let mut w = IptablesWriter::new(INSTANCE);
                Ok(ms(timed(|| LbWriter::apply(&mut w, &d, None).map(drop))?))
            };
            // Take turns at going first.
            if round % 2 == 0 {
                ebpf_runs.push(ebpf_once()?);
                ipt_runs.push(ipt_once()?);
            } else {
                ipt_runs.push(ipt_once()?);
                ebpf_runs.push(ebpf_once()?);
            }
            bar.inc(1);
        }
        tracing::info!(services = n, ?ebpf_runs, ?ipt_runs, "applied (ms)");
        apply.push(ApplyTime {
            services: n,
            ebpf_ms: median(&mut ebpf_runs.clone()),
            iptables_ms: median(&mut ipt_runs.clone()),
            ebpf_runs_ms: ebpf_runs,
            iptables_runs_ms: ipt_runs,
        });
    }
    bar.finish_and_clear();

    // One backend changed, with the most services installed.
    let n = counts.last().copied().unwrap_or(1);
    let d = desired(n);
    let variants = [changed(&d, 13), d.clone()];
    let (_obj, mut rec) = ebpf_writer()?;
    rec.apply(&d, None)?;
    let mut ebpf_times = Vec::new();
    for i in 0..changes {
        let next = &variants[i % 2];
        ebpf_times.push(ms(timed(|| rec.apply(next, None).map(drop))?));
    }
    let mut ipt_times = Vec::new();
    {
        let _base = IptablesBase::install()?;
        let mut w = IptablesWriter::new(INSTANCE);
        LbWriter::apply(&mut w, &d, None)?;
        for i in 0..changes {
            let next = &variants[i % 2];
            ipt_times.push(ms(timed(|| LbWriter::apply(&mut w, next, None).map(drop))?));
        }
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let change = ChangeTime {
        services: n,
        changes,
        ebpf_median_ms: median(&mut ebpf_times.clone()),
        ebpf_max_ms: max(&ebpf_times),
        iptables_median_ms: median(&mut ipt_times.clone()),
        iptables_max_ms: max(&ipt_times),
    };
    let result = ControlResult {
        date: report::today(),
        quick,
        rounds,
        apply,
        change,
    };
    let sections = vec![section(&result)?];
    let w = report::write(
        out,
        "control",
        "netctl benchmark: control plane",
        &result,
        &sections,
    )?;
    report::print(&sections);
    tracing::info!("wrote {} and {}", w.json.display(), w.html.display());
    Ok(result)
}

pub fn section(r: &ControlResult) -> anyhow::Result<Section> {
    let mut t = Table::new(&[
        "services",
        "eBPF map writes ms (median)",
        "iptables-restore ms (median)",
        "iptables / eBPF",
    ]);
    for a in &r.apply {
        t.row(vec![
            a.services.to_string(),
            format!("{:.2}", a.ebpf_ms),
            format!("{:.1}", a.iptables_ms),
            show_ratio(ratio(a.iptables_ms, a.ebpf_ms), 1, "x"),
        ]);
    }
    let c = &r.change;
    let mut t2 = Table::new(&["one backend changed", "median ms", "slowest ms"]);
    t2.row(vec![
        format!("eBPF, {} services", c.services),
        format!("{:.3}", c.ebpf_median_ms),
        format!("{:.3}", c.ebpf_max_ms),
    ]);
    t2.row(vec![
        format!("iptables, {} services", c.services),
        format!("{:.1}", c.iptables_median_ms),
        format!("{:.1}", c.iptables_max_ms),
    ]);
    let series = [
        Series {
            name: "eBPF map writes".into(),
            points: r
                .apply
                .iter()
                .map(|a| (a.services as f64, a.ebpf_ms))
                .collect(),
        },
        Series {
            name: "iptables-restore".into(),
            points: r
                .apply
                .iter()
                .map(|a| (a.services as f64, a.iptables_ms))
                .collect(),
        },
    ];
    let plot = plot::svg(&plot::Chart {
        title: "Time to apply N services (3 backends each)",
        x_label: "services",
        y_label: "ms",
        log_x: true,
        series: &series,
    })?;
    Ok(Section {
        title: "Control plane".into(),
        text: format!(
            "The controller's writer (`LbWriter::apply`) from nothing to N services, median \
             of {} runs each (a fresh object or fresh chains every run), and one \
             backend of one service swapped ({} times, alternating) with {} services installed. \
             eBPF: map writes into a freshly loaded object; iptables: `iptables-restore \
             --noflush` transactions into the bench's own chains (the first apply includes \
             reading the nat table once, as after a controller start).",
            r.rounds, c.changes, c.services
        ),
        tables: vec![t, t2],
        plots: vec![("control-apply".into(), plot)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_swaps_one_backend_of_one_service() {
        let d = desired(5);
        let c = changed(&d, 13);
        let differing: Vec<_> = d
            .frontends
            .iter()
            .filter(|(k, f)| c.frontends[*k] != **f)
            .collect();
        assert_eq!(differing.len(), 1);
        assert_eq!(d.frontends.len(), 5);
    }

    /// The quick mode end to end: both dataplanes timed, the bench's chains gone after.
    #[test]
    fn quick_run_times_both_dataplanes_and_leaves_no_chain() {
        let Some(dir) = crate::scenarios::test_env("control") else {
            return;
        };
        let r = run(true, &dir).expect("quick control benchmark runs");
        assert_eq!(r.apply.len(), 2);
        for a in &r.apply {
            assert!(a.ebpf_ms > 0.0 && a.iptables_ms > 0.0, "{a:?}");
            assert_eq!(a.ebpf_runs_ms.len(), r.rounds, "{a:?}");
            assert_eq!(a.iptables_runs_ms.len(), r.rounds, "{a:?}");
        }
        assert!(r.change.ebpf_median_ms > 0.0 && r.change.iptables_median_ms > 0.0);
        assert_eq!(
            crate::scenarios::written(&dir),
            ["html", "json", "md", "svg"]
        );
        let nat = netctl::net::iptables::save("nat").expect("iptables-save");
        assert!(
            !nat.chains.iter().any(|c| c.starts_with("NCTL-bncp-")),
            "bench chains left: {:?}",
            nat.chains
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
