//! `netctl-bench`: benchmarks of the netctl dataplane, run as root by `cargo xtask bench`.
//! Every figure is measured side by side in one run and reported as a ratio to a baseline,
//! as medians over repeated rounds, because absolute times on a shared machine are noisy.

mod http_load;
mod loadgen;
mod platform;
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
    /// Where to write `<date>-<bench>.json` and `.md`.
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
    /// HTTP end to end: the reference platform's `GET /api/products` through the host
    /// port, nginx, the gateway and a product replica, from Redis; requests/s, p50/p99.
    Http(scenarios::http::Args),
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
    let result = match cli.bench {
        Bench::Lb => scenarios::lb::run(cli.quick, &cli.out),
        Bench::Http(args) => scenarios::http::run(cli.quick, &cli.out, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
