//! `bench all`: every benchmark in one run (latency and connection rate at every service
//! count, control plane, per-packet cost, the sockperf cross-check), then one combined
//! report with the goals of the iptables/benchmark issue checked against the figures.

use std::path::Path;

use serde::Serialize;

use super::{
    control::{self, ControlResult},
    crosscheck::{self, CrosscheckResult},
    packet::{self, PacketResult},
    scale::{self, Parts, Path_, ScaleResult},
};
use crate::report::{self, Section, Table, ratio};

#[derive(Serialize)]
struct AllResult<'a> {
    date: String,
    quick: bool,
    scale: &'a ScaleResult,
    control: &'a ControlResult,
    packet: &'a PacketResult,
    crosscheck: &'a CrosscheckResult,
    goals: &'a [Goal],
}

/// One goal, its measured value and whether it was met.
#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<()> {
    let both = Parts {
        latency: true,
        rate: true,
    };
    let s = scale::run(quick, both, out)?;
    let c = control::run(quick, out)?;
    let p = packet::run(quick, out)?;
    let x = crosscheck::run(quick, out)?;
    let goals = goals(&s, &c);
    let mut sections = vec![goals_section(&goals)];
    sections.extend(scale::sections(&s, both)?);
    sections.push(control::section(&c)?);
    sections.push(packet::section(&p));
    sections.push(crosscheck::section(&x));
    let result = AllResult {
        date: report::today(),
        quick,
        scale: &s,
        control: &c,
        packet: &p,
        crosscheck: &x,
        goals: &goals,
    };
    let w = report::write(
        out,
        "all",
        "netctl benchmarks: eBPF vs iptables vs direct",
        &result,
        &sections,
    )?;
    report::print(&sections[..1]);
    tracing::info!("wrote {} and {}", w.markdown.display(), w.html.display());
    Ok(())
}

/// The goals, each checked against the figures (nothing is tuned to meet them).
pub fn goals(s: &ScaleResult, c: &ControlResult) -> Vec<Goal> {
    let mut out = Vec::new();
    let counts = &s.service_counts;
    let (first, last) = (
        counts.first().copied().unwrap_or(1),
        counts.last().copied().unwrap_or(1),
    );
    let get = |n: usize, p: Path_| s.cell(n, p).cloned().unwrap_or_default();

    for (what, f) in [
        (
            "request/response p50",
            (|r: &scale::Round| r.rr_p50_us) as fn(&scale::Round) -> f64,
        ),
        ("new connection p50", |r: &scale::Round| r.conn_p50_us),
    ] {
        let ratios: Vec<String> = counts
            .iter()
            .map(|n| {
                format!(
                    "{n}: {:.3}",
                    ratio(f(&get(*n, Path_::EbpfTc)), f(&get(*n, Path_::Direct)))
                )
            })
            .collect();
        let met = counts
            .iter()
            .all(|n| ratio(f(&get(*n, Path_::EbpfTc)), f(&get(*n, Path_::Direct))) <= 1.10);
        out.push(Goal {
            goal: format!("eBPF TC {what} within 10% of direct at every service count"),
            measured: format!("ebpf-tc / direct: {}", ratios.join(", ")),
            met,
        });
    }
    let growth = |p: Path_| ratio(get(last, p).conn_p50_us, get(first, p).conn_p50_us);
    let ipt = growth(Path_::Iptables);
    out.push(Goal {
        goal: format!("iptables new-connection latency grows from {first} to {last} services"),
        measured: format!("iptables p50 at {last} / at {first}: {ipt:.3}"),
        met: ipt > 1.05,
    });
    let ebpf = growth(Path_::EbpfTc);
    out.push(Goal {
        goal: format!(
            "eBPF TC new-connection latency flat within 5% from {first} to {last} services"
        ),
        measured: format!("ebpf-tc p50 at {last} / at {first}: {ebpf:.3}"),
        met: (ebpf - 1.0).abs() <= 0.05,
    });
    let rate = ratio(
        get(last, Path_::EbpfTc).conn_per_s,
        get(last, Path_::Iptables).conn_per_s,
    );
    out.push(Goal {
        goal: format!("connection rate at {last} services at least 2x iptables (eBPF TC)"),
        measured: format!(
            "ebpf-tc / iptables: {rate:.2}x (ebpf-socket: {:.2}x)",
            ratio(
                get(last, Path_::EbpfSocket).conn_per_s,
                get(last, Path_::Iptables).conn_per_s
            )
        ),
        met: rate >= 2.0,
    });
    if let Some(a) = c.apply.last() {
        let x = ratio(a.iptables_ms, a.ebpf_ms);
        out.push(Goal {
            goal: format!(
                "applying {} services at least 10x faster than iptables-restore",
                a.services
            ),
            measured: format!(
                "eBPF {:.1} ms, iptables {:.1} ms: {x:.1}x",
                a.ebpf_ms, a.iptables_ms
            ),
            met: x >= 10.0,
        });
    }
    out.push(Goal {
        goal: format!(
            "one backend change under 1 ms ({} services, eBPF)",
            c.change.services
        ),
        measured: format!(
            "median {:.3} ms, slowest {:.3} ms (iptables: median {:.1} ms)",
            c.change.ebpf_median_ms, c.change.ebpf_max_ms, c.change.iptables_median_ms
        ),
        met: c.change.ebpf_max_ms < 1.0,
    });
    out
}

fn goals_section(goals: &[Goal]) -> Section {
    let mut t = Table::new(&["goal", "measured", "met"]);
    for g in goals {
        t.row(vec![
            g.goal.clone(),
            g.measured.clone(),
            if g.met { "yes" } else { "NO" }.into(),
        ]);
    }
    Section {
        title: "Goals".into(),
        text: "Checked against the figures below; the benchmark is not tuned to meet them.".into(),
        tables: vec![t],
        plots: Vec::new(),
    }
}
