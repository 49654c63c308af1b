//! `LocalTracker`: writes a run into the local run store.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mlflow::spool::write_json_atomically;
use crate::params::redact_tags;
use crate::queue::{Command, DEFAULT_QUEUE_CAPACITY, Drained, POLL_INTERVAL, Queue, Queued, drain};
use crate::store::{ARTIFACTS_DIR, METRICS_FILE, PARAMS_FILE, RUN_FILE, read_json};
use crate::{Error, Params, RunId, RunRecord, RunSpec, RunStatus};

/// How long `finish` waits for the local writer (it only writes files).
const FINISH_WAIT: Duration = Duration::from_secs(120);

/// Writes a run to `<root>/<experiment>/<run-id>/` (layout in [`crate::store`]).
///
/// The directory and `run.json` are created by [`LocalTracker::start`] on the caller's thread,
/// so a bad root fails there; everything after runs on the `kaizen-local` background thread.
/// `metrics.jsonl` is flushed whenever the queue runs empty, so readers (`kaizen runs show`,
/// `kaizen report`) see points within milliseconds.
pub struct LocalTracker {
    queue: Queue,
    dir: PathBuf,
    id: RunId,
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for LocalTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTracker")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalTracker {
    /// Starts a new run under `root` (created if missing).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an experiment name that cannot be a directory; [`Error::Io`] when
    /// the run directory cannot be created.
    pub fn start(root: impl AsRef<Path>, spec: &RunSpec) -> Result<Self, Error> {
        Self::start_with_capacity(root, spec, DEFAULT_QUEUE_CAPACITY)
    }

    /// [`LocalTracker::start`] with a queue of `capacity` commands.
    ///
    /// # Errors
    /// As [`LocalTracker::start`].
    pub fn start_with_capacity(
        root: impl AsRef<Path>,
        spec: &RunSpec,
        capacity: usize,
    ) -> Result<Self, Error> {
        spec.validate()?;
        let experiment_dir = root.as_ref().join(&spec.experiment);
        std::fs::create_dir_all(&experiment_dir)
            .map_err(Error::io("creating experiment directory", &experiment_dir))?;
        let start_time = crate::metric::now_ms();
        let (id, dir) = loop {
            let id = RunId::generate(start_time);
            let dir = experiment_dir.join(id.as_str());
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("creating run directory", &dir)(e)),
            }
        };
        let record = RunRecord {
            id: id.clone(),
            experiment: spec.experiment.clone(),
            name: spec.run_name.clone(),
            status: RunStatus::Running,
            start_time,
            end_time: None,
            tags: redact_tags(&spec.tags),
        };
        Self::open(dir, record, Params::new(), capacity)
    }

    /// Reopens an existing run directory to continue it (a resumed training job): status goes
    /// back to `RUNNING`, metrics are appended.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] when `run.json` or `params.json` cannot be read.
    pub fn resume(run_dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = run_dir.as_ref().to_owned();
        let mut record: RunRecord = read_json(&dir.join(RUN_FILE))?;
        record.status = RunStatus::Running;
        record.end_time = None;
        let params_path = dir.join(PARAMS_FILE);
        let params = if params_path.exists() {
            read_json(&params_path)?
        } else {
            Params::new()
        };
        Self::open(dir, record, params, DEFAULT_QUEUE_CAPACITY)
    }

    fn open(
        dir: PathBuf,
        record: RunRecord,
        params: Params,
        capacity: usize,
    ) -> Result<Self, Error> {
        write_json_atomically(&dir.join(RUN_FILE), &record)?;
        let artifacts = dir.join(ARTIFACTS_DIR);
        std::fs::create_dir_all(&artifacts).map_err(Error::io("creating", &artifacts))?;
        let metrics_path = dir.join(METRICS_FILE);
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(Error::io("opening", &metrics_path))?;
        let last_error = Arc::new(Mutex::new(None));
        let id = record.id.clone();
        let mut writer = Writer {
            dir: dir.clone(),
            record,
            params,
            metrics: BufWriter::new(metrics),
            first_error: None,
            last_error: Arc::clone(&last_error),
        };
        let label = format!("{}/{}", writer.record.experiment, id);
        let queue = Queue::spawn(label, "kaizen-local", capacity, move |rx| writer.run(rx))?;
        Ok(Self {
            queue,
            dir,
            id,
            last_error,
        })
    }

    /// The run directory, `<root>/<experiment>/<run-id>`.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The run id.
    pub fn run_id(&self) -> &RunId {
        &self.id
    }
}

impl Queued for LocalTracker {
    fn queue(&self) -> &Queue {
        &self.queue
    }

    fn finish_wait(&self) -> Duration {
        FINISH_WAIT
    }

