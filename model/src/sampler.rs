//! Turning one row of logits into a token: temperature, top-k, top-p, min-p, and the
//! log-probability of the token under the distribution actually sampled from.

use std::cell::RefCell;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cpu_kernels;
use crate::{Error, Result};

/// How to sample one completion. Field names and semantics follow Hugging Face
/// `GenerationConfig` (and TRL's `GRPOConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p × p_max`; `0` = off.
    pub min_p: f32,
    /// Maximum number of tokens to generate.
    pub max_new_tokens: usize,
    /// Stop strings: generation stops once the decoded completion contains one (the returned
    /// text ends before it; the sampled tokens are all kept).
    pub stop: Vec<String>,
    /// Seed of this row's random stream. The same seed gives the same tokens whatever else is
    /// in the batch.
    pub seed: u64,
    /// `Some(k)`: also record, for every sampled token, its log-prob under the model's own
    /// distribution (`log_softmax(logits)`, temperature 1, before any truncation — what
    /// OpenAI's `logprobs` and vLLM's default raw log-probs report) and the `k ≤ 20` most
    /// likely tokens with theirs ([`TokenLogprobs`]). `None` (the default) costs nothing.
    pub top_logprobs: Option<usize>,
    /// When non-empty, the completion must be one of these token sequences (vLLM's
    /// `guided_choice`, over ids): each step samples only among the ids that continue a choice
    /// the completion is still a prefix of, and an EOS id once it is a whole choice
    /// ([`allowed_next`], [`sample_among`]). A choice longer than `max_new_tokens` is cut by
    /// the length limit. Empty (the default): no constraint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Vec<u32>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: 64,
            stop: Vec::new(),
            seed: 0,
            top_logprobs: None,
            choices: Vec::new(),
        }
    }
}

/// Most alternatives [`SamplingParams::top_logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::Sampling`] naming the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Sampling(format!(
                "`temperature` must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Sampling(format!(
                "`top_p` must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return Err(Error::Sampling(format!(
                "`min_p` must be in [0, 1), got {}",
                self.min_p
            )));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Sampling("`max_new_tokens` must be >= 1".into()));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::Sampling("`stop` strings must not be empty".into()));
        }
        if let Some(i) = self.choices.iter().position(Vec::is_empty) {
            return Err(Error::Sampling(format!(
                "`choices[{i}]` is empty: each choice needs at least one token"
            )));
        }
        if let Some(k) = self.top_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(Error::Sampling(format!(
                "`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {k}"
            )));
        }
        Ok(())
    }

    /// Whether sampling is greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// One sampled token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// `log π(token)` under the distribution sampled from: `softmax(logits / T)` restricted
    /// to the tokens kept by top-k / top-p / min-p and renormalised. `0` for greedy decoding
    /// (a point mass).
    pub logprob: f32,
    /// Entropy (nats) of `softmax(logits / T)` before truncation — the quantity the learner's
    /// teacher-forced scoring computes. `0` for greedy decoding.
    pub entropy: f32,
    /// Self-certainty (nats) of the same distribution: its KL divergence from the uniform
    /// distribution over the vocabulary, `KL(U ‖ p) = −log V − (1/V) Σ_j log p_j` (Kang et al.
    /// 2025, "Scalable Best-of-N Selection for Large Language Models via Self-Certainty",
    /// eq. 3; at `T = 1` it is their token score exactly). `0` for greedy decoding.
    pub self_certainty: f32,
}

/// A sampled token's log-prob under the model's untempered distribution and the most likely
/// alternatives at its position ([`SamplingParams::top_logprobs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// `log_softmax(logits)[token]` (nats, ≤ 0), temperature 1, no truncation.
    pub logprob: f32,
    /// The `k` most likely tokens and their log-probs on the same scale, most likely first
    /// (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// The log-prob of `token` and the `k` most likely tokens under `log_softmax(logits)`:
