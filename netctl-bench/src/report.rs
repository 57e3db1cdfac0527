//! Writing results: `bench-results/<date>T<time>-<bench>.json` (every measurement), `.md`
//! (tables, plots linked) and `.html` (the same, plots inline), and each plot as its own
//! `.svg`. The time (UTC, to the second) keeps a rerun on the same day from overwriting.
//! A quick run's files say so: `-quick` in their names and a banner on top, so that a
//! CI-sized run is never mistaken for a full one.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::Serialize;

static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks every report this process writes as a quick run.
pub fn mark_quick() {
    QUICK.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn is_quick() -> bool {
    QUICK.load(std::sync::atomic::Ordering::Relaxed)
}

const QUICK_BANNER: &str = "Quick run (`--quick`, CI-sized: fewer rounds, shorter \
                            measurements): it shows the benchmark works, its figures are not \
                            comparable with a full run.";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` of today (UTC), without a date crate.
pub fn today() -> String {
    date_of(now_secs())
}

/// `YYYY-MM-DDTHHMMSS` (UTC) now: a file name's stamp (no `:`, which some tools refuse).
pub fn stamp() -> String {
    stamp_of(now_secs())
}

fn stamp_of(secs: u64) -> String {
    let t = secs % 86_400;
    format!(
        "{}T{:02}{:02}{:02}",
        date_of(secs),
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

fn date_of(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A table for people: Markdown and HTML from one source.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.headers.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(self.headers.len()));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }

    pub fn html(&self) -> String {
        let mut s = String::from("<table>\n<tr>");
        for h in &self.headers {
            let _ = write!(s, "<th>{}</th>", escape(h));
        }
        s.push_str("</tr>\n");
        for r in &self.rows {
            s.push_str("<tr>");
            for c in r {
                let _ = write!(s, "<td>{}</td>", escape(c));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        s
    }
}

/// One part of a report: a heading, a paragraph, tables and plots (name, SVG).
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub text: String,
    pub tables: Vec<Table>,
    pub plots: Vec<(String, String)>,
}

impl Section {
    pub fn markdown(&self, base: &str) -> String {
        let mut s = format!("## {}\n\n", self.title);
        if !self.text.is_empty() {
            let _ = write!(s, "{}\n\n", self.text);
        }
        for t in &self.tables {
            let _ = writeln!(s, "{}", t.markdown());
        }
        for (name, _) in &self.plots {
            let _ = write!(s, "![{name}]({base}-{name}.svg)\n\n");
        }
        s
    }

    pub fn html(&self) -> String {
        let mut s = format!("<h2>{}</h2>\n", escape(&self.title));
        for para in self.text.split("\n\n") {
            let _ = writeln!(s, "<p>{}</p>", escape(para));
        }
        for t in &self.tables {
            s.push_str(&t.html());
        }
        for (_, svg) in &self.plots {
            let _ = writeln!(s, "<div class=\"plot\">{svg}</div>");
        }
        s
    }
}

/// What [`write`] produced.
pub struct Written {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
}

/// Writes `<dir>/<date>T<time>-<name>.json`, `.md`, `.html` and one `.svg` per plot.
pub fn write<T: Serialize>(
    dir: &Path,
    name: &str,
    title: &str,
    result: &T,
    sections: &[Section],
) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let quick = is_quick();
    let base = format!("{}-{name}{}", stamp(), if quick { "-quick" } else { "" });
    let path = |ext: &str| dir.join(format!("{base}.{ext}"));
    let json = path("json");
    std::fs::write(&json, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let mut md = format!("# {title}\n\n");
    if quick {
        let _ = write!(md, "> {QUICK_BANNER}\n\n");
    }
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}.plot{{margin:1em 0}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    if quick {
        let _ = writeln!(html, "<p><strong>{}</strong></p>", escape(QUICK_BANNER));
    }
    for s in sections {
        md.push_str(&s.markdown(&base));
        html.push_str(&s.html());
        for (plot, svg) in &s.plots {
            let file = dir.join(format!("{base}-{plot}.svg"));
            std::fs::write(&file, svg).with_context(|| format!("writing {}", file.display()))?;
        }
    }
    html.push_str("</body></html>\n");
    let markdown = path("md");
    std::fs::write(&markdown, &md).with_context(|| format!("writing {}", markdown.display()))?;
    let html_path = path("html");
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    Ok(Written {
        json,
        markdown,
        html: html_path,
    })
}

/// Prints a report's Markdown on stdout.
pub fn print(sections: &[Section]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for s in sections {
        let _ = writeln!(out, "{}", s.markdown("(plot)"));
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `x / base`, or `None` ("not measured") unless both were measured (positive, finite):
/// a missing figure must never read as a ratio of 0 that passes a "within 10%" goal.
pub fn ratio(x: f64, base: f64) -> Option<f64> {
    let measured = |v: f64| v.is_finite() && v > 0.0;
    (measured(x) && measured(base)).then(|| x / base)
}

/// A ratio for a table: `digits` decimals and `suffix`, or `-` when not measured.
pub fn show_ratio(r: Option<f64>, digits: usize, suffix: &str) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{v:.digits$}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_need_both_figures() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(0.0, 2.0), None);
        assert_eq!(ratio(f64::NAN, 2.0), None);
        assert_eq!(show_ratio(None, 3, ""), "-");
        assert_eq!(show_ratio(Some(2.0), 1, "x"), "2.0x");
    }

    #[test]
    fn stamps_carry_the_time_of_day() {
        // 2024-03-01 13:05:09 UTC.
        assert_eq!(stamp_of(1_709_298_309), "2024-03-01T130509");
        assert_eq!(date_of(0), "1970-01-01");
    }

    #[test]
    fn quick_reports_say_so_in_their_names_and_on_top() {
        let dir = std::env::temp_dir().join(format!("netctl-bench-quick-{}", std::process::id()));
        mark_quick();
        let w = write(&dir, "x", "A title", &1, &[]).expect("written");
        for p in [&w.json, &w.markdown, &w.html] {
            let name = p.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(name.ends_with("-x-quick"), "{name}");
        }
        let md = std::fs::read_to_string(&w.markdown).expect("md");
        assert!(md.contains("Quick run"), "{md}");
        let html = std::fs::read_to_string(&w.html).expect("html");
        assert!(html.contains("Quick run"), "{html}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
        assert_eq!(&d[4..5], "-");
    }

    #[test]
    fn tables_render_as_markdown_and_html() {
        let mut t = Table::new(&["path", "p50 µs"]);
        t.row(vec!["direct".into(), "30.1".into()]);
        assert_eq!(
            t.markdown(),
            "| path | p50 µs |\n|---|---|\n| direct | 30.1 |\n"
        );
        assert!(t.html().contains("<td>direct</td><td>30.1</td>"));
        let dir = std::env::temp_dir().join(format!("netctl-report-test-{}", std::process::id()));
        let s = Section {
            title: "T".into(),
            text: "a < b".into(),
            tables: vec![t],
            plots: vec![("p".into(), "<svg></svg>".into())],
        };
        let w = write(&dir, "x", "Title", &serde_json::json!({"a": 1}), &[s]).expect("writes");
        let html = std::fs::read_to_string(&w.html).expect("html");
        assert!(html.contains("<svg></svg>") && html.contains("a &lt; b"));
        let md = std::fs::read_to_string(&w.markdown).expect("md");
        let base = w
            .markdown
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name");
        assert!(base.starts_with(&today()) && base.ends_with("-x") && base.contains('T'));
        assert!(md.contains(&format!("![p]({base}-p.svg)")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
