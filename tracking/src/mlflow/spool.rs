//! The mirror's write-ahead spool: everything meant for MLflow is appended here before it is
//! sent, and counted as acknowledged only once the server has accepted it.
//!
//! Files, in `<run dir>/mlflow/`:
//!
//! - `spool.jsonl`: one [`Entry`] per line, in logging order. Truncated to empty once every
//!   entry has been acknowledged, so it holds only what is still owed to the server.
//! - `state.json`: [`MirrorState`]: which server and MLflow run this mirrors to, `acked`, the
//!   number of leading lines of `spool.jsonl` already delivered, and `acked_ahead`, the lines
//!   past those delivered early (a request packed to MLflow's limits may take metrics from
//!   behind params that did not fit; see `batch::plan`). Rewritten atomically (temp file +
//!   rename) after every acknowledged request.
//! - `rejected.jsonl`: entries the server refused for good (HTTP 400), with its message.
//!
//! Exactly-once: an entry is sent again only if the process died after the server accepted it
//! and before `state.json` was rewritten; MLflow's SQL store ignores a metric point identical
//! in key, value, step and timestamp, and re-logging a param with the same value is accepted, so
//! such a replay duplicates nothing.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{Error, Metric, RunStatus};

/// One thing owed to the MLflow server, in the order it was logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A metric point.
    Metric(Metric),
    /// A param.
    Param {
        /// Name.
        key: String,
        /// Value.
        value: String,
    },
    /// A run tag.
    Tag {
        /// Name.
        key: String,
        /// Value.
        value: String,
    },
    /// A file or directory to upload; `dir` is the destination directory under the run's
    /// artifact root.
    Artifact {
        /// Absolute path on this machine.
        path: PathBuf,
        /// Destination directory (`None` = artifact root).
        dir: Option<String>,
    },
    /// The run's final status.
    Status {
        /// The status.
        status: RunStatus,
        /// End time, ms since the Unix epoch.
        end_time: i64,
    },
}

/// How entries got into the spool, which decides what `kaizen runs sync` adds to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Origin {
    /// A live `MlflowTracker` spooled everything it was given; sync only delivers the rest.
    #[default]
    Live,
    /// `kaizen runs sync` imports the local run store; these record what was imported already.
    Import {
        /// Lines of `metrics.jsonl` imported.
        metrics_lines: u64,
        /// Params imported (key → value).
        params: BTreeMap<String, String>,
        /// Tags imported (key → value).
        tags: BTreeMap<String, String>,
        /// Files under `artifacts/` imported (relative paths).
        artifacts: Vec<String>,
        /// The final status imported, if any.
        status: Option<RunStatus>,
    },
}

/// `state.json`: where this run is mirrored and how far delivery has got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct MirrorState {
    /// Tracking URI, without credentials.
    pub uri: String,
    /// MLflow experiment name.
    pub experiment: String,
    /// MLflow run name.
    pub run_name: String,
    /// Run tags sent with `runs/create`.
    pub tags: BTreeMap<String, String>,
    /// Run start time (ms since the Unix epoch).
    pub start_time: i64,
    /// Random id stored as run tag `kaizen_mirror_id`, so a run created just before a crash is
    /// found again instead of created twice.
    pub mirror_id: String,
    /// MLflow experiment id, once known.
    pub experiment_id: Option<String>,
    /// MLflow run id, once created.
    pub run_id: Option<String>,
    /// The run's artifact URI, once created.
    pub artifact_uri: Option<String>,
    /// Leading lines of `spool.jsonl` already delivered (or set aside as rejected).
    pub acked: u64,
    /// Half-open ranges `[start, end)` of lines past `acked` already delivered (or set aside),
    /// ascending and disjoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_ahead: Vec<[u64; 2]>,
    /// Entries delivered over the run's life.
    #[serde(default)]
    pub delivered: u64,
    /// Entries refused by the server over the run's life.
    #[serde(default)]
    pub rejected: u64,
    /// How entries get into the spool.
    #[serde(default)]
    pub origin: Origin,
}

