//! Plots of the moving car that read without the terminal: a title naming the scenario, seed
//! and trace; axes with units and tick values; a legend per strategy; the oracle dashed; bands
//! where the LTE link was out and where no WiFi node was in range.
//!
//! One layout, two renderers: SVG written as text (its text needs no font files), and PNG
//! through `plotters`' bitmap backend with text drawn from an embedded 8x8 bitmap font
//! (`font8x8`), so neither needs a font on the machine.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use skyroute_sim::car::CarReport;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("drawing: {0}")]
    Draw(String),
}

type Rgb = (u8, u8, u8);
/// Points (time in s, value).
type Curve = Vec<(f64, f64)>;

/// One colour per strategy, in the order of [`CarReport::all`].
const COLOURS: [Rgb; 5] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)];
const ORACLE: Rgb = (0, 0, 0);
const LTE_DOWN: Rgb = (255, 190, 190);
const NO_WIFI: Rgb = (200, 200, 200);
const INK: Rgb = (40, 40, 40);
const GRID: Rgb = (225, 225, 225);

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 920;

#[derive(Clone, Copy, PartialEq)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// What a renderer draws: coordinates in pixels from the top left.
trait Canvas {
    fn line(&mut self, pts: &[(f64, f64)], c: Rgb, width: u32, dashed: bool);
    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb);
    /// `y` is the text's vertical middle; `size` its height in pixels (a multiple of 8).
    fn text(&mut self, x: f64, y: f64, s: &str, size: u32, anchor: Anchor);
}

struct Series<'a> {
    colour: Rgb,
    dashed: bool,
    points: &'a [(f64, f64)],
}

struct Panel<'a> {
    label: &'static str,
    y_max: f64,
    series: Vec<Series<'a>>,
}

