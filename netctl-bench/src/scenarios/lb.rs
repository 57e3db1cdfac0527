//! `bench lb`: TCP request/response latency and new-connection rate from a client namespace
//! to a service of three replicas on another tier, by four paths measured side by side:
//!
//! - `bare`: to one backend's own address with every program detached (the floor);
//! - `direct`: the same with the eBPF dataplane attached, no load balancing;
//! - `vip-tc`: to the VIP with socket LB off: DNAT/reverse NAT by the TC programs;
//! - `vip-socket`: to the VIP with socket LB on: connect() goes straight to a backend.
//!
//! The paths take turns within each round (socket LB is switched by `netctl up` with the
//! changed topology: a map update, no reload, waited for in the `CONFIG` map); each is
//! checked against the dataplane's counters ([`crate::pathcheck`]). The report gives
//! medians over the rounds and ratios to `direct` and to `bare`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use serde::Serialize;

use crate::{
    loadgen::{self, EchoServer},
    pathcheck::{self, Counters, Expect},
    platform::BenchPlatform,
    report::{self, show_ratio},
    stats::{median, micros, paired_ratio, quantile},
};

const PORT: u16 = 7000;
/// Connections made to see whether the detached programs still count.
const PROBE: Duration = Duration::from_millis(10);
const PREFIX: &str = "bn-";