impl MirrorState {
    /// The state of a mirror that has not reached the server yet (fresh random `mirror_id`).
    pub(crate) fn new(
        uri: String,
        experiment: String,
        run_name: String,
        tags: BTreeMap<String, String>,
        start_time: i64,
        origin: Origin,
    ) -> Self {
        Self {
            uri,
            experiment,
            run_name,
            tags,
            start_time,
            mirror_id: format!("{:016x}", rand::random::<u64>()),
            experiment_id: None,
            run_id: None,
            artifact_uri: None,
            acked: 0,
            acked_ahead: Vec::new(),
            delivered: 0,
            rejected: 0,
            origin,
        }
    }
}

/// The spool of one mirrored run: the files above plus the not-yet-acknowledged entries in
/// memory, oldest first.
pub(crate) struct Spool {
    dir: PathBuf,
    writer: BufWriter<File>,
    /// Entries written to `spool.jsonl`, acknowledged or not.
    lines: u64,
    /// Unacknowledged entries, oldest first (lines of `spool.jsonl` past `state.acked` not in
    /// `state.acked_ahead`).
    pending: VecDeque<Entry>,
    /// The line of `spool.jsonl` of each pending entry.
    pending_lines: VecDeque<u64>,
    /// When the oldest pending entry arrived (for the linger before sending).
    pending_since: Option<Instant>,
    pub(crate) state: MirrorState,
}

/// File names inside the spool directory.
pub(crate) const SPOOL_FILE: &str = "spool.jsonl";
pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const REJECTED_FILE: &str = "rejected.jsonl";

