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

/// Scores `batch` under `model` at `temperature`: for each masked token `x_t`,
/// `log p(x_t) = log softmax(z_{t-1} / T)[x_t]` where `z_{t-1}` are the logits after the
/// prefix `x_<t`. This is the quantity the sampler reports as behaviour log-prob when no
/// top-k/top-p/min-p truncation is used (tested to 1e-4), so the importance ratio
/// `exp(log π_θ − log π_old)` is exactly 1 on-policy.
///
/// Rows are right-padded to the longest; only the hidden states of scored positions go
/// through the output projection (prompt tokens cost no `[vocab]`-wide logits).
///
/// # Errors
/// [`Error::Input`] when a mask's length differs from its row's, the first token is masked, a
/// token id is outside the vocabulary, a row exceeds the context, or `temperature` is not
/// finite and > 0.
pub fn score(
    model: &Llama,
    batch: &ScoreBatch,
    temperature: f32,
    with_entropy: bool,
) -> Result<Scores> {
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
    model.check_tokens(&rows)?;

    let device = model.device();
    let positions = batch.scored_positions();
    let batch_size = batch.sequences.len();
    let seq = batch.sequences.iter().map(Vec::len).max().unwrap_or(0);
    let hidden_size = model.config().hidden_size;
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
        .reshape([batch_size * seq, hidden_size]);

    // The hidden state that predicts token t sits at position t - 1.
    let n = positions.len();
    let source: Vec<i64> = positions
        .iter()
        .map(|&(b, t)| (b * seq + t - 1) as i64)
        .collect();
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
    let entropy = with_entropy.then(|| {
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
