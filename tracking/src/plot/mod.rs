//! Metric plots: `kaizen report` and the report a run logs as an artifact at its end.
//!
//! - [`render_report`] (`report.rs`): one panel per metric, several runs overlaid, raw curves
//!   faint and smoothed curves bold, titles, axis labels with units and legends; PNG or SVG.
//! - [`smooth`] (`smoothing.rs`): TensorBoard's debiased exponential moving average.
//! - [`axis_label`] (`label.rs`): the y-axis label (with unit) read from a metric's name.
//! - `font.rs`: the embedded font PNG text is drawn with, so plots have text on machines
//!   without any installed fonts.

mod font;
mod label;
mod report;
mod smoothing;

pub use label::axis_label;
pub use report::{PlotRun, ReportOptions, render_report};
pub use smoothing::smooth;
