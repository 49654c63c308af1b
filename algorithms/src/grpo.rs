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
use crate::gspo::sequence_log_ratio;
use crate::kl::{KlEstimator, kl_estimate};
use crate::units::Units;

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

/// How a micro-batch's per-token losses become its share of the step loss (see [`grpo_loss`]):
/// `scale · Σ_t l_t`, or, with `per_row` (`grpo`), `scale · Σ_i mean_{t∈i} l_t`.
struct Aggregation {
    /// `1/T` (`bnpo`, `dapo`), `1/(S · max_completion_length)` (`dr_grpo`), `1/S` (`grpo`).
    scale: f64,
    /// `grpo`: the rows of the micro-batch's tokens.
    per_row: Option<Units<usize>>,
}

impl Aggregation {
    fn new(
        loss_type: LossType,
        rows: &[usize],
        step: &StepNormalizers,
        device: &burn::tensor::Device,
    ) -> Result<Self, Error> {
        let sequences_in_batch = rows.iter().collect::<std::collections::BTreeSet<_>>().len();
        for (field, value, in_batch) in [
            ("num_tokens", step.num_tokens, rows.len()),
            ("num_sequences", step.num_sequences, sequences_in_batch),
        ] {
            if value < in_batch {
                return Err(Error::Normalizer {
                    field,
                    value,
                    in_batch,
                });
            }
        }
        let sequences = step.num_sequences as f64;
        Ok(match loss_type {
            LossType::Grpo => Self {
                scale: 1.0 / sequences,
                per_row: Some(Units::new(rows, device)),
            },
            LossType::Bnpo | LossType::Dapo => Self {
                scale: 1.0 / step.num_tokens as f64,
                per_row: None,
            },
            LossType::DrGrpo => {
                if step.max_completion_length == 0 {
                    return Err(Error::Normalizer {
                        field: "max_completion_length",
                        value: 0,
                        in_batch: 1,
                    });
                }
                Self {
                    scale: 1.0 / (sequences * step.max_completion_length as f64),
                    per_row: None,
                }
            }
        })
    }

    /// The aggregated `[1]` loss of per-token losses `[n]`.
    fn apply(&self, per_token: Tensor<1>) -> Tensor<1> {
        match &self.per_row {
            None => per_token.sum() * self.scale,
            Some(rows) => rows.means(per_token).sum() * self.scale,
        }
    }
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
pub(crate) mod tests {
    use burn::tensor::Device;
    use kaizen_core::{FinishReason, Segment, WeightsVersion};

    use super::*;

    /// A `[n]` tensor of `values` (shared with the other modules' tests).
    pub(crate) fn tensor(values: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    /// The values of a `[n]` tensor.
    pub(crate) fn values(t: Tensor<1>) -> Vec<f32> {
        t.try_to_vec_as::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= tol, "{got:?} vs {want:?}");
        }
    }

    // The hand-computed batch: 3 sequences of 3, 1 and 2 tokens, ε = 0.2, ε_high = 0.28.
    //   ratio      1     1.5    0.5    0.6    0.7    1.25
    //   A          1     1      1     −2      0.5    0.5
    //   surr1      1     1.5    0.5   −1.2    0.35   0.625
    //   surr2      1     1.28   0.8   −1.6    0.4    0.625
    //   pg        −1    −1.28  −0.5    1.6   −0.35  −0.625
    //   clipped          high          low
    const OLD: f32 = -1.0;
    const ROWS: [usize; 6] = [0, 0, 0, 1, 2, 2];
    const RATIOS: [f32; 6] = [1.0, 1.5, 0.5, 0.6, 0.7, 1.25];
    const ADV: [f32; 6] = [1.0, 1.0, 1.0, -2.0, 0.5, 0.5];
    const STEP: StepNormalizers = StepNormalizers {
        num_sequences: 3,
        num_tokens: 6,
        max_completion_length: 4,
    };

    fn dapo_clip_higher(loss_type: LossType) -> GrpoLossConfig {
        GrpoLossConfig {
            epsilon_high: Some(0.28),
            loss_type,
            ..GrpoLossConfig::default()
        }
    }

