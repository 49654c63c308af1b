//! The `Tracker` trait: what the learner and actors call to record a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::{Error, Metric, Params, RunStatus};

/// Records one run. Implemented by [`crate::LocalTracker`] (the run store on disk),
/// [`crate::MlflowTracker`] (an MLflow server) and [`crate::Trackers`] (several at once).
///
/// Starting a run is constructing the tracker (`LocalTracker::start(root, &spec)`), so nothing
/// can be logged to a run that does not exist. Every logging method only enqueues onto a bounded
/// queue drained by the tracker's own background thread: it costs well under a microsecond
/// (see `BENCHMARKS.md`), never touches the disk or the network, needs no async runtime and is
/// safe to call from sync code and from tokio tasks alike. Only when the queue is full (a
/// stalled disk) does a call wait, with a warning, rather than drop data.
///
/// Problems on the background thread (disk full, server down) never reach the caller as a
/// panic or an error return: they are logged with `tracing`, visible in
/// [`Tracker::last_error`], and reported by [`Tracker::finish`].
pub trait Tracker: Send + Sync {
    /// Records params (usually the resolved config, see [`Params::flatten_toml`]). Logging the
    /// same key again with the same value is harmless; MLflow refuses a changed value.
    fn log_params(&self, params: &Params);

    /// Records a batch of metric points.
    fn log_metrics(&self, metrics: &[Metric]);

    /// Records a batch of metric points already behind an `Arc` (what [`crate::Trackers`] hands
    /// to each of its trackers, so a fan-out costs one allocation, not one per tracker).
    fn log_metrics_shared(&self, metrics: Arc<[Metric]>) {
        self.log_metrics(&metrics);
    }

    /// Records one metric point stamped with the current time.
    fn log_metric(&self, key: &'static str, value: f64, step: u64) {
        self.log_metrics(&[Metric::new(key, value, step)]);
    }

    /// Sets run tags (a later value for the same key replaces the earlier one).
    fn set_tags(&self, tags: &BTreeMap<String, String>);

    /// Records a file or directory as an artifact, under `artifact_dir` (relative, `/`-separated;
    /// `None` = the artifact root). The file is read on the background thread, so it must stay in
    /// place until the run finishes (files in the run directory do).
    fn log_artifact(&self, path: &Path, artifact_dir: Option<&str>);

    /// Waits until everything logged before is durable on disk — the local store's files, the
    /// MLflow mirror's spool (delivery to the server may come later; the spool guarantees it) —
    /// without ending the run. The trainer calls it before it writes a checkpoint, so a run
    /// killed afterwards and resumed from that checkpoint has every metric up to it.
    ///
    /// # Errors
    /// [`Error::WorkerGone`] when the background thread does not answer.
    fn flush(&self) -> Result<(), Error>;

    /// Ends the run with `status` and waits until everything logged before is written (and, for
    /// MLflow, delivered or spooled after the configured shutdown timeout). Later calls to the
    /// logging methods are ignored with a warning.
    ///
    /// # Errors
    /// [`Error::AlreadyFinished`] on a second call; [`Error::NotDelivered`] /
    /// [`Error::EntriesRefused`] when the MLflow server did not take everything; the first
    /// write error of the local store ([`Error::Io`]); [`Error::WorkerGone`].
    fn finish(&self, status: RunStatus) -> Result<(), Error>;

    /// The last problem the background thread hit, if any (already logged), e.g.
    /// `MLflow server http://… unreachable (runs/log-batch): …`.
    fn last_error(&self) -> Option<String>;
}
