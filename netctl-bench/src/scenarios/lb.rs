//! `bench lb`: TCP request/response latency and new-connection rate from a client namespace
//! to a service of three replicas on another tier, by three paths measured side by side:
//!
//! - `direct`: to one backend's own address (no load balancing: the floor);
//! - `vip-tc`: to the VIP with socket LB off: DNAT/reverse NAT by the TC programs;
//! - `vip-socket`: to the VIP with socket LB on: connect() goes straight to a backend.
//!
//! The paths take turns within each round (socket LB is switched by `netctl up` with the
//! changed topology: a map update, no reload); the report gives medians over the rounds and
//! ratios to `direct`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use serde::Serialize;

use crate::{
    loadgen::{self, EchoServer},
    platform::BenchPlatform,
    report,
    stats::{median, micros, quantile},
};

const PORT: u16 = 7000;
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
    Direct,
    VipTc,
    VipSocket,
}

impl Path_ {
    const ALL: [Path_; 3] = [Path_::Direct, Path_::VipTc, Path_::VipSocket];

    fn name(self) -> &'static str {
        match self {
            Path_::Direct => "direct",
            Path_::VipTc => "vip-tc",
            Path_::VipSocket => "vip-socket",
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
    conn_failures: usize,
}

#[derive(Debug, Serialize)]
struct PathResult {
    path: Path_,
    rounds: Vec<Round>,
    median: Round,
    /// `median / direct median` for each figure.
    ratio_to_direct: Round,
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

    let mut results: Vec<Vec<Round>> = vec![Vec::new(); 3];
    let mut socket_lb = false;
    for round in 0..rounds {
        // Rotate the order so no path always runs first (warm caches, CPU frequency).
        for k in 0..3 {
            let i = (round + k) % 3;
            let path = Path_::ALL[i];
            let want_socket = path == Path_::VipSocket;
            if want_socket != socket_lb {
                platform.apply(&topology(want_socket))?;
                socket_lb = want_socket;
                // The controller applies CONFIG within a tick.
                std::thread::sleep(Duration::from_millis(400));
            }
            let target = if path == Path_::Direct { direct } else { vip };
            let mut rr = loadgen::request_response(&client, target, PORT, trips / 10, trips)?;
            let cr = loadgen::connection_rate(&client, target, PORT, clients, conn_time)?;
            let mut lat = cr.latencies;
            let r = Round {
                rr_p50_us: micros(quantile(&mut rr, 0.50)),
                rr_p90_us: micros(quantile(&mut rr, 0.90)),
                rr_p99_us: micros(quantile(&mut rr, 0.99)),
                conn_per_s: cr.connections as f64 / cr.elapsed.as_secs_f64(),
                conn_p50_us: micros(quantile(&mut lat, 0.50)),
                conn_p99_us: micros(quantile(&mut lat, 0.99)),
                conn_failures: cr.failures,
            };
            tracing::info!(round, path = path.name(), ?r, "measured");
            results[i].push(r);
        }
    }
    drop(servers);
    drop(platform);

    let medians: Vec<Round> = results.iter().map(|rs| median_round(rs)).collect();
    let direct_m = medians[0].clone();
    let paths: Vec<PathResult> = Path_::ALL
        .iter()
        .zip(results)
        .zip(&medians)
        .map(|((p, rounds), m)| PathResult {
            path: *p,
            rounds,
            median: m.clone(),
            ratio_to_direct: ratio(m, &direct_m),
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
    let md = markdown(&result);
    let (json, mdpath) = report::write(out, "lb", &result, &md)?;
    println_report(&md);
    tracing::info!("wrote {} and {}", json.display(), mdpath.display());
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
    }
}

fn ratio(a: &Round, base: &Round) -> Round {
    let r = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
    Round {
        rr_p50_us: r(a.rr_p50_us, base.rr_p50_us),
        rr_p90_us: r(a.rr_p90_us, base.rr_p90_us),
        rr_p99_us: r(a.rr_p99_us, base.rr_p99_us),
        conn_per_s: r(a.conn_per_s, base.conn_per_s),
        conn_p50_us: r(a.conn_p50_us, base.conn_p50_us),
        conn_p99_us: r(a.conn_p99_us, base.conn_p99_us),
        conn_failures: a.conn_failures,
    }
}

fn markdown(r: &LbResult) -> String {
    let mut s = format!(
        "## Load balancing: client namespace -> service (3 replicas, other tier)\n\n\
         {} round(s); each: {} request/response round trips of {} bytes on one connection, \
         then {:.1} s of connect + 1 round trip + close from {} parallel clients. Medians over \
         rounds; ratios to `direct`.\n\n\
         | path | RR p50 µs | RR p90 µs | RR p99 µs | conn/s | conn p50 µs | conn p99 µs | failures | RR p50 ratio | conn/s ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.paths.first().map_or(0, |p| p.rounds.len()),
        r.round_trips_per_round,
        loadgen::MESSAGE,
        r.connection_seconds_per_round,
        r.parallel_clients
    );
    for p in &r.paths {
        let m = &p.median;
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {:.3} |\n",
            p.path.name(),
            m.rr_p50_us,
            m.rr_p90_us,
            m.rr_p99_us,
            m.conn_per_s,
            m.conn_p50_us,
            m.conn_p99_us,
            m.conn_failures,
            p.ratio_to_direct.rr_p50_us,
            p.ratio_to_direct.conn_per_s
        ));
    }
    s
}

fn println_report(md: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{md}");
}

#[cfg(test)]
mod tests {
    /// The quick mode end to end (CI runs it so the benchmark cannot rot); it asserts that
    /// every path was measured without failures, not how fast they were.
    #[test]
    fn quick_run_measures_every_path() {
        if !nix_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let netctl = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("netctl"))
            .expect("target dir");
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var("NETCTL_BIN", &netctl) };
        let dir = std::env::temp_dir().join(format!("netctl-bench-test-{}", std::process::id()));
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
        assert_eq!(paths.len(), 3);
        for p in paths {
            assert!(p["median"]["rr_p50_us"].as_f64().expect("p50") > 0.0, "{p}");
            assert!(
                p["median"]["conn_per_s"].as_f64().expect("rate") > 0.0,
                "{p}"
            );
            assert_eq!(p["median"]["conn_failures"], 0, "{p}");
        }
    }

    fn nix_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
