//! Cutting the front of the spool into requests that respect MLflow's `runs/log-batch` limits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use super::client::{KeyValue, LogBatch};
use super::spool::Entry;
use crate::RunStatus;

/// At most this many metrics per `runs/log-batch` (MLflow's `MAX_METRICS_PER_BATCH`).
pub(crate) const MAX_METRICS: usize = 1000;
/// At most this many params, and this many tags (`MAX_PARAMS_TAGS_PER_BATCH`).
pub(crate) const MAX_PARAMS_OR_TAGS: usize = 100;
/// At most this many entities in all (`MAX_ENTITIES_PER_BATCH`).
pub(crate) const MAX_ENTITIES: usize = 1000;
/// Requests stay under this many bytes of JSON (MLflow's limit is 1 MB).
const MAX_BODY_BYTES: usize = 900_000;
/// Param values longer than this many characters are cut (`MAX_PARAM_VAL_LENGTH`).
pub(crate) const MAX_PARAM_VALUE_CHARS: usize = 6000;
/// Tag values longer than this many characters are cut (`MAX_TAG_VAL_LENGTH`).
pub(crate) const MAX_TAG_VALUE_CHARS: usize = 8000;

/// The next request to make, and how many pending entries it settles.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// One `runs/log-batch` covering `consumed` entries (duplicates of a param already in the
    /// batch with the same value count as consumed but are not sent twice).
    Batch { batch: LogBatch, consumed: usize },
    /// Upload one file or directory.
    Artifact { path: PathBuf, dir: Option<String> },
    /// `runs/update` with the final status.
    Status { status: RunStatus, end_time: i64 },
}

/// Plans a request for the front of `pending`, with at most `cap` entries in a batch (the cap
/// shrinks while the mirror bisects a batch the server refused).
pub(crate) fn plan(pending: &VecDeque<Entry>, cap: usize) -> Option<Plan> {
    match pending.front()? {
        Entry::Artifact { path, dir } => {
            return Some(Plan::Artifact {
                path: path.clone(),
                dir: dir.clone(),
            });
        }
        Entry::Status { status, end_time } => {
            return Some(Plan::Status {
                status: *status,
                end_time: *end_time,
            });
        }
        _ => {}
    }
    let mut batch = LogBatch::default();
    let mut params: HashMap<&str, &str> = HashMap::new();
    let mut tags: HashSet<&str> = HashSet::new();
    let mut bytes = 0usize;
    let mut consumed = 0usize;
    for entry in pending {
        let entities = batch.metrics.len() + batch.params.len() + batch.tags.len();
        if consumed >= cap.max(1) || entities >= MAX_ENTITIES {
            break;
        }
        match entry {
            Entry::Metric(metric) => {
                let size = metric.key.len() + 80;
                if batch.metrics.len() >= MAX_METRICS || bytes + size > MAX_BODY_BYTES {
                    break;
                }
                bytes += size;
                batch.metrics.push(metric.clone());
            }
            Entry::Param { key, value } => {
                match params.get(key.as_str()) {
                    // MLflow refuses duplicate keys in one request; an identical repeat is dropped.
                    Some(existing) if *existing == value => {
                        consumed += 1;
                        continue;
                    }
                    Some(_) => break,
                    None => {}
                }
                let sent = cut(key, value, MAX_PARAM_VALUE_CHARS, "param");
                let size = key.len() + sent.len() + 30;
                if batch.params.len() >= MAX_PARAMS_OR_TAGS || bytes + size > MAX_BODY_BYTES {
                    break;
                }
                bytes += size;
                params.insert(key, value);
                batch.params.push(KeyValue {
                    key: key.clone(),
                    value: sent,
                });
            }
            Entry::Tag { key, value } => {
                let value = cut(key, value, MAX_TAG_VALUE_CHARS, "tag");
                let size = key.len() + value.len() + 30;
                if tags.contains(key.as_str())
                    || batch.tags.len() >= MAX_PARAMS_OR_TAGS
                    || bytes + size > MAX_BODY_BYTES
                {
                    break;
                }
                bytes += size;
                tags.insert(key);
                batch.tags.push(KeyValue {
                    key: key.clone(),
                    value,
                });
            }
            Entry::Artifact { .. } | Entry::Status { .. } => break,
        }
        consumed += 1;
    }
    Some(Plan::Batch { batch, consumed })
}

