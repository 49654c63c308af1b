//! What identifies and describes a run: its spec, id, status and `run.json` record.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A run's lifecycle state, with MLflow's names (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Started and not finished (or the process died without finishing it).
    Running,
    /// Ended normally.
    Finished,
    /// Ended by an error.
    Failed,
    /// Ended by the user (Ctrl-C).
    Killed,
}

impl RunStatus {
    /// MLflow's spelling: `RUNNING`, `FINISHED`, `FAILED`, `KILLED`.
    pub fn as_mlflow(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_mlflow())
    }
}

/// What a new run is: the experiment it belongs to, its human name and tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Experiment name: the directory under the runs root and MLflow's experiment name. Letters,
    /// digits, `-`, `_` and `.`, not starting with `.`, at most 100 characters.
    pub experiment: String,
    /// Human-readable run name (MLflow's `run_name`), e.g. the config's name.
    pub run_name: String,
    /// Free-form tags (`git_commit`, `host`, ...), sent to MLflow as run tags.
    pub tags: BTreeMap<String, String>,
}

impl RunSpec {
    /// A spec without tags.
    pub fn new(experiment: impl Into<String>, run_name: impl Into<String>) -> Self {
        Self {
            experiment: experiment.into(),
            run_name: run_name.into(),
            tags: BTreeMap::new(),
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Checks that the experiment name can be a directory name.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the experiment and the allowed characters.
    pub fn validate(&self) -> Result<(), Error> {
        const MAX_CHARS: usize = 100;
        let name = &self.experiment;
        let ok = !name.is_empty()
            && name.len() <= MAX_CHARS
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid {
                field: "experiment name",
                value: name.clone(),
                expected: format!(
                    "1 to {MAX_CHARS} ASCII letters, digits, '-', '_' or '.', not starting with \
                     '.' (it names a directory under the runs root)"
                ),
            })
        }
    }
}

/// A local run id: `YYYYMMDD-HHMMSS-xxxxxx` (UTC start time, then 6 random hex digits).
///
/// Readable, and sorts by start time as plain text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A fresh id for a run starting at `start_ms` (milliseconds since the Unix epoch).
    pub fn generate(start_ms: i64) -> Self {
        // "2026-11-30 12:34:56" -> "20261130-123456"
        let time: String = format_utc(start_ms)
            .chars()
            .filter_map(|c| match c {
                '-' | ':' => None,
                ' ' => Some('-'),
                digit => Some(digit),
            })
            .collect();
        let suffix = rand::random::<u32>() & 0x00ff_ffff;
        Self(format!("{time}-{suffix:06x}"))
    }

    /// Wraps an existing id (a directory name read back from the store).
    pub fn from_existing(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `run.json`: a run's identity and lifecycle, rewritten at start, on tag changes and at finish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The local run id (also the directory name).
    pub id: RunId,
    /// The experiment (also the parent directory name).
    pub experiment: String,
    /// Human-readable run name.
    pub name: String,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Start time, milliseconds since the Unix epoch.
    pub start_time: i64,
    /// End time, milliseconds since the Unix epoch; `None` while running.
    #[serde(default)]
    pub end_time: Option<i64>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn utc(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a time in milliseconds since the Unix epoch.
pub fn format_utc(ms: i64) -> String {
    let t = utc(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration in milliseconds as `1h02m`, `3m05s` or `12s`.
pub fn format_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_is_readable_utc_and_sorts_by_time() {
        // 2026-11-30 12:34:56 UTC
        let ms = 1_796_042_096_000;
        let id = RunId::generate(ms);
        assert!(id.as_str().starts_with("20261130-123456-"), "{id}");
        assert_eq!(id.as_str().len(), "20261130-123456-abcdef".len());
        let later = RunId::generate(ms + 1000);
        assert!(later > id);
        assert_eq!(format_utc(ms), "2026-11-30 12:34:56");
    }

    #[test]
    fn experiment_names_that_are_not_directory_names_are_refused() {
        assert!(RunSpec::new("grpo-math_v2.1", "r").validate().is_ok());
        for bad in ["", "a/b", "..", ".hidden", "with space"] {
            let err = RunSpec::new(bad, "r").validate().unwrap_err().to_string();
            assert!(
                err.contains("experiment name") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(12_400), "12s");
        assert_eq!(format_duration(185_000), "3m05s");
        assert_eq!(format_duration(3_720_000), "1h02m");
    }
}
