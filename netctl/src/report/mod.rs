//! `netctl report`: the traffic analysis the seed made with tcpdump, pandas, matplotlib and
//! reportlab, made here from the eBPF flow counters: CSV tables, SVG and PNG charts, and
//! one self-contained HTML page.

pub mod charts;
pub mod data;
pub mod html;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use data::{Analysis, analyse};

/// Writes every file of a report into `dir`; returns the paths written.
pub fn write(dir: &Path, a: &Analysis) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    put(
        "packets_per_service_pair.csv",
        data::pairs_csv(a).as_bytes(),
    )?;
    put(
        "protocol_distribution.csv",
        data::protocols_csv(a).as_bytes(),
    )?;
    put("top_talkers.csv", data::talkers_csv(a).as_bytes())?;
    let charts = charts::render(a, dir)?;
    for c in &charts {
        put(&format!("{}.svg", c.name), c.svg.as_bytes())?;
    }
    put("report.html", html::page(a, &charts).as_bytes())?;
    written.extend(charts.iter().filter_map(|c| c.png.clone()));
    Ok(written)
}
