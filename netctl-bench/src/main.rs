//! `netctl-bench`: benchmarks of the netctl dataplane, run as root by `cargo xtask bench`.
//! Every figure is measured side by side in one run and reported as a ratio to a baseline,
//! as medians over repeated rounds, because absolute times on a shared machine are noisy.

mod http_load;
mod loadgen;
mod pathcheck;
mod pin;
mod platform;
mod plot;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "netctl-bench", about = "netctl benchmarks")]
struct Cli {
    /// CI-sized run: fewer rounds, shorter measurements.
    #[arg(long, global = true)]
    quick: bool,
    /// Where to write `<date>T<time>-<bench>.json`, `.md` and `.html`.
    #[arg(long, global = true, default_value = "bench-results")]
    out: std::path::PathBuf,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Load balancing: TCP request/response latency and new-connection rate through a VIP
    /// (TC path, socket LB) against the direct path to a backend.
    Lb,
    /// Latency (request/response, new connection; p50/p90/p99) for direct, eBPF TC, eBPF
    /// socket LB and iptables, with 1 to 10,000 services installed.
    Latency,
    /// Connection rate (parallel clients) for the same paths and service counts.
    Rate,
    /// Latency and connection rate in one run (one platform per service count).
    Scale,
    /// Control plane: time to apply N services and to change one backend, eBPF vs iptables.
    Control,
    /// Per-packet cost of the TC program (BPF_PROG_TEST_RUN), new and established flows.
    Packet,
    /// Our load generator against sockperf on the same paths.
    Crosscheck,
    /// HTTP end to end: the reference platform's `GET /api/products` through the host
    /// port, nginx, the gateway and a product replica, from Redis; requests/s, p50/p99,
    /// eBPF vs iptables.
    Http(scenarios::http::Args),
    /// Everything above except `lb` (its paths are the 1-service cells of `scale`), `http`
    /// included (cross-checked with wrk), then one combined report with the goals.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    if cli.quick {
        report::mark_quick();
    }
    let both = scenarios::scale::Parts {
        latency: true,
        rate: true,
    };
    let result = match cli.bench {
        Bench::Lb => scenarios::lb::run(cli.quick, &cli.out),
        Bench::Latency => scenarios::scale::run(
            cli.quick,
            scenarios::scale::Parts {
                latency: true,
                rate: false,
            },
            &cli.out,
        )
        .map(drop),
        Bench::Rate => scenarios::scale::run(
            cli.quick,
            scenarios::scale::Parts {
                latency: false,
                rate: true,
            },
            &cli.out,
        )
        .map(drop),
        Bench::Scale => scenarios::scale::run(cli.quick, both, &cli.out).map(drop),
        Bench::Control => scenarios::control::run(cli.quick, &cli.out).map(drop),
        Bench::Packet => scenarios::packet::run(cli.quick, &cli.out).map(drop),
        Bench::Crosscheck => scenarios::crosscheck::run(cli.quick, &cli.out).map(drop),
        Bench::Http(args) => scenarios::http::run(cli.quick, &cli.out, &args),
        Bench::All => scenarios::all::run(cli.quick, &cli.out, &scenarios::http::Args::for_all()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
