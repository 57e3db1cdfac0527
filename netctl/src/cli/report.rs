//! `netctl report`: traffic analysis from the eBPF flow counters: CSV, SVG/PNG charts and
//! one HTML page (a PDF too with `--pdf`, printed by headless Chromium).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};

use super::load_state;
use crate::{
    dataplane::ebpf::{Pins, flows},
    output,
    reconcile::preflight,
    report,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory for the report (default: netctl-report-<instance>-<unix time>).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only flows active in this last period (e.g. 30s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Clear the flow counters afterwards, so the next report covers a fresh window.
    #[arg(long)]
    reset: bool,
    /// Also print the report to PDF (needs Chromium: `apt-get install chromium`).
    #[arg(long)]
    pdf: bool,
}

pub fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("report")?;
    let Some(state) = load_state(prefix)? else {
        bail!("no netctl platform is up (nothing to report on)");
    };
    super::require_ebpf(&state, "report", "")?;
    let pins = Pins::for_instance(&state.instance);
    let spinner = output::spinner("reading the flow map");
    let all = flows::read(&pins).context("reading the flow map")?;
    spinner.set_message(format!("analysing {} flows", all.len()));
    let since = args.since.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |t| t.as_secs_f64())
    });
    let analysis = report::analyse(&state.plan, &all, since);
    let dir = args.out.unwrap_or_else(|| {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("netctl-report-{}-{stamp}", state.instance))
    });
    spinner.set_message("writing the report");
    let mut written = report::write(&dir, &analysis)?;
    if args.pdf {
        spinner.set_message("printing the PDF");
        written.push(pdf(&dir)?);
    }
    if args.reset {
        let cleared = flows::clear(&pins)?;
        spinner.set_message(format!("cleared {cleared} flows"));
    }
    spinner.finish_and_clear();
    output::print_line(&format!(
        "report of {} flows ({} packets) in {}:",
        analysis.flows,
        analysis.total.packets,
        dir.display()
    ))?;
    for path in written {
        output::print_line(&format!("  {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn pdf(dir: &Path) -> anyhow::Result<PathBuf> {
    let html = std::fs::canonicalize(dir.join("report.html")).context("locating report.html")?;
    let out = std::fs::canonicalize(dir)
        .context("locating the report directory")?
        .join("report.pdf");
    let profile = tempfile::tempdir().context("a Chromium profile directory")?;
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", out.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .context("running chromium (install it: apt-get install chromium)")?;
    if !status.status.success() || !out.exists() {
        bail!(
            "chromium could not print the PDF: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    Ok(out)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m, 2h, 1d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
