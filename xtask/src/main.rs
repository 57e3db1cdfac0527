//! `cargo xtask <task>`: everything around the build that cargo alone does not do.
//!
//! - `setup`: Debian packages, nightly rust-src, bpf-linker (idempotent, quiet when done)
//! - `build-ebpf`: the eBPF object, into `target/bpf/`
//! - `lint`: rustfmt + clippy -D warnings for the workspace and the eBPF crate; the fuzz
//!   targets compile
//! - `test`: lint, then every test (unit, BPF_PROG_TEST_RUN, integration as root)
//! - `bench`, `fuzz`, `soak`: the long runs (benchmarks, libFuzzer, the controller's
//!   memory under load and repeated up/down cycles), whose short versions the tests run

mod ebpf;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "netctl's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing netctl needs on a fresh machine (idempotent).
    Setup,
    /// Build the eBPF object (netctl's own build does this too).
    BuildEbpf,
    /// cargo fmt --check and clippy -D warnings on both crates sets.
    Lint,
    /// Benchmarks (as root): `bench all|latency|rate|scale|control|packet|crosscheck|lb|http
    /// [--quick]` (`http --wrk` cross-checks with wrk); results in bench-results/ (JSON,
    /// Markdown, HTML, SVG plots).
    Bench {
        /// Arguments for netctl-bench, e.g. `lb --quick`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Long fuzzing runs with libFuzzer (cargo-fuzz), e.g. `fuzz topology --seconds 600`.
    /// The test suite runs short deterministic versions of every target.
    Fuzz {
        /// Target: `topology`, `registry` (registration bodies) or `order` (order bodies).
        target: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Soaks (as root): the default platform (in a test prefix) under steady HTTP load for
    /// `--seconds` (600), sampling the controller's memory and descriptors, failing when
    /// they grow past their bound after warm-up; or `--cycles N` up/down cycles of it,
    /// checking that nothing is left. CI runs short versions of both.
    Soak {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Run N up/down cycles (the leak test) instead of the load soak.
        #[arg(long)]
        cycles: Option<u64>,
    },
    /// Lint, then run the whole test suite (needs root for the integration tests).
    Test {
        /// Skip the lint step.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for the test runner (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(&root()),
        Task::BuildEbpf => build_ebpf(),
        Task::Lint => lint(),
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Bench { args } => bench(&args),
        Task::Fuzz { target, seconds } => fuzz(&target, seconds),
        Task::Soak { seconds, cycles } => soak(seconds, cycles),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's manifest lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build_ebpf() -> anyhow::Result<()> {
    let root = root();
    let obj = ebpf::build(&root, &root.join("target").join("bpf")).map_err(anyhow::Error::msg)?;
    eprintln!("eBPF object: {}", obj.display());
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    let root = root();
    run(Command::new("cargo")
        .args(["fmt", "--all", "--check"])
        .current_dir(&root))?;
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root))?;
    // The fuzz targets are their own workspace (cargo-fuzz builds them with sanitizers):
    // checked here so that they cannot rot between fuzzing runs.
    run(Command::new("cargo")
        .args(["check", "--quiet", "--bins", "--manifest-path"])
        .arg(root.join("fuzz").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target").join("fuzz-check"))
        .current_dir(&root))?;
    let ebpf_dir = root.join("netctl-ebpf");
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "fmt", "--check"])
        .current_dir(&ebpf_dir)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "--release", "--quiet"])
        .arg("--target-dir")
        .arg(root.join("target").join("bpf"))
        .args(["--", "-D", "warnings"])
        .current_dir(&ebpf_dir)
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn test(no_lint: bool, extra: &[String]) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!(
            "the integration tests create namespaces and load eBPF programs: run as root \
             (sudo -E cargo xtask test)"
        );
    }
    if !no_lint {
        lint()?;
    }
    let root = root();
    if !setup::nextest_works() {
        bail!(
            "cargo-nextest is missing (the suite's groups and timeouts live in .config/nextest.toml): run `cargo xtask setup`"
        );
    }
    // Everything but the tests that change the host's firewall, in parallel; then those
    // alone, since a FORWARD DROP they set would cut off every other test's bridges.
    run(Command::new("cargo")
        .args(["nextest", "run", "--workspace", "--no-fail-fast"])
        .args(["-E", &format!("not ({HOST_FIREWALL})")])
        .args(extra)
        .current_dir(&root))?;
    run(Command::new("cargo")
        .args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--no-tests=pass",
        ])
        .args(["-E", HOST_FIREWALL])
        .args(extra)
        .current_dir(&root))
}