/// `log p_i = l_i − max − log Σ_j exp(l_j − max)` (the sum in f64). One pass for the maximum,
/// one for the sum, one to select the top `k` (O(V·k) worst case, O(V) in practice).
pub fn token_logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let max = cpu_kernels::max(logits);
    let mut total = 0.0f64;
    for block in logits.chunks(1024) {
        let s: f32 = block.iter().map(|&l| (l - max).exp()).sum();
        total += f64::from(s);
    }
    let log_total = total.ln();
    let log_p = |l: f32| (f64::from(l - max) - log_total) as f32;
    // The k best (logit, id) pairs, best first; a new logit enters only if it beats the worst.
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == k && best[k - 1].0 >= l {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= l);
            best.insert(at, (l, i as u32));
            best.truncate(k);
        }
    }
    TokenLogprobs {
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| log_p(l)),
        top: best.into_iter().map(|(l, i)| (i, log_p(l))).collect(),
    }
}

/// Samples one token from a row of logits.
///
/// With `T = temperature`, `p = softmax(logits / T)`; top-k keeps the `k` largest `p`;
/// top-p keeps the smallest prefix of the remaining tokens (by decreasing `p`) whose
/// renormalised mass reaches `top_p`; min-p keeps tokens with `p ≥ min_p · max p`. The token is
/// drawn from `p` restricted to the kept set `K` and renormalised, so its log-prob is
/// `log p(token) − log Σ_{j∈K} p(j)`. Filters apply in Hugging Face's order (temperature,
/// top-k, top-p, min-p).
///
/// Draws exactly one `f64` from `rng` per call (none when greedy), so a row's stream does not
/// depend on other rows.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> Sampled {
    if params.is_greedy() {
        let token = argmax(logits);
        return Sampled {
            token,
            logprob: 0.0,
            entropy: 0.0,
            self_certainty: 0.0,
        };
    }
    let inv_t = 1.0 / params.temperature;
    let max = cpu_kernels::max(logits);
    // log w_i: the tempered logit shifted by the maximum.
    let score = |i: usize| ((logits[i] - max) * inv_t) as f64;
    SCRATCH.with_borrow_mut(|(weights, blocks)| {
        // Unnormalised probabilities w_i = exp((l_i - max) / T), their sum and Σ w_i log w_i.
        weights.resize(logits.len(), 0.0);
        blocks.clear();
        let sums = cpu_kernels::exp_weights(logits, max, inv_t, weights, blocks);
        let (entropy, self_certainty) = spread(&sums, logits, max, inv_t);

        let kept = kept_set(weights, sums.total, params);
        let kept_mass: f64 = match &kept {
            Some(ids) => ids.iter().map(|&i| weights[i] as f64).sum(),
            None => sums.total,
        };
        let target = rng.random::<f64>() * kept_mass;
        let token = match &kept {
            Some(ids) => pick(ids.iter().map(|&i| (i, weights[i])), target),
            None => pick_blocked(weights, blocks, target),
        };
        Sampled {
            token: token as u32,
            logprob: (score(token) - kept_mass.ln()) as f32,
            entropy: entropy as f32,
            self_certainty: self_certainty as f32,
        }
    })
}

/// The entropy `H = −Σ p log p` and the self-certainty `KL(U ‖ p)` (nats) of
/// `p = softmax(logits / T)`, from its unnormalised weights' sums
/// ([`cpu_kernels::exp_weights`] with shift `max` and scale `inv_t = 1/T`).
fn spread(sums: &cpu_kernels::ExpSums, logits: &[f32], max: f32, inv_t: f32) -> (f64, f64) {
    let log_total = sums.total.ln();
    // H = -Σ p log p with log p_i = log w_i - log Σw.
    let entropy = log_total - sums.weighted / sums.total;
    // KL(U ‖ p) = -log V - mean_i log p_i, with mean_i log w_i = (mean_i l_i - max) / T.
    let vocab = logits.len() as f64;
    let mean_log_w = (mean(logits) - max as f64) * inv_t as f64;
    (entropy, log_total - mean_log_w - vocab.ln())
}