    fn background_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The background half: owns the files.
struct Writer {
    dir: PathBuf,
    record: RunRecord,
    params: Params,
    metrics: BufWriter<File>,
    /// Reported by `finish`.
    first_error: Option<Error>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(&mut self, rx: flume::Receiver<Command>) {
        let mut finished = false;
        loop {
            let (drained, took) = drain(&rx, |command| match command {
                Command::Finish {
                    status,
                    end_time,
                    done,
                } => {
                    let result = self.finish(status, end_time);
                    // Err = the caller stopped waiting; the files are written either way.
                    let _ = done.send(result);
                    finished = true;
                    false
                }
                Command::Close => {
                    finished = true;
                    false
                }
                Command::Flush(done) => {
                    let flushed = self.metrics.flush();
                    self.check(flushed, "writing", METRICS_FILE);
                    let _ = done.send(());
                    true
                }
                other => {
                    self.apply(other);
                    true
                }
            });
            if took || finished || drained == Drained::Disconnected {
                let flushed = self.metrics.flush();
                self.check(flushed, "writing", METRICS_FILE);
            }
            if finished || drained == Drained::Disconnected {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Metrics(metrics) => {
                for metric in metrics.iter() {
                    let written = serde_json::to_writer(&mut self.metrics, metric)
                        .map_err(std::io::Error::other)
                        .and_then(|()| self.metrics.write_all(b"\n"));
                    self.check(written, "appending to", METRICS_FILE);
                }
            }
            Command::Params(params) => {
                self.params.extend(&params);
                let written = write_json_atomically(&self.dir.join(PARAMS_FILE), &self.params);
                self.record_error(written);
            }
            Command::Tags(tags) => {
                self.record.tags.extend(redact_tags(&tags));
                let written = write_json_atomically(&self.dir.join(RUN_FILE), &self.record);
                self.record_error(written);
            }
            Command::Artifact { path, dir } => {
                let copied = self.copy_artifact(&path, dir.as_deref());
                self.record_error(copied);
            }
            Command::Finish { .. } | Command::Close | Command::Flush(_) => {}
        }
    }

    fn finish(&mut self, status: RunStatus, end_time: i64) -> Result<(), Error> {
        let flushed = self.metrics.flush();
        self.check(flushed, "writing", METRICS_FILE);
        self.record.status = status;
        self.record.end_time = Some(end_time);
        let written = write_json_atomically(&self.dir.join(RUN_FILE), &self.record);
        self.record_error(written);
        match self.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies a file or directory into `artifacts/<dir>/<name>`.
    fn copy_artifact(&self, source: &Path, dir: Option<&str>) -> Result<(), Error> {
        let mut dest = self.dir.join(ARTIFACTS_DIR);
        if let Some(dir) = dir {
            dest.extend(
                dir.split('/')
                    .filter(|s| !s.is_empty() && *s != "." && *s != ".."),
            );
        }
        let name = source.file_name().ok_or_else(|| Error::Invalid {
            field: "artifact path",
            value: source.display().to_string(),
            expected: "a path to a file or directory".into(),
        })?;
        std::fs::create_dir_all(&dest).map_err(Error::io("creating", &dest))?;
        copy_recursively(source, &dest.join(name))
    }

    fn check(&mut self, result: std::io::Result<()>, action: &'static str, file: &str) {
        // The path is built only on error: this runs for every metric written.
        if let Err(e) = result {
            self.record_error(Err(Error::io(action, self.dir.join(file))(e)));
        }
    }

    fn record_error(&mut self, result: Result<(), Error>) {
        if let Err(e) = result {
            let message = e.to_string();
            tracing::error!(run = %self.record.id, "local run store: {message}");
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(message);
            }
            self.first_error.get_or_insert(e);
        }
    }
}

fn copy_recursively(source: &Path, dest: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(source).map_err(Error::io("reading artifact", source))?;
    // Already in place (a file written straight into artifacts/): copying a file onto itself
    // would truncate it.
    if let (Ok(a), Ok(b)) = (source.canonicalize(), dest.canonicalize())
        && a == b
    {
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir_all(dest).map_err(Error::io("creating", dest))?;
        let entries = std::fs::read_dir(source).map_err(Error::io("listing artifact", source))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("listing artifact", source))?;
            copy_recursively(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(source, dest)
            .map(drop)
            .map_err(Error::io("copying artifact", source))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::StoredRun;
    use crate::{Metric, Tracker};

    #[test]
    fn run_store_round_trips_params_metrics_tags_artifacts_and_status() {
        let root = tempfile::tempdir().unwrap();
        let spec = RunSpec::new("grpo", "first").tag("git", "abc123");
        let tracker = LocalTracker::start(root.path(), &spec).unwrap();
        let params: Params = [("learner.lr", "1e-5"), ("group_size", "8")]
            .into_iter()
            .collect();
        tracker.log_params(&params);
        for step in 0..50u64 {
            tracker.log_metrics(&[
                Metric::at("reward", step as f64 / 50.0, step, 1_000 + step as i64),
                Metric::at("loss", 1.0 / (step as f64 + 1.0), step, 1_000 + step as i64),
            ]);
        }
        tracker.log_metrics(&[Metric::at("kl", f64::NAN, 50, 2_000)]);
        tracker.set_tags(&BTreeMap::from([("phase".to_owned(), "eval".to_owned())]));
        let file = root.path().join("config.toml");
        std::fs::write(&file, "lr = 1e-5\n").unwrap();
        tracker.log_artifact(&file, Some("config"));
        let dir = tracker.run_dir().to_owned();
        tracker.finish(RunStatus::Finished).unwrap();
        assert!(matches!(
            tracker.finish(RunStatus::Failed),
            Err(Error::AlreadyFinished { .. })
        ));

        let run = StoredRun::open(&dir).unwrap();
        assert_eq!(run.record.status, RunStatus::Finished);
        assert_eq!(run.record.name, "first");
        assert_eq!(
            run.record.tags.get("git").map(String::as_str),
            Some("abc123")
        );
        assert_eq!(
            run.record.tags.get("phase").map(String::as_str),
            Some("eval")
        );
        assert!(run.record.end_time.unwrap() >= run.record.start_time);
        assert_eq!(run.params().unwrap(), params);
        let history = run.metrics().unwrap();
        let reward = history.series("reward").unwrap();
        assert_eq!(reward.len(), 50);
        assert_eq!((reward[49].step, reward[49].value), (49, 49.0 / 50.0));
        assert!(history.series("kl").unwrap()[0].value.is_nan());
        assert_eq!(
            std::fs::read_to_string(dir.join("artifacts/config/config.toml")).unwrap(),
            "lr = 1e-5\n"
        );
        assert_eq!(
            run.artifacts().unwrap(),
            vec!["config/config.toml".to_owned()]
        );
    }

    #[test]
    fn resumed_run_appends_and_runs_again() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(root.path(), &RunSpec::new("e", "r")).unwrap();
        tracker.log_metrics(&[Metric::at("loss", 2.0, 0, 10)]);
        let dir = tracker.run_dir().to_owned();
        tracker.finish(RunStatus::Killed).unwrap();
        let resumed = LocalTracker::resume(&dir).unwrap();
        assert_eq!(
            StoredRun::open(&dir).unwrap().record.status,
            RunStatus::Running
        );
        resumed.log_metrics(&[Metric::at("loss", 1.0, 1, 20)]);
        resumed.finish(RunStatus::Finished).unwrap();
        let steps: Vec<u64> = StoredRun::open(&dir)
            .unwrap()
            .metrics()
            .unwrap()
            .series("loss")
            .unwrap()
            .iter()
            .map(|p| p.step)
            .collect();
        assert_eq!(steps, vec![0, 1]);
    }

    #[test]
    fn flush_puts_every_metric_logged_before_on_disk_while_the_run_goes_on() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(root.path(), &RunSpec::new("e", "r")).unwrap();
        for step in 0..2000 {
            tracker.log_metric("loss", 1.0, step);
        }
        tracker.flush().unwrap();
        // Read while the tracker is alive (a process killed now would leave this on disk).
        let run = StoredRun::open(tracker.run_dir()).unwrap();
        assert_eq!(run.metrics().unwrap().series("loss").unwrap().len(), 2000);
        assert_eq!(run.record.status, RunStatus::Running);
        tracker.log_metric("loss", 0.5, 2000);
        tracker.finish(RunStatus::Finished).unwrap();
        assert!(
            tracker.flush().is_ok(),
            "flush after finish has nothing to do"
        );
    }

