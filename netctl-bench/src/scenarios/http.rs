//! `bench http`: the whole shop end to end — nginx, gateway, a product replica, Redis —
//! from the host through the port forward (`localhost:<port>` -> edge:80), `GET
//! /api/products` (cached), with our own load generator; optionally cross-checked with
//! `wrk` (the two tools' requests/s compared, a gap over 25% flagged); eBPF and iptables
//! dataplanes side by side. The seed's figure (54 requests/s at concurrency 50 with `ab`
//! on its Flask stack) is quoted from the seed, not measured here.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use netctl::topology::{DEFAULT_TOPOLOGY, Topology};
use serde::Serialize;

use super::crosscheck;
use crate::{
    http_load::{self, Load},
    platform::BenchPlatform,
    report::{self, Section, Table},
    stats::{micros, quantile},
};

/// One platform per dataplane, side by side: its own prefix, subnets (three /24s, VIPs a
/// /20 at .240) and host port.
#[derive(Debug, Clone, Copy)]
struct Side {
    dataplane: &'static str,
    prefix: &'static str,
    block: &'static str,
    host_port: u16,
}

const SIDES: [Side; 2] = [
    Side {
        dataplane: "ebpf",
        prefix: "bh-",
        block: "10.247.0.0/16",
        host_port: 18080,
    },
    Side {
        dataplane: "iptables",
        prefix: "bi-",
        block: "10.246.0.0/16",
        host_port: 18081,
    },
];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Requests measured per round and dataplane (default 50,000; 2,000 with --quick),
    /// after a warm-up.
    #[arg(long)]
    requests: Option<usize>,
    /// Rounds, the dataplanes taking turns (default 3; 1 with --quick); the median round
    /// of each dataplane is reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// Connections open at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only this dataplane (`ebpf` or `iptables`); default both, side by side.
    #[arg(long)]
    dataplane: Option<String>,
    /// Measure this URL of a platform that is already up (its host must be loopback or
    /// an address of a netctl platform on this host) instead of bringing one up.
    #[arg(long)]
    url: Option<String>,
    /// Also run `wrk` (same concurrency) on the same URLs, as a cross-check.
    #[arg(long)]
    wrk: bool,
}