/// `value` cut to `max_chars` characters (with a warning naming the key).
fn cut(key: &str, value: &str, max_chars: usize, what: &str) -> String {
    match value.char_indices().nth(max_chars) {
        None => value.to_owned(),
        Some((end, _)) => {
            tracing::warn!(
                key,
                chars = value.chars().count(),
                "MLflow {what} value cut to its limit of {max_chars} characters"
            );
            value[..end].to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metric;

    fn metric(i: u64) -> Entry {
        Entry::Metric(Metric::at("m", i as f64, i, 0))
    }

    fn param(key: &str, value: &str) -> Entry {
        Entry::Param {
            key: key.into(),
            value: value.into(),
        }
    }

    fn batch(plan: Option<Plan>) -> (LogBatch, usize) {
        match plan {
            Some(Plan::Batch { batch, consumed }) => (batch, consumed),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn batches_respect_metric_param_and_entity_limits() {
        let pending: VecDeque<Entry> = (0..2500).map(metric).collect();
        let (b, n) = batch(plan(&pending, usize::MAX));
        assert_eq!((b.metrics.len(), n), (1000, 1000));

        let pending: VecDeque<Entry> = (0..250).map(|i| param(&format!("p{i}"), "v")).collect();
        let (b, n) = batch(plan(&pending, usize::MAX));
        assert_eq!((b.params.len(), n), (100, 100));

        let mut pending: VecDeque<Entry> = (0..950).map(metric).collect();
        pending.extend((0..100).map(|i| param(&format!("p{i}"), "v")));
        let (b, n) = batch(plan(&pending, usize::MAX));
        assert_eq!(b.metrics.len() + b.params.len(), 1000);
        assert_eq!(n, 1000);
    }

    #[test]
    fn batches_stop_at_artifacts_status_changed_params_and_the_cap() {
        let mut pending: VecDeque<Entry> = (0..3).map(metric).collect();
        pending.push_back(Entry::Status {
            status: RunStatus::Finished,
            end_time: 9,
        });
        assert_eq!(batch(plan(&pending, usize::MAX)).1, 3);
        pending.drain(..3);
        assert!(matches!(
            plan(&pending, usize::MAX),
            Some(Plan::Status { .. })
        ));

        let pending: VecDeque<Entry> = [
            param("lr", "1"),
            param("lr", "1"),
            param("lr", "2"),
            metric(0),
        ]
        .into();
        let (b, n) = batch(plan(&pending, usize::MAX));
        assert_eq!(
            (b.params.len(), n),
            (1, 2),
            "identical repeat consumed, changed value waits"
        );

        let pending: VecDeque<Entry> = (0..10).map(metric).collect();
        assert_eq!(batch(plan(&pending, 3)).1, 3);
    }

    #[test]
    fn long_values_are_cut_at_mlflow_limits_on_char_boundaries() {
        let long = "é".repeat(7000);
        let pending: VecDeque<Entry> = [
            param("notes", &long),
            Entry::Tag {
                key: "t".into(),
                value: "x".repeat(9000),
            },
        ]
        .into();
        let (b, _) = batch(plan(&pending, usize::MAX));
        assert_eq!(b.params[0].value.chars().count(), MAX_PARAM_VALUE_CHARS);
        assert_eq!(b.tags[0].value.len(), MAX_TAG_VALUE_CHARS);
    }

    #[test]
    fn body_size_stays_under_a_megabyte() {
        let pending: VecDeque<Entry> = (0..100)
            .map(|i| param(&format!("p{i}"), &"v".repeat(6000)))
            .chain((0..100).map(|i| Entry::Tag {
                key: format!("t{i}"),
                value: "w".repeat(8000),
            }))
            .collect();
        let (b, _) = batch(plan(&pending, usize::MAX));
        let body = serde_json::to_string(&b).unwrap();
        assert!(body.len() < 1_000_000, "{}", body.len());
        assert_eq!(b.params.len(), 100);
        assert!(!b.tags.is_empty());
    }
}
