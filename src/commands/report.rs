//! `kaizen report RUN... [--metrics a,b] [--out file.png|svg]`: metric curves of runs.

use std::path::PathBuf;

use kaizen_tracking::LocalStore;
use kaizen_tracking::plot::{PlotRun, ReportOptions, render_report};

/// Arguments of `kaizen report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs to draw, overlaid: run directories, `<experiment>/<run-id>`, run ids (or unique
    /// prefixes) or run names.
    #[arg(required = true)]
    runs: Vec<String>,
    /// Metrics to draw, one panel each (default: every metric the runs logged, up to 12).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Output file; `.png` or `.svg`.
    #[arg(long, default_value = "report.png")]
    out: PathBuf,
    /// EMA smoothing weight in [0, 1) (TensorBoard's); 0 draws raw values only.
    #[arg(long, default_value_t = 0.8)]
    smoothing: f64,
    /// Figure title.
    #[arg(long)]
    title: Option<String>,
    /// Root of the local run store.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
}

/// Runs `kaizen report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.smoothing),
        "--smoothing {}: expected a weight in [0, 1)",
        args.smoothing
    );
    let store = LocalStore::new(&args.runs_dir);
    let mut runs = Vec::new();
    for query in &args.runs {
        runs.push(PlotRun::from_stored(&store.find(query)?)?);
    }
    let options = ReportOptions {
        metrics: args.metrics,
        smoothing: args.smoothing,
        title: args.title,
        ..ReportOptions::default()
    };
    render_report(&runs, &options, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
