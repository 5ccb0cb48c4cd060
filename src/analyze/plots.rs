//! The analysis figures, each written as PNG and SVG (plotters; labels in the embedded DejaVu
//! Sans, so the output does not depend on the machine's fonts):
//!
//! * `tail_index` — dimension-wise α̂ (Clauset) over steps, one line per layer;
//! * `ccdf` — the empirical CCDF of |g| of one tensor at two steps (from its histogram, exact
//!   at bucket edges) with the fitted power law from x_min;
//! * `spectrum` — covariance eigenvalues on log–log axes with the fitted line over its window;
//! * `qq_sgn` — quantiles of standardised SGN values against the normal;
//! * `alpha_hist` — histogram of the iteration-wise α̂.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

const SIZE: (u32, u32) = (960, 640);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Line,
    Points,
    /// Bars of the given width centred on each x.
    Bars,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_log: bool,
    /// Put the legend in the lower left corner (where the data leave room) instead of the
    /// upper right.
    pub legend_lower_left: bool,
    pub series: Vec<Series>,
}

/// Tick labels: on log axes only the powers of ten ("1e-3"), elsewhere compact decimals.
fn tick(v: f64, log: bool) -> String {
    if log {
        let e = v.log10();
        return if (e - e.round()).abs() < 1e-6 {
            format!("1e{}", e.round() as i32)
        } else {
            String::new()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-3 {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        );
    });
}

fn bounds(fig: &Figure) -> Option<((f64, f64), (f64, f64))> {
    let pts = fig
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| {
            x.is_finite() && y.is_finite() && (!fig.log_log || (*x > 0.0 && *y > 0.0))
        });
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !any {
        return None;
    }
    let pad = |a: f64, b: f64, log: bool| {
        if log {
            (a / 1.3, b * 1.3)
        } else {
            let d = if b > a {
                (b - a) * 0.05
            } else {
                a.abs().max(1.0) * 0.05
            };
            (a - d, b + d)
        }
    };
    let bars = fig.series.iter().any(|s| s.kind == Kind::Bars);
    let (y0, y1) = pad(if bars { 0.0 } else { y0 }, y1, fig.log_log);
    Some((pad(x0, x1, fig.log_log), (y0, y1)))
}

fn draw<DB, X, Y>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
    x: X,
    y: Y,
    bar_width: f64,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&fig.title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    let log = fig.log_log;
    let fmt = move |v: &f64| tick(*v, log);
    chart
        .configure_mesh()
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .x_desc(fig.x_label.as_str())
        .y_desc(fig.y_label.as_str())
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    for (i, s) in fig.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| {
                x.is_finite() && y.is_finite() && (!fig.log_log || (*x > 0.0 && *y > 0.0))
            })
            .collect();
        let anno = match s.kind {
            Kind::Line => chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?,
            Kind::Points => chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(e)?,
            Kind::Bars => chart
                .draw_series(pts.into_iter().map(|(x, y)| {
                    Rectangle::new(
                        [(x - bar_width / 2.0, 0.0), (x + bar_width / 2.0, y)],
                        color.mix(0.7).filled(),
                    )
                }))
                .map_err(e)?,
        };
        anno.label(s.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(if fig.legend_lower_left {
            SeriesLabelPosition::LowerLeft
        } else {
            SeriesLabelPosition::UpperRight
        })
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<(), String> {
    let ((x0, x1), (y0, y1)) = bounds(fig).ok_or("nothing to plot")?;
    let bar_width = fig
        .series
        .iter()
        .find(|s| s.kind == Kind::Bars)
        .and_then(|s| {
            let xs: Vec<f64> = s.points.iter().map(|p| p.0).collect();
            xs.windows(2).map(|w| (w[1] - w[0]).abs()).reduce(f64::min)
        })
        .unwrap_or(1.0)
        * 0.9;
    if fig.log_log {
        draw(
            &root,
            fig,
            (x0..x1).log_scale(),
            (y0..y1).log_scale(),
            bar_width,
        )
    } else {
        draw(&root, fig, x0..x1, y0..y1, bar_width)
    }
}

/// Write `<dir>/<name>.png` and `<dir>/<name>.svg`.
pub fn write(dir: &Path, name: &str, fig: &Figure) -> anyhow::Result<()> {
    font();
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    render(BitMapBackend::new(&png, SIZE).into_drawing_area(), fig)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("drawing {}", png.display()))?;
    render(SVGBackend::new(&svg, SIZE).into_drawing_area(), fig)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}