    fn hand_batch<'a>(logprobs: Tensor<1>, device: &Device) -> GrpoBatch<'a> {
        GrpoBatch {
            logprobs,
            old_logprobs: Some(tensor(&[OLD; 6], device)),
            behavior_logprobs: None,
            advantages: tensor(&ADV, device),
            ref_logprobs: None,
            entropy: None,
            rows: &ROWS,
            turns: None,
        }
    }

    fn hand_logprobs() -> Vec<f32> {
        RATIOS.iter().map(|r| OLD + r.ln()).collect()
    }

    #[test]
    fn each_loss_type_matches_hand_computed_values() {
        let device = Device::flex();
        // Sequence sums −2.78, 1.6, −0.975 (means −0.92667, 1.6, −0.4875); total −2.155.
        for (loss_type, want) in [
            (LossType::Grpo, (-2.78 / 3.0 + 1.6 - 0.975 / 2.0) / 3.0),
            (LossType::Bnpo, -2.155 / 6.0),
            (LossType::Dapo, -2.155 / 6.0),
            (LossType::DrGrpo, -2.155 / (3.0 * 4.0)),
        ] {
            let batch = hand_batch(tensor(&hand_logprobs(), &device), &device);
            let out = grpo_loss(batch, &STEP, &dapo_clip_higher(loss_type)).unwrap();
            let loss = values(out.loss)[0];
            assert!(
                (loss - want).abs() < 1e-6,
                "{loss_type:?}: {loss} vs {want}"
            );
            let m = out.metrics;
            assert_eq!(m.loss, loss);
            assert_eq!(m.pg_loss, loss, "no KL, no entropy: loss is the pg loss");
            assert_close(
                &[m.clip_frac_low, m.clip_frac_high, m.clip_frac],
                &[1.0 / 6.0, 1.0 / 6.0, 2.0 / 6.0],
                1e-7,
            );
            assert_close(&[m.ratio_mean, m.ratio_max], &[0.925, 1.5], 1e-6);
            let k3: f32 = RATIOS.iter().map(|r| r - 1.0 - r.ln()).sum::<f32>() / 6.0;
            assert!((m.approx_kl - k3).abs() < 1e-6);
            assert_eq!(
                (m.kl, m.entropy, m.tis_weight_mean, m.logprob_gap_mean),
                (None, None, None, None)
            );
            assert_eq!(m.num_tokens, 6);
        }
    }

    #[test]
    fn clipped_tokens_get_no_gradient() {
        let device = Device::flex().autodiff();
        let logprobs = tensor(&hand_logprobs(), &device).require_grad();
        let out = grpo_loss(
            hand_batch(logprobs.clone(), &device),
            &STEP,
            &dapo_clip_higher(LossType::Dapo),
        )
        .unwrap();
        let grads = out.loss.backward();
        let g = values(logprobs.grad(&grads).unwrap());
        // d/dlogp of −ratio·A/T is −A·ratio/T where unclipped, 0 where clipped: token 1
        // (ratio 1.5 > 1.28, A > 0) and token 3 (ratio 0.6 < 0.8, A < 0).
        let want = [-1.0 / 6.0, 0.0, -0.5 / 6.0, 0.0, -0.35 / 6.0, -0.625 / 6.0];
        assert_close(&g, &want, 1e-6);
        assert_eq!(g[1], 0.0);
        assert_eq!(g[3], 0.0);
    }

