//! Rendering a report: metric curves of one or several runs.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::font::{self, FAMILY};
use super::{axis_label, smooth};
use crate::Error;
use crate::history::MetricHistory;
use crate::store::StoredRun;

/// One run to draw: its legend label and metric history.
#[derive(Clone, Debug)]
pub struct PlotRun {
    /// Legend text, e.g. `20261130-123456-a1b2c3 (grpo-math)`.
    pub label: String,
    /// The run's metrics.
    pub history: MetricHistory,
}

impl PlotRun {
    /// A run of the local store, labelled `run-id (name)`.
    ///
    /// # Errors
    /// As [`StoredRun::metrics`].
    pub fn from_stored(run: &StoredRun) -> Result<Self, Error> {
        Ok(Self {
            label: run.label(),
            history: run.metrics()?,
        })
    }
}

/// What to draw and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// Metrics to draw, one panel each, in this order; empty = every metric of the runs (sorted,
    /// at most [`ReportOptions::MAX_PANELS`]).
    pub metrics: Vec<String>,
    /// EMA weight in `[0, 1)` (see [`smooth`]); 0 draws the raw curve only.
    pub smoothing: f64,
    /// Width of one panel, pixels.
    pub panel_width: u32,
    /// Height of one panel, pixels.
    pub panel_height: u32,
    /// Figure title; default `kaizen report: <first run label>` (+ `and N more`).
    pub title: Option<String>,
}

impl ReportOptions {
    /// Panels drawn at most when `metrics` is empty.
    pub const MAX_PANELS: usize = 12;
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            metrics: Vec::new(),
            smoothing: 0.8,
            panel_width: 640,
            panel_height: 400,
            title: None,
        }
    }
}

/// Colours of runs, in order (matplotlib's `tab10`, readable on white and for most colour
/// vision deficiencies).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const TITLE_HEIGHT: u32 = 56;

/// Draws the report to `out`: `.png` (rasterised with the embedded font) or `.svg`.
///
/// # Errors
/// [`Error::Invalid`] for another extension, no runs, or metrics none of the runs has (naming
/// the metrics the runs do have); [`Error::Plot`] when drawing or writing fails.
pub fn render_report(runs: &[PlotRun], options: &ReportOptions, out: &Path) -> Result<(), Error> {
    if runs.is_empty() {
        return Err(Error::Invalid {
            field: "runs to plot",
            value: String::new(),
            expected: "at least one run".into(),
        });
    }
    let metrics = pick_metrics(runs, options)?;
    let cols = match metrics.len() {
        1 => 1,
        2..=4 => 2,
        _ => 3,
    };
    let rows = metrics.len().div_ceil(cols);
    let size = (
        options.panel_width * cols as u32,
        TITLE_HEIGHT + options.panel_height * rows as u32,
    );
    let plot_error = |message: String| Error::Plot {
        path: out.to_owned(),
        message,
    };
    let extension = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") => {
            if !font::register() {
                return Err(plot_error(
                    "the embedded font is damaged (rebuild kaizen)".into(),
                ));
            }
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw(&root, runs, &metrics, options, (rows, cols)).map_err(plot_error)?;
            root.present().map_err(|e| plot_error(e.to_string()))
        }
        Some("svg") => {
            // SVG text is laid out by the viewer, but plotters measures it while placing labels.
            font::register();
            let root = SVGBackend::new(out, size).into_drawing_area();
            draw(&root, runs, &metrics, options, (rows, cols)).map_err(plot_error)?;
            root.present().map_err(|e| plot_error(e.to_string()))
        }
        _ => Err(Error::Invalid {
            field: "report output file",
            value: out.display().to_string(),
            expected: "a file name ending in .png or .svg".into(),
        }),
    }
}

