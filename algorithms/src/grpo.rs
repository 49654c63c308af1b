//! The GRPO policy loss and its DAPO / Dr. GRPO variants, over flat per-token tensors.
//!
//! GRPO ([Shao et al. 2024](https://arxiv.org/abs/2402.03300)) is PPO's clipped surrogate with a
//! group-relative advantage (see [`crate::group_advantages`]) instead of a value baseline.
//! DAPO ([Yu et al. 2025](https://arxiv.org/abs/2503.14476)) raises the upper clip bound
//! (`epsilon_high`) and averages over tokens rather than sequences; Dr. GRPO
//! ([Liu et al. 2025](https://arxiv.org/abs/2503.20783)) divides by a constant instead of a
//! length. Field names and semantics follow TRL's `GRPOConfig` / `GRPOTrainer._compute_loss`
//! (<https://github.com/huggingface/trl/blob/main/trl/trainer/grpo_trainer.py>).
//!
//! # Tokens and normalisers
//!
//! Inputs are flat over the trained tokens of a micro-batch, in any order (typically the
//! row-major order of `kaizen_model::Scores`): a token that is not trained on (prompt,
//! environment text, untrainable turn, padding) is simply absent, so there is no mask. `rows[i]` names the
//! sequence of token `i`. Every token counts, including a final EOS token.
//!
//! Each aggregation divides by a normaliser of the **whole optimizer step** ([`StepNormalizers`]),
//! never of the micro-batch, so the per-token weight of every token is the same however the step
//! is split: with gradient accumulation, the sum of the micro-batch losses is the loss of the
//! whole step and so is the sum of their gradients (tested). For `grpo` a sequence must not be
//! split across micro-batches (its length is counted within the call).

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::aggregation::Aggregation;
use crate::gspo::sequence_log_ratio;
use crate::kl::{KlEstimator, kl_estimate};

/// The importance log-ratio `log π_θ − log π_old` is clamped to `[−B, B]` before `exp`
/// (`B = 20`, veRL's bound): the ratio and its gradient stay finite for any gap, and a token
/// beyond the bound gets no gradient. Where its clip is active it has none anyway; the one case
/// the bound changes is a negative-advantage token with a ratio above `e^20` (PPO takes the
/// unclipped term there; without `delta` its loss is capped at `e^20 · |A|` and its gradient
/// dropped, as in veRL). Ratios `e^{±20}` are far outside anything a working run produces.
pub const LOG_RATIO_BOUND: f32 = 20.0;

/// How per-token losses are aggregated into the step loss (TRL `loss_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then mean over the step's sequences (the GRPO paper's;
    /// favours short correct and long wrong answers).
    Grpo,
    /// Sum over all tokens divided by the step's token count (as `dapo`, see below).
    Bnpo,
    /// Sum over all tokens divided by the step's token count (DAPO's token-level loss; TRL's
    /// default).
    #[default]
    Dapo,
    /// Sum over all tokens divided by `num_sequences × max_completion_length` (Dr. GRPO).
    DrGrpo,
}

/// What the importance ratio is taken over (TRL `importance_sampling_level`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingLevel {
    /// One ratio per token (GRPO, PPO).
    #[default]
    Token,
    /// One ratio per response, the geometric mean of its tokens' (GSPO, see
    /// [`crate::sequence_log_ratio`]); in a multi-turn thread, per trained turn.
    Sequence,
}

