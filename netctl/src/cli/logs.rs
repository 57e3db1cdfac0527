//! `netctl logs SERVICE [-f] [--tail N]`: what a supervised process wrote (and what the
//! supervisor noted: starts, exits, restarts). A service with replicas shows each
//! replica's log, lines prefixed with the replica's name; `controller` is the controller's.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};

use super::{load_state, resolve_instance};
use crate::{instance::paths, reconcile::preflight};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A service (`product`: every replica), one replica (`product-2`), or `controller`.
    service: String,
    /// Keep printing what is written.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each log.
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    // The logs are root's alone (0600 under a 0700 directory), as is the state that
    // says which platform is up.
    preflight::require_root("logs")?;
    let Some(instance) = resolve_instance(prefix)? else {
        bail!("no netctl platform is up (use --prefix to read the logs of one that was)");
    };
    let logs = files(&instance, &args.service, prefix)?;
    let label = logs.len() > 1;
    let mut offsets = Vec::new();
    {
        let mut out = std::io::stdout().lock();
        for (name, path) in &logs {
            let lines = read_lines(path)?;
            let skip = args.tail.map_or(0, |n| lines.len().saturating_sub(n));
            for l in &lines[skip..] {
                write_line(&mut out, label.then_some(name.as_str()), l)?;
            }
            offsets.push(std::fs::metadata(path).map_or(0, |m| m.len()));
        }
    }
    if args.follow {
        follow(&logs, offsets, label).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The log files `service` names: (label, path).
fn files(
    instance: &str,
    service: &str,
    prefix: Option<&str>,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if service == "controller" {
        return Ok(vec![("controller".into(), paths::controller_log(instance))]);
    }
    let mut names: Vec<String> = Vec::new();
    let mut known: Vec<String> = Vec::new();
    if let Some(state) = load_state(prefix)? {
        for e in state.plan.supervised() {
            known.push(e.name.clone());
            if e.name == service || e.service == service {
                names.push(e.name.clone());
            }
        }
    }
    if names.is_empty() {
        // Not in the current plan (or nothing is up): any log of that name.
        let path = paths::service_log(instance, service);
        if path.exists() {
            names.push(service.to_string());
        }
    }
    if names.is_empty() {
        bail!(
            "no service {service:?} in instance {instance} (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                format!("{}, controller", known.join(", "))
            }
        );
    }
    Ok(names
        .into_iter()
        .map(|n| {
            let p = paths::service_log(instance, &n);
            (n, p)
        })
        .collect())
}

fn read_lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    match File::open(path) {
        Ok(f) => Ok(BufReader::new(f).lines().map_while(Result::ok).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_line(out: &mut impl Write, label: Option<&str>, line: &str) -> std::io::Result<()> {
    match label {
        Some(l) => writeln!(out, "{l:<10} | {line}"),
        None => writeln!(out, "{line}"),
    }
}

/// Prints what is appended to each file, forever (until interrupted). A file that shrank
/// was rotated or truncated: it is read again from its start.
async fn follow(
    logs: &[(String, PathBuf)],
    mut offsets: Vec<u64>,
    label: bool,
) -> anyhow::Result<()> {
    let mut partial: Vec<String> = vec![String::new(); logs.len()];
    loop {
        for (i, (name, path)) in logs.iter().enumerate() {
            let Ok(mut f) = File::open(path) else {
                continue;
            };
            let len = f.metadata().map_or(0, |m| m.len());
            if len < offsets[i] {
                offsets[i] = 0;
            }
            if len == offsets[i] {
                continue;
            }
            f.seek(SeekFrom::Start(offsets[i]))?;
            let mut buf = String::new();
            let read = f.take(len - offsets[i]).read_to_string(&mut buf)?;
            offsets[i] += read as u64;
            partial[i].push_str(&buf);
            let mut out = std::io::stdout().lock();
            while let Some(pos) = partial[i].find('\n') {
                let line: String = partial[i].drain(..=pos).collect();
                write_line(
                    &mut out,
                    label.then_some(name.as_str()),
                    line.trim_end_matches('\n'),
                )?;
            }
            out.flush()?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
