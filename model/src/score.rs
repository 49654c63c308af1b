//! Teacher-forced scoring: the log-probs (and entropy, values) of given tokens, differentiably.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::llama::{Llama, token_tensor};
use crate::{Error, Result};

/// Sequences to score. `loss_mask[b][t]` selects the tokens whose log-prob is wanted: token
/// `t` of row `b` is scored as `log π(x_t | x_<t)`, so `loss_mask[b][0]` must be `false`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreBatch {
    /// Token ids of each row (rows may differ in length).
    pub sequences: Vec<Vec<u32>>,
    /// One flag per token of each row.
    pub loss_masks: Vec<Vec<bool>>,
}

impl ScoreBatch {
    /// Number of scored tokens.
    pub fn num_scored(&self) -> usize {
        self.loss_masks.iter().flatten().filter(|&&m| m).count()
    }

    /// `(row, position)` of every scored token, row-major: the order of [`Scores`]' tensors.
    pub fn scored_positions(&self) -> Vec<(usize, usize)> {
        self.loss_masks
            .iter()
            .enumerate()
            .flat_map(|(b, mask)| {
                mask.iter()
                    .enumerate()
                    .filter(|(_, m)| **m)
                    .map(move |(t, _)| (b, t))
            })
            .collect()
    }
}

/// The tokens of a row before the predictor of its first scored token: the context it shares
/// with other rows of the same prompt (a GRPO group), which [`score_with`] computes once per
/// cluster. `None` when nothing in the row is scored; empty when the first scored token is the
/// second one.
pub fn shared_prefix<'a>(tokens: &'a [u32], loss_mask: &[bool]) -> Option<&'a [u32]> {
    let first = loss_mask.iter().position(|&m| m)?;
    tokens.get(..first.saturating_sub(1))
}

/// Per-token results of [`score`], flattened over the scored tokens in row-major order
/// (see [`ScoreBatch::scored_positions`]).
#[derive(Debug, Clone)]
pub struct Scores {
    /// `log softmax(logits / T)[x_t]`, `[n]`; differentiable when the model is on an autodiff
    /// device.
    pub logprobs: Tensor<1>,
    /// Entropy (nats) of `softmax(logits / T)`, `[n]`, when requested.
    pub entropy: Option<Tensor<1>>,
    /// Value-head estimate of the state before each scored token, `[n]`, when the model has
    /// a value head.
    pub values: Option<Tensor<1>>,
    /// Row of each scored token.
    pub rows: Vec<usize>,
}

/// How [`score_with`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    /// Softmax temperature `T` (> 0): log-probs are `log softmax(z / T)`.
    pub temperature: f32,
    /// Also return the entropy of each scored position.
    pub with_entropy: bool,
    /// Compute the context shared by several rows once (see [`score_with`]).
    pub share_prefixes: bool,
}

impl ScoreOptions {
    /// Options at `temperature`, without entropy, sharing prefixes.
    pub fn new(temperature: f32) -> Self {
        Self {
            temperature,
            with_entropy: false,
            share_prefixes: true,
        }
    }
}

/// Scores `batch` under `model` at `temperature`: for each masked token `x_t`,
/// `log p(x_t) = log softmax(z_{t-1} / T)[x_t]` where `z_{t-1}` are the logits after the
/// prefix `x_<t`. This is the quantity the sampler reports as behaviour log-prob when no
/// top-k/top-p/min-p truncation is used (tested to 1e-4), so the importance ratio
/// `exp(log π_θ − log π_old)` is exactly 1 on-policy.
///
/// Shorthand for [`score_with`] with shared prefixes.
///
/// # Errors
/// As [`score_with`].
pub fn score(
    model: &Llama,
    batch: &ScoreBatch,
    temperature: f32,
    with_entropy: bool,
) -> Result<Scores> {
    score_with(
        model,
        batch,
        &ScoreOptions {
            temperature,
            with_entropy,
            share_prefixes: true,
        },
    )
}

