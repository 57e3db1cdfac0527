//! `bench latency` / `bench rate`: TCP latency and connection rate through a service VIP
//! with 1, 100, 1,000 and 10,000 services installed, by five paths side by side:
//!
//! - `bare`: client namespace -> one backend's own address with every program of the
//!   platform detached (no TC, no socket programs): the same namespaces, veths and
//!   bridges, nothing of ours in the path. The true floor;
//! - `direct`: the same, with the eBPF dataplane attached (conntrack, flow counters,
//!   policy) but no load balancing: "direct (dataplane attached, no LB)";
//! - `ebpf-tc`: -> the VIP, DNAT by the TC programs (socket LB off);
//! - `ebpf-socket`: -> the VIP, connect() pointed at a backend by the cgroup program;
//! - `iptables`: -> the VIP, the same platform brought up with `--dataplane iptables`.
//!
//! Each eBPF cell is checked against the dataplane's counters ([`crate::pathcheck`]): a
//! cell that did not take its path (socket LB not on yet, programs not detached) is
//! flagged, and so is one with failed or stalled connections.
//!
//! The platform: a client tier, the measured service `web` (3 replicas running our echo
//! server) on another tier, and N - 1 more services whose backends are listed by hand
//! (`backends = [...]`, the same three replicas: a selectorless Kubernetes Service), so
//! 10,000 services need no 30,000 namespaces. `web` sits in the middle of the file, so its
//! VIP's rule is in the middle of iptables' linear `SERVICES` chain: the expected position
//! of a service, not the best or the worst.
//!
//! For each service count, every round runs both dataplanes (their order alternating) and,
//! on the eBPF platform, the four eBPF-platform paths in rotating order. Figures are
//! medians over rounds; ratios are to `direct` and to `bare` at the same service count.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::Context;
use serde::Serialize;

use crate::{
    loadgen::{self, EchoServer},
    pathcheck::{self, Counters, Expect},
    platform::BenchPlatform,
    plot::{self, Series},
    report::{self, Section, Table, show_ratio},
    stats::{median, micros, paired_ratio, quantile},
};

const PORT: u16 = 7000;
/// Connections made to see whether the detached programs still count.
const PROBE: Duration = Duration::from_millis(10);
const PREFIX: &str = "bs-";

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub latency: bool,
    pub rate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path_ {
    Bare,
    Direct,
    EbpfTc,
    EbpfSocket,
    Iptables,
}

impl Path_ {
    pub const ALL: [Path_; 5] = [
        Path_::Bare,
        Path_::Direct,
        Path_::EbpfTc,
        Path_::EbpfSocket,
        Path_::Iptables,
    ];
    /// The paths measured on the eBPF platform, rotated within a round.
    const ON_EBPF: [Path_; 4] = [Path_::Bare, Path_::Direct, Path_::EbpfTc, Path_::EbpfSocket];

