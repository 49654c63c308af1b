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

/// How far past the oldest pending entry a batch may reach for entries of a kind that still has
/// room (e.g. metrics behind 150 params, once 100 params fill the request's param slots). It
/// bounds the entries delivered out of order, which the spool remembers until the entries
/// before them are delivered.
pub(crate) const LOOKAHEAD: usize = 4 * MAX_ENTITIES;

/// The next request to make, and which pending entries it settles.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// One `runs/log-batch` settling the pending entries at positions `taken` (ascending; the
    /// oldest pending entry is always among them). Duplicates of a param already in the batch
    /// with the same value are taken but not sent twice.
    Batch { batch: LogBatch, taken: Vec<usize> },
    /// Upload one file or directory.
    Artifact { path: PathBuf, dir: Option<String> },
    /// `runs/update` with the final status.
    Status { status: RunStatus, end_time: i64 },
}

/// Plans a request for the front of `pending`, with at most `cap` entries in a batch (the cap
/// shrinks while the mirror bisects a batch the server refused).
///
/// A batch is packed to MLflow's limits (below a cap of [`MAX_ENTITIES`], while the mirror
/// narrows down a refused batch, it is a contiguous prefix instead). After the oldest entry, the scarce kinds go first
/// (params and tags, 100 of each per request), then metrics fill the rest up to 1000 entities,
/// all taken from the entries before the next artifact or status entry (a barrier) and within
/// [`LOOKAHEAD`]: 150 params and 2,500 metrics take 3 requests in either order, not 4.
/// Packing never reorders what ordering means: each kind is taken in logging order, and once an
/// entry of a kind is left behind no later entry of that kind is taken in this batch (so a
/// param's changed value or a tag's new value never overtakes the older one, nor a metric point
/// an older point).
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
    let window: Vec<&Entry> = pending
        .iter()
        .take(LOOKAHEAD)
        .take_while(|e| !matches!(e, Entry::Artifact { .. } | Entry::Status { .. }))
        .collect();
    let mut packer = Packer::new(cap.max(1));
    if cap < MAX_ENTITIES {
        // Narrowing down a refused batch: a contiguous prefix, so that halving the cap
        // isolates the refused entry in O(log n) requests (packing would put the same params
        // and tags into every batch).
        for (index, entry) in window.iter().enumerate() {
            if !packer.offer(index, entry) {
                break;
            }
        }
    } else {
        packer.offer(0, window[0]);
        for (index, entry) in window.iter().enumerate().skip(1) {
            if !matches!(entry, Entry::Metric(_)) {
                packer.offer(index, entry);
            }
        }
        for (index, entry) in window.iter().enumerate().skip(1) {
            if matches!(entry, Entry::Metric(_)) {
                packer.offer(index, entry);
            }
        }
    }
    let Packer {
        batch, mut taken, ..
    } = packer;
    taken.sort_unstable();
    Some(Plan::Batch { batch, taken })
}

/// One batch being filled (see [`plan`]).
struct Packer<'a> {
    batch: LogBatch,
    taken: Vec<usize>,
    cap: usize,
    bytes: usize,
    params: HashMap<&'a str, &'a str>,
    tags: HashSet<&'a str>,
    // Kinds that left an entry behind: nothing later of that kind may be taken.
    metrics_closed: bool,
    params_closed: bool,
    tags_closed: bool,
}

impl<'a> Packer<'a> {
    fn new(cap: usize) -> Self {
        Self {
            batch: LogBatch::default(),
            taken: Vec::new(),
            cap,
            bytes: 0,
            params: HashMap::new(),
            tags: HashSet::new(),
            metrics_closed: false,
            params_closed: false,
            tags_closed: false,
        }
    }