fn pick_metrics(runs: &[PlotRun], options: &ReportOptions) -> Result<Vec<String>, Error> {
    let available: BTreeSet<&str> = runs.iter().flat_map(|r| r.history.keys()).collect();
    if options.metrics.is_empty() {
        if available.is_empty() {
            return Err(Error::Invalid {
                field: "runs to plot",
                value: runs
                    .iter()
                    .map(|r| r.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                expected: "runs with at least one metric logged".into(),
            });
        }
        return Ok(available
            .iter()
            .take(ReportOptions::MAX_PANELS)
            .map(|k| (*k).to_owned())
            .collect());
    }
    let missing: Vec<&str> = options
        .metrics
        .iter()
        .map(String::as_str)
        .filter(|m| !available.contains(m))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid {
            field: "metrics",
            value: missing.join(","),
            expected: format!(
                "metrics the runs logged: {}",
                available.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(options.metrics.clone())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[PlotRun],
    metrics: &[String],
    options: &ReportOptions,
    grid: (usize, usize),
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = options.title.clone().unwrap_or_else(|| match runs {
        [one] => format!("kaizen report: {}", one.label),
        [first, rest @ ..] => format!("kaizen report: {} and {} more", first.label, rest.len()),
        [] => "kaizen report".to_owned(),
    });
    let (header, body) = root.split_vertically(TITLE_HEIGHT);
    header
        .draw(&Text::new(
            title,
            (16, 8),
            (FAMILY, 26).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
    let note = if options.smoothing > 0.0 {
        format!(
            "bold: EMA-smoothed (weight {}), faint: raw values · x: training step",
            options.smoothing
        )
    } else {
        "raw values · x: training step".to_owned()
    };
    header
        .draw(&Text::new(
            note,
            (16, 36),
            (FAMILY, 15).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(|e| e.to_string())?;
    let panels = body.split_evenly(grid);
    for (key, panel) in metrics.iter().zip(panels.iter()) {
        draw_panel(panel, runs, key, options.smoothing)
            .map_err(|e| format!("metric {key}: {e}"))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[PlotRun],
    key: &str,
    smoothing: f64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let series: Vec<(usize, Vec<(f64, f64)>)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, run)| {
            let points: Vec<(f64, f64)> = run
                .history
                .series(key)?
                .iter()
                .filter(|p| p.value.is_finite())
                .map(|p| (p.step as f64, p.value))
                .collect();
            (!points.is_empty()).then_some((i, points))
        })
        .collect();
    let (x_range, y_range) = ranges(series.iter().flat_map(|(_, pts)| pts.iter().copied()));
    let (x_span, y_span) = (x_range.end - x_range.start, y_range.end - y_range.start);
    let mut chart = ChartBuilder::on(area)
        .caption(key, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(76)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc(axis_label(key))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .x_label_formatter(&|x| format_tick(*x, x_span))
        .y_label_formatter(&|y| format_tick(*y, y_span))
        .max_light_lines(2)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(err)?;
    if series.is_empty() {
        area.draw(&Text::new(
            "no finite values",
            (
                area.dim_in_pixel().0 as i32 / 2 - 50,
                area.dim_in_pixel().1 as i32 / 2,
            ),
            (FAMILY, 16).into_font().color(&RGBColor(120, 120, 120)),
        ))
        .map_err(err)?;
        return Ok(());
    }
    for (i, points) in &series {
        let color = PALETTE[i % PALETTE.len()];
        let label = &runs[*i].label;
        if smoothing > 0.0 {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.mix(0.25).stroke_width(1),
                ))
                .map_err(err)?;
            let values: Vec<f64> = points.iter().map(|p| p.1).collect();
            let smoothed = smooth(&values, smoothing);
            let line = points.iter().zip(smoothed).map(|(p, s)| (p.0, s));
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        } else {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(legend_corner(&series, &x_range, &y_range))
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Axis ranges covering the points, padded by 5 % (a flat series gets a band around it).
fn ranges(
    points: impl Iterator<Item = (f64, f64)>,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        (y0.abs() * 0.1).max(1e-3)
    };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// The corner whose legend-sized box (half the width, a third of the height) covers the fewest
/// points, so that the legend hides as little of the curves as possible.
fn legend_corner(
    series: &[(usize, Vec<(f64, f64)>)],
    x: &std::ops::Range<f64>,
    y: &std::ops::Range<f64>,
) -> SeriesLabelPosition {
    let (x_mid, y_low, y_high) = (
        x.start + 0.5 * (x.end - x.start),
        y.start + (y.end - y.start) / 3.0,
        y.end - (y.end - y.start) / 3.0,
    );
    let count = |right: bool, upper: bool| {
        series
            .iter()
            .flat_map(|(_, pts)| pts.iter())
            .filter(|(px, py)| {
                (*px >= x_mid) == right && if upper { *py >= y_high } else { *py <= y_low }
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, count(true, true)),
        (SeriesLabelPosition::UpperLeft, count(false, true)),
        (SeriesLabelPosition::LowerRight, count(true, false)),
        (SeriesLabelPosition::LowerLeft, count(false, false)),
    ]
    .into_iter()
    .min_by_key(|(_, n)| *n)
    .map_or(SeriesLabelPosition::UpperRight, |(corner, _)| corner)
}

/// Tick labels: integers without decimals, large and small numbers in scientific notation;
/// values within a billionth of the axis span of zero are 0 (not `6.9e-18`).
fn format_tick(v: f64, span: f64) -> String {
    let a = v.abs();
    if a <= span.abs() * 1e-9 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metric;

    fn run(label: &str, scale: f64) -> PlotRun {
        let mut history = MetricHistory::default();
        for step in 0..200u64 {
            let noise = ((step * 7919) % 13) as f64 / 13.0 - 0.5;
            history.push(Metric::at(
                "reward",
                scale * (1.0 - (-(step as f64) / 60.0).exp()) + 0.1 * noise,
                step,
                0,
            ));
            history.push(Metric::at(
                "approx_kl",
                0.02 * (step as f64 / 200.0) + 0.002 * noise,
                step,
                0,
            ));
        }
        PlotRun {
            label: label.into(),
            history,
        }
    }

    #[test]
    fn png_report_has_text_and_curves_of_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report.png");
        render_report(
            &[run("run-a", 1.0), run("run-b", 0.7)],
            &ReportOptions::default(),
            &out,
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Decode and check: the title band holds dark (text) pixels, the panels hold both
        // runs' colours.
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (1280, TITLE_HEIGHT + 400));
        let dark_in_title = (0..image.width())
            .flat_map(|x| (0..TITLE_HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 80))
            .count();
        assert!(
            dark_in_title > 500,
            "title text missing ({dark_in_title} dark pixels)"
        );
        for color in [PALETTE[0], PALETTE[1]] {
            let n = image
                .pixels()
                .filter(|p| p.0 == [color.0, color.1, color.2])
                .count();
            assert!(n > 200, "colour {color:?} drawn on {n} pixels only");
        }
    }

    #[test]
    fn svg_report_names_metrics_runs_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report.svg");
        let options = ReportOptions {
            metrics: vec!["approx_kl".into()],
            ..ReportOptions::default()
        };
        render_report(&[run("run-a", 1.0)], &options, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        for text in [
            "approx_kl (nats)",
            "training step",
            "run-a",
            "kaizen report: run-a",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(!svg.contains(">reward<"));
    }

    #[test]
    fn unknown_metric_and_extension_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let options = ReportOptions {
            metrics: vec!["rewrad".into()],
            ..ReportOptions::default()
        };
        let err = render_report(&[run("a", 1.0)], &options, &dir.path().join("r.png"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rewrad") && err.contains("approx_kl, reward"),
            "{err}"
        );
        let err = render_report(
            &[run("a", 1.0)],
            &ReportOptions::default(),
            &dir.path().join("r.jpg"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(".png or .svg"), "{err}");
    }

    #[test]
    fn legend_goes_to_the_emptiest_corner() {
        let rising = vec![(
            0,
            (0..100).map(|i| (i as f64, i as f64)).collect::<Vec<_>>(),
        )];
        let corner = legend_corner(&rising, &(0.0..100.0), &(0.0..100.0));
        assert!(
            matches!(corner, SeriesLabelPosition::UpperLeft),
            "{corner:?}"
        );
        let falling = vec![(
            0,
            (0..100)
                .map(|i| (i as f64, 100.0 - i as f64))
                .collect::<Vec<_>>(),
        )];
        let corner = legend_corner(&falling, &(0.0..100.0), &(0.0..100.0));
        assert!(
            matches!(corner, SeriesLabelPosition::UpperRight),
            "{corner:?}"
        );
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(format_tick(200.0, 300.0), "200");
        assert_eq!(format_tick(0.125, 1.0), "0.125");
        assert_eq!(format_tick(0.5, 1.0), "0.5");
        assert_eq!(format_tick(2.5e-5, 1e-4), "2.5e-5");
        assert_eq!(format_tick(6.9e-18, 0.16), "0");
    }
}
