//! The `netctl` command line: argument parsing, logging set-up and dispatch. Each command
//! lives in its own file and returns an exit code; errors print as one readable message.

mod connectivity;
mod conntrack;
mod down;
mod drain;
mod drops;
mod endpoints;
mod flows;
mod health;
mod logs;
mod maps;
mod monitor;
mod policy;
mod report;
mod serve;
mod services;
mod status;
mod topology;
mod up;
mod validate;

use std::{io::Write, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{
    reconcile::state::{self, State},
    topology::plan::instance_name,
};

#[derive(Parser, Debug)]
#[command(
    name = "netctl",
    version,
    about = "eBPF container networking for one Linux host: namespaces, bridges, TC programs",
    propagate_version = true
)]
pub struct Cli {
    /// Name prefix of the platform instance to act on (overrides the topology's
    /// platform.prefix); needed only when several platforms are up.
    #[arg(long, global = true, env = "NETCTL_PREFIX", value_name = "PREFIX")]
    prefix: Option<String>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the platform's network and attach the eBPF dataplane (idempotent).
    Up(up::Args),
    /// Remove everything `up` made.
    Down(down::Args),
    /// Show what is up, checked against the kernel.
    Status(status::Args),
    /// Per-flow counters from the eBPF flow map.
    Flows(flows::Args),
    /// Service frontends (VIP:port, host ports) and their backends, health and weights.
    Services(services::Args),
    /// Tracked connections: client, frontend, chosen backend, state, age.
    Conntrack(conntrack::Args),
    /// The pinned eBPF maps; `maps NAME` dumps one as JSON.
    Maps(maps::Args),
    /// Endpoints: the topology's namespaces and those attached on request; `endpoints add`
    /// attaches a namespace (a container's) to a network, `endpoints rm` detaches it.
    Endpoints(endpoints::Args),
    /// Stop new connections to one instance (`service/instance`); established ones finish.
    Drain(drain::Args),
    /// The compiled network policy as the kernel has it; `policy apply -f FILE` changes it.
    Policy(policy::Args),
    /// Dropped packets by reason and by identity pair.
    Drops(drops::Args),
    /// Live drops and new connections.
    Monitor(monitor::Args),
    /// Traffic report from the flow counters: CSV, charts, an HTML page.
    Report(report::Args),
    /// The platform as the kernel has it: bridges, namespaces, addresses, VIPs, uplinks.
    Topology(topology::Args),
    /// Health of every service instance (live dashboard; `--once` for scripts).
    Health(health::Args),
    /// Self-test: every service tries every other by address, VIP and port forward,
    /// checked against the policy (exit 1 on a mismatch).
    Connectivity(connectivity::Args),
    /// Check a topology file without changing anything (no root needed).
    Validate(validate::Args),
    /// What a service wrote (its log, and the supervisor's notes on it).
    Logs(logs::Args),
    /// Run one of the reference services in this process (the supervisor does this in
    /// each service's namespace).
    Serve(serve::Args),
    /// Run the controller of an instance in this process (`up` starts it in the background).
    #[command(hide = true)]
    Controller,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Services log what they do; commands only what goes wrong, unless asked.
    let quiet = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.verbose, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let prefix = cli.prefix.as_deref();
    // What netctl writes (state, records, generated configuration, logs, secrets) and
    // what the services it starts write is root's alone; a report is meant to be read.
    if !matches!(cli.command, Command::Report(_) | Command::Validate(_)) {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    match cli.command {
        Command::Up(args) => up::run(args, prefix).await,
        Command::Down(args) => down::run(args, prefix).await,
        Command::Status(args) => status::run(args, prefix).await,
        Command::Flows(args) => flows::run(args, prefix),
        Command::Services(args) => services::run(args, prefix).await,
        Command::Conntrack(args) => conntrack::run(args, prefix),
        Command::Maps(args) => maps::run(args, prefix),
        Command::Drain(args) => drain::run(args, prefix).await,
        Command::Endpoints(args) => endpoints::run(args, prefix).await,
        Command::Policy(args) => policy::run(args, prefix).await,
        Command::Drops(args) => drops::run(args, prefix),
        Command::Monitor(args) => monitor::run(args, prefix).await,
        Command::Report(args) => report::run(args, prefix),
        Command::Topology(args) => topology::run(args, prefix).await,
        Command::Health(args) => health::run(args, prefix).await,
        Command::Connectivity(args) => connectivity::run(args, prefix),
        Command::Validate(args) => validate::run(args, prefix),
        Command::Serve(args) => serve::run(args).await,
        Command::Logs(args) => logs::run(args, prefix).await,
        Command::Controller => {
            crate::reconcile::preflight::require_root("controller")?;
            let instance = resolve_instance(prefix)?
                .ok_or_else(|| anyhow::anyhow!("no netctl platform is up"))?;
            crate::agent::runtime::run(&instance).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    // `netctl flows | head` closing the pipe early is not an error worth a message.
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(std::io::stderr(), "error: {e:#}");
    ExitCode::FAILURE
}

fn init_logging(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The instance a command acts on: the one `--prefix` names, or the only one that is up.
/// `None` when nothing is up.
fn resolve_instance(prefix: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(p) = prefix {
        return Ok(Some(instance_name(p)));
    }
    let all = state::instances();
    match all.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => bail!(
            "several platforms are up ({}); choose one with --prefix",
            many.join(", ")
        ),
    }
}

/// Refuses a command that reads eBPF maps on an instance running the iptables dataplane,
/// saying what to use instead.
fn require_ebpf(state: &State, command: &str, instead: &str) -> anyhow::Result<()> {
    if state.plan.dataplane.mode == crate::topology::DataplaneMode::Ebpf {
        return Ok(());
    }
    bail!(
        "`netctl {command}` reads the eBPF maps, and instance {} runs the {} dataplane, which \
         has none (no per-flow counters, no pinned maps){instead}",
        state.instance,
        state.plan.dataplane.mode
    )
}

/// The state of the instance a read-only command acts on.
/// The state of the instance, its plan with the attached endpoints added as the agent's
/// components have it, so that commands name them as they name the topology's (read
/// only: a command that saves the state loads it itself).
fn load_state(prefix: Option<&str>) -> anyhow::Result<Option<State>> {
    let Some(instance) = resolve_instance(prefix)? else {
        return Ok(None);
    };
    let state =
        State::load(&instance).with_context(|| format!("reading the state of {instance}"))?;
    Ok(state.map(|mut s| {
        let attached = crate::endpoint::store::load_all(&instance).unwrap_or_default();
        if !attached.is_empty() {
            s.plan = crate::endpoint::attached_plan(&s.plan, &attached);
        }
        s
    }))
}
