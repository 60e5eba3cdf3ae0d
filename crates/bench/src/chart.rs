//! SVG charts of RSS over time, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::memory::Sample;

/// One line of a chart: a label and its samples.
pub struct Series<'a> {
    pub label: &'a str,
    pub samples: &'a [Sample],
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draws RSS (MiB) against time (s) for each series into an SVG file.
pub fn rss_chart(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    let max_t = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.t))
        .fold(1.0, f64::max);
    let max_mib = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.rss as f64 / 1048576.0))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t * 1.02, 0.0..max_mib * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("server RSS (MiB)")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.samples.iter().map(|x| (x.t, x.rss as f64 / 1048576.0)),
                color.stroke_width(2),
            ))?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