impl Spool {
    /// Opens (or creates) the spool in `dir`. An existing `state.json` is kept (the mirror
    /// resumes the same MLflow run); otherwise `fresh` is saved. Unacknowledged entries are
    /// loaded; a torn last line (the process died mid-write) is dropped with a warning.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Corrupt`] for a damaged `state.json` or spool line.
    pub(crate) fn open(dir: &Path, fresh: impl FnOnce() -> MirrorState) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating MLflow spool directory", dir))?;
        let state_path = dir.join(STATE_FILE);
        let state = match read_state(&state_path)? {
            Some(state) => state,
            None => {
                let state = fresh();
                write_json_atomically(&state_path, &state)?;
                state
            }
        };
        let spool_path = dir.join(SPOOL_FILE);
        let (entries, good_bytes) = read_spool(&spool_path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spool_path)
            .map_err(Error::io("opening", &spool_path))?;
        let on_disk = file
            .metadata()
            .map_err(Error::io("reading size of", &spool_path))?
            .len();
        if on_disk > good_bytes {
            tracing::warn!(path = %spool_path.display(), "dropping a torn last line of the MLflow spool");
            file.set_len(good_bytes)
                .map_err(Error::io("truncating", &spool_path))?;
        }
        let lines = entries.len() as u64;
        // `acked` beyond the file means the spool was truncated and the state not yet rewritten.
        let acked = state.acked;
        let settled_ahead = |line: u64| {
            state
                .acked_ahead
                .iter()
                .any(|[start, end]| (*start..*end).contains(&line))
        };
        let (pending_lines, pending): (VecDeque<u64>, VecDeque<Entry>) = entries
            .into_iter()
            .enumerate()
            .map(|(line, entry)| (line as u64, entry))
            .filter(|(line, _)| *line >= acked && !settled_ahead(*line))
            .unzip();
        let mut spool = Self {
            dir: dir.to_owned(),
            writer: BufWriter::new(file),
            lines,
            pending_since: (!pending.is_empty()).then(Instant::now),
            pending,
            pending_lines,
            state,
        };
        let (read_acked, read_ahead) = (spool.state.acked, spool.state.acked_ahead.clone());
        spool.recount_acked();
        if spool.pending.is_empty() && spool.lines > 0 {
            spool.truncate()?;
        } else if (spool.state.acked, &spool.state.acked_ahead) != (read_acked, &read_ahead) {
            // E.g. a crash between emptying the spool and rewriting the state: the old counts
            // must not outlive this open, or new lines would be taken for delivered ones.
            write_json_atomically(&state_path, &spool.state)?;
        }
        Ok(spool)
    }

    /// The spool directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unacknowledged entries, oldest first.
    pub(crate) fn pending(&self) -> &VecDeque<Entry> {
        &self.pending
    }

    /// When the oldest pending entry arrived.
    pub(crate) fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Appends an entry (buffered; call [`Spool::flush`] after a burst).
    ///
    /// # Errors
    /// [`Error::Io`]; the entry is still kept in memory and delivered.
    pub(crate) fn push(&mut self, entry: Entry) -> Result<(), Error> {
        let written = serde_json::to_writer(&mut self.writer, &entry)
            .map_err(std::io::Error::other)
            .and_then(|()| self.writer.write_all(b"\n"));
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.push_back(entry);
        self.pending_lines.push_back(self.lines);
        self.lines += 1;
        written.map_err(|e| Error::io("appending to", self.dir.join(SPOOL_FILE))(e))
    }

    /// Appends an entry whose name MLflow accepts (see [`Metric::mlflow_key_problem`]); sets
    /// any other aside in `rejected.jsonl` at once and returns why.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn push_checked(&mut self, entry: Entry) -> Result<Option<String>, Error> {
        let key = match &entry {
            Entry::Metric(m) => Some(m.key.as_ref()),
            Entry::Param { key, .. } | Entry::Tag { key, .. } => Some(key.as_str()),
            Entry::Artifact { .. } | Entry::Status { .. } => None,
        };
        let Some(problem) = key.and_then(Metric::mlflow_key_problem) else {
            return self.push(entry).map(|()| None);
        };
        let reason = format!(
            "MLflow does not accept the name {:?}: {problem}",
            key.unwrap_or_default()
        );
        append_rejected(&self.dir, &[entry], &reason)?;
        self.state.rejected += 1;
        Ok(Some(reason))
    }

    /// Makes appended entries durable against a crash of this process.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        self.writer
            .flush()
            .map_err(Error::io("writing", self.dir.join(SPOOL_FILE)))
    }

    /// Marks the pending entries at positions `taken` (ascending, as `batch::plan` gives them)
    /// delivered.
    ///
    /// # Errors
    /// [`Error::Io`] when `state.json` or the spool cannot be rewritten.
    pub(crate) fn ack(&mut self, taken: &[usize]) -> Result<(), Error> {
        let n = self.consume(taken).len();
        self.state.delivered += n as u64;
        self.save_state()
    }

    /// Sets the pending entries at positions `taken` aside as refused by the server, recording
    /// `reason` in `rejected.jsonl`.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn reject(&mut self, taken: &[usize], reason: &str) -> Result<(), Error> {
        let entries: Vec<Entry> = taken
            .iter()
            .filter_map(|&i| self.pending.get(i).cloned())
            .collect();
        append_rejected(&self.dir, &entries, reason)?;
        let n = self.consume(taken).len();
        self.state.rejected += n as u64;
        self.save_state()
    }

    /// Removes the pending entries at positions `taken` and returns their lines.
    fn consume(&mut self, taken: &[usize]) -> Vec<u64> {
        let taken: std::collections::BTreeSet<usize> = taken
            .iter()
            .copied()
            .filter(|&i| i < self.pending.len())
            .collect();
        let lines: Vec<u64> = taken.iter().map(|&i| self.pending_lines[i]).collect();
        // Only the front up to the last taken entry changes (a batch looks at most
        // `batch::LOOKAHEAD` entries ahead): O(that), not O(backlog).
        if let Some(&last) = taken.last() {
            let front: Vec<(u64, Entry)> = self
                .pending_lines
                .drain(..=last)
                .zip(self.pending.drain(..=last))
                .enumerate()
                .filter(|(i, _)| !taken.contains(i))
                .map(|(_, kept)| kept)
                .collect();
            for (line, entry) in front.into_iter().rev() {
                self.pending_lines.push_front(line);
                self.pending.push_front(entry);
            }
        }
        self.recount_acked();
        self.pending_since = if self.pending.is_empty() {
            None
        } else {
            self.pending_since.or_else(|| Some(Instant::now()))
        };
        lines
    }

    /// `acked` and `acked_ahead` from the lines still pending: everything before the oldest
    /// pending line is settled, and so is every gap between pending lines and after the last.
    /// The scan stops where the rest of the pending lines run contiguously to the last one
    /// (gaps only ever open near the front).
    fn recount_acked(&mut self) {
        let mut ahead = Vec::new();
        let n = self.pending_lines.len();
        let last = self.pending_lines.back().copied();
        for i in 0..n.saturating_sub(1) {
            let (line, next) = (self.pending_lines[i], self.pending_lines[i + 1]);
            if next > line + 1 {
                ahead.push([line + 1, next]);
            }
            // The rest runs contiguously to the last line: no more gaps.
            if last.is_some_and(|l| l - next == (n - i - 2) as u64) {
                break;
            }
        }
        match last {
            Some(last) if last + 1 < self.lines => ahead.push([last + 1, self.lines]),
            _ => {}
        }
        self.state.acked = self.pending_lines.front().copied().unwrap_or(self.lines);
        self.state.acked_ahead = ahead;
    }

    /// Rewrites `state.json`; when nothing is pending, first empties `spool.jsonl` so that it
    /// only ever holds what is still owed.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn save_state(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() && self.lines > 0 {
            return self.truncate();
        }
        write_json_atomically(&self.dir.join(STATE_FILE), &self.state)
    }

    fn truncate(&mut self) -> Result<(), Error> {
        let path = self.dir.join(SPOOL_FILE);
        self.flush()?;
        // Truncate first: a crash before the state is rewritten leaves `acked` beyond the file,
        // which `open` reads as "all delivered".
        self.writer
            .get_ref()
            .set_len(0)
            .map_err(Error::io("truncating", &path))?;
        self.lines = 0;
        self.state.acked = 0;
        self.state.acked_ahead.clear();
        write_json_atomically(&self.dir.join(STATE_FILE), &self.state)
    }
}

