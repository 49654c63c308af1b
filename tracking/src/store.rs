//! The local run store: its layout and the reader API (`kaizen runs`, `kaizen report`).
//!
//! ```text
//! <root>/                       tracking.runs_dir, default `runs/`
//!   <experiment>/
//!     <run-id>/                 e.g. 20261130-123456-a1b2c3 (UTC start time + random suffix)
//!       run.json                RunRecord: id, experiment, name, status, start/end time, tags
//!       params.json             flat {"key": "value"} (the resolved config, flattened)
//!       metrics.jsonl           one {"key","value","step","timestamp"} per line, append-only
//!       artifacts/              files logged as artifacts (config, plots, checkpoints on request)
//!       mlflow/                 only when mirrored to MLflow (see crate::mlflow::spool):
//!         state.json            server, MLflow run id, delivery offset
//!         spool.jsonl           entries not yet acknowledged by the server
//! ```

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::history::MetricHistory;
use crate::mlflow::spool::{MirrorState, STATE_FILE, read_state};
use crate::{Error, Metric, Params, RunRecord};

/// `run.json`.
pub const RUN_FILE: &str = "run.json";
/// `params.json`.
pub const PARAMS_FILE: &str = "params.json";
/// `metrics.jsonl`.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// `artifacts/`.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// `mlflow/`: the MLflow mirror's spool and state.
pub const MLFLOW_DIR: &str = "mlflow";

/// A run store rooted at a directory (`runs/` by default).
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The store under `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every run, oldest first (run ids sort by start time). Directories without a readable
    /// `run.json` are skipped with a warning.
    ///
    /// # Errors
    /// [`Error::Io`] when the root or an experiment directory cannot be listed. A missing root
    /// is an empty store.
    pub fn runs(&self) -> Result<Vec<StoredRun>, Error> {
        let mut runs = Vec::new();
        for experiment in subdirectories(&self.root)? {
            for dir in subdirectories(&experiment)? {
                if !dir.join(RUN_FILE).exists() {
                    continue;
                }
                match StoredRun::open(&dir) {
                    Ok(run) => runs.push(run),
                    Err(e) => tracing::warn!("skipping {}: {e}", dir.display()),
                }
            }
        }
        runs.sort_by(|a, b| {
            (a.record.start_time, a.record.id.as_str())
                .cmp(&(b.record.start_time, b.record.id.as_str()))
        });
        Ok(runs)
    }

    /// Finds one run from what a user typed: a run directory path, `<experiment>/<run-id>`, a
    /// run id, a unique prefix of one, or a unique run name.
    ///
    /// # Errors
    /// [`Error::RunNotFound`] listing the candidates when the query matches none or several.
    pub fn find(&self, query: &str) -> Result<StoredRun, Error> {
        let as_path = Path::new(query);
        if as_path.join(RUN_FILE).is_file() {
            return StoredRun::open(as_path);
        }
        if self.root.join(query).join(RUN_FILE).is_file() {
            return StoredRun::open(&self.root.join(query));
        }
        let runs = self.runs()?;
        let exact: Vec<&StoredRun> = runs
            .iter()
            .filter(|r| r.record.id.as_str() == query)
            .collect();
        let candidates = if exact.is_empty() {
            let by_prefix: Vec<&StoredRun> = runs
                .iter()
                .filter(|r| r.record.id.as_str().starts_with(query))
                .collect();
            if by_prefix.is_empty() {
                runs.iter().filter(|r| r.record.name == query).collect()
            } else {
                by_prefix
            }
        } else {
            exact
        };
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::RunNotFound {
                query: query.to_owned(),
                problem: format!(
                    "no run directory, run id, id prefix or run name matches under {} ({} runs; \
                     see `kaizen runs list`)",
                    self.root.display(),
                    runs.len()
                ),
            }),
            several => Err(Error::RunNotFound {
                query: query.to_owned(),
                problem: format!(
                    "ambiguous, it matches {}",
                    several
                        .iter()
                        .map(|r| format!(
                            "{}/{} ({})",
                            r.record.experiment, r.record.id, r.record.name
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

/// A run read back from the store.
#[derive(Clone, Debug)]
pub struct StoredRun {
    /// The run directory.
    pub dir: PathBuf,
    /// `run.json`.
    pub record: RunRecord,
    /// The MLflow mirror's state, when the run is (or was being) mirrored.
    pub mirror: Option<MirrorSummary>,
}

/// Where a run is mirrored in MLflow and how far delivery got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSummary {
    /// Tracking URI (without credentials).
    pub uri: String,
    /// MLflow run id, once the run exists on the server.
    pub run_id: Option<String>,
    /// Entries delivered.
    pub delivered: u64,
    /// Entries still spooled.
    pub pending: u64,
    /// Entries the server refused.
    pub rejected: u64,
}

impl StoredRun {
    /// Reads a run directory.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] for a missing or damaged `run.json` or mirror state.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let record: RunRecord = read_json(&dir.join(RUN_FILE))?;
        let mirror_dir = dir.join(MLFLOW_DIR);
        let mirror =
            read_state(&mirror_dir.join(STATE_FILE))?.map(|state| summarize(&mirror_dir, &state));
        Ok(Self {
            dir: dir.to_owned(),
            record,
            mirror,
        })
    }

    /// `params.json` (empty when none were logged).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`].
    pub fn params(&self) -> Result<Params, Error> {
        let path = self.dir.join(PARAMS_FILE);
        if path.exists() {
            read_json(&path)
        } else {
            Ok(Params::new())
        }
    }

    /// Every metric point of `metrics.jsonl`, grouped by key in logging order.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Corrupt`] naming the line for a damaged line (a torn last line,
    /// left by a process killed mid-write, is skipped).
    pub fn metrics(&self) -> Result<MetricHistory, Error> {
        let mut history = MetricHistory::default();
        read_metrics(&self.dir.join(METRICS_FILE), |_, metric| {
            history.push(metric)
        })?;
        Ok(history)
    }

    /// Artifact files, relative to `artifacts/`, `/`-separated, sorted.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn artifacts(&self) -> Result<Vec<String>, Error> {
        let mut files = Vec::new();
        let root = self.dir.join(ARTIFACTS_DIR);
        if root.is_dir() {
            collect_files(&root, "", &mut files)?;
        }
        files.sort();
        Ok(files)
    }

    /// `run-id (name)`, for legends and messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.record.id, self.record.name)
    }
}