fn topology(socket_lb: bool) -> String {
    format!(
        r#"
[platform]
name = "bench-lb"
service_cidr = "10.251.240.0/20"
uplinks = []
[networks.front]
subnet = "10.251.1.0/24"
[networks.back]
subnet = "10.251.2.0/24"
[services.client]
network = "front"
address = "10.251.1.10"
[services.web]
network = "back"
address = "10.251.2.10"
replicas = 3
ports = [{PORT}]
[dataplane]
socket_lb = {socket_lb}
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Path_ {
    Bare,
    Direct,
    VipTc,
    VipSocket,
}

impl Path_ {
    const ALL: [Path_; 4] = [Path_::Bare, Path_::Direct, Path_::VipTc, Path_::VipSocket];

    fn name(self) -> &'static str {
        match self {
            Path_::Bare => "bare (no programs attached)",
            Path_::Direct => "direct (dataplane attached, no LB)",
            Path_::VipTc => "vip-tc",
            Path_::VipSocket => "vip-socket",
        }
    }

    fn expect(self) -> Expect {
        match self {
            Path_::Bare => Expect::Bare,
            Path_::Direct => Expect::Direct,
            Path_::VipTc => Expect::TcLb,
            Path_::VipSocket => Expect::SocketLb,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Round {
    rr_p50_us: f64,
    rr_p90_us: f64,
    rr_p99_us: f64,
    conn_per_s: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
    /// Failed connections and round trips, stalls (1 s timeouts) included.
    conn_failures: usize,
    stalls: usize,
    /// Why the dataplane's counters say the path was not the one meant, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    wrong_path: Option<String>,
}

/// Each figure over a baseline's (`None`: either is missing).
#[derive(Debug, Default, Clone, Serialize)]
struct Ratios {
    rr_p50_us: Option<f64>,
    rr_p90_us: Option<f64>,
    rr_p99_us: Option<f64>,
    conn_per_s: Option<f64>,
    conn_p50_us: Option<f64>,
    conn_p99_us: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PathResult {
    path: Path_,
    rounds: Vec<Round>,
    median: Round,
    ratio_to_direct: Ratios,
    ratio_to_bare: Ratios,
}

#[derive(Debug, Serialize)]
struct LbResult {
    date: String,
    quick: bool,
    round_trips_per_round: usize,
    connection_seconds_per_round: f64,
    parallel_clients: usize,
    paths: Vec<PathResult>,
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<()> {
    let (rounds, trips, conn_time, clients) = if quick {
        (2, 2_000, Duration::from_millis(500), 2)
    } else {
        (5, 20_000, Duration::from_secs(3), 4)
    };
    let mut platform = BenchPlatform::up(PREFIX, &topology(false))?;
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
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    platform.wait_backends("web", PORT, 3)?;

    let instance = platform.plan.instance();
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); Path_::ALL.len()];
    let mut socket_lb = false;
    let bar = netctl::output::bar((rounds * Path_::ALL.len()) as u64, "measurements");
    for round in 0..rounds {
        // Rotate the order so no path always runs first (warm caches, CPU frequency).
        for k in 0..Path_::ALL.len() {
            let i = (round + k) % Path_::ALL.len();
            let path = Path_::ALL[i];
            bar.set_message(format!("round {}, {}", round + 1, path.name()));
            let want_socket = match path {
                Path_::VipSocket => true,
                Path_::VipTc => false,
                _ => socket_lb,
            };
            if want_socket != socket_lb {
                platform.apply(&topology(want_socket))?;
                socket_lb = want_socket;
            }
            pathcheck::wait_socket_lb(&instance, socket_lb)?;
            if path == Path_::Bare {
                pathcheck::detach_all(&instance)?;
                pathcheck::wait_detached(&instance, || {
                    loadgen::connection_rate(&client, direct, PORT, 1, PROBE).map(drop)
                })?;
            }
            let target = if matches!(path, Path_::Bare | Path_::Direct) {
                direct
            } else {
                vip
            };
            let before = Counters::read(&instance)?;
            let measured = (|| -> anyhow::Result<_> {
                let rr = loadgen::request_response(&client, target, PORT, trips / 10, trips)?;
                let cr = loadgen::connection_rate(&client, target, PORT, clients, conn_time)?;
                Ok((rr, cr))
            })();
            let after = Counters::read(&instance)?;
            if path == Path_::Bare {
                // Attach everything again (same topology: only the hooks are made).
                platform.apply(&topology(socket_lb))?;
                platform.wait_backends("web", PORT, 3)?;
            }
            let (rr, cr) = measured?;
            let mut samples = rr.samples;
            let mut lat = cr.latencies;
            let connections = 1 + lat.len() as u64;
            let r = Round {
                rr_p50_us: micros(quantile(&mut samples, 0.50)),
                rr_p90_us: micros(quantile(&mut samples, 0.90)),
                rr_p99_us: micros(quantile(&mut samples, 0.99)),
                conn_per_s: cr.connections as f64 / cr.elapsed.as_secs_f64(),
                conn_p50_us: micros(quantile(&mut lat, 0.50)),
                conn_p99_us: micros(quantile(&mut lat, 0.99)),
                conn_failures: cr.failures + rr.failures,
                stalls: cr.stalls + rr.stalls,
                wrong_path: pathcheck::check(path.expect(), before, after, connections).err(),
            };
            if r.conn_failures > 0 || r.wrong_path.is_some() {
                tracing::warn!(round, path = path.name(), ?r, "flagged");
            }
            tracing::info!(round, path = path.name(), ?r, "measured");
            results[i].push(r);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    drop(servers);
    drop(platform);

    let bare = &results[Path_::Bare as usize];
    let direct = &results[Path_::Direct as usize];
    let paths: Vec<PathResult> = Path_::ALL
        .iter()
        .zip(&results)
        .map(|(p, rounds)| PathResult {
            path: *p,
            rounds: rounds.clone(),
            median: median_round(rounds),
            ratio_to_direct: ratios(rounds, direct),
            ratio_to_bare: ratios(rounds, bare),
        })
        .collect();
    let result = LbResult {
        date: report::today(),
        quick,
        round_trips_per_round: trips,
        connection_seconds_per_round: conn_time.as_secs_f64(),
        parallel_clients: clients,
        paths,
    };
    let sections = [section(&result)];
    let w = report::write(
        out,
        "lb",
        "netctl benchmark: load balancing",
        &result,
        &sections,
    )?;
    report::print(&sections);
    tracing::info!(
        "wrote {}, {} and {}",
        w.json.display(),
        w.markdown.display(),
        w.html.display()
    );
    Ok(())
}

fn median_round(rs: &[Round]) -> Round {
    let m = |f: fn(&Round) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
    Round {
        rr_p50_us: m(|r| r.rr_p50_us),
        rr_p90_us: m(|r| r.rr_p90_us),
        rr_p99_us: m(|r| r.rr_p99_us),
        conn_per_s: m(|r| r.conn_per_s),
        conn_p50_us: m(|r| r.conn_p50_us),
        conn_p99_us: m(|r| r.conn_p99_us),
        conn_failures: rs.iter().map(|r| r.conn_failures).sum(),
        stalls: rs.iter().map(|r| r.stalls).sum(),
        wrong_path: rs.iter().find_map(|r| r.wrong_path.clone()),
    }
}

/// Each figure of `a` over `base`'s, paired round by round ([`paired_ratio`]).
fn ratios(a: &[Round], base: &[Round]) -> Ratios {
    let r = |f: fn(&Round) -> f64| paired_ratio(a, base, f);
    Ratios {
        rr_p50_us: r(|x| x.rr_p50_us),
        rr_p90_us: r(|x| x.rr_p90_us),
        rr_p99_us: r(|x| x.rr_p99_us),
        conn_per_s: r(|x| x.conn_per_s),
        conn_p50_us: r(|x| x.conn_p50_us),
        conn_p99_us: r(|x| x.conn_p99_us),
    }
}

fn section(r: &LbResult) -> report::Section {
    let text = format!(
        "Client namespace -> service (3 replicas, other tier). {} round(s); each: {} \
         request/response round trips of {} bytes on one connection, then {:.1} s of connect \
         + 1 round trip + close from {} parallel clients. Medians over rounds; ratios to \
         `direct` (dataplane attached, no LB) and to `bare` (no programs attached) are \
         medians of the rounds' own ratios, `-` when either is missing. `(!)`: failed or stalled connections, or the dataplane's \
         counters show the path was not taken.",
        r.paths.first().map_or(0, |p| p.rounds.len()),
        r.round_trips_per_round,
        loadgen::MESSAGE,
        r.connection_seconds_per_round,
        r.parallel_clients
    );
    let mut t = report::Table::new(&[
        "path",
        "RR p50 µs",
        "RR p90 µs",
        "RR p99 µs",
        "conn/s",
        "conn p50 µs",
        "conn p99 µs",
        "failures",
        "RR p50 / direct",
        "RR p50 / bare",
        "conn/s / direct",
        "conn/s / bare",
    ]);
    for p in &r.paths {
        let m = &p.median;
        let flagged = m.conn_failures > 0 || m.wrong_path.is_some();
        t.row(vec![
            format!("{}{}", p.path.name(), if flagged { " (!)" } else { "" }),
            format!("{:.1}", m.rr_p50_us),
            format!("{:.1}", m.rr_p90_us),
            format!("{:.1}", m.rr_p99_us),
            format!("{:.0}", m.conn_per_s),
            format!("{:.1}", m.conn_p50_us),
            format!("{:.1}", m.conn_p99_us),
            match &m.wrong_path {
                Some(w) => format!(
                    "{} ({} stalled); wrong path: {w}",
                    m.conn_failures, m.stalls
                ),
                None => format!("{} ({} stalled)", m.conn_failures, m.stalls),
            },
            show_ratio(p.ratio_to_direct.rr_p50_us, 3, ""),
            show_ratio(p.ratio_to_bare.rr_p50_us, 3, ""),
            show_ratio(p.ratio_to_direct.conn_per_s, 3, ""),
            show_ratio(p.ratio_to_bare.conn_per_s, 3, ""),
        ]);
    }
    report::Section {
        title: "Load balancing: bare and direct vs VIP (TC) vs VIP (socket LB)".into(),
        text,
        tables: vec![t],
        plots: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    /// The quick mode end to end (CI runs it so the benchmark cannot rot); it asserts that
    /// every path was measured without failures, not how fast they were.
    #[test]
    fn quick_run_measures_every_path() {
        let Some(dir) = crate::scenarios::test_env("lb") else {
            return;
        };
        super::run(true, &dir).expect("quick benchmark runs");
        let json = std::fs::read_dir(&dir)
            .expect("results")
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))
            .expect("a JSON result");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(json.path()).expect("read")).expect("json");
        let _ = std::fs::remove_dir_all(&dir);
        let paths = v["paths"].as_array().expect("paths");
        assert_eq!(paths.len(), 4);
        for p in paths {
            assert!(p["median"]["rr_p50_us"].as_f64().expect("p50") > 0.0, "{p}");
            assert!(
                p["median"]["conn_per_s"].as_f64().expect("rate") > 0.0,
                "{p}"
            );
            assert_eq!(p["median"]["conn_failures"], 0, "{p}");
            assert!(p["median"].get("wrong_path").is_none(), "path taken: {p}");
        }
    }
}
