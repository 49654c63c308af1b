//! `kaizen runs list | show RUN | sync RUN`: the local run store from the command line.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kaizen_tracking::mlflow::{MlflowConfig, sync_run};
use kaizen_tracking::{Goal, LocalStore, StoredRun, format_duration, format_utc};

/// Arguments of `kaizen runs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Root of the local run store (`tracking.runs_dir` in job configs).
    #[arg(long, global = true, default_value = "runs")]
    runs_dir: PathBuf,
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RunsCommand {
    /// List runs, oldest first: id, experiment, name, status, start, duration, the last and
    /// best value of one metric, MLflow mirror.
    List {
        /// Only runs of this experiment.
        #[arg(long)]
        experiment: Option<String>,
        /// The metric whose last and best values are shown.
        #[arg(long, default_value = "reward")]
        metric: String,
    },
    /// Show a run: status, tags, params, artifacts, and last/best/min/max of every metric.
    Show {
        /// A run directory, `<experiment>/<run-id>`, a run id (or unique prefix) or a run name.
        run: String,
    },
    /// Deliver a run to an MLflow server (what a live mirror could not, or a local-only run).
    /// Idempotent: running it again sends nothing twice.
    Sync {
        /// A run directory, `<experiment>/<run-id>`, a run id (or unique prefix) or a run name.
        run: String,
        /// MLflow tracking URI; default `MLFLOW_TRACKING_URI`. Credentials come from
        /// `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`.
        #[arg(long)]
        uri: Option<String>,
        /// Give up after this many seconds of failed delivery (what is left stays spooled).
        #[arg(long, default_value_t = 120.0)]
        timeout_s: f64,
    },
}

/// Runs `kaizen runs`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let store = LocalStore::new(&args.runs_dir);
    match args.command {
        RunsCommand::List { experiment, metric } => {
            print!("{}", list(&store, experiment.as_deref(), &metric)?)
        }
        RunsCommand::Show { run } => print!("{}", show(&store.find(&run)?)?),
        RunsCommand::Sync {
            run,
            uri,
            timeout_s,
        } => {
            let run = store.find(&run)?;
            let uri = match uri {
                Some(uri) => uri,
                None => std::env::var("MLFLOW_TRACKING_URI")
                    .ok()
                    .filter(|u| !u.trim().is_empty())
                    .context(
                        "no MLflow server: pass --uri http://host:port or set MLFLOW_TRACKING_URI",
                    )?,
            };
            anyhow::ensure!(
                timeout_s.is_finite() && timeout_s >= 0.0,
                "--timeout-s {timeout_s}: expected a number of seconds >= 0"
            );
            let mut config = MlflowConfig::new(&uri)?;
            config.shutdown_timeout = Duration::from_secs_f64(timeout_s);
            let report = sync_run(&run.dir, &config)?;
            let mlflow_run = report.mlflow_run_id.as_deref().unwrap_or("?");
            if report.imported == 0 && report.delivered == 0 {
                println!(
                    "{} is already in sync with {} (MLflow run {mlflow_run}, {} entries delivered)",
                    run.label(),
                    config.uri,
                    report.delivered_total
                );
            } else {
                println!(
                    "synced {} to {} as MLflow run {mlflow_run}: {} new entries from the run \
                     store, {} delivered now ({} in all, {} refused)",
                    run.label(),
                    config.uri,
                    report.imported,
                    report.delivered,
                    report.delivered_total,
                    report.rejected_total
                );
            }
        }
    }
    Ok(())
}

/// The `runs list` table, with the last and best value of `metric`.
fn list(store: &LocalStore, experiment: Option<&str>, metric: &str) -> anyhow::Result<String> {
    let runs: Vec<StoredRun> = store
        .runs()?
        .into_iter()
        .filter(|r| experiment.is_none_or(|e| r.record.experiment == e))
        .collect();
    if runs.is_empty() {
        return Ok(format!("no runs under {}\n", store.root().display()));
    }
    let mut rows = vec![[
        "RUN".to_owned(),
        "EXPERIMENT".to_owned(),
        "NAME".to_owned(),
        "STATUS".to_owned(),
        "STARTED (UTC)".to_owned(),
        "DURATION".to_owned(),
        format!("{metric} LAST @STEP"),
        "BEST @STEP".to_owned(),
        "MLFLOW".to_owned(),
    ]];
    let now = kaizen_tracking::now_ms();
    for run in &runs {
        let r = &run.record;
        let (last, best) = match run.metrics().map(|h| h.summary(metric)) {
            Ok(Some(s)) => (
                format!("{} @{}", value(s.last.value), s.last.step),
                format!("{} @{}", value(s.best.value), s.best.step),
            ),
            Ok(None) => ("-".to_owned(), "-".to_owned()),
            Err(e) => {
                tracing::warn!("{e}");
                ("unreadable".to_owned(), "-".to_owned())
            }
        };
        rows.push([
            r.id.to_string(),
            r.experiment.clone(),
            r.name.clone(),
            r.status.to_string(),
            format_utc(r.start_time),
            format_duration(r.end_time.unwrap_or(now) - r.start_time),
            last,
            best,
            mirror_cell(run),
        ]);
    }
    Ok(table(&rows))
}

