//! PNG plots of scenario timelines with `plotters` (bitmap backend, no font dependency: the
//! plot has no text; the colours are listed on stdout).

use std::path::Path;

use plotters::prelude::*;

use skyroute_sim::car::CarReport;

const COLOURS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Two panels: deadline-met per second (top, 0..1) and bulk goodput per second (bottom).
pub fn moving_car(report: &CarReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let secs = report.duration_s.ceil() as usize + 1;
    let max_bulk = report.all().iter().flat_map(|(_, r)| r.timeline.iter().map(|t| t.1)).fold(1.0, f64::max);
    let mut upper = ChartBuilder::on(&top).margin(20).build_cartesian_2d(0..secs, 0.0..1.05)?;
    upper.configure_mesh().disable_x_mesh().draw()?;
    let mut lower = ChartBuilder::on(&bottom).margin(20).build_cartesian_2d(0..secs, 0.0..max_bulk * 1.05)?;
    lower.configure_mesh().disable_x_mesh().draw()?;
    for (i, (_, r)) in report.all().iter().enumerate() {
        let c = COLOURS[i];
        upper.draw_series(LineSeries::new(r.timeline.iter().enumerate().map(|(s, t)| (s, t.0)), c.stroke_width(2)))?;
        lower.draw_series(LineSeries::new(r.timeline.iter().enumerate().map(|(s, t)| (s, t.1)), c.stroke_width(2)))?;
    }
    root.present()?;
    println!(
        "plot {}: top deadline-met per second (0..1), bottom bulk bytes per second; blue skyroute, red single_route, green min_rtt, purple duplicate_all",
        path.display()
    );
    Ok(())
}