    /// Guards against the clip acting on the forward value only (issue 14.3): a trained token
    /// with a huge log-ratio gave a finite loss but a NaN gradient (`0 · exp(∞)`) with a
    /// positive advantage, and an infinite loss with a negative one. Now both are finite, and
    /// the gradient is exactly 0 where the clip (or the log-ratio bound) is active.
    #[test]
    fn huge_log_ratios_give_finite_losses_and_zero_gradients() {
        let device = Device::flex().autodiff();
        let step = StepNormalizers {
            num_sequences: 4,
            num_tokens: 4,
            max_completion_length: 8,
        };
        // log-ratios 1000 (A > 0), 1000 (A < 0), −1000 (A < 0), −1000 (A > 0).
        let old = [-1000.5f32, -1000.5, -0.5, -0.5];
        let logp = [-0.5f32, -0.5, -1000.5, -1000.5];
        let adv = [1.0f32, -1.0, -1.0, 1.0];
        let run = |config: &GrpoLossConfig| {
            let logprobs = tensor(&logp, &device).require_grad();
            let batch = GrpoBatch {
                logprobs: logprobs.clone(),
                old_logprobs: Some(tensor(&old, &device)),
                behavior_logprobs: Some(tensor(&old, &device)),
                advantages: tensor(&adv, &device),
                ref_logprobs: Some(tensor(&old, &device)),
                entropy: None,
                rows: &[0, 1, 2, 3],
                turns: None,
            };
            let out = grpo_loss(batch, &step, config).unwrap();
            let loss = values(out.loss.clone())[0];
            let g = values(logprobs.grad(&out.loss.backward()).unwrap());
            (loss, g, out.metrics)
        };
        for loss_type in [LossType::Grpo, LossType::Dapo] {
            let config = GrpoLossConfig {
                loss_type,
                tis_cap: Some(2.0),
                ..GrpoLossConfig::default()
            };
            let (loss, g, m) = run(&config);
            assert!(loss.is_finite(), "{loss_type:?}: loss {loss}");
            // Token 0: ratio clipped at 1.2 (A > 0), no gradient. Token 1: A < 0, unclipped
            // PPO term −A·ratio with the ratio at its bound e^20: finite, no gradient beyond
            // the bound. Tokens 2 and 3: ratio e^−20, clipped at 0.8 for A < 0 (no gradient),
            // unclipped for A > 0 (gradient −A·ratio/T ≈ −5e−10).
            assert_eq!(&g[..3], &[0.0, 0.0, 0.0], "{loss_type:?}: {g:?}");
            assert!(g[3].is_finite() && g[3].abs() < 1e-8, "{g:?}");
            let bound = LOG_RATIO_BOUND.exp();
            let want = (-1.2 + bound + 0.8 - (-LOG_RATIO_BOUND).exp()) / 4.0;
            assert!((loss - want).abs() / want < 1e-6, "{loss} vs {want}");
            assert!(m.approx_kl.is_finite() && m.ratio_max.is_finite(), "{m:?}");
        }
        // With two-sided clipping (TRL `delta`) the negative-advantage loss is bounded by delta.
        let config = GrpoLossConfig {
            delta: Some(4.0),
            ..GrpoLossConfig::default()
        };
        let (loss, g, _) = run(&config);
        assert!(g.iter().all(|x| x.is_finite()));
        assert_eq!(g[1], 0.0);
        let want = (-1.2 + 4.0 + 0.8 - (-LOG_RATIO_BOUND).exp()) / 4.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        // With the KL to a far reference as well (β > 0): finite loss and gradient.
        let config = GrpoLossConfig {
            beta: 0.1,
            ..GrpoLossConfig::default()
        };
        let (loss, g, m) = run(&config);
        assert!(
            loss.is_finite() && g.iter().all(|x| x.is_finite()),
            "{loss} {g:?}"
        );
        assert!(m.kl.unwrap().is_finite());
        let bad = GrpoLossConfig {
            delta: Some(1.1),
            ..GrpoLossConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("delta"));
    }

    #[test]
    fn ratio_outside_the_range_on_the_other_side_keeps_its_gradient() {
        // Ratio 1.5 with A < 0 and ratio 0.6 with A > 0 are not clipped: min picks surr1.
        let device = Device::flex().autodiff();
        let logprobs = tensor(&[OLD + 1.5f32.ln(), OLD + 0.6f32.ln()], &device).require_grad();
        let batch = GrpoBatch {
            logprobs: logprobs.clone(),
            old_logprobs: Some(tensor(&[OLD, OLD], &device)),
            behavior_logprobs: None,
            advantages: tensor(&[-1.0, 1.0], &device),
            ref_logprobs: None,
            entropy: None,
            rows: &[0, 1],
            turns: None,
        };
        let step = StepNormalizers {
            num_sequences: 2,
            num_tokens: 2,
            max_completion_length: 8,
        };
        let out = grpo_loss(batch, &step, &dapo_clip_higher(LossType::Dapo)).unwrap();
        assert!((values(out.loss.clone())[0] - (1.5 - 0.6) / 2.0).abs() < 1e-6);
        assert_eq!(out.metrics.clip_frac, 0.0);
        let g = values(logprobs.grad(&out.loss.backward()).unwrap());
        assert_close(&g, &[1.5 / 2.0, -0.6 / 2.0], 1e-6);
    }

