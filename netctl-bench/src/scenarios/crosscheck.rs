//! `bench crosscheck`: our load generator against a standard tool on the same paths, side by
//! side: `sockperf ping-pong` (Debian's sockperf, TCP, 64-byte messages, full round trip)
//! and our request/response workload, client namespace -> backend directly and -> the VIP
//! through the eBPF TC path. The servers differ (sockperf's own, our echo server); both
//! run in the backend's namespace. Each path gets the ratio of our p50 to sockperf's, and
//! a gap over [`MAX_GAP`] (either way) is flagged: the tools should agree.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    loadgen::{self, EchoServer},
    pin::{self, Side},
    platform::BenchPlatform,
    report::{self, Section, Table},
    stats::{micros, quantile},
};

const PREFIX: &str = "bx-";

/// Largest relative gap between two tools' figures that still counts as agreement.
pub const MAX_GAP: f64 = 0.25;

/// True when `ours / theirs` is missing or off by more than [`MAX_GAP`] either way.
pub fn disagree(ours_over_theirs: Option<f64>) -> bool {
    ours_over_theirs.is_none_or(|r| !(1.0 / (1.0 + MAX_GAP)..=1.0 + MAX_GAP).contains(&r))
}
const ECHO: u16 = 7000;
const SOCKPERF: u16 = 7001;

fn topology() -> String {
    format!(
        r#"[platform]
name = "bench-crosscheck"
service_cidr = "10.253.240.0/20"
uplinks = []
[networks.front]
subnet = "10.253.1.0/24"
[networks.back]
subnet = "10.253.2.0/24"
[services.client]
network = "front"
address = "10.253.1.10"
[services.web]
network = "back"
address = "10.253.2.10"
ports = [{ECHO}, {SOCKPERF}]
[dataplane]
socket_lb = false
"#
    )
}

#[derive(Debug, Serialize, Clone)]
pub struct Pair {
    pub path: String,
    pub tool: String,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

/// The two tools on one path.
#[derive(Debug, Serialize, Clone)]
pub struct Agreement {
    pub path: String,
    /// Our p50 / sockperf's p50 (`None`: either is missing).
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// The p50s differ by more than [`MAX_GAP`].
    pub disagree: bool,
}

#[derive(Debug, Serialize)]
pub struct CrosscheckResult {
    pub date: String,
    pub quick: bool,
    pub seconds_per_tool: f64,
    pub results: Vec<Pair>,
    pub agreement: Vec<Agreement>,
}

fn agreement(results: &[Pair]) -> Vec<Agreement> {
    let mut paths: Vec<&str> = results.iter().map(|p| p.path.as_str()).collect();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let by = |tool: &str| results.iter().find(|p| p.path == path && p.tool == tool);
            let (ours, theirs) = (by("netctl-bench"), by("sockperf"));
            let r = |f: fn(&Pair) -> f64| {
                ours.zip(theirs)
                    .and_then(|(o, t)| report::ratio(f(o), f(t)))
            };
            let p50_ratio = r(|p| p.p50_us);
            Agreement {
                path: path.to_string(),
                p50_ratio,
                p99_ratio: r(|p| p.p99_us),
                disagree: disagree(p50_ratio),
            }
        })
        .collect()
}

/// A process started by the bench, stopped (by its pid) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<CrosscheckResult> {
    let secs = if quick { 1 } else { 10 };
    let platform = BenchPlatform::up(PREFIX, &topology())?;
    let client = platform.endpoint("client")?.netns.clone();
    let web = platform.endpoint("web")?.clone();
    let _echo = EchoServer::start(&web.netns, web.address, ECHO)?;
    let _sockperf = Proc(
        // On the CPUs our own client and server use (see `pin`).
        pin::command(Side::Server, "ip")
            .args(["netns", "exec", &web.netns, "sockperf", "sr", "--tcp", "-i"])
            .arg(web.address.to_string())
            .args(["-p", &SOCKPERF.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sockperf (install it: cargo xtask setup)")?,
    );
    platform.wait_backends("web", ECHO, 1)?;
    platform.wait_backends("web", SOCKPERF, 1)?;
    let vip = platform
        .plan
        .service("web")
        .map(|s| s.vip)
        .context("no web service")?;
    let mut results = Vec::new();
    for (path, target) in [("direct", web.address), ("ebpf-tc (VIP)", vip)] {
        let trips = (secs as usize) * 20_000;
        let rr = loadgen::request_response(&client, target, ECHO, trips / 10, trips)?;
        if rr.failures > 0 {
            tracing::warn!(path, failures = rr.failures, "round trips failed");
        }
        let mut rr = rr.samples;
        results.push(Pair {
            path: path.into(),
            tool: "netctl-bench".into(),
            p50_us: micros(quantile(&mut rr, 0.50)),
            p90_us: micros(quantile(&mut rr, 0.90)),
            p99_us: micros(quantile(&mut rr, 0.99)),
        });
        let (p50, p90, p99) = sockperf(&client, target, secs)?;
        results.push(Pair {
            path: path.into(),
            tool: "sockperf".into(),
            p50_us: p50,
            p90_us: p90,
            p99_us: p99,
        });
    }
    let result = CrosscheckResult {
        date: report::today(),
        quick,
        seconds_per_tool: secs as f64,
        agreement: agreement(&results),
        results,
    };
    let sections = vec![section(&result)];
    let w = report::write(
        out,
        "crosscheck",
        "netctl benchmark: load generator cross-check",
        &result,
        &sections,
    )?;
    report::print(&sections);
    tracing::info!("wrote {} and {}", w.json.display(), w.html.display());
    Ok(result)
}

/// `sockperf ping-pong` from `ns` for `secs`: (p50, p90, p99) of the full round trip, µs.
fn sockperf(ns: &str, target: Ipv4Addr, secs: u64) -> anyhow::Result<(f64, f64, f64)> {
    // The server may need a moment after the health check saw its port.
    std::thread::sleep(Duration::from_millis(200));
    let out = pin::command(Side::Client, "ip")
        .args(["netns", "exec", ns, "sockperf", "ping-pong", "--tcp", "-i"])
        .arg(target.to_string())
        .args(["-p", &SOCKPERF.to_string(), "-m", "64", "--full-rtt", "-t"])
        .arg(secs.to_string())
        .output()
        .context("running sockperf ping-pong")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("sockperf ping-pong failed: {}", text.trim());
    }
    parse_sockperf(&text).with_context(|| format!("reading sockperf's output:\n{text}"))
}

