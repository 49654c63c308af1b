//! `Trackers`: several trackers behind one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Metric, Params, RunStatus, Tracker};

/// Several trackers at once (typically the local run store plus an MLflow mirror): every call
/// goes to each of them. A metrics batch is copied once into an `Arc` shared by all.
///
/// Build one from the `[tracking]` config with [`crate::TrackingConfig::start`], or by hand with
/// [`Trackers::with`].
#[derive(Default)]
pub struct Trackers {
    trackers: Vec<Box<dyn Tracker>>,
    run_dir: Option<PathBuf>,
    /// Strings scrubbed from param and tag values before any tracker sees them.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Trackers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trackers")
            .field("count", &self.trackers.len())
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

impl Trackers {
    /// No trackers (every call is a no-op).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tracker.
    pub fn with(mut self, tracker: impl Tracker + 'static) -> Self {
        self.trackers.push(Box::new(tracker));
        self
    }

    /// Records the local run directory (checkpoints, plots and samples go there).
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// Scrubs these strings (credentials) from every param and tag value before any tracker
    /// sees it (see [`Params::scrub`]). [`crate::TrackingConfig::start`] passes the MLflow
    /// credentials.
    pub fn with_secrets(mut self, secrets: Vec<String>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The local run directory, when a local tracker is part of the set.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_deref()
    }

    /// Number of trackers.
    pub fn len(&self) -> usize {
        self.trackers.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.trackers.is_empty()
    }
}

impl Tracker for Trackers {
    fn log_params(&self, params: &Params) {
        let scrubbed;
        let params = if self.secrets.is_empty() {
            params
        } else {
            let mut copy = params.clone();
            copy.scrub(&self.secrets.iter().map(String::as_str).collect::<Vec<_>>());
            scrubbed = copy;
            &scrubbed
        };
        for t in &self.trackers {
            t.log_params(params);
        }
    }

    fn log_metrics(&self, metrics: &[Metric]) {
        self.log_metrics_shared(metrics.into());
    }

    fn log_metrics_shared(&self, metrics: Arc<[Metric]>) {
        for t in &self.trackers {
            t.log_metrics_shared(Arc::clone(&metrics));
        }
    }

    fn set_tags(&self, tags: &BTreeMap<String, String>) {
        let mut tags = tags.clone();
        for value in tags.values_mut() {
            for secret in self.secrets.iter().filter(|s| s.len() >= 4) {
                *value = value.replace(secret.as_str(), crate::params::REDACTED);
            }
        }
        for t in &self.trackers {
            t.set_tags(&tags);
        }
    }

    fn log_artifact(&self, path: &Path, artifact_dir: Option<&str>) {
        for t in &self.trackers {
            t.log_artifact(path, artifact_dir);
        }
    }

    /// Flushes every tracker; the first error.
    fn flush(&self) -> Result<(), Error> {
        let mut first = None;
        for t in &self.trackers {
            if let Err(e) = t.flush() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Finishes every tracker (all of them, even after a failure) and returns the first error;
    /// the others are logged.
    fn finish(&self, status: RunStatus) -> Result<(), Error> {
        let mut first = None;
        for t in &self.trackers {
            if let Err(e) = t.finish(status) {
                if first.is_some() {
                    tracing::error!("{e}");
                } else {
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn last_error(&self) -> Option<String> {
        self.trackers.iter().find_map(|t| t.last_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredRun;
    use crate::{LocalTracker, RunSpec};

    #[test]
    fn every_tracker_gets_every_call() {
        let root = tempfile::tempdir().unwrap();
        let a = LocalTracker::start(root.path(), &RunSpec::new("a", "r")).unwrap();
        let b = LocalTracker::start(root.path(), &RunSpec::new("b", "r")).unwrap();
        let dirs = [a.run_dir().to_owned(), b.run_dir().to_owned()];
        let all = Trackers::new().with(a).with(b);
        all.log_params(&[("lr", "0.1")].into_iter().collect());
        for step in 0..10 {
            all.log_metrics(&[Metric::at("reward", step as f64, step, 0)]);
        }
        all.finish(RunStatus::Finished).unwrap();
        assert!(matches!(
            all.finish(RunStatus::Finished),
            Err(Error::AlreadyFinished { .. })
        ));
        for dir in dirs {
            let run = StoredRun::open(&dir).unwrap();
            assert_eq!(run.record.status, RunStatus::Finished);
            assert_eq!(run.params().unwrap().get("lr"), Some("0.1"));
            assert_eq!(run.metrics().unwrap().series("reward").unwrap().len(), 10);
        }
    }
}