    #[test]
    fn eos_token_counts_in_the_per_sequence_mean() {
        // Two completions as sampled, each ending in EOS (id 2). Every completion token is in
        // the flat list, EOS included, so a `grpo` sequence mean divides by 3 and by 2.
        let segment = |tokens: Vec<u32>, logprobs: Vec<f32>| Segment {
            agent: "solver".into(),
            thread: 0,
            prompt_tokens: vec![1, 5],
            completion_tokens: tokens,
            behavior_logprobs: logprobs,
            trainable: true,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Eos,
        };
        let segments = [
            segment(vec![7, 8, 2], vec![-0.5, -1.0, -0.1]),
            segment(vec![9, 2], vec![-2.0, -0.3]),
        ];
        let advantages = [1.0f32, -1.0];
        let mut rows = Vec::new();
        let (mut behaviour, mut adv) = (Vec::new(), Vec::new());
        for (i, s) in segments.iter().enumerate() {
            assert_eq!(s.completion_tokens.last(), Some(&2));
            rows.extend(std::iter::repeat_n(i, s.completion_tokens.len()));
            behaviour.extend(&s.behavior_logprobs);
            adv.extend(std::iter::repeat_n(
                advantages[i],
                s.completion_tokens.len(),
            ));
        }
        let device = Device::flex().autodiff();
        let logprobs = tensor(&behaviour, &device).require_grad();
        let batch = GrpoBatch {
            logprobs: logprobs.clone(),
            old_logprobs: None,
            behavior_logprobs: Some(tensor(&behaviour, &device)),
            advantages: tensor(&adv, &device),
            ref_logprobs: None,
            entropy: None,
            rows: &rows,
            turns: None,
        };
        let step = StepNormalizers {
            num_sequences: 2,
            num_tokens: 5,
            max_completion_length: 16,
        };
        let config = GrpoLossConfig {
            loss_type: LossType::Grpo,
            ..GrpoLossConfig::default()
        };
        let out = grpo_loss(batch, &step, &config).unwrap();
        // On-policy: ratio 1, L = 1/2 (−1 + 1) = 0 exactly (issue 14.5: per-token weights
        // 1/(S·|o_i|) rounded in f32 gave 4.5e-8); ∂L/∂logp_t = −A_i / (S · |o_i|).
        assert_eq!(values(out.loss.clone())[0], 0.0);
        assert_eq!(out.metrics.loss, 0.0);
        let g = values(logprobs.grad(&out.loss.backward()).unwrap());
        let (a, b) = (-1.0 / 6.0, 1.0 / 4.0);
        assert_close(&g, &[a, a, a, b, b], 1e-7);
        assert_eq!(out.metrics.logprob_gap_max, Some(0.0));
        assert_eq!(out.metrics.ratio_max, 1.0);
    }

