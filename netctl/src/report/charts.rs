//! The report's charts with plotters: SVG always (text stays text, no font needed), PNG
//! too when the DejaVu font (Debian `fonts-dejavu-core`) is there to draw its labels.

use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::prelude::*;

use super::data::Analysis;

pub struct Chart {
    pub name: &'static str,
    pub title: &'static str,
    pub svg: String,
    /// Where the PNG version was written (with the font only).
    pub png: Option<std::path::PathBuf>,
}

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (800, 420);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The three charts of a report: protocol distribution, top service pairs, top talkers.
/// PNG versions go to `png_dir`.
pub fn render(a: &Analysis, png_dir: &std::path::Path) -> anyhow::Result<Vec<Chart>> {
    let protocols: Vec<(String, u64)> = a
        .protocols
        .iter()
        .map(|(p, c)| (p.clone(), c.packets))
        .collect();
    let pairs: Vec<(String, u64)> = a
        .pairs
        .iter()
        .take(10)
        .map(|(s, d, c)| (format!("{s} -> {d}"), c.packets))
        .collect();
    let talkers: Vec<(String, u64)> = a
        .talkers
        .iter()
        .take(10)
        .map(|(t, c)| (t.clone(), c.packets))
        .collect();
    let font = font_loaded();
    [
        (
            "protocol_distribution",
            "Protocol distribution (packets)",
            protocols,
        ),
        (
            "top_service_pairs",
            "Top service-to-service traffic (packets)",
            pairs,
        ),
        ("top_talkers", "Top talkers (packets sent)", talkers),
    ]
    .into_iter()
    .map(|(name, title, bars)| {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            draw(&root, title, &bars)?;
            root.present().map_err(|e| anyhow!("drawing {name}: {e}"))?;
        }
        let png = if font {
            let path = png_dir.join(format!("{name}.png"));
            png(&path, title, &bars)?;
            Some(path)
        } else {
            None
        };
        Ok(Chart {
            name,
            title,
            svg,
            png,
        })
    })
    .collect()
}

fn png(path: &std::path::Path, title: &str, bars: &[(String, u64)]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(&root, title, bars)?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// A horizontal bar chart, largest bar first.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    bars: &[(String, u64)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {title}: {e}");
    root.fill(&WHITE).map_err(err)?;
    let n = bars.len().max(1);
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(200)
        .build_cartesian_2d(0u64..max + max / 10 + 1, (0..n).into_segmented())
        .map_err(err)?;
    // Largest bar on top: segment 0 is drawn at the bottom.
    let labels: Vec<String> = bars.iter().rev().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n)
        .y_label_formatter(&|seg| match seg {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("packets")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().rev().enumerate().map(|(i, (_, v))| {
            let color = COLORS[(n - 1 - i) % COLORS.len()];
            Rectangle::new(
                [
                    (0, SegmentValue::Exact(i)),
                    (*v, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// Registers DejaVu Sans for bitmap text, once; false when the font is not installed.
fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT_PATH) else {
            tracing::warn!(
                "{FONT_PATH} is missing (install fonts-dejavu-core): charts only as SVG"
            );
            return false;
        };
        // Registered fonts live for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    })
}