/// Hyper-parameters of [`grpo_loss`], named as in TRL's `GRPOConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoLossConfig {
    /// Lower clip range ε: the ratio is clipped at `1 − epsilon` (default 0.2).
    pub epsilon: f32,
    /// Upper clip range: the ratio is clipped at `1 + epsilon_high`; unset means `epsilon`
    /// (DAPO's clip-higher uses 0.28).
    pub epsilon_high: Option<f32>,
    /// Coefficient β of the KL penalty to the reference policy (default 0: no reference needed).
    pub beta: f32,
    /// Per-turn multipliers of `beta`: a token of the `k`-th trained turn of its conversation
    /// thread (0-based) is penalised with `beta · kl_turn_weights[k]` (the last entry for later
    /// turns); empty (the default) means 1 everywhere. SCoRe's stage I (Kumar et al. 2024,
    /// <https://arxiv.org/abs/2409.12917>, Eq. 3) is `kl_turn_weights = [1, 0]` with a large
    /// `beta`: the first attempt is held at the reference while the second learns to correct.
    pub kl_turn_weights: Vec<f32>,
    /// Per-turn multipliers of the policy-gradient term: a token of the `k`-th trained turn of
    /// its thread (0-based) has its `pg_t` scaled by `pg_turn_weights[k]` (the last entry for
    /// later turns); empty (the default) means 1 everywhere. SCoRe's stage I (Kumar et al. 2024,
    /// Eq. 3) is `[0, 1]`: the first attempt is shaped by the KL alone, the second by its
    /// reward.
    pub pg_turn_weights: Vec<f32>,
    /// Estimator of the per-token KL to the reference (default `k3`).
    pub kl_estimator: KlEstimator,
    /// Aggregation of per-token losses (default `dapo`, as TRL).
    pub loss_type: LossType,
    /// Coefficient of the entropy bonus: the loss gets `− entropy_coef · mean token entropy`
    /// (default 0).
    pub entropy_coef: f32,
    /// Truncated importance sampling: when set and behaviour log-probs are given, each token's
    /// policy-gradient term is weighted by `min(π_old / π_behaviour, tis_cap)` (TRL's
    /// `vllm_importance_sampling_clip_max` in `token_truncate` mode; unset: off).
    pub tis_cap: Option<f32>,
    /// Token-level (`token`, default) or GSPO's sequence-level (`sequence`) importance ratio;
    /// GSPO's paper clips the sequence ratio with a far smaller `epsilon` (3e-4).
    pub importance_sampling_level: ImportanceSamplingLevel,
    /// Two-sided clipping (TRL `delta`, INTELLECT-2,
    /// <https://arxiv.org/abs/2505.07291>): the unclipped term's ratio is capped at `delta`,
    /// which bounds a negative-advantage token's loss at `−delta · A` (PPO's own surrogate is
    /// unbounded there); must exceed `1 + epsilon_high`. Unset (default): off.
    pub delta: Option<f32>,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.0,
            kl_turn_weights: Vec::new(),
            pg_turn_weights: Vec::new(),
            kl_estimator: KlEstimator::K3,
            loss_type: LossType::Dapo,
            entropy_coef: 0.0,
            tis_cap: None,
            importance_sampling_level: ImportanceSamplingLevel::Token,
            delta: None,
        }
    }
}

impl GrpoLossConfig {
    /// The upper clip range actually used: `epsilon_high`, or `epsilon` when unset.
    pub fn epsilon_high(&self) -> f32 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// Checks every field's range.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: f32, expected| Error::Config {
            field,
            value: f64::from(value),
            expected,
        };
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(bad("epsilon", self.epsilon, "a finite value >= 0"));
        }
        if let Some(e) = self.epsilon_high
            && !(e.is_finite() && e >= 0.0)
        {
            return Err(bad("epsilon_high", e, "a finite value >= 0"));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(bad("beta", self.beta, "a finite value >= 0"));
        }
        for (field, weights) in [
            ("kl_turn_weights", &self.kl_turn_weights),
            ("pg_turn_weights", &self.pg_turn_weights),
        ] {
            if let Some(&w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
                return Err(bad(field, w, "finite values >= 0"));
            }
        }
        if !self.entropy_coef.is_finite() {
            return Err(bad("entropy_coef", self.entropy_coef, "a finite value"));
        }
        if let Some(c) = self.tis_cap
            && !(c.is_finite() && c > 0.0)
        {
            return Err(bad("tis_cap", c, "a finite value > 0"));
        }
        if let Some(d) = self.delta
            && !(d.is_finite() && d > 1.0 + self.epsilon_high())
        {
            return Err(bad("delta", d, "a finite value > 1 + epsilon_high"));
        }
        Ok(())
    }
}

/// Counts over the **whole optimizer step** (all micro-batches together) that the losses divide
/// by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepNormalizers {
    /// Number of sequences (rows) in the step: `grpo` and `dr_grpo` divide by it.
    pub num_sequences: usize,
    /// Number of trained tokens in the step: `bnpo`/`dapo` and the entropy bonus divide by it.
    pub num_tokens: usize,
    /// TRL `max_completion_length`: `dr_grpo`'s per-sequence constant. A multi-turn row may hold
    /// more trained tokens than this; the loss stays well defined.
    pub max_completion_length: usize,
}

