//! Writing results: `bench-results/<date>-<bench>.json` and a Markdown table beside it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// `YYYY-MM-DD` of today (UTC), without a date crate.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
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

/// Writes `<dir>/<date>-<name>.json` and `.md`; returns the paths.
pub fn write<T: Serialize>(
    dir: &Path,
    name: &str,
    result: &T,
    markdown: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(format!("{}-{name}", today()));
    let json = base.with_extension("json");
    let md = base.with_extension("md");
    std::fs::write(&json, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    Ok((json, md))
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let d = super::today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
        assert_eq!(&d[4..5], "-");
    }
}