    #[test]
    fn kl_turn_weights_scale_the_penalty_per_turn() {
        // Three tokens of one thread: two of turn 0, one of turn 1; dapo (T = 3), on-policy,
        // zero advantages, so the loss is the KL term alone: (β/T) Σ_t w(turn_t) k3_t.
        let device = Device::flex();
        let logp = [-1.0f32, -2.0, -0.5];
        let reference = [logp[0] + 0.1, logp[1] - 0.2, logp[2] + 0.3];
        let k3 = |d: f32| d.exp() - d - 1.0;
        let kl = [k3(0.1), k3(-0.2), k3(0.3)];
        let step = StepNormalizers {
            num_sequences: 1,
            num_tokens: 3,
            max_completion_length: 4,
        };
        let loss = |weights: Vec<f32>, turns: Option<&[u32]>| {
            let config = GrpoLossConfig {
                beta: 0.5,
                kl_turn_weights: weights,
                ..GrpoLossConfig::default()
            };
            let batch = GrpoBatch {
                logprobs: tensor(&logp, &device),
                old_logprobs: None,
                behavior_logprobs: None,
                advantages: tensor(&[0.0, 0.0, 0.0], &device),
                ref_logprobs: Some(tensor(&reference, &device)),
                entropy: None,
                rows: &[0, 0, 0],
                turns,
            };
            values(grpo_loss(batch, &step, &config).unwrap().loss)[0]
        };
        let turns: &[u32] = &[0, 0, 1];
        let all = 0.5 * (kl[0] + kl[1] + kl[2]) / 3.0;
        assert!((loss(vec![], Some(turns)) - all).abs() < 1e-6);
        // SCoRe stage I: the first turn only.
        let first = 0.5 * (kl[0] + kl[1]) / 3.0;
        assert!((loss(vec![1.0, 0.0], Some(turns)) - first).abs() < 1e-6);
        // The last entry applies to later turns; without turns every token is turn 0.
        assert!((loss(vec![2.0], Some(turns)) - 2.0 * all).abs() < 1e-6);
        assert!((loss(vec![1.0, 0.0], None) - all).abs() < 1e-6);
        let bad = GrpoLossConfig {
            kl_turn_weights: vec![1.0, -1.0],
            ..GrpoLossConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("kl_turn_weights")
        );
    }

    #[test]
    fn pg_turn_weights_scale_the_policy_gradient_per_turn() {
        // Three tokens of one thread (turns 0, 0, 1), on-policy, dapo (T = 3): with no KL the
        // loss is −1/T Σ_t u(turn_t) A_t and the gradient −u(turn_t) A_t / T.
        let device = Device::flex().autodiff();
        let adv = [1.0f32, -2.0, 0.5];
        let step = StepNormalizers {
            num_sequences: 1,
            num_tokens: 3,
            max_completion_length: 4,
        };
        let run = |weights: Vec<f32>| {
            let logprobs = tensor(&[-1.0, -2.0, -0.5], &device).require_grad();
            let config = GrpoLossConfig {
                pg_turn_weights: weights,
                ..GrpoLossConfig::default()
            };
            let batch = GrpoBatch {
                logprobs: logprobs.clone(),
                old_logprobs: None,
                behavior_logprobs: None,
                advantages: tensor(&adv, &device),
                ref_logprobs: None,
                entropy: None,
                rows: &[0, 0, 0],
                turns: Some(&[0, 0, 1]),
            };
            let out = grpo_loss(batch, &step, &config).unwrap();
            let loss = values(out.loss.clone())[0];
            (loss, values(logprobs.grad(&out.loss.backward()).unwrap()))
        };
        let (all, g) = run(vec![]);
        assert!((all - (-(1.0 - 2.0 + 0.5) / 3.0)).abs() < 1e-6);
        assert_close(&g, &[-1.0 / 3.0, 2.0 / 3.0, -0.5 / 3.0], 1e-6);
        // SCoRe stage I: the first attempt gets no policy gradient.
        let (second, g) = run(vec![0.0, 1.0]);
        assert!((second - (-0.5 / 3.0)).abs() < 1e-6);
        assert_close(&g, &[0.0, 0.0, -0.5 / 3.0], 1e-6);
        let bad = GrpoLossConfig {
            pg_turn_weights: vec![f32::NAN],
            ..GrpoLossConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("pg_turn_weights")
        );
    }