fn summarize(dir: &Path, state: &MirrorState) -> MirrorSummary {
    let spool_lines = std::fs::File::open(dir.join(crate::mlflow::spool::SPOOL_FILE))
        .map(|f| std::io::BufReader::new(f).lines().count() as u64)
        .unwrap_or(0);
    MirrorSummary {
        uri: state.uri.clone(),
        run_id: state.run_id.clone(),
        delivered: state.delivered,
        pending: spool_lines
            .saturating_sub(state.acked)
            .saturating_sub(state.acked_ahead.iter().map(|[a, b]| b - a).sum()),
        rejected: state.rejected,
    }
}

/// Calls `each(line_number, metric)` for every complete line of a `metrics.jsonl` file.
/// Returns the number of complete lines. A missing file has none.
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`] for a line that is not a metric (except a torn last line).
pub fn read_metrics(path: &Path, mut each: impl FnMut(u64, Metric)) -> Result<u64, Error> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("opening", path)(e)),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .map_err(Error::io("reading", path))?
            == 0
        {
            return Ok(number);
        }
        if !line.ends_with('\n') {
            tracing::warn!(path = %path.display(), "ignoring a torn last line");
            return Ok(number);
        }
        number += 1;
        let metric = serde_json::from_str(line.trim_end()).map_err(|e| Error::Corrupt {
            path: path.to_owned(),
            line: Some(number as usize),
            message: format!("expected {{\"key\",\"value\",\"step\",\"timestamp\"}}: {e}"),
        })?;
        each(number, metric);
    }
}

/// Reads a JSON file kaizen wrote.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        line: None,
        message: e.to_string(),
    })
}

fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(Error::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_files(&entry.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalTracker, RunSpec, RunStatus, Tracker};

    fn run(root: &Path, experiment: &str, name: &str) -> PathBuf {
        let t = LocalTracker::start(root, &RunSpec::new(experiment, name)).unwrap();
        t.log_metric("loss", 1.0, 0);
        let dir = t.run_dir().to_owned();
        t.finish(RunStatus::Finished).unwrap();
        dir
    }

    #[test]
    fn runs_are_found_by_path_id_prefix_and_name() {
        let root = tempfile::tempdir().unwrap();
        let a = run(root.path(), "exp-a", "alpha");
        let b = run(root.path(), "exp-b", "beta");
        let store = LocalStore::new(root.path());
        assert_eq!(store.runs().unwrap().len(), 2);
        let id_b = b.file_name().unwrap().to_str().unwrap();
        assert_eq!(store.find(a.to_str().unwrap()).unwrap().dir, a);
        assert_eq!(store.find(id_b).unwrap().dir, b);
        assert_eq!(store.find(&format!("exp-b/{id_b}")).unwrap().dir, b);
        assert_eq!(store.find(&id_b[..id_b.len() - 2]).unwrap().dir, b);
        assert_eq!(store.find("alpha").unwrap().dir, a);
        let missing = store.find("gamma").unwrap_err().to_string();
        assert!(
            missing.contains("\"gamma\"") && missing.contains("2 runs"),
            "{missing}"
        );
        // Both ids start with the year: ambiguous.
        let ambiguous = store.find("20").unwrap_err().to_string();
        assert!(
            ambiguous.contains("ambiguous") && ambiguous.contains("alpha"),
            "{ambiguous}"
        );
    }

    #[test]
    fn damaged_metrics_line_is_named_and_torn_last_line_skipped() {
        let root = tempfile::tempdir().unwrap();
        let dir = run(root.path(), "e", "r");
        let path = dir.join(METRICS_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{good}{{\"key\":\"loss\",\"val")).unwrap();
        let run = StoredRun::open(&dir).unwrap();
        assert_eq!(run.metrics().unwrap().series("loss").unwrap().len(), 1);
        std::fs::write(&path, format!("{good}not json\n")).unwrap();
        let err = run.metrics().unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }

    #[test]
    fn missing_root_is_an_empty_store() {
        let store = LocalStore::new("/nonexistent/kaizen-runs");
        assert!(store.runs().unwrap().is_empty());
    }
}
