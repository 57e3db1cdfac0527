//! `netctl policy`: the compiled policy as the kernel has it, with names (from the policy
//! maps, or read back from the iptables rules); `policy apply -f FILE`: install a changed
//! policy (and nothing else) without touching the network, and wait until the kernel has
//! it (or the controller says why not).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use netctl_common::policy::{ANY_PORT, ANY_PROTO, VERDICT_DENY};
use serde_json::json;

use super::{load_state, up::plan_from};
use crate::{
    dataplane::InstalledPolicy,
    instance::{
        agent_client as api,
        agent_status::{self, PolicyStatus},
        daemon,
    },
    output,
    reconcile::{
        preflight,
        state::{State, StateLock},
    },
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Install the policy of a topology file whose network is the one that is up.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(Command::Apply { file }) => apply(file, prefix).await,
        None => show(args.json, prefix),
    }
}

fn show(as_json: bool, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("policy")?;
    let Some(state) = load_state(prefix)? else {
        bail!("no netctl platform is up");
    };
    let plan = &state.plan;
    let InstalledPolicy {
        generation,
        compiled,
        identities,
    } = crate::dataplane::open(plan, &state.instance)
        .policy()?
        .with_context(|| {
            format!(
                "no policy in the {} dataplane of {} yet (is its controller running?)",
                plan.dataplane.mode.name(),
                state.instance
            )
        })?;
    let names = plan.names();
    let rules: Vec<_> = compiled
        .entries
        .iter()
        .map(|(k, v)| {
            json!({
                "source": names.identity(k.src),
                "destination": names.identity(k.dst),
                "port": if k.port == ANY_PORT { None } else { Some(k.port) },
                "protocol": if k.proto == ANY_PROTO { "*" } else { crate::cli_protocol_name(k.proto) },
                "verdict": if v.verdict == VERDICT_DENY { "deny" } else { "allow" },
                "rule": if v.rule == 0 { None } else { Some(v.rule) },
            })
        })
        .collect();
    let limits: Vec<_> = compiled
        .rate_limits
        .iter()
        .map(|(key, l)| {
            json!({
                "source": names.identity(key.src),
                "destination": names.identity(key.dst),
                "per_second": f64::from(l.rate_milli) / 1000.0,
                "burst": l.burst,
                "per": if l.by == netctl_common::policy::RL_BY_IDENTITY { "service" } else { "source" },
            })
        })
        .collect();
    if as_json {
        output::print_json(&json!({
            "dataplane": plan.dataplane.mode.name(),
            "generation": generation,
            "identities": identities.len(),
            "rules": rules,
            "rate_limits": limits,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    output::print_line(&format!(
        "policy generation {generation} ({} dataplane): {} entries, {} addresses with identities (most specific entry wins; none: allow; a source's own rate limit beats the one for any source)",
        plan.dataplane.mode,
        rules.len(),
        identities.len()
    ))?;
    let mut t = output::table(&["source", "destination", "port", "verdict", "rule"]);
    for r in &rules {
        let port = match (r["port"].as_u64(), r["protocol"].as_str()) {
            (Some(p), Some(proto)) => format!("{p}/{proto}"),
            (Some(p), None) => p.to_string(),
            (None, Some("*")) | (None, None) => "*".into(),
            (None, Some(proto)) => format!("*/{proto}"),
        };
        let rule = r["rule"]
            .as_u64()
            .map_or_else(|| "default".to_string(), |n| format!("#{n}"));
        t.add_row(vec![
            r["source"].as_str().unwrap_or("").to_string(),
            r["destination"].as_str().unwrap_or("").to_string(),
            port,
            r["verdict"].as_str().unwrap_or("").to_string(),
            rule,
        ]);
    }
    output::print_table(&t)?;
    if !limits.is_empty() {
        output::print_line("")?;
        let mut t = output::table(&["rate limit from", "to", "per second", "burst", "bucket per"]);
        for l in &limits {
            t.add_row(vec![
                l["source"].as_str().unwrap_or("").to_string(),
                l["destination"].as_str().unwrap_or("").to_string(),
                format!("{:.3}", l["per_second"].as_f64().unwrap_or(0.0)),
                l["burst"].to_string(),
                l["per"].as_str().unwrap_or("").to_string(),
            ]);
        }
        output::print_table(&t)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `policy apply` waits for the controller to install the policy.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

async fn apply(file: Option<PathBuf>, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("policy apply")?;
    let plan = plan_from(file.as_deref(), prefix)?;
    let lock = StateLock::acquire()?;
    let instance = plan.instance();
    let mut state =
        State::load(&instance)?.with_context(|| format!("instance {instance} is not up"))?;
    let mut same_network = state.plan.clone();
    same_network.policy = plan.policy.clone();
    if same_network != plan {
        bail!("the file changes more than the policy; bring it up with `netctl up -f FILE`");
    }
    if state.plan.policy == plan.policy {
        output::print_line("policy unchanged")?;
        return Ok(ExitCode::SUCCESS);
    }
    if daemon::running(&instance).is_none() {
        bail!("no controller is running to install the policy (run `netctl up`); nothing changed");
    }
    let before = installed_generation(&state)?;
    let asked_at_ms = unix_ms();
    let previous = state.plan.clone();
    state.plan = plan;
    state.save()?;
    if !daemon::reload(&instance)? {
        restore(&mut state, previous)?;
        bail!("the controller went away before it could install the policy; nothing changed");
    }
    match wait_installed(&state, before, asked_at_ms).await {
        Ok(generation) => {
            drop(lock);
            output::print_line(&format!("policy installed as generation {generation}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(Refused(message)) => {
            // The file keeps describing what is in force.
            restore(&mut state, previous)?;
            let _ = daemon::reload(&instance);
            bail!(
                "the controller could not install the policy: {message}; generation {before} stays in force"
            )
        }
        Err(TimedOut) => bail!(
            "the policy is saved, but the controller has not installed it within {} s (see `netctl logs controller`)",
            APPLY_TIMEOUT.as_secs()
        ),
    }
}

use WaitError::{Refused, TimedOut};

enum WaitError {
    /// The controller reported a failed install (its message).
    Refused(String),
    TimedOut,
}

/// Waits until the kernel's policy generation moves past `before` (returns the new one),
/// or the controller reports an install that failed after `asked_at_ms`.
async fn wait_installed(state: &State, before: u32, asked_at_ms: u64) -> Result<u32, WaitError> {
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    loop {
        if let Ok(generation) = installed_generation(state)
            && generation != before
        {
            return Ok(generation);
        }
        if let Ok(status) = api::get(&state.instance, "/v1/status").await
            && let Some(Ok(policy)) = agent_status::component::<PolicyStatus>(&status, "policy")
            // An error without a time is the component's own end: it installs nothing more.
            && let Some(error) = policy.error
            && policy.failed_at_ms.is_none_or(|at| at >= asked_at_ms)
        {
            return Err(Refused(error));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The policy generation in force in the kernel (maps or iptables rules); 0 before any.
fn installed_generation(state: &State) -> anyhow::Result<u32> {
    crate::dataplane::open(&state.plan, &state.instance).policy_generation()
}

fn restore(state: &mut State, previous: crate::topology::Plan) -> anyhow::Result<()> {
    state.plan = previous;
    state.save()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