/// The tests that set the host's FORWARD policy and start dockerd.
const HOST_FIREWALL: &str = "binary(host_firewall)";

/// Builds netctl and netctl-bench (release) and runs the benchmark.
fn bench(args: &[String]) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("benchmarks bring up namespaces and eBPF programs: run as root");
    }
    let root = root();
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "netctl",
            "-p",
            "netctl-bench",
        ])
        .current_dir(&root))?;
    run(Command::new(root.join("target/release/netctl-bench"))
        .args(args)
        .current_dir(&root))
}

/// Runs the soak test (or the up/down cycle test) with its long settings. `cargo test`,
/// not nextest: nextest's slow-test timeout would end a 10-minute run.
fn soak(seconds: u64, cycles: Option<u64>) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the soak brings up a platform (namespaces, eBPF programs): run as root");
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "-p", "netctl"]).current_dir(root());
    match cycles {
        Some(n) => {
            cmd.args([
                "--test",
                "platform",
                "operations::repeated_up_down_cycles_of_the_default_platform_leave_nothing",
            ])
            .env("NETCTL_CYCLES", n.to_string());
        }
        None => {
            // The steady-state watch of the probes: 3 minutes (the issue's figure).
            cmd.args(["--test", "platform", "soak::"])
                .env("NETCTL_SOAK_SECS", seconds.to_string())
                .env("NETCTL_STEADY_SECS", "180");
        }
    }
    run(cmd.args(["--", "--nocapture", "--test-threads", "1"]))
}

/// Installs cargo-fuzz if needed and runs one target, seeded with the real topologies.
fn fuzz(target: &str, seconds: u64) -> anyhow::Result<()> {
    if !["topology", "registry", "order"].contains(&target) {
        bail!("no fuzz target {target:?}: topology, registry or order");
    }
    let root = root();
    let installed = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("fuzz: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "--quiet", "--locked", "cargo-fuzz"]))?;
    }
    let corpus = root.join("fuzz").join("corpus").join(target);
    // Seeds: the real files and request bodies each target starts from.
    let seeds: &[(&str, &str)] = match target {
        "topology" => &[],
        "registry" => &[
            (
                "product.json",
                r#"{"service": "product", "id": "product-1", "port": 5000, "metadata": {"zone": "a"}}"#,
            ),
            (
                "address.json",
                r#"{"service": "order", "id": "o:1", "address": "10.0.0.10", "port": 5000, "ttl_secs": 30}"#,
            ),
        ],
        "order" => &[
            (
                "order.json",
                r#"{"customer_id": "c-1", "product_id": "1", "quantity": 2}"#,
            ),
            (
                "edge.json",
                r#"{"customer_id": "k", "product_id": "3", "quantity": 1000}"#,
            ),
        ],
        other => bail!("no fuzz target {other:?}: topology, registry or order"),
    };
    std::fs::create_dir_all(&corpus)?;
    if target == "topology" {
        std::fs::copy(
            root.join("netctl/src/topology/default.toml"),
            corpus.join("default.toml"),
        )?;
        std::fs::copy(root.join("examples/flat.toml"), corpus.join("flat.toml"))?;
    }
    for (name, body) in seeds {
        std::fs::write(corpus.join(name), body)?;
    }
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .current_dir(root.join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