/// Records entries refused without a request (invalid names) or by the server.
pub(crate) fn append_rejected(dir: &Path, entries: &[Entry], reason: &str) -> Result<(), Error> {
    #[derive(Serialize)]
    struct Rejected<'a> {
        reason: &'a str,
        entry: &'a Entry,
    }
    let path = dir.join(REJECTED_FILE);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(Error::io("opening", &path))?;
    let mut text = String::new();
    for entry in entries {
        let line =
            serde_json::to_string(&Rejected { reason, entry }).map_err(|e| Error::Corrupt {
                path: path.clone(),
                line: None,
                message: e.to_string(),
            })?;
        text.push_str(&line);
        text.push('\n');
    }
    out.write_all(text.as_bytes())
        .map_err(Error::io("writing", &path))
}

/// Reads `state.json` if it exists.
pub(crate) fn read_state(path: &Path) -> Result<Option<MirrorState>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: path.to_owned(),
                line: None,
                message: format!("not an MLflow mirror state: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Every complete entry of the spool and the byte length they span.
fn read_spool(path: &Path) -> Result<(Vec<Entry>, u64), Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io("opening", path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut good_bytes = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        if !line.ends_with('\n') {
            break; // torn last line
        }
        let entry = serde_json::from_str(line.trim_end()).map_err(|e| Error::Corrupt {
            path: path.to_owned(),
            line: Some(entries.len() + 1),
            message: format!("not a spool entry: {e}"),
        })?;
        entries.push(entry);
        good_bytes += n as u64;
    }
    Ok((entries, good_bytes))
}