/// One micro-batch of trained tokens.
///
/// # Shapes
/// Every tensor is `[n]`, one entry per trained token in the same order, and `rows.len() == n`.
#[derive(Debug, Clone)]
pub struct GrpoBatch<'a> {
    /// `log π_θ(x_t)` under the current policy; differentiable (from teacher-forced scoring at
    /// the sampling temperature).
    pub logprobs: Tensor<1>,
    /// `log π_old(x_t)`: the policy the ratio is taken against. Pass the learner's recomputed
    /// log-probs, or the sampler's behaviour log-probs when the learner does not recompute
    /// them. `None` means exactly on-policy: `log π_old = stop_gradient(log π_θ)`, so the ratio
    /// is 1 and its gradient is `∇ log π_θ` (TRL's shortcut when old log-probs are not needed).
    pub old_logprobs: Option<Tensor<1>>,
    /// `log π_behaviour(x_t)` recorded by the sampler, when `old_logprobs` were recomputed by the
    /// learner. Used for the truncated importance weight (`tis_cap`) and the sampler–learner
    /// log-prob gap metric; without it, `old_logprobs` are taken to be the behaviour policy.
    pub behavior_logprobs: Option<Tensor<1>>,
    /// Advantage of each token (see [`crate::group_advantages`], [`crate::turn_advantages`]).
    pub advantages: Tensor<1>,
    /// `log π_ref(x_t)` under the frozen reference policy; required when `beta > 0`, otherwise
    /// only reported as the `kl` metric.
    pub ref_logprobs: Option<Tensor<1>>,
    /// Entropy (nats) of the current policy at each token; differentiable; required when
    /// `entropy_coef != 0`, otherwise only reported as a metric.
    pub entropy: Option<Tensor<1>>,
    /// Sequence (row) of each token.
    pub rows: &'a [usize],
    /// Index of each token's turn among the trained turns of its thread (0-based), for
    /// `kl_turn_weights`; `None` means turn 0 everywhere.
    pub turns: Option<&'a [u32]>,
}

/// What [`grpo_loss`] returns.
#[derive(Debug, Clone)]
pub struct GrpoOutput {
    /// This micro-batch's share of the step loss, `[1]`; call `backward()` on it (and sum the
    /// gradients of a step's micro-batches).
    pub loss: Tensor<1>,
    /// Diagnostics of this micro-batch; combine a step's with [`GrpoMetrics::merge`].
    pub metrics: GrpoMetrics,
}

/// Diagnostics of one micro-batch (plain numbers, read back from the device once).
///
/// `loss` and `pg_loss` are shares of the step loss (they add up over micro-batches); the
/// `*_mean` and fraction fields are means over this micro-batch's `num_tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GrpoMetrics {
    /// The value of [`GrpoOutput::loss`].
    pub loss: f32,
    /// The policy-gradient part of the loss alone (no KL, no entropy), same aggregation.
    pub pg_loss: f32,
    /// Mean per-token KL estimate to the reference (the configured estimator), when
    /// reference log-probs were given.
    pub kl: Option<f32>,
    /// Mean k3 estimate of `KL(π_old ‖ π_θ)`: how far this update has moved the policy.
    pub approx_kl: f32,
    /// Mean token entropy (nats), when given.
    pub entropy: Option<f32>,
    /// Fraction of tokens clipped at `1 − epsilon` (ratio below it, advantage < 0).
    pub clip_frac_low: f32,
    /// Fraction of tokens clipped at `1 + epsilon_high` (ratio above it, advantage > 0).
    pub clip_frac_high: f32,
    /// Fraction of tokens clipped either way.
    pub clip_frac: f32,
    /// Mean importance ratio `π_θ / π_old`.
    pub ratio_mean: f32,
    /// Largest importance ratio.
    pub ratio_max: f32,
    /// Mean truncated importance weight, when `tis_cap` and behaviour log-probs are set.
    pub tis_weight_mean: Option<f32>,
    /// Mean `|log π_old − log π_behaviour|` over tokens, when behaviour log-probs are given:
    /// the sampler–learner gap that must stay near 0 on-policy.
    pub logprob_gap_mean: Option<f32>,
    /// Largest `|log π_old − log π_behaviour|`, when behaviour log-probs are given.
    pub logprob_gap_max: Option<f32>,
    /// Number of tokens in the micro-batch.
    pub num_tokens: usize,
}