/// Tick values for `0..max`: steps of 1, 2 or 5 times a power of ten, at most ~8 of them.
fn ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 8.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p);
    // Rounded to a billionth, so 3 x 0.2 prints as 0.6.
    (0..).map(|i| (i as f64 * step * 1e9).round() / 1e9).take_while(|v| *v <= max * 1.0001).collect()
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else if (v * 10.0) == (v * 10.0).round() {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws the whole figure on `c`.
fn draw(report: &CarReport, c: &mut dyn Canvas) {
    let secs = report.duration_s.max(1.0);
    // Whole seconds only: the timelines' last entry is the partial second after the end.
    let whole = secs.floor() as usize;
    let curve = |v: &[(f64, f64)], y: fn(&(f64, f64)) -> f64| -> Curve {
        v.iter().take(whole).enumerate().map(|(s, t)| (s as f64 + 0.5, y(t))).collect()
    };
    let frac = |v: &[(f64, f64)]| curve(v, |t| t.0);
    let mbit = |v: &[(f64, f64)]| curve(v, |t| t.1 * 8.0 / 1e6);
    // Per strategy: (frames within deadline, bulk Mbit/s) per second.
    let strategies: Vec<(Curve, Curve)> =
        report.all().iter().map(|(_, r)| (frac(&r.timeline), mbit(&r.timeline))).collect();
    let oracle = (frac(&report.oracle.timeline), mbit(&report.oracle.timeline));
    let max_bulk = strategies.iter().flat_map(|s| s.1.iter()).chain(oracle.1.iter()).map(|p| p.1).fold(0.1, f64::max);
    let series = |top: bool| -> Vec<Series<'_>> {
        let mut v: Vec<Series<'_>> = strategies
            .iter()
            .enumerate()
            .map(|(i, (f, b))| Series {
                colour: COLOURS[i % COLOURS.len()],
                dashed: false,
                points: if top { f } else { b },
            })
            .collect();
        v.push(Series { colour: ORACLE, dashed: true, points: if top { &oracle.0 } else { &oracle.1 } });
        v
    };
    let panels = [
        Panel { label: "frames within deadline (fraction per second, 0..1)", y_max: 1.0, series: series(true) },
        Panel { label: "bulk goodput (Mbit/s)", y_max: max_bulk * 1.05, series: series(false) },
    ];
    let trace = match (&report.lte_trace, &report.lte_uplink_trace) {
        (Some(d), Some(u)) => format!("LTE trace {d} (uplink {u})"),
        (Some(d), None) => format!("LTE trace {d}"),
        _ => "LTE model (no trace)".to_string(),
    };
    let title = format!("skyroute moving car: seed {}, {:.0} s simulated", report.seed, secs);
    c.rect(0.0, 0.0, WIDTH as f64, HEIGHT as f64, (255, 255, 255));
    c.text(WIDTH as f64 / 2.0, 20.0, &title, 16, Anchor::Middle);
    c.text(WIDTH as f64 / 2.0, 42.0, &trace, 16, Anchor::Middle);

    let (left, right) = (90.0, WIDTH as f64 - 340.0);
    let x_of = |t: f64| left + (t / secs) * (right - left);
    let panel_h = 330.0;
    let tops = [100.0, 100.0 + panel_h + 70.0];
    for (p, &top) in panels.iter().zip(&tops) {
        let bottom = top + panel_h;
        let y_of = |v: f64| bottom - (v / p.y_max).clamp(0.0, 1.02) * panel_h;
        for (a, b) in &report.marks.no_wifi {
            c.rect(x_of(*a), top, x_of(*b), bottom, NO_WIFI);
        }
        for (a, b) in &report.marks.lte_down {
            c.rect(x_of(*a), top, x_of(*b), bottom, LTE_DOWN);
        }
        for v in ticks(p.y_max) {
            c.line(&[(left, y_of(v)), (right, y_of(v))], GRID, 1, false);
            c.text(left - 8.0, y_of(v), &fmt_tick(v), 8, Anchor::End);
        }
        for t in ticks(secs) {
            c.line(&[(x_of(t), bottom), (x_of(t), bottom + 5.0)], INK, 1, false);
            c.text(x_of(t), bottom + 16.0, &fmt_tick(t), 8, Anchor::Middle);
        }
        c.line(&[(left, top), (left, bottom), (right, bottom)], INK, 1, false);
        c.text(left, top - 14.0, p.label, 16, Anchor::Start);
        c.text((left + right) / 2.0, bottom + 36.0, "time (s)", 16, Anchor::Middle);
        for s in &p.series {
            let pts: Vec<(f64, f64)> = s.points.iter().map(|(t, v)| (x_of(*t), y_of(*v))).collect();
            c.line(&pts, s.colour, 2, s.dashed);
        }
    }
    // Legend: each strategy with its headline figures, the oracle, the bands.
    let lx = right + 20.0;
    let mut y = tops[0] + 10.0;
    c.text(lx, y, "legend", 16, Anchor::Start);
    y += 30.0;
    for (i, (name, r)) in report.all().iter().enumerate() {
        c.line(&[(lx, y), (lx + 30.0, y)], COLOURS[i % COLOURS.len()], 3, false);
        c.text(lx + 40.0, y, name, 16, Anchor::Start);
        let figures = format!("{:.4} in time, {:.2} Mbit/s", r.deadline_met, r.bulk_goodput_bytes_per_s * 8.0 / 1e6);
        c.text(lx + 40.0, y + 18.0, &figures, 8, Anchor::Start);
        y += 46.0;
    }
    c.line(&[(lx, y), (lx + 30.0, y)], ORACLE, 2, true);
    c.text(lx + 40.0, y, "oracle", 16, Anchor::Start);
    let figures =
        format!("{:.4} possible, {:.2} Mbit/s", report.oracle.deadline_met, report.oracle.bulk_bytes_per_s * 8.0 / 1e6);
    c.text(lx + 40.0, y + 18.0, &figures, 8, Anchor::Start);
    y += 46.0;
    c.rect(lx, y - 8.0, lx + 30.0, y + 8.0, LTE_DOWN);
    c.text(lx + 40.0, y, "LTE out", 16, Anchor::Start);
    y += 30.0;
    c.rect(lx, y - 8.0, lx + 30.0, y + 8.0, NO_WIFI);
    c.text(lx + 40.0, y, "no WiFi in range", 16, Anchor::Start);
}

/// Writes the plot: SVG when `path` ends in `.svg`, PNG otherwise.
pub fn moving_car(report: &CarReport, path: &Path) -> Result<(), PlotError> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        std::fs::write(path, svg(report))?;
    } else {
        png(report, path)?;
    }
    Ok(())
}