/// Scores `batch` under `model` (see [`score`] for the quantity).
///
/// Only the hidden states of scored positions go through the output projection (prompt tokens
/// cost no `[vocab]`-wide logits).
///
/// **Shared prefixes.** Rows whose tokens before their first scored token's predictor are
/// identical (the `G` samples of a GRPO group: one rendered prompt, `G` completions) form a
/// cluster. With `share_prefixes`, each cluster's prefix `x_{<L}` (`L` = first scored index − 1)
/// goes through the model once (batch `[clusters, L_max]`, left-padded), its keys and values
/// are repeated for the cluster's rows (`KvCache::select_rows`), and only the rows' suffixes
/// `x_{≥L}` are computed per row (right-padded) on top of that cache. The result equals the
/// plain right-padded forward up to float reassociation, and gradients flow back through the
/// repeated keys and values (the repeat's backward sums them), so training sees the same
/// gradient. Used only when it saves work (fewer clusters than scored rows).
///
/// # Errors
/// [`Error::Input`] when a mask's length differs from its row's, the first token is masked, a
/// token id is outside the vocabulary, a row exceeds the context, or `temperature` is not
/// finite and > 0.
pub fn score_with(model: &Llama, batch: &ScoreBatch, options: &ScoreOptions) -> Result<Scores> {
    let temperature = options.temperature;
    validate(model, batch, temperature)?;
    let device = model.device();
    let positions = batch.scored_positions();
    let plan = options
        .share_prefixes
        .then(|| PrefixPlan::new(batch, model.config().max_position_embeddings))
        .flatten();
    let (hidden, source) = match plan {
        Some(plan) => plan.forward(model, batch, &positions),
        None => forward_padded(model, batch, &positions),
    };
    let n = positions.len();
    let targets: Vec<i64> = positions
        .iter()
        .map(|&(b, t)| batch.sequences[b][t] as i64)
        .collect();
    let source = Tensor::<1, Int>::from_data(TensorData::new(source, [n]), &device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let h = hidden.select(0, source);
    let values = model.values(h.clone());
    let logits = model.logits(h) / temperature as f64;
    let logp_all = log_softmax(logits, 1);
    let logprobs = logp_all.clone().gather(1, targets).reshape([n]);
    let entropy = options.with_entropy.then(|| {
        let p = logp_all.clone().exp();
        (p * logp_all).sum_dim(1).reshape([n]).neg()
    });
    Ok(Scores {
        logprobs,
        entropy,
        values,
        rows: positions.iter().map(|&(b, _)| b).collect(),
    })
}

/// The plain path: rows right-padded to the longest, one forward pass. Returns the hidden
/// states `[rows × seq, hidden]` and, for each scored `(b, t)`, the row of its predictor `t − 1`.
fn forward_padded(
    model: &Llama,
    batch: &ScoreBatch,
    positions: &[(usize, usize)],
) -> (Tensor<2>, Vec<i64>) {
    let device = model.device();
    let batch_size = batch.sequences.len();
    let seq = batch.sequences.iter().map(Vec::len).max().unwrap_or(0);
    let padded: Vec<Vec<u32>> = batch
        .sequences
        .iter()
        .map(|s| {
            let mut row = s.clone();
            row.resize(seq, 0);
            row
        })
        .collect();
    let hidden = model
        .forward_hidden(token_tensor(&padded, &device), &vec![0; batch_size], None)
        .reshape([batch_size * seq, model.config().hidden_size]);
    // The hidden state that predicts token t sits at position t - 1.
    let source = positions
        .iter()
        .map(|&(b, t)| (b * seq + t - 1) as i64)
        .collect();
    (hidden, source)
}

/// Which rows share a prefix (see [`score_with`]).
#[derive(Debug)]
struct PrefixPlan {
    /// The prefix tokens of each cluster, in order of first appearance.
    prefixes: Vec<Vec<u32>>,
    /// Rows with scored tokens, in batch order, and the cluster of each.
    rows: Vec<(usize, usize)>,
    /// The longest suffix (row tokens after its cluster's prefix): the suffix pass's width.
    suffix_width: usize,
}

impl PrefixPlan {
    /// The clusters of `batch`'s scored rows; `None` when sharing saves nothing or does not
    /// apply (a row scores its second token, so its prefix would be empty; padded suffixes
    /// would run past `max_positions`).
    fn new(batch: &ScoreBatch, max_positions: usize) -> Option<Self> {
        let mut prefixes: Vec<Vec<u32>> = Vec::new();
        let mut index: std::collections::HashMap<&[u32], usize> = Default::default();
        let mut rows = Vec::new();
        for (b, (seq, mask)) in batch.sequences.iter().zip(&batch.loss_masks).enumerate() {
            let Some(prefix) = shared_prefix(seq, mask) else {
                continue;
            };
            if prefix.is_empty() {
                return None;
            }
            let cluster = *index.entry(prefix).or_insert_with(|| {
                prefixes.push(prefix.to_vec());
                prefixes.len() - 1
            });
            rows.push((b, cluster));
        }
        if prefixes.len() >= rows.len() {
            return None;
        }
        let longest_prefix = prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let suffix_width = rows
            .iter()
            .map(|&(b, c)| batch.sequences[b].len() - prefixes[c].len())
            .max()
            .unwrap_or(0);
        (longest_prefix + suffix_width <= max_positions).then_some(Self {
            prefixes,
            rows,
            suffix_width,
        })
    }

    /// Prefix pass, then suffix pass on the repeated cache. Returns the suffix hidden states
    /// `[rows × suffix, hidden]` and the row of each scored token's predictor.
    fn forward(
        &self,
        model: &Llama,
        batch: &ScoreBatch,
        positions: &[(usize, usize)],
    ) -> (Tensor<2>, Vec<i64>) {
        let device = model.device();
        let width = self.prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let starts: Vec<usize> = self.prefixes.iter().map(|p| width - p.len()).collect();
        let left_padded: Vec<Vec<u32>> = self
            .prefixes
            .iter()
            .map(|p| {
                let mut row = vec![0; width - p.len()];
                row.extend_from_slice(p);
                row
            })
            .collect();
        let mut cache = model.new_cache(starts);
        // Only the keys and values written into the cache are needed from this pass.
        let _ = model.forward_hidden(token_tensor(&left_padded, &device), &[], Some(&mut cache));
        let clusters: Vec<usize> = self.rows.iter().map(|&(_, c)| c).collect();
        cache.select_rows(&clusters);

        let seq = self.suffix_width;
        let suffixes: Vec<Vec<u32>> = self
            .rows
            .iter()
            .map(|&(b, c)| {
                let mut row = batch.sequences[b][self.prefixes[c].len()..].to_vec();
                row.resize(seq, 0);
                row
            })
            .collect();
        let hidden = model
            .forward_hidden(token_tensor(&suffixes, &device), &[], Some(&mut cache))
            .reshape([self.rows.len() * seq, model.config().hidden_size]);
        let mut slot = vec![(usize::MAX, 0); batch.sequences.len()];
        for (r, &(b, c)) in self.rows.iter().enumerate() {
            slot[b] = (r, self.prefixes[c].len());
        }
        let source = positions
            .iter()
            .map(|&(b, t)| {
                let (r, offset) = slot[b];
                (r * seq + t - 1 - offset) as i64
            })
            .collect();
        (hidden, source)
    }
}

/// The input checks of [`score_with`] (see its errors).
pub(crate) fn validate(model: &Llama, batch: &ScoreBatch, temperature: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Input(format!(
            "scoring temperature must be finite and > 0, got {temperature}"
        )));
    }
    if batch.sequences.len() != batch.loss_masks.len() {
        return Err(Error::Input(format!(
            "{} sequences but {} loss masks",
            batch.sequences.len(),
            batch.loss_masks.len()
        )));
    }
    for (b, (seq, mask)) in batch.sequences.iter().zip(&batch.loss_masks).enumerate() {
        if seq.len() != mask.len() {
            return Err(Error::Input(format!(
                "row {b}: {} tokens but {} loss-mask flags",
                seq.len(),
                mask.len()
            )));
        }
        if mask.first() == Some(&true) {
            return Err(Error::Input(format!(
                "row {b}: the first token cannot be scored (it has no prefix)"
            )));
        }
    }
    let rows: Vec<&[u32]> = batch.sequences.iter().map(Vec::as_slice).collect();
    model.check_tokens(&rows)
}
