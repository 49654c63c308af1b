//! How a [`ScoreBatch`]'s rows are packed into one token sequence (see the parent module's
//! docs): shared prompt prefixes once per cluster, each row cut at its last scored token's
//! predictor.

use std::collections::HashMap;
use std::ops::Range;

use crate::score::{ScoreBatch, shared_prefix};

/// How the rows of a batch are packed (see the `cpu_train` module docs).
#[derive(Debug, Clone)]
pub(super) struct Packing {
    /// Token ids, `[N]`.
    pub(super) tokens: Vec<u32>,
    /// Position of each token in its row (the rotary position), `[N]`.
    pub(super) positions: Vec<usize>,
    /// Keys of each token: `(context, own_start)`: it attends to the tokens in `context` (its
    /// cluster's prefix; empty for prefix tokens) and to `own_start..=itself`.
    pub(super) keys: Vec<(Range<usize>, usize)>,
    /// Token range of each cluster (prefix, then its rows' suffixes): attention never crosses
    /// them.
    pub(super) clusters: Vec<Range<usize>>,
    /// Packed index of the predictor of each scored token, row-major (`[n]`).
    pub(super) predictors: Vec<usize>,
    /// Each scored token's id.
    pub(super) targets: Vec<u32>,
    /// Each scored token's row in the batch.
    pub(super) rows: Vec<usize>,
}

impl Packing {
    pub(super) fn new(batch: &ScoreBatch, share_prefixes: bool) -> Self {
        let mut clusters: Vec<(Vec<u32>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        for (b, (seq, mask)) in batch.sequences.iter().zip(&batch.loss_masks).enumerate() {
            let Some(prefix) = shared_prefix(seq, mask) else {
                continue;
            };
            let prefix: &[u32] = if share_prefixes { prefix } else { &[] };
            if prefix.is_empty() {
                clusters.push((Vec::new(), vec![b]));
                continue;
            }
            match index.get(prefix) {
                Some(&c) => clusters[c].1.push(b),
                None => {
                    index.insert(prefix, clusters.len());
                    clusters.push((prefix.to_vec(), vec![b]));
                }
            }
        }
        let mut packing = Self {
            tokens: Vec::new(),
            positions: Vec::new(),
            keys: Vec::new(),
            clusters: Vec::new(),
            predictors: Vec::new(),
            targets: Vec::new(),
            rows: Vec::new(),
        };
        // Packed index of the first suffix token of each row, and its offset in the row.
        let mut row_start = vec![(0usize, 0usize); batch.sequences.len()];
        for (prefix, rows) in &clusters {
            let cluster_start = packing.tokens.len();
            for (p, &t) in prefix.iter().enumerate() {
                packing.tokens.push(t);
                packing.positions.push(p);
                packing
                    .keys
                    .push((cluster_start..cluster_start, cluster_start));
            }
            let context = cluster_start..packing.tokens.len();
            for &b in rows {
                let seq = &batch.sequences[b];
                let mask = &batch.loss_masks[b];
                let last = mask.iter().rposition(|&m| m).unwrap_or(0);
                let start = packing.tokens.len();
                row_start[b] = (start, prefix.len());
                for (p, &t) in seq.iter().enumerate().take(last).skip(prefix.len()) {
                    packing.tokens.push(t);
                    packing.positions.push(p);
                    packing.keys.push((context.clone(), start));
                }
            }
            packing.clusters.push(cluster_start..packing.tokens.len());
        }
        for (b, t) in batch.scored_positions() {
            let (start, offset) = row_start[b];
            packing.predictors.push(start + t - 1 - offset);
            packing.targets.push(batch.sequences[b][t]);
            packing.rows.push(b);
        }
        packing
    }
}