impl Args {
    /// What `bench all` runs: both dataplanes, the defaults, cross-checked with wrk.
    pub fn for_all() -> Args {
        Args {
            requests: None,
            rounds: None,
            concurrency: 50,
            threads: 2,
            dataplane: None,
            url: None,
            wrk: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Figures {
    requests: usize,
    concurrency: usize,
    seconds: f64,
    requests_per_s: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    failures: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
    errors: std::collections::BTreeMap<String, usize>,
    /// Answers per product replica (`X-Instance-Id`).
    replicas: std::collections::BTreeMap<String, usize>,
    /// Answers per `X-Cache` value.
    cache: std::collections::BTreeMap<String, usize>,
    connections: usize,
}

#[derive(Debug, Serialize)]
struct WrkFigures {
    /// Ours over wrk's requests/s (`None`: either is missing).
    ours_over_wrk: Option<f64>,
    /// The two disagree by more than [`crate::scenarios::crosscheck::MAX_GAP`].
    disagree: bool,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: String,
}

/// One dataplane's figures.
#[derive(Debug, Serialize)]
struct SideResult {
    dataplane: String,
    url: String,
    /// Seconds `netctl up` took for the whole platform, when this run brought it up.
    up_seconds: Option<f64>,
    /// Every round, in order.
    rounds: Vec<Figures>,
    /// The round with the median requests/s.
    median: Figures,
    wrk: Option<WrkFigures>,
}

#[derive(Debug, Serialize)]
pub struct HttpResult {
    date: String,
    quick: bool,
    requests_per_round: usize,
    rounds: usize,
    concurrency: usize,
    sides: Vec<SideResult>,
    /// Quoted from the seed (`ab`, Flask), not measured by this benchmark.
    seed_requests_per_s_quoted: f64,
}

/// A platform to measure: up (or given by URL), warmed up.
struct Target {
    dataplane: String,
    url: String,
    up_seconds: Option<f64>,
    _platform: Option<BenchPlatform>,
    rounds: Vec<Figures>,
}

pub fn run(quick: bool, out: &Path, args: &Args) -> anyhow::Result<()> {
    let result = measure(quick, args)?;
    let section = section(&result);
    let written = report::write(
        out,
        "http",
        "HTTP end to end: eBPF vs iptables",
        &result,
        std::slice::from_ref(&section),
    )?;
    println_report(&section.markdown(""));
    tracing::info!(
        "wrote {}, {} and {}",
        written.json.display(),
        written.markdown.display(),
        written.html.display()
    );
    check_failures(&result)
}

/// An error when a request failed (after the report is written: the figures are kept).
pub fn check_failures(result: &HttpResult) -> anyhow::Result<()> {
    let failures: usize = result
        .sides
        .iter()
        .flat_map(|s| &s.rounds)
        .map(|f| f.failures)
        .sum();
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    Ok(())
}

/// Brings the platforms up (unless given a URL), measures them in turns, brings them down.
pub fn measure(quick: bool, args: &Args) -> anyhow::Result<HttpResult> {
    let requests = args.requests.unwrap_or(if quick { 2_000 } else { 50_000 });
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let warmup = (requests / 10).clamp(500, 5_000);
    let mut targets = Vec::new();
    if let Some(url) = &args.url {
        check_local(url)?;
        targets.push(Target {
            dataplane: "given".into(),
            url: url.clone(),
            up_seconds: None,
            _platform: None,
            rounds: Vec::new(),
        });
    } else {
        for side in SIDES {
            if args.dataplane.as_ref().is_some_and(|d| d != side.dataplane) {
                continue;
            }
            let started = Instant::now();
            let mut p = BenchPlatform::up(side.prefix, &topology(side)?)?;
            let took = started.elapsed().as_secs_f64();
            p.remove_data_on_drop();
            tracing::info!(
                "the {} platform came up (all services healthy) in {took:.1}s",
                side.dataplane
            );
            targets.push(Target {
                dataplane: side.dataplane.into(),
                url: format!("http://127.0.0.1:{}/api/products", side.host_port),
                up_seconds: Some(took),
                _platform: Some(p),
                rounds: Vec::new(),
            });
        }
        if targets.is_empty() {
            bail!("--dataplane is ebpf or iptables");
        }
    }
    let load = |url: &str, n| Load {
        url: url.to_string(),
        concurrency: args.concurrency,
        requests: n,
        threads: args.threads,
    };
    // Fills the caches, opens connections everywhere, lets discovery settle.
    for t in &targets {
        let warm = http_load::run(&load(&t.url, warmup))?;
        if warm.ok == 0 {
            bail!(
                "{}: no request of the warm-up succeeded: {:?} {:?}",
                t.dataplane,
                warm.statuses,
                warm.errors
            );
        }
    }
    // The dataplanes take turns, so that the machine's moods fall on both.
    let bar = netctl::output::bar((rounds * targets.len()) as u64, "rounds");
    for round in 0..rounds {
        for t in &mut targets {
            bar.set_message(t.dataplane.clone());
            let o = http_load::run(&load(&t.url, requests))?;
            bar.inc(1);
            let f = figures(&o, requests, args.concurrency);
            tracing::info!(
                "round {}: {} {:.0} requests/s, p99 {:.2} ms, {} failures",
                round + 1,
                t.dataplane,
                f.requests_per_s,
                f.p99_us / 1e3,
                f.failures
            );
            t.rounds.push(f);
        }
    }
    bar.finish_and_clear();
    let mut sides = Vec::new();
    for t in targets {
        let mut by_rate = t.rounds.clone();
        by_rate.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
        let median = by_rate[by_rate.len() / 2].clone();
        let wrk = if args.wrk {
            let mut w = wrk(&t.url, args.concurrency, if quick { 3 } else { 10 })?;
            w.ours_over_wrk = report::ratio(median.requests_per_s, w.requests_per_s);
            w.disagree = crosscheck::disagree(w.ours_over_wrk);
            Some(w)
        } else {
            None
        };
        sides.push(SideResult {
            dataplane: t.dataplane,
            url: t.url,
            up_seconds: t.up_seconds,
            rounds: t.rounds,
            median,
            wrk,
        });
        // The platform goes down here (dropped with its target).
    }
    Ok(HttpResult {
        date: report::today(),
        quick,
        requests_per_round: requests,
        rounds,
        concurrency: args.concurrency,
        sides,
        seed_requests_per_s_quoted: 54.0,
    })
}

fn figures(o: &http_load::Outcome, requests: usize, concurrency: usize) -> Figures {
    let mut lat = o.latencies.clone();
    Figures {
        requests,
        concurrency,
        seconds: o.elapsed.as_secs_f64(),
        requests_per_s: o.per_second(),
        p50_us: micros(quantile(&mut lat, 0.50)),
        p90_us: micros(quantile(&mut lat, 0.90)),
        p99_us: micros(quantile(&mut lat, 0.99)),
        max_us: micros(quantile(&mut lat, 1.0)),
        failures: o.failures,
        statuses: o.statuses.clone(),
        errors: o.errors.clone(),
        replicas: o.instances.clone(),
        cache: o.cache.clone(),
        connections: o.connections,
    }
}

/// The embedded default platform, moved to the side's prefix, subnets, host port and
/// dataplane, and kept off the machine's uplinks.
fn topology(side: Side) -> anyhow::Result<String> {
    let mut t = Topology::parse(DEFAULT_TOPOLOGY).map_err(|e| anyhow::anyhow!("{e}"))?;
    let block: Ipv4Net = side.block.parse()?;
    t.platform.name = format!("bench-http-{}", side.dataplane);
    t.platform.prefix = side.prefix.into();
    t.platform.uplinks = Some(Vec::new());
    t.dataplane.mode = side.dataplane.into();
    t.platform.service_cidr =
        Ipv4Net::new(Ipv4Addr::from(u32::from(block.network()) + 240 * 256), 20)?.to_string();
    let mut moves: Vec<(String, Ipv4Net, Ipv4Net)> = Vec::new();
    for (i, (name, net)) in t.networks.iter_mut().enumerate() {
        let old: Ipv4Net = net.subnet.parse()?;
        let new = Ipv4Net::new(
            Ipv4Addr::from(u32::from(block.network()) + (i as u32) * 256),
            old.prefix_len(),
        )?;
        net.subnet = new.to_string();
        net.gateway = None;
        moves.push((name.clone(), old, new));
    }
    for svc in t.services.values_mut() {
        svc.vip = None;
        if let Some(addr) = &svc.address {
            let network = svc.network.as_deref().unwrap_or_default();
            let (_, old, new) = moves
                .iter()
                .find(|(n, _, _)| n == network)
                .context("service on an unknown network")?;
            let a: Ipv4Addr = addr.parse()?;
            let offset = u32::from(a) - u32::from(old.network());
            svc.address = Some(Ipv4Addr::from(u32::from(new.network()) + offset).to_string());
        }
    }
    for pf in &mut t.port_forwards {
        pf.host_port = u32::from(side.host_port);
    }
    Ok(toml::to_string(&t)?)
}

/// Load only goes to this host's loopback or to a netctl platform on it.
fn check_local(url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    let Ok(IpAddr::V4(ip)) = host.parse::<IpAddr>() else {
        bail!("{url}: give the host as an IPv4 address");
    };
    if ip.is_loopback() {
        return Ok(());
    }
    for instance in netctl::reconcile::state::instances() {
        if let Ok(Some(state)) = netctl::reconcile::state::State::load(&instance) {
            let plan = &state.plan;
            if plan.endpoints.iter().any(|e| e.address == ip)
                || plan.services.iter().any(|s| s.vip == ip)
            {
                return Ok(());
            }
        }
    }
    bail!(
        "{ip} is neither loopback nor an address of a netctl platform on this host: refusing to send it load"
    )
}

fn wrk(url: &str, concurrency: usize, seconds: u64) -> anyhow::Result<WrkFigures> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{concurrency}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    tracing::info!("wrk:\n{text}");
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkFigures> {
    let value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rps: f64 = value("Requests/sec:")
        .context("wrk printed no Requests/sec")?
        .parse()?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        let v = value(p).with_context(|| format!("wrk printed no {p} latency"))?;
        wrk_duration_us(&v)
    };
    Ok(WrkFigures {
        ours_over_wrk: None,
        disagree: false,
        requests_per_s: rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
        non_2xx: value("Non-2xx or 3xx responses:").map_or(Ok(0), |v| v.parse())?,
        socket_errors: value("Socket errors:").unwrap_or_else(|| "none".into()),
    })
}

/// `812.00us`, `1.23ms`, `2.00s` -> microseconds.
fn wrk_duration_us(v: &str) -> anyhow::Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("{v:?} is not a wrk duration");
    };
    Ok(num.trim().parse::<f64>()? * mult)
}