/// Percentile lines: `sockperf: ---> percentile 50.000 =    8.609`.
fn parse_sockperf(text: &str) -> Option<(f64, f64, f64)> {
    let pick = |p: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
    };
    Some((pick("50.000")?, pick("90.000")?, pick("99.000")?))
}

pub fn section(r: &CrosscheckResult) -> Section {
    let mut t = Table::new(&["path", "tool", "RR p50 µs", "RR p90 µs", "RR p99 µs"]);
    for p in &r.results {
        t.row(vec![
            p.path.clone(),
            p.tool.clone(),
            format!("{:.1}", p.p50_us),
            format!("{:.1}", p.p90_us),
            format!("{:.1}", p.p99_us),
        ]);
    }
    let mut a = Table::new(&[
        "path",
        "ours / sockperf p50",
        "ours / sockperf p99",
        "agree",
    ]);
    for g in &r.agreement {
        a.row(vec![
            g.path.clone(),
            report::show_ratio(g.p50_ratio, 2, "x"),
            report::show_ratio(g.p99_ratio, 2, "x"),
            if g.disagree {
                format!("NO (!): gap over {:.0}%", MAX_GAP * 100.0)
            } else {
                "yes".into()
            },
        ]);
    }
    Section {
        title: "Load generator cross-check (sockperf)".into(),
        text: format!(
            "TCP request/response of 64 bytes over one connection, {:.0} s per tool and path: \
             `sockperf ping-pong --tcp -m 64 --full-rtt` against `sockperf sr`, and our \
             request/response workload against our echo server, in the same namespaces. \
             The tools agree when their p50s are within {:.0}% of each other.",
            r.seconds_per_tool,
            MAX_GAP * 100.0
        ),
        tables: vec![t, a],
        plots: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_agree_within_a_quarter() {
        let pair = |path: &str, tool: &str, p50: f64| Pair {
            path: path.into(),
            tool: tool.into(),
            p50_us: p50,
            p90_us: p50,
            p99_us: p50 * 2.0,
        };
        let a = agreement(&[
            pair("direct", "netctl-bench", 10.0),
            pair("direct", "sockperf", 9.0),
            pair("vip", "netctl-bench", 20.0),
            pair("vip", "sockperf", 10.0),
            pair("lost", "netctl-bench", 20.0),
        ]);
        assert_eq!(a.len(), 3);
        assert!(!a[0].disagree && (a[0].p50_ratio.unwrap() - 10.0 / 9.0).abs() < 1e-9);
        assert!(a[1].disagree, "2x apart");
        assert!(
            a[2].disagree && a[2].p50_ratio.is_none(),
            "nothing to compare with"
        );
        assert!(disagree(Some(0.7)) && !disagree(Some(0.85)) && !disagree(Some(1.2)));
    }

    #[test]
    fn sockperf_percentiles_are_read() {
        let text = "sockperf: ---> percentile 99.000 =   25.656\n\
                    sockperf: ---> percentile 90.000 =   17.043\n\
                    sockperf: ---> percentile 50.000 =    8.609\n";
        assert_eq!(super::parse_sockperf(text), Some((8.609, 17.043, 25.656)));
        assert_eq!(super::parse_sockperf("nothing"), None);
    }

    #[test]
    fn quick_run_measures_both_tools_on_both_paths() {
        let Some(dir) = crate::scenarios::test_env("crosscheck") else {
            return;
        };
        let r = super::run(true, &dir).expect("quick cross-check runs");
        assert_eq!(r.results.len(), 4);
        for p in &r.results {
            assert!(p.p50_us > 0.0 && p.p99_us >= p.p50_us, "{p:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