impl GrpoMetrics {
    /// The metrics of two micro-batches of the same step taken together: losses add, means are
    /// weighted by token counts, maxima take the larger.
    pub fn merge(self, other: Self) -> Self {
        let (a, b) = (self.num_tokens as f64, other.num_tokens as f64);
        let total = (a + b).max(1.0);
        let mean = |x: f32, y: f32| ((f64::from(x) * a + f64::from(y) * b) / total) as f32;
        let opt_mean = |x: Option<f32>, y: Option<f32>| match (x, y) {
            (Some(x), Some(y)) => Some(mean(x, y)),
            (x, y) => x.or(y),
        };
        let opt_max = |x: Option<f32>, y: Option<f32>| match (x, y) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        Self {
            loss: self.loss + other.loss,
            pg_loss: self.pg_loss + other.pg_loss,
            kl: opt_mean(self.kl, other.kl),
            approx_kl: mean(self.approx_kl, other.approx_kl),
            entropy: opt_mean(self.entropy, other.entropy),
            clip_frac_low: mean(self.clip_frac_low, other.clip_frac_low),
            clip_frac_high: mean(self.clip_frac_high, other.clip_frac_high),
            clip_frac: mean(self.clip_frac, other.clip_frac),
            ratio_mean: mean(self.ratio_mean, other.ratio_mean),
            ratio_max: self.ratio_max.max(other.ratio_max),
            tis_weight_mean: opt_mean(self.tis_weight_mean, other.tis_weight_mean),
            logprob_gap_mean: opt_mean(self.logprob_gap_mean, other.logprob_gap_mean),
            logprob_gap_max: opt_max(self.logprob_gap_max, other.logprob_gap_max),
            num_tokens: self.num_tokens + other.num_tokens,
        }
    }
}

