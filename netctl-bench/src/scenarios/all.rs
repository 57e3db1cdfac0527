//! `bench all`: every benchmark in one run (latency and connection rate at every service
//! count, control plane, per-packet cost, the sockperf cross-check, HTTP end to end), then
//! one combined report with the goals of the iptables/benchmark issue checked against the
//! figures. (`bench lb` stays apart: its paths are the 1-service cells of `scale`.)

use std::path::Path;

use serde::Serialize;

use super::{
    control::{self, ControlResult},
    crosscheck::{self, CrosscheckResult},
    http::{self, HttpResult},
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
    http: &'a HttpResult,
    goals: &'a [Goal],
}

/// Whether a goal was met, by the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    NotMet,
    /// A figure it needs is missing, zero, or from a flagged cell: never "met".
    NotMeasured,
}

impl Verdict {
    fn from(met: Option<bool>) -> Verdict {
        match met {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::NotMet,
            None => Verdict::NotMeasured,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::NotMet => "NO",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One goal, its measured value and whether it was met.
#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub verdict: Verdict,
}

pub fn run(quick: bool, out: &Path, http_args: &http::Args) -> anyhow::Result<()> {
    let both = Parts {
        latency: true,
        rate: true,
    };
    let s = scale::run(quick, both, out)?;
    let c = control::run(quick, out)?;
    let p = packet::run(quick, out)?;
    let x = crosscheck::run(quick, out)?;
    let h = http::measure(quick, http_args)?;
    let goals = goals(&s, &c);
    let mut sections = vec![goals_section(&goals)];
    sections.extend(scale::sections(&s, both)?);
    sections.push(control::section(&c)?);
    sections.push(packet::section(&p));
    sections.push(crosscheck::section(&x));
    sections.push(http::section(&h));
    let result = AllResult {
        date: report::today(),
        quick,
        scale: &s,
        control: &c,
        packet: &p,
        crosscheck: &x,
        http: &h,
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
    http::check_failures(&h)
}

fn show(r: Option<f64>) -> String {
    report::show_ratio(r, 3, "")
}

/// The goals, each checked against the figures (nothing is tuned to meet them).
/// A goal whose figures are missing, zero or flagged is "not measured", never met.
pub fn goals(s: &ScaleResult, c: &ControlResult) -> Vec<Goal> {
    let mut out = Vec::new();
    let counts = &s.service_counts;
    // A cell counts only when measured cleanly.
    let get = |n: usize, p: Path_| s.cell(n, p).filter(|r| !r.flagged());
    let fig = |n: usize, p: Path_, f: fn(&scale::Round) -> f64| get(n, p).map(f).unwrap_or(0.0);
    // Ratios of two paths at one count pair them round by round (see `paired_ratio`).
    let paired = |n: usize, a: Path_, b: Path_, f: fn(&scale::Round) -> f64| {
        get(n, a)?;
        get(n, b)?;
        s.paired_ratio(n, a, b, f)
    };
    let (first, last) = match (counts.first(), counts.last()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => (1, 1),
    };

    for (what, f) in [
        (
            "request/response p50",
            (|r: &scale::Round| r.rr_p50_us) as fn(&scale::Round) -> f64,
        ),
        ("new connection p50", |r: &scale::Round| r.conn_p50_us),
    ] {
        for base in [Path_::Direct, Path_::Bare] {
            let ratios: Vec<Option<f64>> = counts
                .iter()
                .map(|n| paired(*n, Path_::EbpfTc, base, f))
                .collect();
            let shown: Vec<String> = counts
                .iter()
                .zip(&ratios)
                .map(|(n, r)| format!("{n}: {}", show(*r)))
                .collect();
            let met = (!ratios.is_empty())
                .then(|| {
                    ratios
                        .iter()
                        .map(|r| r.map(|r| r <= 1.10))
                        .collect::<Option<Vec<_>>>()
                })
                .flatten()
                .map(|v| v.iter().all(|ok| *ok));
            out.push(Goal {
                goal: format!(
                    "eBPF TC {what} within 10% of {} at every service count",
                    base.label()
                ),
                measured: format!("ebpf-tc / {}: {}", base.name(), shown.join(", ")),
                verdict: Verdict::from(met),
            });
        }
    }
    let conn = |r: &scale::Round| r.conn_p50_us;
    // Two counts are two platforms measured minutes apart: the growth is judged on each
    // path's latency over `bare` at the same count (measured in the same rounds), so a
    // slower machine at one count is not taken for a dataplane that grows. The raw ratio
    // is shown beside it.
    let growth = |p: Path_| {
        if first == last {
            return (None, None); // one service count: no growth to speak of
        }
        let raw = ratio(fig(last, p, conn), fig(first, p, conn));
        let over_bare = |n: usize| paired(n, p, Path_::Bare, conn);
        let judged = match (over_bare(last), over_bare(first)) {
            (Some(l), Some(f)) => ratio(l, f),
            _ => None,
        };
        (judged, raw)
    };
    let (ipt, ipt_raw) = growth(Path_::Iptables);
    out.push(Goal {
        goal: format!("iptables new-connection latency grows from {first} to {last} services"),
        measured: format!(
            "iptables p50 over bare at {last} / at {first}: {} (raw p50s: {})",
            show(ipt),
            show(ipt_raw)
        ),
        verdict: Verdict::from(ipt.map(|g| g > 1.05)),
    });
    let (ebpf, ebpf_raw) = growth(Path_::EbpfTc);
    out.push(Goal {
        goal: format!(
            "eBPF TC new-connection latency flat within 5% from {first} to {last} services"
        ),
        measured: format!(
            "ebpf-tc p50 over bare at {last} / at {first}: {} (raw p50s: {})",
            show(ebpf),
            show(ebpf_raw)
        ),
        verdict: Verdict::from(ebpf.map(|g| (g - 1.0).abs() <= 0.05)),
    });
    let rate_vs_iptables = |p: Path_| paired(last, p, Path_::Iptables, |r| r.conn_per_s);
    let rate = rate_vs_iptables(Path_::EbpfTc);
    out.push(Goal {
        goal: format!("connection rate at {last} services at least 2x iptables (eBPF TC)"),
        measured: format!(
            "ebpf-tc / iptables: {} (ebpf-socket: {})",
            report::show_ratio(rate, 2, "x"),
            report::show_ratio(rate_vs_iptables(Path_::EbpfSocket), 2, "x")
        ),
        verdict: Verdict::from(rate.map(|r| r >= 2.0)),
    });
    match c.apply.last() {
        Some(a) => {
            let x = ratio(a.iptables_ms, a.ebpf_ms);
            out.push(Goal {
                goal: format!(
                    "applying {} services at least 10x faster than iptables-restore",
                    a.services
                ),
                measured: format!(
                    "eBPF {:.1} ms, iptables {:.1} ms (medians): {}",
                    a.ebpf_ms,
                    a.iptables_ms,
                    report::show_ratio(x, 1, "x")
                ),
                verdict: Verdict::from(x.map(|x| x >= 10.0)),
            });
        }
        None => out.push(Goal {
            goal: "applying 10,000 services at least 10x faster than iptables-restore".into(),
            measured: "no apply measured".into(),
            verdict: Verdict::NotMeasured,
        }),
    }
    let ch = &c.change;
    let measured = ch.changes > 0 && ch.ebpf_max_ms > 0.0;
    out.push(Goal {
        goal: format!(
            "one backend change under 1 ms ({} services, eBPF)",
            ch.services
        ),
        measured: format!(
            "median {:.3} ms, slowest {:.3} ms of {} (iptables: median {:.1} ms)",
            ch.ebpf_median_ms, ch.ebpf_max_ms, ch.changes, ch.iptables_median_ms
        ),
        verdict: Verdict::from(measured.then_some(ch.ebpf_max_ms < 1.0)),
    });
    out
}

fn goals_section(goals: &[Goal]) -> Section {
    let mut t = Table::new(&["goal", "measured", "met"]);
    for g in goals {
        t.row(vec![
            g.goal.clone(),
            g.measured.clone(),
            g.verdict.text().into(),
        ]);
    }
    Section {
        title: "Goals".into(),
        text: "Checked against the figures below; the benchmark is not tuned to meet them. \
               \"not measured\": a figure the goal needs is missing, zero, or from a cell \
               flagged for failed connections or a wrong path."
            .into(),
        tables: vec![t],
        plots: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{
        control::{ApplyTime, ChangeTime},
        scale::{Cell, Round},
    };

    fn scale_result(cells: Vec<Cell>) -> ScaleResult {
        ScaleResult {
            date: String::new(),
            quick: true,
            service_counts: vec![1, 100],
            rounds: 1,
            round_trips: 1,
            new_connection_seconds: 1.0,
            rate_seconds: 1.0,
            rate_clients: 1,
            cells,
        }
    }

    fn control_result(apply: Vec<ApplyTime>, changes: usize, max_ms: f64) -> ControlResult {
        ControlResult {
            date: String::new(),
            quick: true,
            rounds: 1,
            apply,
            change: ChangeTime {
                services: 100,
                changes,
                ebpf_median_ms: max_ms,
                ebpf_max_ms: max_ms,
                iptables_median_ms: 0.0,
                iptables_max_ms: 0.0,
            },
        }
    }

    fn cell(services: usize, path: Path_, v: f64) -> Cell {
        let r = Round {
            rr_p50_us: v,
            conn_p50_us: v,
            conn_per_s: 1000.0 / v,
            ..Round::default()
        };
        Cell {
            services,
            path,
            rounds: vec![r.clone()],
            median: r,
        }
    }

    /// `bench all --quick` end to end (CI runs it so the combined report cannot rot):
    /// every part measured, every goal judged on figures (met or not, never "not
    /// measured"), and the files marked as a quick run.
    #[test]
    fn quick_run_measures_every_part_and_judges_every_goal() {
        let Some(dir) = crate::scenarios::test_env("all") else {
            return;
        };
        run(true, &dir, &http::Args::for_all()).expect("quick benchmark runs");
        let json = std::fs::read_dir(&dir)
            .expect("results")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("-all-quick.json"))
            })
            .expect("the combined JSON, named as a quick run");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("json");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(v["quick"], true);
        for part in ["scale", "control", "packet", "crosscheck", "http"] {
            assert!(v[part].is_object(), "{part} measured: {v}");
        }
        assert_eq!(v["http"]["sides"].as_array().map(Vec::len), Some(2));
        let goals = v["goals"].as_array().expect("goals");
        assert!(goals.len() >= 8, "{goals:?}");
        for g in goals {
            assert_ne!(g["verdict"], "not-measured", "{g}");
        }
    }

    #[test]
    fn no_data_is_never_a_met_goal() {
        let none = goals(
            &scale_result(Vec::new()),
            &control_result(Vec::new(), 0, 0.0),
        );
        assert!(none.len() >= 8);
        for g in &none {
            assert_eq!(g.verdict, Verdict::NotMeasured, "{g:?}");
        }
        // Zeros are no data either.
        let zeros: Vec<Cell> = [1, 100]
            .into_iter()
            .flat_map(|n| Path_::ALL.map(|p| cell(n, p, 0.0)))
            .collect();
        let apply = vec![ApplyTime {
            services: 100,
            ebpf_ms: 0.0,
            iptables_ms: 5.0,
            ebpf_runs_ms: Vec::new(),
            iptables_runs_ms: Vec::new(),
        }];
        for g in goals(&scale_result(zeros), &control_result(apply, 0, 0.0)) {
            assert_eq!(g.verdict, Verdict::NotMeasured, "{g:?}");
        }
    }

    #[test]
    fn measured_goals_are_met_or_not_and_flagged_cells_do_not_count() {
        let mut cells = Vec::new();
        for n in [1, 100] {
            cells.push(cell(n, Path_::Bare, 10.0));
            cells.push(cell(n, Path_::Direct, 10.0));
            cells.push(cell(n, Path_::EbpfTc, 10.5));
            cells.push(cell(n, Path_::EbpfSocket, 9.0));
            cells.push(cell(n, Path_::Iptables, if n == 1 { 10.0 } else { 30.0 }));
        }
        let apply = vec![ApplyTime {
            services: 100,
            ebpf_ms: 1.0,
            iptables_ms: 50.0,
            ebpf_runs_ms: Vec::new(),
            iptables_runs_ms: Vec::new(),
        }];
        let g = goals(&scale_result(cells), &control_result(apply.clone(), 4, 0.2));
        let verdict = |needle: &str| {
            g.iter()
                .find(|g| g.goal.contains(needle))
                .map(|g| g.verdict)
                .unwrap_or_else(|| panic!("no goal {needle}"))
        };
        assert_eq!(
            verdict("request/response p50 within 10% of direct"),
            Verdict::Met
        );
        assert_eq!(
            verdict("request/response p50 within 10% of bare"),
            Verdict::Met
        );
        assert_eq!(
            verdict("iptables new-connection latency grows"),
            Verdict::Met
        );
        assert_eq!(verdict("flat within 5%"), Verdict::Met);
        assert_eq!(verdict("at least 2x iptables"), Verdict::Met);
        assert_eq!(verdict("10x faster"), Verdict::Met);
        assert_eq!(verdict("under 1 ms"), Verdict::Met);

        // The same figures, but the TC cell at 100 services had failures.
        let mut cells = Vec::new();
        for n in [1, 100] {
            for p in Path_::ALL {
                let mut c = cell(n, p, 10.0);
                if n == 100 && p == Path_::EbpfTc {
                    c.median.failures = 3;
                }
                cells.push(c);
            }
        }
        let g = goals(&scale_result(cells), &control_result(apply, 4, 2.0));
        for g in &g {
            if g.goal.contains("eBPF TC") || g.goal.contains("(eBPF TC)") {
                assert_eq!(g.verdict, Verdict::NotMeasured, "{g:?}");
            }
        }
        assert!(
            g.iter()
                .any(|g| g.goal.contains("under 1 ms") && g.verdict == Verdict::NotMet)
        );
    }
}
