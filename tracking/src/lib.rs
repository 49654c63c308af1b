//! # kaizen-tracking
//!
//! Experiment tracking for kaizen: what the learner and actors call to record a run, where runs
//! are kept, how they reach an MLflow dashboard, and how they are plotted.
//!
//! How the parts fit:
//!
//! - A run starts from a [`RunSpec`] (experiment, run name, tags). The [`Tracker`] trait is what
//!   training code calls: [`Tracker::log_params`] (the resolved config, flattened with
//!   [`Params::flatten_toml`]), [`Tracker::log_metrics`] (batches of [`Metric`]: key, value,
//!   step, timestamp in ms), [`Tracker::log_artifact`], [`Tracker::set_tags`], and
//!   [`Tracker::finish`] with a [`RunStatus`] (`FINISHED`, `FAILED`, `KILLED` on Ctrl-C).
//! - Every tracker owns a bounded queue and one background thread. A logging call only enqueues
//!   (100–250 ns, see `BENCHMARKS.md`): no runtime is needed, so the learner's plain
//!   thread and tokio actors call the same methods, and neither a slow disk nor a dead server
//!   stalls training.
//! - [`LocalTracker`] writes the local run store, `runs/<experiment>/<run-id>/` ([`store`] has
//!   the layout); [`LocalStore`] and [`StoredRun`] read it back (`kaizen runs list/show`).
//! - [`MlflowTracker`] mirrors the run to an MLflow server over its REST API. Everything goes
//!   through a write-ahead spool in the run directory first, so when the server is unreachable
//!   nothing is lost: it is delivered when the server is back, at the next start, or by
//!   [`mlflow::sync_run`] (`kaizen runs sync`), each entry exactly once.
//! - [`Trackers`] fans calls out to several trackers; [`TrackingConfig::start`] builds the
//!   usual pair (local + MLflow when `tracking.mlflow_uri` or `MLFLOW_TRACKING_URI` is set).
//! - [`plot::render_report`] draws metric curves of several runs (`kaizen report`).
//!
//! How it ends: `finish` waits for the queue to drain and (for MLflow) for delivery, up to a
//! timeout, then reports what could not be delivered; dropping a tracker without `finish`
//! writes out what is queued and leaves the run `RUNNING`. Secrets (`MLFLOW_TRACKING_TOKEN`,
//! `MLFLOW_TRACKING_PASSWORD`, passwords in URIs, config keys naming secrets) never appear in
//! logs, errors, `Debug` output or saved params.
//!
//! ```
//! use kaizen_tracking::{LocalStore, LocalTracker, Metric, Params, RunSpec, RunStatus, Tracker};
//!
//! # fn main() -> Result<(), kaizen_tracking::Error> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let root = tmp.path();
//! let tracker = LocalTracker::start(root, &RunSpec::new("grpo-math", "demo"))?;
//! let config: toml::Value = toml::from_str("[learner]\nlr = 1e-5").unwrap();
//! tracker.log_params(&Params::flatten_toml(&config));
//! for step in 0..3 {
//!     tracker.log_metrics(&[Metric::new("reward", 0.5 * step as f64, step)]);
//! }
//! tracker.finish(RunStatus::Finished)?;
//!
//! let run = LocalStore::new(root).find("demo")?;
//! assert_eq!(run.params()?.get("learner.lr"), Some("0.00001"));
//! assert_eq!(run.metrics()?.summary("reward").unwrap().last.value, 1.0);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod error;
mod fanout;
mod history;
mod local;
mod metric;
pub mod mlflow;
mod params;
pub mod plot;
mod queue;
mod run;
pub mod store;
mod tracker;

pub use config::TrackingConfig;
pub use error::Error;
pub use fanout::Trackers;
pub use history::{Goal, MetricHistory, Point, Summary};
pub use local::LocalTracker;
pub use metric::{Metric, now_ms};
pub use mlflow::{MlflowConfig, MlflowTracker};
pub use params::{Params, REDACTED, is_secret_key};
pub use queue::DEFAULT_QUEUE_CAPACITY;
pub use run::{RunId, RunRecord, RunSpec, RunStatus, format_duration, format_utc};
pub use store::{LocalStore, StoredRun};
pub use tracker::Tracker;