/// Writes JSON to `path` through a temp file and a rename, so readers never see half a file.
pub(crate) fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        line: None,
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MirrorState {
        let uri = "http://127.0.0.1:5000".to_owned();
        MirrorState::new(
            uri,
            "exp".into(),
            "r".into(),
            BTreeMap::new(),
            1,
            Origin::Live,
        )
    }

    fn metric(step: u64) -> Entry {
        Entry::Metric(Metric::at(
            "loss",
            1.0 / (step as f64 + 1.0),
            step,
            1000 + step as i64,
        ))
    }

    #[test]
    fn reopened_spool_resumes_after_the_acknowledged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), state).unwrap();
        for step in 0..5 {
            spool.push(metric(step)).unwrap();
        }
        spool.flush().unwrap();
        spool.ack(&[0, 1]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), || panic!("state exists")).unwrap();
        let pending: Vec<Entry> = spool.pending().iter().cloned().collect();
        assert_eq!(pending, vec![metric(2), metric(3), metric(4)]);
        assert_eq!(spool.state.acked, 2);
        assert_eq!(spool.state.delivered, 2);
    }

    /// Entries delivered ahead of older ones (a batch packed past params that did not fit)
    /// are remembered across a restart: nothing is sent twice, nothing is lost.
    #[test]
    fn entries_delivered_out_of_order_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), state).unwrap();
        for step in 0..8 {
            spool.push(metric(step)).unwrap();
        }
        spool.flush().unwrap();
        spool.ack(&[0, 2, 3, 6]).unwrap();
        assert_eq!(spool.state.acked, 1);
        assert_eq!(spool.state.acked_ahead, vec![[2, 4], [6, 7]]);
        drop(spool);
        let mut spool = Spool::open(dir.path(), || panic!("state exists")).unwrap();
        let pending: Vec<Entry> = spool.pending().iter().cloned().collect();
        assert_eq!(pending, vec![metric(1), metric(4), metric(5), metric(7)]);
        assert_eq!(spool.state.delivered, 4);
        spool.ack(&[0]).unwrap();
        assert_eq!((spool.state.acked, spool.state.acked_ahead.len()), (4, 1));
        spool.ack(&[0, 1, 2]).unwrap();
        assert!(spool.pending().is_empty());
        assert_eq!(
            std::fs::metadata(dir.path().join(SPOOL_FILE))
                .unwrap()
                .len(),
            0,
            "emptied once all is delivered"
        );
    }

    /// A crash between emptying the spool and rewriting `state.json` leaves stale counts;
    /// the next open rewrites them at once, so lines appended afterwards (which reuse the line
    /// numbers) are never taken for delivered ones after a second crash.
    #[test]
    fn stale_counts_of_an_emptied_spool_are_rewritten_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), state).unwrap();
        for step in 0..4 {
            spool.push(metric(step)).unwrap();
        }
        spool.flush().unwrap();
        spool.ack(&[0, 2]).unwrap();
        drop(spool);
        // The crash: the spool is empty, state.json still says 1 acked and [2, 3) ahead.
        std::fs::write(dir.path().join(SPOOL_FILE), "").unwrap();
        let mut spool = Spool::open(dir.path(), || panic!("state exists")).unwrap();
        spool.push(metric(10)).unwrap();
        spool.push(metric(11)).unwrap();
        spool.push(metric(12)).unwrap();
        spool.flush().unwrap();
        drop(spool); // the second crash, before any ack
        let spool = Spool::open(dir.path(), || panic!("state exists")).unwrap();
        assert_eq!(
            spool.pending().iter().cloned().collect::<Vec<_>>(),
            vec![metric(10), metric(11), metric(12)]
        );
    }

    #[test]
    fn fully_acknowledged_spool_is_emptied_and_torn_lines_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), state).unwrap();
        spool.push(metric(0)).unwrap();
        spool.push(metric(1)).unwrap();
        spool.flush().unwrap();
        spool.ack(&[0, 1]).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(SPOOL_FILE))
                .unwrap()
                .len(),
            0
        );
        spool.push(metric(2)).unwrap();
        spool.flush().unwrap();
        drop(spool);
        // Simulate a crash in the middle of writing the next line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(SPOOL_FILE))
            .unwrap();
        f.write_all(br#"{"kind":"metric","key":"lo"#).unwrap();
        let spool = Spool::open(dir.path(), || panic!("state exists")).unwrap();
        assert_eq!(
            spool.pending().iter().cloned().collect::<Vec<_>>(),
            vec![metric(2)]
        );
    }

    #[test]
    fn rejected_entries_are_recorded_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), state).unwrap();
        spool
            .push(Entry::Param {
                key: "lr".into(),
                value: "2".into(),
            })
            .unwrap();
        spool.push(metric(0)).unwrap();
        spool
            .reject(&[0], "Changing param values is not allowed")
            .unwrap();
        assert_eq!(spool.pending().len(), 1);
        assert_eq!(spool.state.rejected, 1);
        let text = std::fs::read_to_string(dir.path().join(REJECTED_FILE)).unwrap();
        assert!(
            text.contains("Changing param values") && text.contains(r#""key":"lr""#),
            "{text}"
        );
    }
}