pub fn section(r: &HttpResult) -> Section {
    let (requests, rounds, concurrency) = (r.requests_per_round, r.rounds, r.concurrency);
    let mut table = Table::new(&[
        "dataplane",
        "requests/s",
        "vs eBPF",
        "p50",
        "p90",
        "p99",
        "max",
        "failures",
    ]);
    let ebpf = r
        .sides
        .iter()
        .find(|s| s.dataplane == "ebpf")
        .map(|s| s.median.requests_per_s);
    let ms = |us: f64| format!("{:.2} ms", us / 1e3);
    for side in &r.sides {
        let m = &side.median;
        table.row(vec![
            side.dataplane.clone(),
            format!("{:.0}", m.requests_per_s),
            ebpf.map_or("-".into(), |e| format!("{:.2}x", m.requests_per_s / e)),
            ms(m.p50_us),
            ms(m.p90_us),
            ms(m.p99_us),
            ms(m.max_us),
            side.rounds
                .iter()
                .map(|f| f.failures)
                .sum::<usize>()
                .to_string(),
        ]);
        if let Some(w) = &side.wrk {
            table.row(vec![
                format!(
                    "{} (wrk){}",
                    side.dataplane,
                    if w.disagree { " (!)" } else { "" }
                ),
                format!("{:.0}", w.requests_per_s),
                format!("ours / wrk {}", report::show_ratio(w.ours_over_wrk, 2, "x")),
                ms(w.p50_us),
                String::new(),
                ms(w.p99_us),
                String::new(),
                format!("{} non-2xx, socket errors: {}", w.non_2xx, w.socket_errors),
            ]);
        }
    }
    table.row(vec![
        "seed (ab, Flask): quoted from the seed, not measured".into(),
        format!("{:.0}", r.seed_requests_per_s_quoted),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let mut text = format!(
        "`GET /api/products` from the host through the port forward: nginx -> gateway -> \
         product -> Redis. {requests} requests per round at concurrency {concurrency} on \
         keep-alive connections, {rounds} round(s), the dataplanes taking turns; the median \
         round of each{}.",
        if r.quick { " (quick)" } else { "" }
    );
    if r.sides.iter().any(|s| s.wrk.is_some()) {
        text.push_str(&format!(
            " `wrk` ran on the same URL after our load generator; `(!)` marks a gap over \
             {:.0}% between the two tools' requests/s.",
            crosscheck::MAX_GAP * 100.0
        ));
    }
    text.push_str(
        " The seed's row is quoted from the seed's own notes (`ab` against its Flask stack), \
         not measured by this benchmark.",
    );
    for side in &r.sides {
        let m = &side.median;
        let hits = m.cache.get("HIT").copied().unwrap_or(0);
        let answered: usize = m.cache.values().sum();
        text.push_str(&format!(
            "\n\n{}: served from Redis {hits} of {answered} (`X-Cache: HIT`); replicas {:?}; \
             {} connections{}.",
            side.dataplane,
            m.replicas,
            m.connections,
            side.up_seconds
                .map(|t| format!("; `netctl up` of the whole platform took {t:.1} s"))
                .unwrap_or_default()
        ));
    }
    Section {
        title: format!("HTTP end to end ({})", r.date),
        text,
        tables: vec![table],
        plots: Vec::new(),
    }
}

#[allow(clippy::print_stdout)]
fn println_report(md: &str) {
    println!("{md}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick mode end to end on both dataplanes (CI runs it so the benchmark cannot
    /// rot): every request answered 200 from Redis, by every replica, wrk beside it.
    #[test]
    fn quick_run_serves_every_request_on_both_dataplanes() {
        let Some(dir) = crate::scenarios::test_env("http") else {
            return;
        };
        let result = measure(true, &Args::for_all()).expect("quick benchmark runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(result.sides.len(), 2);
        for side in &result.sides {
            let m = &side.median;
            assert_eq!(m.requests, 2_000, "{}: {m:?}", side.dataplane);
            assert_eq!(m.failures, 0, "{}: {m:?}", side.dataplane);
            assert_eq!(m.statuses.get(&200), Some(&2_000), "{}", side.dataplane);
            assert_eq!(m.replicas.len(), 3, "every replica served: {m:?}");
            assert!(m.requests_per_s > 0.0 && m.p50_us > 0.0, "{m:?}");
            let wrk = side.wrk.as_ref().expect("wrk ran");
            assert!(wrk.requests_per_s > 0.0, "{wrk:?}");
            assert_eq!(wrk.non_2xx, 0, "{wrk:?}");
        }
    }

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:18080/api/products
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    2.00ms  40.00ms   90.00%
  Latency Distribution
     50%    2.50ms
     75%    3.00ms
     90%    4.00ms
     99%   12.00ms
  160000 requests in 10.00s, 30.00MB read
Requests/sec:  16000.50
Transfer/sec:      3.00MB
";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests_per_s, 16000.5);
        assert_eq!(w.p50_us, 2500.0);
        assert_eq!(w.p99_us, 12000.0);
        assert_eq!(w.non_2xx, 0);
        assert_eq!(wrk_duration_us("812.00us").unwrap(), 812.0);
        assert!(wrk_duration_us("3m").is_err());
    }

    #[test]
    fn the_bench_platform_is_the_default_moved_aside() {
        let text = topology(SIDES[1]).unwrap();
        let plan = netctl::topology::Source {
            name: "bench".into(),
            text,
        }
        .plan(None)
        .unwrap();
        assert_eq!(plan.prefix, SIDES[1].prefix);
        assert_eq!(plan.dataplane.mode.name(), "iptables");
        assert_eq!(plan.supervised().count(), 9);
        assert!(
            plan.endpoints
                .iter()
                .all(|e| e.address.octets()[..2] == [10, 246])
        );
        assert_eq!(plan.port_forwards[0].host_port, SIDES[1].host_port);
        assert_eq!(plan.uplinks, Some(Vec::new()));
    }

    #[test]
    fn load_goes_only_to_local_targets() {
        assert!(check_local("http://127.0.0.1:18080/").is_ok());
        assert!(check_local("http://192.0.2.7/").is_err());
        assert!(check_local("http://example.com/").is_err());
    }
}
