//! Line charts as SVG (plotters' SVG backend: text stays text, rendered by whatever
//! displays the file; plotters only needs a font to measure it).

use plotters::prelude::*;

/// One line of a chart: a name and (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart over a logarithmic x axis (service counts) or a linear one.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub series: &'a [Series],
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Renders `chart` as an SVG document.
pub fn svg(chart: &Chart) -> anyhow::Result<String> {
    // plotters lays text out with a registered font (the workspace enables `ab_glyph` for
    // the report's PNG charts), SVG included.
    if !netctl::report::charts::font_loaded() {
        anyhow::bail!(
            "drawing {:?}: the DejaVu font is missing (install fonts-dejavu-core: cargo xtask setup)",
            chart.title
        );
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let xs = chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let (x_min, x_max) = bounds(xs);
        let (_, y_max) = bounds(ys);
        let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(chart.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        if chart.log_x {
            let lo = x_min.max(1.0) / 1.5;
            let hi = x_max.max(lo * 2.0) * 1.5;
            let mut c = builder
                .build_cartesian_2d((lo..hi).log_scale(), 0.0..y_top)
                .map_err(err)?;
            c.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(err)?;
            draw_series(&mut c, chart.series)?;
        } else {
            let hi = if x_max > x_min { x_max } else { x_min + 1.0 };
            let mut c = builder
                .build_cartesian_2d(x_min..hi, 0.0..y_top)
                .map_err(err)?;
            c.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .draw()
                .map_err(err)?;
            draw_series(&mut c, chart.series)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn draw_series<'a, DB, X>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    series: &[Series],
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        c.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        c.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_legend() {
        let series = [
            Series {
                name: "ebpf".into(),
                points: vec![(1.0, 30.0), (100.0, 31.0), (10_000.0, 30.5)],
            },
            Series {
                name: "iptables".into(),
                points: vec![(1.0, 32.0), (100.0, 40.0), (10_000.0, 900.0)],
            },
        ];
        let svg = svg(&Chart {
            title: "new connection p50",
            x_label: "services",
            y_label: "µs",
            log_x: true,
            series: &series,
        })
        .expect("draws");
        assert!(svg.starts_with("<svg"));
        for text in ["new connection p50", "ebpf", "iptables", "services"] {
            assert!(svg.contains(text), "{text}");
        }
    }
}
