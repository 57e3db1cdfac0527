//! `bench http`: the whole shop end to end — nginx, gateway, a product replica, Redis —
//! from the host through the port forward (`localhost:<port>` -> edge:80), `GET
//! /api/products` (cached), with our own load generator; optionally cross-checked with
//! `wrk`. The seed measured 54 requests/s at concurrency 50 with `ab` on its Flask stack.

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

use crate::{
    http_load::{self, Load},
    platform::BenchPlatform,
    report,
    stats::{micros, quantile},
};

const PREFIX: &str = "bh-";
/// The bench platform's subnets (three /24s), VIPs (/20 at .240) and host port.
const BLOCK: &str = "10.247.0.0/16";
const HOST_PORT: u16 = 18080;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Requests measured (default 50,000; 2,000 with --quick), after a warm-up.
    #[arg(long)]
    requests: Option<usize>,
    /// Connections open at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measure this URL of a platform that is already up (its host must be loopback or
    /// an address of a netctl platform on this host) instead of bringing one up.
    #[arg(long)]
    url: Option<String>,
    /// Also run `wrk` (same concurrency) on the same URL, as a cross-check.
    #[arg(long)]
    wrk: bool,
}

#[derive(Debug, Serialize)]
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
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: String,
}

#[derive(Debug, Serialize)]
struct HttpResult {
    date: String,
    quick: bool,
    url: String,
    /// Seconds `netctl up` took for the whole platform, when this run brought it up.
    up_seconds: Option<f64>,
    ours: Figures,
    wrk: Option<WrkFigures>,
    seed_requests_per_s: f64,
}

pub fn run(quick: bool, out: &Path, args: &Args) -> anyhow::Result<()> {
    let requests = args.requests.unwrap_or(if quick { 2_000 } else { 50_000 });
    let warmup = (requests / 10).clamp(500, 5_000);
    let (platform, url, up_seconds) = match &args.url {
        Some(url) => {
            check_local(url)?;
            (None, url.clone(), None)
        }
        None => {
            let started = Instant::now();
            let mut p = BenchPlatform::up(PREFIX, &topology()?)?;
            let took = started.elapsed().as_secs_f64();
            p.remove_data_on_drop();
            tracing::info!("the platform came up (all services healthy) in {took:.1}s");
            let url = format!("http://127.0.0.1:{HOST_PORT}/api/products");
            (Some(p), url, Some(took))
        }
    };
    let load = |n| Load {
        url: url.clone(),
        concurrency: args.concurrency,
        requests: n,
        threads: args.threads,
    };
    // Fills the cache, opens connections everywhere, lets discovery settle.
    let warm = http_load::run(&load(warmup))?;
    if warm.ok == 0 {
        bail!(
            "no request of the warm-up succeeded: {:?} {:?}",
            warm.statuses,
            warm.errors
        );
    }
    let o = http_load::run(&load(requests))?;
    let mut lat = o.latencies.clone();
    let ours = Figures {
        requests,
        concurrency: args.concurrency,
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
    };
    let wrk = if args.wrk {
        Some(wrk(&url, args.concurrency, if quick { 3 } else { 10 })?)
    } else {
        None
    };
    drop(platform);
    let result = HttpResult {
        date: report::today(),
        quick,
        url,
        up_seconds,
        ours,
        wrk,
        seed_requests_per_s: 54.0,
    };
    let md = markdown(&result);
    let (json, mdpath) = report::write(out, "http", &result, &md)?;
    println_report(&md);
    tracing::info!("wrote {} and {}", json.display(), mdpath.display());
    if result.ours.failures > 0 {
        bail!("{} requests failed", result.ours.failures);
    }
    Ok(())
}

/// The embedded default platform, moved to the bench's prefix, subnets and host port, and
/// kept off the machine's uplinks.
fn topology() -> anyhow::Result<String> {
    let mut t = Topology::parse(DEFAULT_TOPOLOGY).map_err(|e| anyhow::anyhow!("{e}"))?;
    let block: Ipv4Net = BLOCK.parse()?;
    t.platform.name = "bench-http".into();
    t.platform.prefix = PREFIX.into();
    t.platform.uplinks = Some(Vec::new());
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
            let (_, old, new) = moves
                .iter()
                .find(|(n, _, _)| *n == svc.network)
                .context("service on an unknown network")?;
            let a: Ipv4Addr = addr.parse()?;
            let offset = u32::from(a) - u32::from(old.network());
            svc.address = Some(Ipv4Addr::from(u32::from(new.network()) + offset).to_string());
        }
    }
    for pf in &mut t.port_forwards {
        pf.host_port = u32::from(HOST_PORT);
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
    for instance in netctl::controller::state::instances() {
        if let Ok(Some(state)) = netctl::controller::state::State::load(&instance) {
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

fn markdown(r: &HttpResult) -> String {
    let o = &r.ours;
    let hits = o.cache.get("HIT").copied().unwrap_or(0);
    let answered: usize = o.cache.values().sum();
    let mut s = format!(
        "# HTTP end to end ({})\n\n`GET {}`: nginx -> gateway -> product -> Redis, {} requests \
         at concurrency {} on keep-alive connections{}.\n\n\
         | tool | requests/s | p50 | p90 | p99 | max | failures |\n|---|---|---|---|---|---|---|\n\
         | netctl-bench | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
        r.date,
        r.url,
        o.requests,
        o.concurrency,
        if r.quick { " (quick)" } else { "" },
        o.requests_per_s,
        o.p50_us / 1e3,
        o.p90_us / 1e3,
        o.p99_us / 1e3,
        o.max_us / 1e3,
        o.failures,
    );
    if let Some(w) = &r.wrk {
        s.push_str(&format!(
            "| wrk | {:.0} | {:.2} ms | | {:.2} ms | | {} non-2xx, socket errors: {} |\n",
            w.requests_per_s,
            w.p50_us / 1e3,
            w.p99_us / 1e3,
            w.non_2xx,
            w.socket_errors
        ));
    }
    s.push_str(&format!(
        "| seed (ab, Flask) | {:.0} | | | | | |\n\nServed from Redis: {hits} of {answered} \
         (`X-Cache: HIT`). Replicas: {:?}. Connections: {}.{}\n",
        r.seed_requests_per_s,
        o.replicas,
        o.connections,
        r.up_seconds
            .map(|t| format!(" `netctl up` of the whole platform took {t:.1} s."))
            .unwrap_or_default()
    ));
    s
}

#[allow(clippy::print_stdout)]
fn println_report(md: &str) {
    println!("{md}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = topology().unwrap();
        let plan = netctl::topology::Source {
            name: "bench".into(),
            text,
        }
        .plan(None)
        .unwrap();
        assert_eq!(plan.prefix, PREFIX);
        assert_eq!(plan.supervised().count(), 9);
        assert!(
            plan.endpoints
                .iter()
                .all(|e| e.address.octets()[..2] == [10, 247])
        );
        assert_eq!(plan.port_forwards[0].host_port, HOST_PORT);
        assert_eq!(plan.uplinks, Some(Vec::new()));
    }

    #[test]
    fn load_goes_only_to_local_targets() {
        assert!(check_local("http://127.0.0.1:18080/").is_ok());
        assert!(check_local("http://192.0.2.7/").is_err());
        assert!(check_local("http://example.com/").is_err());
    }
}