    #[test]
    fn kl_penalty_entropy_bonus_and_truncated_importance_weights() {
        // One sequence of 2 tokens, dapo (T = 2). Learner-recomputed old log-probs exceed the
        // sampler's by ln 2 and ln 0.5: TIS weights min(2, 1.5) = 1.5 and 0.5.
        let device = Device::flex();
        let logp = [-1.0f32, -2.0];
        let behaviour = [logp[0] - 2f32.ln(), logp[1] - 0.5f32.ln()];
        let reference = [logp[0] + 0.1, logp[1] - 0.2];
        let config = GrpoLossConfig {
            beta: 0.5,
            entropy_coef: 0.1,
            tis_cap: Some(1.5),
            ..GrpoLossConfig::default()
        };
        let batch = GrpoBatch {
            logprobs: tensor(&logp, &device),
            old_logprobs: Some(tensor(&logp, &device)),
            behavior_logprobs: Some(tensor(&behaviour, &device)),
            advantages: tensor(&[1.0, -1.0], &device),
            ref_logprobs: Some(tensor(&reference, &device)),
            entropy: Some(tensor(&[2.0, 1.0], &device)),
            rows: &[0, 0],
            turns: None,
        };
        let step = StepNormalizers {
            num_sequences: 1,
            num_tokens: 2,
            max_completion_length: 4,
        };
        let out = grpo_loss(batch, &step, &config).unwrap();
        // pg = [−1 · 1.5, +1 · 0.5]; k3(log r) = e^{log r} − log r − 1 with log r = 0.1, −0.2.
        let pg_loss = (-1.5 + 0.5) / 2.0;
        let kl = ((0.1f32.exp() - 1.1) + ((-0.2f32).exp() - 0.8)) / 2.0;
        let want = pg_loss + 0.5 * kl - 0.1 * 1.5;
        let m = out.metrics;
        assert!((values(out.loss)[0] - want).abs() < 1e-6);
        assert!((m.loss - want).abs() < 1e-6);
        assert!((m.pg_loss - pg_loss).abs() < 1e-6);
        assert!((m.kl.unwrap() - kl).abs() < 1e-6);
        assert_eq!(m.entropy, Some(1.5));
        assert!((m.tis_weight_mean.unwrap() - 1.0).abs() < 1e-6);
        assert!((m.logprob_gap_mean.unwrap() - 2f32.ln()).abs() < 1e-6);
        assert!((m.logprob_gap_max.unwrap() - 2f32.ln()).abs() < 1e-6);
        assert_eq!(m.approx_kl, 0.0);
    }

    /// A two-parameter "policy": `logp_t = x_t · θ − 1`, entropy `H_t = exp(y_t · θ)`.
    struct Toy {
        x: Vec<[f32; 2]>,
        y: Vec<[f32; 2]>,
        old: Vec<f32>,
        behaviour: Vec<f32>,
        reference: Vec<f32>,
        advantages: Vec<f32>,
        rows: Vec<usize>,
    }

    const THETA: [f32; 2] = [0.3, -0.2];

    impl Toy {
        fn new() -> Self {
            let x = vec![
                [1.0, 2.0],
                [-1.5, 0.5],
                [2.5, -1.0],
                [0.2, 0.1],
                [-2.0, -2.0],
                [3.0, 1.0],
                [0.5, -3.0],
                [-1.0, 1.5],
                [2.0, 2.5],
            ];
            let y: Vec<[f32; 2]> = x.iter().map(|[a, b]| [0.3 * b, -0.2 * a]).collect();
            let theta_old = [0.22, -0.05];
            let old: Vec<f32> = x
                .iter()
                .map(|[a, b]| a * theta_old[0] + b * theta_old[1] - 1.0)
                .collect();
            let shift = [0.3, -0.4, 0.05, 0.0, 0.2, -0.1, 0.6, -0.25, 0.1];
            let behaviour = old.iter().zip(shift).map(|(o, s)| o - s).collect();
            let reference = old
                .iter()
                .zip(shift)
                .map(|(o, s)| o + 0.5 * s - 0.1)
                .collect();
            let rows = vec![0, 0, 0, 0, 1, 1, 2, 3, 3];
            let per_row = [1.0, -0.5, 0.8, -1.2];
            let advantages = rows.iter().map(|&r| per_row[r]).collect();
            Self {
                x,
                y,
                old,
                behaviour,
                reference,
                advantages,
                rows,
            }
        }

