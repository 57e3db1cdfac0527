//! Output for people (aligned tables) and for scripts (JSON), on stdout. Logs go to stderr
//! through `tracing`; so does the progress of long operations, and only on a terminal
//! (scripts and tests see the same output with or without it).

use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use serde::Serialize;

/// A borderless table with a header row, like `kubectl get`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

/// Prints a table, trimming the padding comfy-table puts at line starts.
pub fn print_table(t: &Table) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for line in t.to_string().lines() {
        writeln!(out, "{}", line.strip_prefix(' ').unwrap_or(line).trim_end())?;
    }
    Ok(())
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A spinner with `message` on stderr when it is a terminal; hidden otherwise.
pub fn spinner(message: &str) -> indicatif::ProgressBar {
    let bar = if io::IsTerminal::is_terminal(&io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar.set_message(message.to_string());
    bar
}

/// A bar of `total` steps of `what` on stderr when it is a terminal; hidden otherwise.
pub fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if io::IsTerminal::is_terminal(&io::stderr()) {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let template =
        format!("{{bar:30}} {{pos}}/{{len}} {what} ({{elapsed}}, ~{{eta}} left) {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    // No steady tick: a redraw thread would wake during the benchmarks' timed runs; each
    // step and message redraws anyway.
    bar
}

pub fn print_line(line: &str) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{line}")
}

/// A note for people on stderr, when stdout is for scripts (e.g. JSON lines).
pub fn print_note(line: &str) -> io::Result<()> {
    writeln!(io::stderr().lock(), "{line}")
}

/// A warning for people, on stderr (so `--json` output on stdout stays clean).
pub fn print_warning(line: &str) -> io::Result<()> {
    print_note(&format!("warning: {line}"))
}

/// `1.2 KiB`-style sizes for tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// TCP flags as letters, `tcpdump` style: S(YN) A(CK) F(IN) R(ST) P(USH) U(RG).
pub fn tcp_flags(flags: u8) -> String {
    let names = [
        (0x02, 'S'),
        (0x10, 'A'),
        (0x08, 'P'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x20, 'U'),
    ];
    names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn tcp_flags_in_handshake_order() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "SA");
        assert_eq!(tcp_flags(0x1b), "SAPF");
        assert_eq!(tcp_flags(0), "");
    }
}