    #[test]
    fn dropping_without_finish_keeps_every_metric_and_status_running() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(root.path(), &RunSpec::new("e", "r")).unwrap();
        for step in 0..1000 {
            tracker.log_metric("loss", 1.0, step);
        }
        let dir = tracker.run_dir().to_owned();
        drop(tracker);
        let run = StoredRun::open(&dir).unwrap();
        assert_eq!(run.record.status, RunStatus::Running);
        assert_eq!(run.metrics().unwrap().series("loss").unwrap().len(), 1000);
    }

    #[test]
    fn artifact_already_in_the_artifacts_directory_is_left_intact() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(root.path(), &RunSpec::new("e", "r")).unwrap();
        let plot = tracker.run_dir().join("artifacts/report.png");
        std::fs::write(&plot, b"png bytes").unwrap();
        tracker.log_artifact(&plot, None);
        tracker.finish(RunStatus::Finished).unwrap();
        assert_eq!(std::fs::read(&plot).unwrap(), b"png bytes");
    }

    #[test]
    fn missing_artifact_is_reported_by_last_error_and_finish() {
        let root = tempfile::tempdir().unwrap();
        let tracker = LocalTracker::start(root.path(), &RunSpec::new("e", "r")).unwrap();
        tracker.log_artifact(Path::new("/nonexistent/ckpt.safetensors"), None);
        tracker.log_metric("loss", 1.0, 0);
        let err = tracker.finish(RunStatus::Finished).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ckpt.safetensors"), "{err}");
        assert!(tracker.last_error().unwrap().contains("ckpt.safetensors"));
    }
}