/// The clipped-surrogate policy loss of one micro-batch, GRPO / DAPO / Dr. GRPO.
///
/// Per token `t` (of sequence `i`, in a step of `S` sequences and `T` tokens):
///
/// ```text
/// ratio_t = exp(clamp(log π_θ − log π_old, −B, B))     B = LOG_RATIO_BOUND = 20
///           (importance_sampling_level = "sequence": the mean log-ratio of the token's
///            response, GSPO, see crate::gspo)
/// surr1_t = min(ratio_t, delta) · A_t                   (no min without `delta`)
/// surr2_t = clamp(ratio_t, 1 − ε, 1 + ε_high) · A_t
/// pg_t    = −min(surr1_t, surr2_t) · w_t · u(turn_t)
///                 w_t = min(exp(log π_old − log π_behaviour), tis_cap)
///                       (w_t = 1 without tis_cap / behaviour log-probs)
///                 u = pg_turn_weights (1 when empty)
/// l_t     = pg_t + β · v(turn_t) · KL_t(π_θ ‖ π_ref)     v = kl_turn_weights (1 when empty)
///
/// grpo:     L = 1/S · Σ_i (1/|o_i| Σ_{t∈i} l_t)      each sequence's mean first
/// bnpo,
/// dapo:     L = 1/T · Σ_t l_t
/// dr_grpo:  L = 1/(S · max_completion_length) · Σ_t l_t
///
/// loss = L − entropy_coef · 1/T · Σ_t H_t
/// ```
///
/// Each aggregation is linear in the per-token losses with coefficients fixed by `rows` and
/// `step`, so the losses of a step's micro-batches add up to the step loss. `grpo` takes each
/// sequence's mean before dividing by `S` (rather than weighting each token by the rounded
/// `1/(S·|o_i|)`), so the per-token weights' rounding residue is gone: on-policy with
/// advantages `+1` and `−1` the loss is exactly 0 (it was 4.5e-8; tested). Float sums are not
/// exact in general, so other cancellations may still leave a rounding residue.
///
/// Numerical safety: no `exp` sees an unbounded argument, forward or backward. The log-ratio
/// is clamped ([`LOG_RATIO_BOUND`]), so a trained token with any log-ratio gives a finite loss
/// and finite gradients, zero where its clip is active (the clamp used to act on the forward
/// value only: `exp` overflowed and `0 · inf` gave NaN); the KL is bounded as documented in
/// [`crate::kl`]; the TIS weight is `exp(min(log π_old − log π_behaviour, ln tis_cap))`.
///
/// Departures from TRL's `_compute_loss`, on purpose:
/// - `bnpo` divides by the step's token count like `dapo`; TRL divides by the micro-batch's,
///   which makes the result depend on the split (its docs say so). Ours must not.
/// - The step normalisers are explicit arguments instead of "mean over the micro-batch divided
///   by `gradient_accumulation_steps`", which equals ours only when micro-batches are equal.
///
/// # Shapes
/// See [`GrpoBatch`]: all per-token inputs `[n]`; the loss is `[1]`.
///
/// # Errors
/// [`Error::Length`] when a tensor or `rows` is not `[n]`, [`Error::NoTokens`] for `n = 0`,
/// [`Error::MissingInput`] when `beta > 0` without `ref_logprobs` or `entropy_coef != 0`
/// without `entropy`, [`Error::Normalizer`] when `step` counts fewer tokens or sequences than
/// this micro-batch holds (or `max_completion_length` is 0 for `dr_grpo`), [`Error::Config`]
/// for an out-of-range hyper-parameter, [`Error::Read`] when metrics cannot be read back.
pub fn grpo_loss(
    batch: GrpoBatch<'_>,
    step: &StepNormalizers,
    config: &GrpoLossConfig,
) -> Result<GrpoOutput, Error> {
    config.validate()?;
    let GrpoBatch {
        logprobs,
        old_logprobs,
        behavior_logprobs,
        advantages,
        ref_logprobs,
        entropy,
        rows,
        turns,
    } = batch;
    let [n] = logprobs.dims();
    check_len("rows", rows.len(), n)?;
    if let Some(turns) = turns {
        check_len("turns", turns.len(), n)?;
    }
    check_len("advantages", advantages.dims()[0], n)?;
    for (name, t) in [
        ("old_logprobs", &old_logprobs),
        ("behavior_logprobs", &behavior_logprobs),
        ("ref_logprobs", &ref_logprobs),
        ("entropy", &entropy),
    ] {
        if let Some(t) = t {
            check_len(name, t.dims()[0], n)?;
        }
    }
    if n == 0 {
        return Err(Error::NoTokens);
    }
    if config.beta > 0.0 && ref_logprobs.is_none() {
        return Err(Error::MissingInput {
            input: "ref_logprobs",
            reason: "`beta` > 0 (KL penalty to the reference policy)",
        });
    }
    if config.entropy_coef != 0.0 && entropy.is_none() {
        return Err(Error::MissingInput {
            input: "entropy",
            reason: "`entropy_coef` != 0 (entropy bonus)",
        });
    }
    let aggregate = Aggregation::new(config.loss_type, rows, step, &logprobs.device())?;
    let (eps_low, eps_high) = (config.epsilon, config.epsilon_high());

    // On-policy shortcut: the ratio is exp(logp − sg(logp)) = 1, its gradient ∇logp.
    let old_logprobs = old_logprobs.unwrap_or_else(|| logprobs.clone().detach());
    let log_ratio = logprobs.clone() - old_logprobs.clone();
    let log_ratio = match config.importance_sampling_level {
        ImportanceSamplingLevel::Token => log_ratio,
        ImportanceSamplingLevel::Sequence => {
            let units: Vec<(usize, u32)> = (0..n)
                .map(|i| (rows[i], turns.map_or(0, |t| t[i])))
                .collect();
            sequence_log_ratio(log_ratio, &units)
        }
    };
    let log_ratio = log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND);
    let ratio = log_ratio.exp();
    let capped = match config.delta {
        Some(delta) => ratio.clone().clamp_max(delta),
        None => ratio.clone(),
    };
    let surr1 = capped * advantages.clone();
    let surr2 = ratio.clone().clamp(1.0 - eps_low, 1.0 + eps_high) * advantages.clone();
    let pg = surr1.min_pair(surr2).neg();
    let tis_weight = match (config.tis_cap, &behavior_logprobs) {
        (Some(cap), Some(behavior)) => Some(
            (old_logprobs.clone() - behavior.clone())
                .detach()
                .clamp_max(cap.ln())
                .exp(),
        ),
        _ => None,
    };
    let pg = match &tis_weight {
        Some(w) => pg * w.clone(),
        None => pg,
    };
    // Per-turn weights as a `[n]` tensor of `scale · weights[turn_t]` (the last entry for later
    // turns); `None` when the weights are empty (1 everywhere).
    let per_turn = |weights: &[f32], scale: f32| {
        let last = weights.len().checked_sub(1)?;
        let coefs: Vec<f32> = (0..n)
            .map(|i| scale * weights[turns.map_or(0, |t| t[i] as usize).min(last)])
            .collect();
        Some(Tensor::<1>::from_data(
            TensorData::new(coefs, [n]),
            &logprobs.device(),
        ))
    };
    // pg_t · w_pg(turn_t).
    let pg = match per_turn(&config.pg_turn_weights, 1.0) {
        Some(w) => pg * w,
        None => pg,
    };
    let kl = ref_logprobs.map(|r| kl_estimate(logprobs.clone(), r, config.kl_estimator));
    // Per-token loss: pg_t + β · w_kl(turn_t) · KL_t.
    let per_token_loss = match &kl {
        Some(kl) if config.beta > 0.0 => match per_turn(&config.kl_turn_weights, config.beta) {
            Some(coefs) => pg.clone() + kl.clone() * coefs,
            None => pg.clone() + kl.clone() * config.beta,
        },
        _ => pg.clone(),
    };
    let pg_loss = aggregate.apply(pg);
    let policy_loss = aggregate.apply(per_token_loss);
    // TRL: "The bonus is always the mean per-token entropy regardless of `loss_type`".
    let loss = match &entropy {
        Some(h) if config.entropy_coef != 0.0 => {
            let entropy_bonus = h.clone().sum() / step.num_tokens as f64;
            policy_loss - entropy_bonus * config.entropy_coef
        }
        _ => policy_loss,
    };

    // Diagnostics, on the host.
    let approx_kl = kl_estimate(old_logprobs.clone(), logprobs.clone(), KlEstimator::K3);
    let gap = behavior_logprobs.map(|b| (old_logprobs - b).abs());
    let host = |name, t: Option<Tensor<1>>| -> Result<Option<Vec<f32>>, Error> {
        t.map(|t| read(name, t.detach())).transpose()
    };
    let ratio = read("ratio", ratio.detach())?;
    let adv = read("advantages", advantages.detach())?;
    let approx_kl = read("approx_kl", approx_kl.detach())?;
    let kl = host("kl", kl)?;
    let entropy = host("entropy", entropy)?;
    let tis_weight = host("tis_weight", tis_weight)?;
    let gap = host("logprob_gap", gap)?;
    let loss_value = read("loss", loss.clone().detach())?[0];
    let pg_loss_value = read("pg_loss", pg_loss.detach())?[0];

    let mean = |v: &[f32]| (v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64) as f32;
    let frac = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count() as f32 / n as f32;
    let low = |i: usize| ratio[i] < 1.0 - eps_low && adv[i] < 0.0;
    let high = |i: usize| ratio[i] > 1.0 + eps_high && adv[i] > 0.0;
    let metrics = GrpoMetrics {
        loss: loss_value,
        pg_loss: pg_loss_value,
        kl: kl.as_deref().map(mean),
        approx_kl: mean(&approx_kl),
        entropy: entropy.as_deref().map(mean),
        clip_frac_low: frac(&low),
        clip_frac_high: frac(&high),
        clip_frac: frac(&|i| low(i) || high(i)),
        ratio_mean: mean(&ratio),
        ratio_max: ratio.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        tis_weight_mean: tis_weight.as_deref().map(mean),
        logprob_gap_mean: gap.as_deref().map(mean),
        logprob_gap_max: gap
            .as_deref()
            .map(|g| g.iter().copied().fold(0.0, f32::max)),
        num_tokens: n,
    };
    Ok(GrpoOutput { loss, metrics })
}

fn check_len(input: &'static str, actual: usize, expected: usize) -> Result<(), Error> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Length {
            input,
            reference: "logprobs",
            expected,
            actual,
        })
    }
}

/// Reads a `[k]` tensor back to the host as `f32`.
pub(crate) fn read(tensor: &'static str, t: Tensor<1>) -> Result<Vec<f32>, Error> {
    t.try_to_vec_as::<f32>()
        .map_err(|source| Error::Read { tensor, source })
}

#[cfg(test)]
pub(crate) mod tests;