fn mirror_cell(run: &StoredRun) -> String {
    match &run.mirror {
        None => "-".into(),
        Some(m) => {
            let id = m.run_id.as_deref().map_or("not created", |id| short(id));
            let mut cell = format!("{id} ({} sent", m.delivered);
            if m.pending > 0 {
                let _ = write!(cell, ", {} spooled", m.pending);
            }
            if m.rejected > 0 {
                let _ = write!(cell, ", {} refused", m.rejected);
            }
            cell.push(')');
            cell
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The `runs show` report.
fn show(run: &StoredRun) -> anyhow::Result<String> {
    let r = &run.record;
    let mut out = String::new();
    let now = kaizen_tracking::now_ms();
    writeln!(out, "run         {} ({})", r.id, r.name)?;
    writeln!(out, "experiment  {}", r.experiment)?;
    writeln!(
        out,
        "status      {}, started {} UTC, {}{}",
        r.status,
        format_utc(r.start_time),
        if r.end_time.is_some() {
            "took "
        } else {
            "running for "
        },
        format_duration(r.end_time.unwrap_or(now) - r.start_time)
    )?;
    writeln!(out, "directory   {}", run.dir.display())?;
    if !r.tags.is_empty() {
        let tags: Vec<String> = r.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "tags        {}", tags.join(", "))?;
    }
    if let Some(m) = &run.mirror {
        writeln!(
            out,
            "mlflow      {} run {} ({} delivered, {} spooled, {} refused)",
            m.uri,
            m.run_id.as_deref().unwrap_or("not created yet"),
            m.delivered,
            m.pending,
            m.rejected
        )?;
    }
    let params = run.params()?;
    writeln!(out, "params      {} (params.json)", params.len())?;
    let artifacts = run.artifacts()?;
    if !artifacts.is_empty() {
        writeln!(out, "artifacts   {}", artifacts.join(", "))?;
    }
    let history = run.metrics()?;
    if history.is_empty() {
        writeln!(out, "\nno metrics logged")?;
        return Ok(out);
    }
    let mut rows = vec![[
        "METRIC".to_owned(),
        "POINTS".to_owned(),
        "LAST @STEP".to_owned(),
        "BEST @STEP".to_owned(),
        "MIN".to_owned(),
        "MAX".to_owned(),
    ]];
    for key in history.keys() {
        let Some(s) = history.summary(key) else {
            continue;
        };
        let arrow = match s.goal {
            Goal::Maximize => "↑",
            Goal::Minimize => "↓",
        };
        rows.push([
            key.to_owned(),
            s.count.to_string(),
            format!("{} @{}", value(s.last.value), s.last.step),
            format!("{} @{} {arrow}", value(s.best.value), s.best.step),
            value(s.min.value),
            value(s.max.value),
        ]);
    }
    writeln!(out)?;
    out.push_str(&table(&rows));
    Ok(out)
}

/// A metric value in at most ~8 characters.
fn value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        format!("{v}")
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen_tracking::{LocalTracker, Metric, RunSpec, RunStatus, Tracker};

    #[test]
    fn list_and_show_print_runs_and_metric_summaries() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(
            root.path(),
            &RunSpec::new("grpo", "math-1").tag("git", "abc"),
        )
        .unwrap();
        for step in 0..10u64 {
            tracker.log_metrics(&[
                Metric::at("reward", step as f64 / 10.0, step, 0),
                Metric::at("loss", 10.0 - step as f64, step, 0),
            ]);
        }
        tracker.finish(RunStatus::Finished).unwrap();
        let store = LocalStore::new(root.path());
        let listing = list(&store, None, "reward").unwrap();
        let row = listing.lines().nth(1).unwrap();
        assert!(
            row.contains("math-1") && row.contains("FINISHED") && row.contains("grpo"),
            "{listing}"
        );
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words(row).contains("0.9 @9 0.9 @9 -"),
            "last and best reward: {listing}"
        );
        let by_loss = list(&store, None, "loss").unwrap();
        assert!(
            words(by_loss.lines().nth(1).unwrap()).contains("1 @9 1 @9 -"),
            "{by_loss}"
        );
        assert_eq!(
            list(&store, Some("other"), "reward").unwrap(),
            format!("no runs under {}\n", root.path().display())
        );
        let shown = show(&store.find("math-1").unwrap()).unwrap();
        assert!(shown.contains("git=abc"), "{shown}");
        let reward = shown.lines().find(|l| l.starts_with("reward")).unwrap();
        assert!(
            reward.contains("0.9 @9") && reward.contains('↑'),
            "{reward}"
        );
        let loss = shown.lines().find(|l| l.starts_with("loss")).unwrap();
        assert!(loss.contains("1 @9 ↓"), "{loss}");
    }
}