/// The plot as an SVG document.
pub fn svg(report: &CarReport) -> String {
    let mut s = Svg { out: String::new() };
    let _ = write!(
        s.out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    s.out.push('\n');
    draw(report, &mut s);
    s.out.push_str("</svg>\n");
    s.out
}

struct Svg {
    out: String,
}

fn rgb(c: Rgb) -> String {
    format!("rgb({},{},{})", c.0, c.1, c.2)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Canvas for Svg {
    fn line(&mut self, pts: &[(f64, f64)], c: Rgb, width: u32, dashed: bool) {
        if pts.len() < 2 {
            return;
        }
        let points: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let dash = if dashed { r#" stroke-dasharray="8 5""# } else { "" };
        let _ = writeln!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}"{dash}/>"#,
            points.join(" "),
            rgb(c)
        );
    }

    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let _ = writeln!(
            self.out,
            r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
            (x1 - x0).max(0.5),
            y1 - y0,
            rgb(c)
        );
    }

    fn text(&mut self, x: f64, y: f64, s: &str, size: u32, anchor: Anchor) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{}" text-anchor="{anchor}" dominant-baseline="middle" fill="{}">{}</text>"#,
            size * 5 / 4,
            rgb(INK),
            escape(s)
        );
    }
}

fn png(report: &CarReport, path: &Path) -> Result<(), PlotError> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let mut canvas = Bitmap { area: root, error: None };
    draw(report, &mut canvas);
    if let Some(e) = canvas.error {
        return Err(PlotError::Draw(e));
    }
    canvas.area.present().map_err(|e| PlotError::Draw(e.to_string()))
}

struct Bitmap<'a> {
    area: DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    error: Option<String>,
}

impl Bitmap<'_> {
    fn keep<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e.to_string());
        }
    }
}

impl Canvas for Bitmap<'_> {
    fn line(&mut self, pts: &[(f64, f64)], c: Rgb, width: u32, dashed: bool) {
        let style = RGBColor(c.0, c.1, c.2).stroke_width(width);
        let px: Vec<(i32, i32)> = pts.iter().map(|(x, y)| (*x as i32, *y as i32)).collect();
        if !dashed {
            let r = self.area.draw(&PathElement::new(px, style));
            self.keep(r);
            return;
        }
        // Dashes of 8 px with gaps of 5 along the polyline.
        let (on, off) = (8.0, 5.0);
        let mut phase = 0.0;
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
            let mut d = 0.0;
            while d < len {
                let cycle = phase % (on + off);
                let left: f64 = if cycle < on { on - cycle } else { on + off - cycle };
                let step = left.min(len - d);
                if cycle < on {
                    let at = |f: f64| ((x0 + (x1 - x0) * f) as i32, (y0 + (y1 - y0) * f) as i32);
                    let seg = vec![at(d / len), at((d + step) / len)];
                    let r = self.area.draw(&PathElement::new(seg, style));
                    self.keep(r);
                }
                d += step;
                phase += step;
            }
        }
    }

    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let corners = [(x0 as i32, y0 as i32), ((x1 as i32).max(x0 as i32 + 1), y1 as i32)];
        let r = self.area.draw(&Rectangle::new(corners, RGBColor(c.0, c.1, c.2).filled()));
        self.keep(r);
    }

    fn text(&mut self, x: f64, y: f64, s: &str, size: u32, anchor: Anchor) {
        let scale = (size / 8).max(1) as i32;
        let width = s.chars().count() as i32 * 8 * scale;
        let x0 = match anchor {
            Anchor::Start => x as i32,
            Anchor::Middle => x as i32 - width / 2,
            Anchor::End => x as i32 - width,
        };
        let y0 = y as i32 - 4 * scale;
        let ink = RGBColor(INK.0, INK.1, INK.2);
        for (i, ch) in s.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY.get(ch as usize).copied().unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x0 + (i as i32 * 8 + col) * scale + dx;
                            let py = y0 + row as i32 * scale + dy;
                            let r = self.area.draw_pixel((px, py), &ink);
                            self.keep(r);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(300.0), vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]);
        assert_eq!(ticks(13.0).last(), Some(&12.0));
        assert_eq!(fmt_tick(0.6), "0.6");
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(250.0), "250");
    }
}