        /// Loss, gradient with respect to θ and metrics, summed over the micro-batches between
        /// consecutive `cuts` (token indices).
        fn run(&self, cuts: &[usize], config: &GrpoLossConfig) -> (f32, Vec<f32>, GrpoMetrics) {
            let device = Device::flex().autodiff();
            let theta = tensor(&THETA, &device).require_grad();
            let step = StepNormalizers {
                num_sequences: 4,
                num_tokens: self.rows.len(),
                max_completion_length: 5,
            };
            let linear = |f: &[[f32; 2]]| {
                let m = f.len();
                let flat: Vec<f32> = f.iter().flatten().copied().collect();
                let f = Tensor::<2>::from_data(TensorData::new(flat, [m, 2]), &device);
                f.matmul(theta.clone().reshape([2, 1])).reshape([m])
            };
            let (mut loss, mut grad, mut metrics) = (0.0f32, vec![0.0f32; 2], None::<GrpoMetrics>);
            for cut in cuts.windows(2) {
                let r = cut[0]..cut[1];
                let batch = GrpoBatch {
                    logprobs: linear(&self.x[r.clone()]) - 1.0,
                    old_logprobs: Some(tensor(&self.old[r.clone()], &device)),
                    behavior_logprobs: Some(tensor(&self.behaviour[r.clone()], &device)),
                    advantages: tensor(&self.advantages[r.clone()], &device),
                    ref_logprobs: Some(tensor(&self.reference[r.clone()], &device)),
                    entropy: Some(linear(&self.y[r.clone()]).exp()),
                    rows: &self.rows[r],
                    turns: None,
                };
                let out = grpo_loss(batch, &step, config).unwrap();
                loss += values(out.loss.clone())[0];
                let g = values(theta.grad(&out.loss.backward()).unwrap());
                grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                metrics = Some(match metrics {
                    Some(m) => m.merge(out.metrics),
                    None => out.metrics,
                });
            }
            (loss, grad, metrics.unwrap())
        }
    }