    pub fn name(self) -> &'static str {
        match self {
            Path_::Bare => "bare",
            Path_::Direct => "direct",
            Path_::EbpfTc => "ebpf-tc",
            Path_::EbpfSocket => "ebpf-socket",
            Path_::Iptables => "iptables",
        }
    }

    /// The name in tables, saying what the baselines are.
    pub fn label(self) -> &'static str {
        match self {
            Path_::Bare => "bare (no programs attached)",
            Path_::Direct => "direct (dataplane attached, no LB)",
            Path_::EbpfTc => "ebpf-tc",
            Path_::EbpfSocket => "ebpf-socket",
            Path_::Iptables => "iptables",
        }
    }

    fn expect(self) -> Option<Expect> {
        match self {
            Path_::Bare => Some(Expect::Bare),
            Path_::Direct => Some(Expect::Direct),
            Path_::EbpfTc => Some(Expect::TcLb),
            Path_::EbpfSocket => Some(Expect::SocketLb),
            // No maps to ask.
            Path_::Iptables => None,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Round {
    pub rr_p50_us: f64,
    pub rr_p90_us: f64,
    pub rr_p99_us: f64,
    /// connect + one round trip + close, one client after the other.
    pub conn_p50_us: f64,
    pub conn_p90_us: f64,
    pub conn_p99_us: f64,
    /// Connections per second with several parallel clients.
    pub conn_per_s: f64,
    /// Failed connections and round trips, stalls included.
    pub failures: usize,
    /// Failures that were timeouts (`loadgen::IO_TIMEOUT`).
    #[serde(default)]
    pub stalls: usize,
    /// Why the dataplane's counters say the path was not the one meant, if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrong_path: Option<String>,
}

impl Round {
    /// Failed connections or a wrong path: the figures are not to be trusted.
    pub fn flagged(&self) -> bool {
        self.failures > 0 || self.wrong_path.is_some()
    }

    /// The path's label with a mark when flagged.
    fn label(&self, path: Path_) -> String {
        if self.flagged() {
            format!("{} (!)", path.label())
        } else {
            path.label().to_string()
        }
    }

    fn problems(&self) -> String {
        let mut p = Vec::new();
        if self.failures > 0 {
            p.push(format!(
                "{} failed ({} stalled)",
                self.failures, self.stalls
            ));
        }
        if let Some(w) = &self.wrong_path {
            p.push(format!("wrong path: {w}"));
        }
        if p.is_empty() {
            "0".into()
        } else {
            p.join("; ")
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub services: usize,
    pub path: Path_,
    pub rounds: Vec<Round>,
    pub median: Round,
}

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub date: String,
    pub quick: bool,
    pub service_counts: Vec<usize>,
    pub rounds: usize,
    pub round_trips: usize,
    pub new_connection_seconds: f64,
    pub rate_seconds: f64,
    pub rate_clients: usize,
    pub cells: Vec<Cell>,
}

struct Config {
    counts: Vec<usize>,
    rounds: usize,
    trips: usize,
    conn_time: Duration,
    rate_time: Duration,
    clients: usize,
}

/// The topology with `n` services (`web` among them), in `mode`.
pub fn topology(n: usize, mode: &str, socket_lb: bool) -> String {
    let mut s = format!(
        r#"[platform]
name = "bench-scale"
service_cidr = "10.252.64.0/18"
uplinks = []
[networks.front]
subnet = "10.252.1.0/24"
[networks.back]
subnet = "10.252.2.0/24"
[services.client]
network = "front"
address = "10.252.1.10"
[dataplane]
mode = "{mode}"
socket_lb = {socket_lb}
"#
    );
    let web = format!(
        "[services.web]\nnetwork = \"back\"\naddress = \"10.252.2.10\"\nreplicas = 3\nports = [{PORT}]\n"
    );
    let fillers = n.saturating_sub(1);
    for i in 0..fillers {
        if i == fillers / 2 {
            s.push_str(&web);
        }
        let _ = write!(
            s,
            "[services.s{i:05}]\nports = [{PORT}]\nbackends = [\"10.252.2.10\", \"10.252.2.11\", \"10.252.2.12\"]\n"
        );
    }
    if fillers == 0 {
        s.push_str(&web);
    }
    s
}

pub fn run(quick: bool, parts: Parts, out: &Path) -> anyhow::Result<ScaleResult> {
    let cfg = if quick {
        Config {
            counts: vec![1, 100],
            rounds: 1,
            trips: 1_000,
            conn_time: Duration::from_millis(300),
            rate_time: Duration::from_millis(300),
            clients: 2,
        }
    } else {
        Config {
            counts: vec![1, 100, 1_000, 10_000],
            rounds: 5,
            trips: 10_000,
            conn_time: Duration::from_secs(1),
            rate_time: Duration::from_secs(2),
            clients: 4,
        }
    };
    let mut cells = Vec::new();
    let bar = netctl::output::bar(
        (cfg.counts.len() * cfg.rounds * Path_::ALL.len()) as u64,
        "measurements",
    );
    for &n in &cfg.counts {
        bar.set_message(format!("{n} services: bringing up"));
        tracing::info!(services = n, "bringing up");
        let mut platform = BenchPlatform::up(PREFIX, &topology(n, "ebpf", false))?;
        let client = platform.endpoint("client")?.netns.clone();
        let mut servers = Vec::new();
        for i in 1..=3 {
            let ep = platform.endpoint(&format!("web-{i}"))?;
            servers.push(EchoServer::start(&ep.netns, ep.address, PORT)?);
        }
        let direct = platform.endpoint("web-1")?.address;
        let vip = platform
            .plan
            .service("web")
            .map(|s| s.vip)
            .context("no web service")?;
        let instance = platform.plan.instance();
        let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); Path_::ALL.len()];
        let mut mode = "ebpf";
        let mut socket_lb = false;
        platform.wait_ready(n, "web", PORT, 3)?;
        for round in 0..cfg.rounds {
            // Alternate which dataplane goes first; rotate the eBPF platform's paths.
            let ebpf_first = round % 2 == 0;
            let k = Path_::ON_EBPF.len();
            let mut order: Vec<Path_> = (0..k).map(|i| Path_::ON_EBPF[(round + i) % k]).collect();
            if ebpf_first {
                order.push(Path_::Iptables);
            } else {
                order.insert(0, Path_::Iptables);
            }
            for path in order {
                bar.set_message(format!(
                    "{n} services, round {}, {}",
                    round + 1,
                    path.name()
                ));
                let want_mode = if path == Path_::Iptables {
                    "iptables"
                } else {
                    "ebpf"
                };
                // Socket LB is switched only for its own path; the others keep it as is.
                let want_socket = match path {
                    Path_::EbpfSocket => true,
                    Path_::EbpfTc => false,
                    _ => socket_lb,
                };
                if want_mode != mode || (want_mode == "ebpf" && want_socket != socket_lb) {
                    platform.apply(&topology(n, want_mode, want_socket))?;
                    platform.wait_ready(n, "web", PORT, 3)?;
                    mode = want_mode;
                    socket_lb = want_socket;
                }
                if mode == "ebpf" {
                    // The controller sets the CONFIG flag within a tick: wait for it.
                    pathcheck::wait_socket_lb(&instance, socket_lb)?;
                }
                if path == Path_::Bare {
                    let n_links = pathcheck::detach_all(&instance)?;
                    pathcheck::wait_detached(&instance, || {
                        loadgen::connection_rate(&client, direct, PORT, 1, PROBE).map(drop)
                    })?;
                    tracing::debug!(links = n_links, "detached every program");
                }
                let target = if matches!(path, Path_::Bare | Path_::Direct) {
                    direct
                } else {
                    vip
                };
                let before = path
                    .expect()
                    .map(|_| Counters::read(&instance))
                    .transpose()?;
                let measured = measure(&client, target, &cfg, parts);
                let after = path
                    .expect()
                    .map(|_| Counters::read(&instance))
                    .transpose()?;
                if path == Path_::Bare {
                    // Attach everything again (the same topology: only the hooks are made).
                    platform.apply(&topology(n, mode, socket_lb))?;
                    platform.wait_ready(n, "web", PORT, 3)?;
                }
                let (mut r, connections) = measured?;
                if let (Some(expect), Some(b), Some(a)) = (path.expect(), before, after) {
                    r.wrong_path = pathcheck::check(expect, b, a, connections).err();
                }
                if r.flagged() {
                    tracing::warn!(
                        services = n,
                        round,
                        path = path.name(),
                        "flagged: {}",
                        r.problems()
                    );
                }
                tracing::info!(services = n, round, path = path.name(), ?r, "measured");
                rounds[path as usize].push(r);
                bar.inc(1);
            }
        }
        drop(servers);
        drop(platform);
        for path in Path_::ALL {
            let rs = std::mem::take(&mut rounds[path as usize]);
            cells.push(Cell {
                services: n,
                path,
                median: median_round(&rs),
                rounds: rs,
            });
        }
    }
    bar.finish_and_clear();
    let result = ScaleResult {
        date: report::today(),
        quick,
        service_counts: cfg.counts.clone(),
        rounds: cfg.rounds,
        round_trips: cfg.trips,
        new_connection_seconds: cfg.conn_time.as_secs_f64(),
        rate_seconds: cfg.rate_time.as_secs_f64(),
        rate_clients: cfg.clients,
        cells,
    };
    let sections = sections(&result, parts)?;
    let name = match (parts.latency, parts.rate) {
        (true, false) => "latency",
        (false, true) => "rate",
        _ => "scale",
    };
    let w = report::write(
        out,
        name,
        "netctl benchmark: eBPF vs iptables vs direct, 1 to 10,000 services",
        &result,
        &sections,
    )?;
    report::print(&sections);
    tracing::info!("wrote {} and {}", w.json.display(), w.html.display());
    Ok(result)
}

/// One round of `parts` to `target`, and how many connections it made (for the path check).
fn measure(ns: &str, target: Ipv4Addr, cfg: &Config, parts: Parts) -> anyhow::Result<(Round, u64)> {
    let mut r = Round::default();
    let mut connections = 0;
    if parts.latency {
        let rr = loadgen::request_response(ns, target, PORT, cfg.trips / 10, cfg.trips)?;
        // At least one connection (more after failures: a lower bound is enough).
        connections += 1;
        r.failures += rr.failures;
        r.stalls += rr.stalls;
        let mut samples = rr.samples;
        r.rr_p50_us = micros(quantile(&mut samples, 0.50));
        r.rr_p90_us = micros(quantile(&mut samples, 0.90));
        r.rr_p99_us = micros(quantile(&mut samples, 0.99));
        let one = loadgen::connection_rate(ns, target, PORT, 1, cfg.conn_time)?;
        connections += one.connections as u64;
        let mut lat = one.latencies;
        r.conn_p50_us = micros(quantile(&mut lat, 0.50));
        r.conn_p90_us = micros(quantile(&mut lat, 0.90));
        r.conn_p99_us = micros(quantile(&mut lat, 0.99));
        r.failures += one.failures;
        r.stalls += one.stalls;
    }
    if parts.rate {
        let many = loadgen::connection_rate(ns, target, PORT, cfg.clients, cfg.rate_time)?;
        connections += many.connections as u64;
        r.conn_per_s = many.connections as f64 / many.elapsed.as_secs_f64();
        r.failures += many.failures;
        r.stalls += many.stalls;
    }
    // Successful connections only: a failed one may or may not have reached the dataplane.
    Ok((r, connections))
}

fn median_round(rs: &[Round]) -> Round {
    let m = |f: fn(&Round) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
    Round {
        rr_p50_us: m(|r| r.rr_p50_us),
        rr_p90_us: m(|r| r.rr_p90_us),
        rr_p99_us: m(|r| r.rr_p99_us),
        conn_p50_us: m(|r| r.conn_p50_us),
        conn_p90_us: m(|r| r.conn_p90_us),
        conn_p99_us: m(|r| r.conn_p99_us),
        conn_per_s: m(|r| r.conn_per_s),
        failures: rs.iter().map(|r| r.failures).sum(),
        stalls: rs.iter().map(|r| r.stalls).sum(),
        wrong_path: rs.iter().find_map(|r| r.wrong_path.clone()),
    }
}

impl ScaleResult {
    pub fn cell(&self, n: usize, path: Path_) -> Option<&Round> {
        self.cells
            .iter()
            .find(|c| c.services == n && c.path == path)
            .map(|c| &c.median)
    }

    /// `f(a) / f(b)` at `n` services, paired round by round ([`paired_ratio`]).
    pub fn paired_ratio(&self, n: usize, a: Path_, b: Path_, f: fn(&Round) -> f64) -> Option<f64> {
        let rounds = |p: Path_| {
            self.cells
                .iter()
                .find(|c| c.services == n && c.path == p)
                .map(|c| c.rounds.as_slice())
        };
        paired_ratio(rounds(a)?, rounds(b)?, f)
    }
}

fn series(r: &ScaleResult, f: fn(&Round) -> f64) -> Vec<Series> {
    Path_::ALL
        .iter()
        .map(|p| Series {
            name: p.name().into(),
            points: r
                .service_counts
                .iter()
                .filter_map(|n| r.cell(*n, *p).map(|c| (*n as f64, f(c))))
                .collect(),
        })
        .collect()
}

pub fn sections(r: &ScaleResult, parts: Parts) -> anyhow::Result<Vec<Section>> {
    let mut out = Vec::new();
    let setup = format!(
        "Client namespace -> service `web` (3 replicas on another tier), with N services \
         installed (3 backends each). {} round(s) per service count, both dataplanes in every \
         round, the paths taking turns; figures are medians over rounds, and a ratio is \
         the median of the rounds' own ratios (paths of one round run seconds apart, so the \
         machine's slower minutes cancel out). Two baselines at the same N: `bare`, the same namespaces \
         with no program of ours attached (the floor), and `direct`, straight to a backend \
         with the eBPF dataplane attached but no load balancing. A ratio is `-` when either \
         figure is missing. `(!)` marks a cell with failed or stalled connections (1 s \
         timeouts) or whose dataplane counters show it did not take its path: do not trust \
         its figures.",
        r.rounds
    );
    if parts.latency {
        let mut t = Table::new(&[
            "services",
            "path",
            "RR p50 µs",
            "RR p90 µs",
            "RR p99 µs",
            "new conn p50 µs",
            "new conn p90 µs",
            "new conn p99 µs",
            "RR p50 / direct",
            "RR p50 / bare",
            "new conn p50 / direct",
            "new conn p50 / bare",
            "failures",
        ]);
        for n in &r.service_counts {
            for p in Path_::ALL {
                let Some(c) = r.cell(*n, p) else { continue };
                let vs = |base: Path_, f: fn(&Round) -> f64| {
                    show_ratio(r.paired_ratio(*n, p, base, f), 3, "")
                };
                t.row(vec![
                    n.to_string(),
                    c.label(p),
                    format!("{:.1}", c.rr_p50_us),
                    format!("{:.1}", c.rr_p90_us),
                    format!("{:.1}", c.rr_p99_us),
                    format!("{:.1}", c.conn_p50_us),
                    format!("{:.1}", c.conn_p90_us),
                    format!("{:.1}", c.conn_p99_us),
                    vs(Path_::Direct, |x| x.rr_p50_us),
                    vs(Path_::Bare, |x| x.rr_p50_us),
                    vs(Path_::Direct, |x| x.conn_p50_us),
                    vs(Path_::Bare, |x| x.conn_p50_us),
                    c.problems(),
                ]);
            }
        }
        let rr = plot::svg(&plot::Chart {
            title: "TCP request/response p50 (one connection)",
            x_label: "services installed",
            y_label: "µs",
            log_x: true,
            series: &series(r, |c| c.rr_p50_us),
        })?;
        let nc = plot::svg(&plot::Chart {
            title: "New connection p50 (connect + 1 request + close)",
            x_label: "services installed",
            y_label: "µs",
            log_x: true,
            series: &series(r, |c| c.conn_p50_us),
        })?;
        out.push(Section {
            title: "Latency".into(),
            text: format!(
                "{setup} Request/response: {} round trips of {} bytes on one connection. New \
                 connection: one client, connect + one round trip + close (RST), for {:.1} s. \
                 Request/response runs the client on one CPU and the server's side on \
                 another, so that every round trip crosses CPUs alike.",
                r.round_trips,
                loadgen::MESSAGE,
                r.new_connection_seconds
            ),
            tables: vec![t],
            plots: vec![("rr-latency".into(), rr), ("new-conn-latency".into(), nc)],
        });
    }
    if parts.rate {
        let mut t = Table::new(&[
            "services",
            "path",
            "connections/s",
            "/ direct",
            "/ bare",
            "/ iptables",
            "failures",
        ]);
        for n in &r.service_counts {
            for p in Path_::ALL {
                let Some(c) = r.cell(*n, p) else { continue };
                let vs =
                    |base: Path_| show_ratio(r.paired_ratio(*n, p, base, |x| x.conn_per_s), 3, "");
                t.row(vec![
                    n.to_string(),
                    c.label(p),
                    format!("{:.0}", c.conn_per_s),
                    vs(Path_::Direct),
                    vs(Path_::Bare),
                    vs(Path_::Iptables),
                    c.problems(),
                ]);
            }
        }
        let plot = plot::svg(&plot::Chart {
            title: "Connection rate (parallel clients)",
            x_label: "services installed",
            y_label: "connections/s",
            log_x: true,
            series: &series(r, |c| c.conn_per_s),
        })?;
        out.push(Section {
            title: "Connection rate".into(),
            text: format!(
                "{setup} {} parallel clients, each looping connect + one round trip + close \
                 (RST), for {:.1} s.",
                r.rate_clients, r.rate_seconds
            ),
            tables: vec![t],
            plots: vec![("conn-rate".into(), plot)],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_has_n_services_with_web_in_the_middle() {
        for n in [1, 100] {
            let plan = netctl::topology::Source {
                name: "t".into(),
                text: topology(n, "iptables", false),
            }
            .plan(None)
            .expect("valid");
            assert_eq!(plan.services.len(), n);
            let pos = plan
                .services
                .iter()
                .position(|s| s.name == "web")
                .expect("web");
            assert_eq!(pos, (n - 1) / 2);
            assert_eq!(plan.endpoints.len(), 4, "client + 3 replicas");
            assert_eq!(
                plan.dataplane.mode,
                netctl::topology::DataplaneMode::Iptables
            );
        }
    }

    #[test]
    fn paired_ratios_cancel_a_slow_round_that_medians_of_figures_do_not() {
        let rounds = |figs: &[f64]| -> Vec<Round> {
            figs.iter()
                .map(|&v| Round {
                    conn_p50_us: v,
                    ..Round::default()
                })
                .collect()
        };
        let cell = |path: Path_, figs: &[f64]| {
            let rounds = rounds(figs);
            Cell {
                services: 1,
                path,
                median: median_round(&rounds),
                rounds,
            }
        };
        let r = ScaleResult {
            date: String::new(),
            quick: true,
            service_counts: vec![1],
            rounds: 5,
            round_trips: 0,
            new_connection_seconds: 0.0,
            rate_seconds: 0.0,
            rate_clients: 0,
            cells: vec![
                // A real run at 1 service: slow spells in rounds 3 to 5 hit ebpf-tc more
                // than direct. Medians of the figures: 174.5 / 150.4 = 1.16.
                cell(Path_::Direct, &[147.1, 150.4, 157.2, 168.5, 146.1]),
                cell(Path_::EbpfTc, &[151.4, 150.9, 176.6, 174.5, 174.5]),
                cell(Path_::Iptables, &[150.0]),
            ],
        };
        let conn = |x: &Round| x.conn_p50_us;
        let paired = r
            .paired_ratio(1, Path_::EbpfTc, Path_::Direct, conn)
            .expect("measured");
        // Per round: 1.029, 1.003, 1.123, 1.036, 1.194.
        assert!((paired - 174.5 / 168.5).abs() < 1e-9, "{paired}");
        // Different round counts cannot be paired.
        assert_eq!(
            r.paired_ratio(1, Path_::Iptables, Path_::Direct, conn),
            None
        );
        assert_eq!(r.paired_ratio(1, Path_::Bare, Path_::Direct, conn), None);
    }

    /// The quick mode end to end (both dataplanes, 1 and 100 services): every path measured
    /// without a failed connection, the report written with its plots. Not how fast.
    #[test]
    fn quick_run_measures_every_path_at_every_count() {
        let Some(dir) = crate::scenarios::test_env("scale") else {
            return;
        };
        let both = Parts {
            latency: true,
            rate: true,
        };
        let r = run(true, both, &dir).expect("quick scale benchmark runs");
        assert_eq!(r.cells.len(), 10, "5 paths x 2 service counts");
        for c in &r.cells {
            let m = &c.median;
            assert!(
                m.rr_p50_us > 0.0 && m.conn_p50_us > 0.0 && m.conn_per_s > 0.0,
                "{c:?}"
            );
            assert_eq!(m.failures, 0, "{c:?}");
            assert_eq!(m.wrong_path, None, "every path taken as meant: {c:?}");
        }
        assert_eq!(
            crate::scenarios::written(&dir),
            ["html", "json", "md", "svg"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