/// The ids that may follow `sampled` when the completion must be one of `choices`
/// ([`SamplingParams::choices`]): the next id of every choice that `sampled` is a proper prefix
/// of, and every `eos` id when `sampled` is itself a choice. Sorted, without repeats; empty
/// when `sampled` leads to no choice (or is a whole choice and `eos` is empty).
pub fn allowed_next(choices: &[Vec<u32>], sampled: &[u32], eos: &[u32]) -> Vec<u32> {
    let mut allowed = Vec::new();
    for choice in choices.iter().filter(|c| c.starts_with(sampled)) {
        match choice.get(sampled.len()) {
            Some(&next) => allowed.push(next),
            None => allowed.extend_from_slice(eos),
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    allowed
}

/// Samples one token among `allowed` ids only (guided choice, [`SamplingParams::choices`]):
/// [`sample`] with every other logit at −∞. With `T = temperature`, `q = softmax(l_A / T)` over
/// the allowed set `A`, truncated by top-k / top-p / min-p to `K ⊆ A` as in [`sample`]; the
/// token is drawn from `q` on `K` renormalised, and `logprob = log q(token) − log Σ_{j∈K} q(j)`
/// is its log-prob under that constrained distribution (`0` when only one id is allowed or
/// decoding is greedy). `entropy` and `self_certainty` are those of the whole
/// `softmax(logits / T)`, as for an unconstrained token: the quantities the learner's scoring
/// of the unconstrained policy computes. Greedy decoding takes the allowed id with the largest
/// logit (the lowest id on ties). Ids outside the vocabulary are ignored; with no allowed id
/// left this is [`sample`]. Draws one `f64` from `rng` when not greedy, as [`sample`].
pub fn sample_among(
    logits: &[f32],
    allowed: &[u32],
    params: &SamplingParams,
    rng: &mut ChaCha8Rng,
) -> Sampled {
    let ids: Vec<usize> = allowed
        .iter()
        .map(|&t| t as usize)
        .filter(|&t| t < logits.len())
        .collect();
    let Some(&first) = ids.first() else {
        return sample(logits, params, rng);
    };
    let best = ids.iter().copied().fold(first, |b, i| {
        if logits[i] > logits[b] || (logits[i] == logits[b] && i < b) {
            i
        } else {
            b
        }
    });
    if params.is_greedy() {
        return Sampled {
            token: best as u32,
            logprob: 0.0,
            entropy: 0.0,
            self_certainty: 0.0,
        };
    }
    let inv_t = 1.0 / params.temperature;
    let top = logits[best];
    // log q_i (unnormalised) and q_i for the allowed ids, in `ids` order.
    let scores: Vec<f64> = ids
        .iter()
        .map(|&i| f64::from((logits[i] - top) * inv_t))
        .collect();
    let weights: Vec<f32> = scores.iter().map(|&s| s.exp() as f32).collect();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let kept: Vec<usize> =
        kept_set(&weights, total, params).unwrap_or_else(|| (0..ids.len()).collect());
    let kept_mass: f64 = kept.iter().map(|&k| f64::from(weights[k])).sum();
    let target = rng.random::<f64>() * kept_mass;
    let k = pick(kept.iter().map(|&k| (k, weights[k])), target);
    let (entropy, self_certainty) = SCRATCH.with_borrow_mut(|(full, blocks)| {
        let max = cpu_kernels::max(logits);
        full.resize(logits.len(), 0.0);
        blocks.clear();
        let sums = cpu_kernels::exp_weights(logits, max, inv_t, full, blocks);
        spread(&sums, logits, max, inv_t)
    });
    Sampled {
        token: ids[k] as u32,
        logprob: (scores[k] - kept_mass.ln()) as f32,
        entropy: entropy as f32,
        self_certainty: self_certainty as f32,
    }
}

/// The mean of a row of logits, summed in 16 f32 lanes per 4,096-value block and the blocks
/// in f64 (accurate over a 50k-token vocabulary; the lanes vectorise).
fn mean(logits: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in logits.chunks(4096) {
        let mut lanes = [0.0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += x;
            }
        }
        total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
        total += chunks
            .remainder()
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>();
    }
    total / logits.len().max(1) as f64
}

thread_local! {
    /// The sampler's per-thread buffers: weights of one row, and their block sums.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Walks the cumulative weights until `target` is passed.
fn pick(items: impl Iterator<Item = (usize, f32)>, target: f64) -> usize {
    let mut acc = 0.0;
    let mut last = 0;
    for (i, w) in items {
        if w <= 0.0 {
            continue;
        }
        acc += w as f64;
        last = i;
        if acc > target {
            return i;
        }
    }
    last
}

/// [`pick`] over all weights, skipping whole blocks by their sums
/// ([`cpu_kernels::exp_weights`]) and walking only the block where `target` is passed.
fn pick_blocked(weights: &[f32], blocks: &[f64], target: f64) -> usize {
    let mut acc = 0.0;
    for (b, &sum) in blocks.iter().enumerate() {
        if acc + sum <= target {
            acc += sum;
            continue;
        }
        let start = b * cpu_kernels::EXP_BLOCK;
        for (i, &w) in weights[start..]
            .iter()
            .take(cpu_kernels::EXP_BLOCK)
            .enumerate()
        {
            acc += w as f64;
            if w > 0.0 && acc > target {
                return start + i;
            }
        }
    }
    // Rounding left `target` beyond the last sum: the last token with weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// The index of the largest logit (the lowest index on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Token ids kept by top-k / top-p / min-p, or `None` when no filter is active.
fn kept_set(weights: &[f32], total: f64, params: &SamplingParams) -> Option<Vec<usize>> {
    let top_k = params.top_k > 0 && params.top_k < weights.len();
    let top_p = params.top_p < 1.0;
    let min_p = params.min_p > 0.0;
    if !(top_k || top_p || min_p) {
        return None;
    }
    // Candidates sorted by decreasing weight. Only the head of the distribution can be kept,
    // so sort the tokens above a threshold and widen it only if they are not enough.
    let mut threshold = total * 1e-6;
    let mut sorted: Vec<usize>;
    loop {
        sorted = (0..weights.len())
            .filter(|&i| weights[i] as f64 >= threshold && weights[i] > 0.0)
            .collect();
        sorted.sort_unstable_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
        let mass: f64 = sorted.iter().map(|&i| weights[i] as f64).sum();
        let enough_for_k = !top_k || sorted.len() >= params.top_k;
        let enough_for_p = !top_p || mass >= params.top_p as f64 * total;
        if (enough_for_k && enough_for_p) || threshold == 0.0 {
            break;
        }
        threshold = if threshold < total * 1e-30 {
            0.0
        } else {
            threshold * 1e-4
        };
    }
    if top_k {
        sorted.truncate(params.top_k);
    }
    if top_p {
        let mass: f64 = sorted.iter().map(|&i| weights[i] as f64).sum();
        let limit = params.top_p as f64 * mass;
        let mut acc = 0.0;
        let mut keep = sorted.len();
        for (n, &i) in sorted.iter().enumerate() {
            acc += weights[i] as f64;
            if acc >= limit {
                keep = n + 1;
                break;
            }
        }
        sorted.truncate(keep.max(1));
    }
    if min_p {
        let cut = weights[sorted[0]] * params.min_p;
        sorted.retain(|&i| weights[i] >= cut);
    }
    Some(sorted)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn token_logprobs_are_the_untempered_log_softmax_and_its_top_k() {
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0)
            .collect();
        let naive = probs(&logits, 1.0);
        for token in [0u32, 17, 4999] {
            let lp = token_logprobs(&logits, token, 5);
            assert!((f64::from(lp.logprob) - naive[token as usize].ln()).abs() < 1e-4);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let want: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
            let got: Vec<u32> = lp.top.iter().map(|&(i, _)| i).collect();
            assert_eq!(got, want, "top 5 by logit, ties by id");
            for &(i, l) in &lp.top {
                assert!((f64::from(l) - naive[i as usize].ln()).abs() < 1e-4);
            }
        }
        assert!(token_logprobs(&logits, 3, 0).top.is_empty());
        let bad = SamplingParams {
            top_logprobs: Some(21),
            ..SamplingParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("top_logprobs")
        );
    }

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn probs(logits: &[f32], t: f32) -> Vec<f64> {
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (l as f64 / t as f64).exp())
            .collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    }

    #[test]
    fn allowed_next_follows_the_choices_sharing_the_prefix() {
        let choices = vec![vec![5, 6, 7], vec![5, 6], vec![5, 9], vec![8]];
        let eos = [0, 1];
        assert_eq!(allowed_next(&choices, &[], &eos), vec![5, 8]);
        assert_eq!(allowed_next(&choices, &[5], &eos), vec![6, 9]);
        // [5, 6] is a whole choice and a prefix of [5, 6, 7].
        assert_eq!(allowed_next(&choices, &[5, 6], &eos), vec![0, 1, 7]);
        assert_eq!(allowed_next(&choices, &[8], &eos), vec![0, 1]);
        assert_eq!(allowed_next(&choices, &[8], &[]), Vec::<u32>::new());
        assert_eq!(allowed_next(&choices, &[4], &eos), Vec::<u32>::new());
    }

    #[test]
    fn sampling_among_allowed_ids_renormalises_over_them() {
        let logits: Vec<f32> = (0..3000).map(|i| ((i * 37) % 101) as f32 / 13.0).collect();
        let allowed = [3u32, 10, 2999];
        let t = 0.8;
        let params = SamplingParams {
            temperature: t,
            ..SamplingParams::default()
        };
        // q = softmax(l_A / T) over the allowed ids only.
        let w: Vec<f64> = allowed
            .iter()
            .map(|&i| (f64::from(logits[i as usize]) / f64::from(t)).exp())
            .collect();
        let z: f64 = w.iter().sum();
        let full = sample(&logits, &params, &mut rng(1));
        let mut counts = [0usize; 3];
        let mut r = rng(5);
        let n = 20_000;
        for _ in 0..n {
            let s = sample_among(&logits, &allowed, &params, &mut r);
            let k = allowed
                .iter()
                .position(|&a| a == s.token)
                .expect("an allowed id");
            counts[k] += 1;
            assert!((f64::from(s.logprob) - (w[k] / z).ln()).abs() < 1e-4);
            // Entropy and self-certainty are the whole distribution's.
            assert!((s.entropy - full.entropy).abs() < 1e-4);
            assert!((s.self_certainty - full.self_certainty).abs() < 1e-4);
        }
        for k in 0..3 {
            let freq = counts[k] as f64 / n as f64;
            assert!(
                (freq - w[k] / z).abs() < 0.015,
                "id {}: {freq} vs {}",
                allowed[k],
                w[k] / z
            );
        }
        // Greedy: the allowed id with the largest logit; one allowed id has log-prob 0.
        let g = sample_among(&logits, &allowed, &SamplingParams::greedy(4), &mut rng(0));
        let best = *allowed
            .iter()
            .max_by(|&&a, &&b| logits[a as usize].total_cmp(&logits[b as usize]))
            .unwrap();
        assert_eq!(g.token, best);
        let one = sample_among(&logits, &[10], &params, &mut rng(2));
        assert_eq!((one.token, one.logprob), (10, 0.0));
        // top-k applies within the allowed set.
        let top1 = SamplingParams {
            top_k: 1,
            ..params.clone()
        };
        assert_eq!(
            sample_among(&logits, &allowed, &top1, &mut rng(3)).token,
            best
        );
    }

    #[test]
    fn greedy_takes_the_argmax_with_zero_logprob() {
        let s = sample(
            &[0.1, 3.0, 3.0, -1.0],
            &SamplingParams::greedy(4),
            &mut rng(0),
        );
        assert_eq!(s.token, 1);
        assert_eq!(s.logprob, 0.0);
    }

    #[test]
    fn logprob_is_log_softmax_at_temperature() {
        let logits = [1.0f32, 2.0, 0.5, -0.3];
        for t in [1.0f32, 0.7] {
            let params = SamplingParams {
                temperature: t,
                ..SamplingParams::default()
            };
            let p = probs(&logits, t);
            let entropy: f64 = -p.iter().map(|x| x * x.ln()).sum::<f64>();
            for seed in 0..20 {
                let s = sample(&logits, &params, &mut rng(seed));
                let expected = p[s.token as usize].ln() as f32;
                assert!(
                    (s.logprob - expected).abs() < 1e-6,
                    "{} vs {expected}",
                    s.logprob
                );
                assert!((s.entropy as f64 - entropy).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn self_certainty_is_the_kl_from_uniform_of_the_tempered_distribution() {
        // A 50k vocabulary with spread logits (the blocked mean must stay accurate), and a
        // flat row, whose self-certainty is 0.
        let logits: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 3.0)
            .collect();
        for t in [1.0f32, 0.6] {
            let params = SamplingParams {
                temperature: t,
                ..SamplingParams::default()
            };
            let p = probs(&logits, t);
            let v = logits.len() as f64;
            let expected: f64 = -v.ln() - p.iter().map(|x| x.ln()).sum::<f64>() / v;
            let s = sample(&logits, &params, &mut rng(3));
            assert!(
                (s.self_certainty as f64 - expected).abs() < 1e-4 * expected.abs().max(1.0),
                "{} vs {expected}",
                s.self_certainty
            );
            assert!(expected > 0.1);
        }
        let flat = sample(&[0.25; 64], &SamplingParams::default(), &mut rng(0));
        assert!(flat.self_certainty.abs() < 1e-6, "{}", flat.self_certainty);
    }

    #[test]
    fn truncated_logprob_is_renormalised_over_the_kept_set() {
        let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        let p = probs(&logits, 1.0);
        let params = SamplingParams {
            top_k: 2,
            ..SamplingParams::default()
        };
        for seed in 0..50 {
            let s = sample(&logits, &params, &mut rng(seed));
            assert!(s.token < 2, "top_k=2 sampled {}", s.token);
            let expected = (p[s.token as usize] / (p[0] + p[1])).ln() as f32;
            assert!((s.logprob - expected).abs() < 1e-6);
        }
        // top_p = 0.8: p ≈ [0.636, 0.234, 0.086, ...]; cumulative reaches 0.8 at token 1.
        let params = SamplingParams {
            top_p: 0.8,
            ..SamplingParams::default()
        };
        let mut seen = [false; 5];
        for seed in 0..200 {
            seen[sample(&logits, &params, &mut rng(seed)).token as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false, false]);
        // min_p = 0.2: keep p >= 0.2 * 0.636 = 0.127 -> tokens 0 and 1.
        let params = SamplingParams {
            min_p: 0.2,
            ..SamplingParams::default()
        };
        let mut seen = [false; 5];
        for seed in 0..200 {
            seen[sample(&logits, &params, &mut rng(seed)).token as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false, false]);
    }

    #[test]
    fn top_p_keeps_at_least_one_token() {
        let params = SamplingParams {
            top_p: 1e-9,
            ..SamplingParams::default()
        };
        let s = sample(&[0.0, 5.0, 1.0], &params, &mut rng(3));
        assert_eq!(s.token, 1);
        assert!(
            s.logprob.abs() < 1e-6,
            "a single kept token has probability 1"
        );
    }

    #[test]
    fn top_p_over_a_flat_large_vocabulary_widens_the_candidates() {
        // 50k equal logits: every token is below the first threshold's share, so the candidate
        // set must widen to reach the nucleus.
        let logits = vec![0.0f32; 50_000];
        let params = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let s = sample(&logits, &params, &mut rng(1));
        let expected = -(25_000f64.ln()) as f32;
        assert!((s.logprob - expected).abs() < 1e-3, "{}", s.logprob);
    }

    #[test]
    fn sampling_frequencies_match_the_distribution_chi_square() {
        let logits = [0.5f32, 1.5, -0.2, 1.0, 0.0];
        let t = 0.8;
        let p = probs(&logits, t);
        let params = SamplingParams {
            temperature: t,
            ..SamplingParams::default()
        };
        let n = 20_000;
        let mut counts = [0usize; 5];
        let mut r = rng(42);
        for _ in 0..n {
            counts[sample(&logits, &params, &mut r).token as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&p)
            .map(|(&c, &q)| {
                let e = q * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        // 4 degrees of freedom: P(chi2 > 18.47) = 0.001.
        assert!(chi2 < 18.47, "chi2 = {chi2}, counts {counts:?}, p {p:?}");
    }

    #[test]
    fn same_seed_same_token_different_seeds_differ() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams::default();
        let a: Vec<u32> = (0..30)
            .map(|s| sample(&logits, &params, &mut rng(s)).token)
            .collect();
        let b: Vec<u32> = (0..30)
            .map(|s| sample(&logits, &params, &mut rng(s)).token)
            .collect();
        let c: Vec<u32> = (100..130)
            .map(|s| sample(&logits, &params, &mut rng(s)).token)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn invalid_params_name_the_field() {
        let bad = SamplingParams {
            top_p: 1.5,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`top_p`"));
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("`temperature`")
        );
        let bad = SamplingParams {
            max_new_tokens: 0,
            ..SamplingParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("`max_new_tokens`")
        );
    }
}