    #[test]
    fn gradient_accumulation_split_does_not_change_loss_or_gradient() {
        let toy = Toy::new();
        let splits: [&[usize]; 3] = [&[0, 9], &[0, 4, 9], &[0, 4, 7, 9]];
        for loss_type in [
            LossType::Grpo,
            LossType::Bnpo,
            LossType::Dapo,
            LossType::DrGrpo,
        ] {
            for kl_estimator in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
                let config = GrpoLossConfig {
                    epsilon_high: Some(0.28),
                    beta: 0.04,
                    kl_estimator,
                    loss_type,
                    entropy_coef: 0.01,
                    tis_cap: Some(1.2),
                    ..GrpoLossConfig::default()
                };
                let (loss, grad, metrics) = toy.run(splits[0], &config);
                assert!(
                    metrics.clip_frac > 0.0,
                    "the toy batch must exercise clipping"
                );
                assert!(grad.iter().all(|g| g.abs() > 1e-3), "{grad:?}");
                for cuts in &splits[1..] {
                    let (l, g, m) = toy.run(cuts, &config);
                    assert!(
                        (l - loss).abs() < 1e-6,
                        "{loss_type:?} {cuts:?}: {l} vs {loss}"
                    );
                    assert_close(&g, &grad, 1e-6);
                    assert_eq!(m.num_tokens, metrics.num_tokens);
                    assert_close(
                        &[
                            m.pg_loss,
                            m.clip_frac,
                            m.ratio_mean,
                            m.ratio_max,
                            m.approx_kl,
                        ],
                        &[
                            metrics.pg_loss,
                            metrics.clip_frac,
                            metrics.ratio_mean,
                            metrics.ratio_max,
                            metrics.approx_kl,
                        ],
                        1e-6,
                    );
                    assert_close(
                        &[
                            m.kl.unwrap(),
                            m.entropy.unwrap(),
                            m.tis_weight_mean.unwrap(),
                            m.logprob_gap_max.unwrap(),
                        ],
                        &[
                            metrics.kl.unwrap(),
                            metrics.entropy.unwrap(),
                            metrics.tis_weight_mean.unwrap(),
                            metrics.logprob_gap_max.unwrap(),
                        ],
                        1e-6,
                    );
                }
            }
        }
    }

    #[test]
    fn inconsistent_inputs_are_errors_naming_them() {
        let device = Device::flex();
        let ok = || hand_batch(tensor(&hand_logprobs(), &device), &device);
        let config = GrpoLossConfig::default();

        let mut short = ok();
        short.advantages = tensor(&ADV[..5], &device);
        let err = grpo_loss(short, &STEP, &config).unwrap_err();
        assert!(err.to_string().contains("`advantages` has 5"), "{err}");

        let mut rows = ok();
        rows.rows = &ROWS[..4];
        assert!(matches!(
            grpo_loss(rows, &STEP, &config),
            Err(Error::Length { input: "rows", .. })
        ));

        let empty = GrpoBatch {
            logprobs: tensor(&[], &device),
            old_logprobs: None,
            behavior_logprobs: None,
            advantages: tensor(&[], &device),
            ref_logprobs: None,
            entropy: None,
            rows: &[],
            turns: None,
        };
        assert!(matches!(
            grpo_loss(empty, &STEP, &config),
            Err(Error::NoTokens)
        ));

        let kl = GrpoLossConfig {
            beta: 0.1,
            ..config.clone()
        };
        let err = grpo_loss(ok(), &STEP, &kl).unwrap_err();
        assert!(
            err.to_string().contains("`ref_logprobs` is required"),
            "{err}"
        );
        let bonus = GrpoLossConfig {
            entropy_coef: 0.1,
            ..config.clone()
        };
        assert!(matches!(
            grpo_loss(ok(), &STEP, &bonus),
            Err(Error::MissingInput {
                input: "entropy",
                ..
            })
        ));

        let micro_step = StepNormalizers {
            num_tokens: 4,
            ..STEP
        };
        let err = grpo_loss(ok(), &micro_step, &config).unwrap_err();
        assert!(err.to_string().contains("`num_tokens` = 4"), "{err}");
        let two_rows = StepNormalizers {
            num_sequences: 2,
            ..STEP
        };
        assert!(matches!(
            grpo_loss(ok(), &two_rows, &config),
            Err(Error::Normalizer {
                field: "num_sequences",
                in_batch: 3,
                ..
            })
        ));
        let dr = GrpoLossConfig {
            loss_type: LossType::DrGrpo,
            ..config.clone()
        };
        let no_length = StepNormalizers {
            max_completion_length: 0,
            ..STEP
        };
        assert!(matches!(
            grpo_loss(ok(), &no_length, &dr),
            Err(Error::Normalizer {
                field: "max_completion_length",
                ..
            })
        ));

        let bad = GrpoLossConfig {
            epsilon: -0.1,
            ..config.clone()
        };
        let err = grpo_loss(ok(), &STEP, &bad).unwrap_err();
        assert!(err.to_string().contains("`epsilon` = -0.1"), "{err}");
        let bad = GrpoLossConfig {
            tis_cap: Some(0.0),
            ..config.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(Error::Config {
                field: "tis_cap",
                ..
            })
        ));
    }

    #[test]
    fn config_reads_trl_names_from_toml() {
        let c: GrpoLossConfig = toml::from_str(
            "epsilon = 0.2\nepsilon_high = 0.28\nbeta = 0.04\nkl_estimator = \"k1\"\n\
             loss_type = \"dr_grpo\"\nentropy_coef = 0.001\ntis_cap = 2.0\ndelta = 4.0\n\
             importance_sampling_level = \"sequence\"",
        )
        .unwrap();
        assert_eq!(c.epsilon_high(), 0.28);
        assert_eq!(c.kl_estimator, KlEstimator::K1);
        assert_eq!(c.loss_type, LossType::DrGrpo);
        assert_eq!(c.tis_cap, Some(2.0));
        assert_eq!(c.delta, Some(4.0));
        assert_eq!(
            c.importance_sampling_level,
            ImportanceSamplingLevel::Sequence
        );
        let d: GrpoLossConfig = toml::from_str("").unwrap();
        assert_eq!(d, GrpoLossConfig::default());
        assert_eq!(d.epsilon_high(), 0.2);
        assert_eq!(d.loss_type, LossType::Dapo);
        let err = toml::from_str::<GrpoLossConfig>("clip_eps = 0.2").unwrap_err();
        assert!(err.to_string().contains("clip_eps"), "{err}");
    }
}