    /// Takes the entry at `index` if it fits (and says whether it did); otherwise closes its
    /// kind.
    fn offer(&mut self, index: usize, entry: &'a Entry) -> bool {
        let batch = &mut self.batch;
        let entities = batch.metrics.len() + batch.params.len() + batch.tags.len();
        if self.taken.len() >= self.cap || entities >= MAX_ENTITIES {
            return false;
        }
        match entry {
            Entry::Metric(metric) => {
                let size = metric.key.len() + 80;
                if self.metrics_closed
                    || batch.metrics.len() >= MAX_METRICS
                    || self.bytes + size > MAX_BODY_BYTES
                {
                    self.metrics_closed = true;
                    return false;
                }
                self.bytes += size;
                batch.metrics.push(metric.clone());
            }
            Entry::Param { key, value } => {
                if self.params_closed {
                    return false;
                }
                match self.params.get(key.as_str()) {
                    // MLflow refuses duplicate keys in one request; an identical repeat is
                    // settled without being sent.
                    Some(existing) if *existing == value => {
                        self.taken.push(index);
                        return true;
                    }
                    Some(_) => {
                        self.params_closed = true;
                        return false;
                    }
                    None => {}
                }
                let sent = cut(key, value, MAX_PARAM_VALUE_CHARS, "param");
                let size = key.len() + sent.len() + 30;
                if batch.params.len() >= MAX_PARAMS_OR_TAGS || self.bytes + size > MAX_BODY_BYTES {
                    self.params_closed = true;
                    return false;
                }
                self.bytes += size;
                self.params.insert(key, value);
                batch.params.push(KeyValue {
                    key: key.clone(),
                    value: sent,
                });
            }
            Entry::Tag { key, value } => {
                if self.tags_closed {
                    return false;
                }
                let value = cut(key, value, MAX_TAG_VALUE_CHARS, "tag");
                let size = key.len() + value.len() + 30;
                if self.tags.contains(key.as_str())
                    || batch.tags.len() >= MAX_PARAMS_OR_TAGS
                    || self.bytes + size > MAX_BODY_BYTES
                {
                    self.tags_closed = true;
                    return false;
                }
                self.bytes += size;
                self.tags.insert(key);
                batch.tags.push(KeyValue {
                    key: key.clone(),
                    value,
                });
            }
            // Never offered: they end the window.
            Entry::Artifact { .. } | Entry::Status { .. } => return false,
        }
        self.taken.push(index);
        true
    }
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
        let (batch, taken) = batch_taken(plan);
        (batch, taken.len())
    }

    fn batch_taken(plan: Option<Plan>) -> (LogBatch, Vec<usize>) {
        match plan {
            Some(Plan::Batch { batch, taken }) => (batch, taken),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    /// Requests the planner makes to deliver all of `pending` (each plan's entries removed).
    fn requests(mut pending: VecDeque<Entry>) -> Vec<LogBatch> {
        let mut out = Vec::new();
        while !pending.is_empty() {
            let (b, taken) = batch_taken(plan(&pending, usize::MAX));
            assert!(
                !taken.is_empty() && taken[0] == 0,
                "the oldest entry goes first"
            );
            let mut i = 0;
            pending.retain(|_| {
                let keep = !taken.contains(&i);
                i += 1;
                keep
            });
            out.push(b);
        }
        out
    }

    /// Guards against half-empty requests (issue 14.5): 150 params logged before 2,500
    /// metrics took 4 requests (the first held only the 100 params) where MLflow's limits
    /// (100 params, 1000 metrics, 1000 entities) allow 3.
    #[test]
    fn batches_pack_every_kind_to_the_server_limits() {
        for params_first in [true, false] {
            let params = (0..150).map(|i| param(&format!("p{i}"), "v"));
            let metrics = (0..2500).map(metric);
            let pending: VecDeque<Entry> = if params_first {
                params.chain(metrics).collect()
            } else {
                metrics.chain(params).collect()
            };
            let sent = requests(pending);
            assert_eq!(sent.len(), 3, "params first: {params_first}");
            let count = |f: fn(&LogBatch) -> usize| sent.iter().map(f).sum::<usize>();
            assert_eq!(count(|b| b.params.len()), 150);
            assert_eq!(count(|b| b.metrics.len()), 2500);
            for b in &sent {
                assert!(b.params.len() <= MAX_PARAMS_OR_TAGS && b.metrics.len() <= MAX_METRICS);
                assert!(b.params.len() + b.metrics.len() + b.tags.len() <= MAX_ENTITIES);
            }
            // Metric points keep their order across requests.
            let steps: Vec<u64> = sent
                .iter()
                .flat_map(|b| b.metrics.iter().map(|m| m.step))
                .collect();
            assert!(steps.windows(2).all(|w| w[0] < w[1]));
        }
    }

    /// While narrowing down a refused batch (cap below the entity limit) a batch is a
    /// contiguous prefix: packing would put a refused param into every batch of two or more,
    /// and isolating it would take two requests per entry before it.
    #[test]
    fn a_narrowing_cap_takes_a_contiguous_prefix() {
        let mut pending: VecDeque<Entry> = (0..20).map(metric).collect();
        pending.push_back(param("bad", "v"));
        let (b, taken) = batch_taken(plan(&pending, 8));
        assert_eq!(taken, (0..8).collect::<Vec<_>>());
        assert!(b.params.is_empty());
        let (_, taken) = batch_taken(plan(&pending, usize::MAX));
        assert!(taken.contains(&20), "at full cap the param is packed in");
    }

    #[test]
    fn packing_never_lets_a_value_overtake_an_older_one_or_cross_a_barrier() {
        // 100 params fill the slots; the changed value of `p0` and everything of kind param
        // after it wait, the metric behind them is taken; the status entry is a barrier.
        let mut pending: VecDeque<Entry> = (0..100).map(|i| param(&format!("p{i}"), "v")).collect();
        pending.push_back(param("late", "1"));
        pending.push_back(metric(1));
        pending.push_back(Entry::Status {
            status: RunStatus::Finished,
            end_time: 9,
        });
        pending.push_back(metric(2));
        let (b, taken) = batch_taken(plan(&pending, usize::MAX));
        assert_eq!(b.params.len(), 100);
        assert_eq!(b.metrics.len(), 1);
        assert_eq!(
            taken.last(),
            Some(&101),
            "metric 1 taken, `late` left, barrier kept"
        );
        let pending: VecDeque<Entry> = [
            param("lr", "1"),
            param("lr", "2"),
            param("x", "3"),
            metric(0),
        ]
        .into();
        let (b, taken) = batch_taken(plan(&pending, usize::MAX));
        assert_eq!(b.params.len(), 1, "x waits behind the changed lr");
        assert_eq!(taken, vec![0, 3]);
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
        let (b, taken) = batch_taken(plan(&pending, usize::MAX));
        assert_eq!(b.params.len(), 1);
        assert_eq!(
            taken,
            vec![0, 1, 3],
            "identical repeat settled, changed value waits, the metric behind it goes"
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
