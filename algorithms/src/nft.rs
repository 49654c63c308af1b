//! NFT: negative-aware fine-tuning, a supervised loss that learns from the policy's wrong answers
//! through an implicit negative policy.
//!
//! NFT ([Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
//! Reasoning"](https://arxiv.org/abs/2505.18116), Eq. 7; the authors' release on veRL) samples
//! answers from `π_old`, labels each correct (`r = 1`) or wrong (`r = 0`) with a verifier, and
//! maximises the likelihood of the correct ones under `π_θ` and of the wrong ones under the
//! *implicit negative policy* `π⁻ = (π_old − r̂ · π_θ) / (1 − r̂)`, where `r̂` is the question's
//! accuracy (the fraction of its group answered correctly). Per trained token `t`, with the
//! token-level likelihood ratio `R_t = π_θ(x_t) / π_old(x_t)`:
//!
//! ```text
//! R_t     = exp(clamp(log π_θ − log π_old, −B, B))          B = LOG_RATIO_BOUND = 20
//! r̂      = clamp(accuracy of the token's group, 0.02, 0.98)
//! pos_t   = −log max_v(R_t, clamp_positive)                  (= −(log π_θ − log π_old))
//! neg_t   = −log max_v((1 − r̂ · R_t) / (1 − r̂), clamp_negative)
//! l_t     = ω(r̂) · (r · pos_t + (1 − r) · neg_weight · neg_t)   + β · KL_t   (optional)
//! ω(r̂)   = 1 (normalize = "none"),  1 − r̂ ("negative_rate"),  √((1 − r̂) / r̂) ("grpo")
//! loss    = aggregation of l_t by `loss_type` (as crate::grpo_loss)
//! ```
//!
//! `max_v(x, ε)` floors the *value* at `ε` and keeps the gradient of `x` (a straight-through
//! clamp; here `−log max_v(x, ε)` is built directly, see `neg_log_floor`): the negative ratio `1 − r̂ R` reaches 0 when `π_θ` puts more than `1/r̂` times
//! `π_old`'s mass on a wrong token, and the floor keeps the log finite without cutting the
//! gradient that pushes the token down. Its gradient is bounded by `r̂ / ((1 − r̂) ε)` per unit
//! of `∇R`.
//!
//! On-policy (`R = 1`) the gradient per token is `−ω(r̂) · (r − r̂)/(1 − r̂) · ∇log π_θ` (with
//! `neg_weight = 1`): with `normalize = "negative_rate"` that is exactly Dr. GRPO's,
//! `−(r − r̂) ∇log π_θ` (tested), and with `"grpo"` it is GRPO's `(r − r̂)/σ` with the
//! population std `σ = √(r̂(1 − r̂))` (for `r̂` inside [`NFT_RATE_BOUNDS`]). Groups whose
//! answers are all right or all wrong carry no signal (their `r̂` is 0 or 1); the learner leaves
//! them out of the loss as it does GRPO's zero-signal groups.
//!
//! Names follow the NFT release (`neg_weight`, `normalize`, `clamp_negative`,
//! `clamp_positive`). `neg_weight = 0` is rejection-sampling fine-tuning (RFT) on the correct
//! answers only.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::aggregation::Aggregation;
use crate::error::check_lengths;
use crate::grpo::{LOG_RATIO_BOUND, LossType, StepNormalizers, read};
use crate::kl::{KlEstimator, kl_estimate};

/// Lower and upper bound of a group's accuracy `r̂` in the loss (the NFT release's).
pub const NFT_RATE_BOUNDS: (f32, f32) = (0.02, 0.98);

/// The prompt weight `ω(r̂)` (NFT's `normalize`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NftNormalize {
    /// `ω = 1`: every question counts the same (the release's `normalize = 0`).
    None,
    /// `ω = 1 − r̂`: Dr. GRPO's gradient on-policy (the release's default, `normalize = 1`).
    #[default]
    NegativeRate,
    /// `ω = √((1 − r̂)/r̂)`: GRPO's std-normalised gradient on-policy (`normalize = 2`).
    Grpo,
}

/// Hyper-parameters of [`nft_loss`] (the NFT release's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NftConfig {
    /// Weight of the wrong answers' term (1 = NFT; 0 = RFT, correct answers only); ≥ 0.
    pub neg_weight: f32,
    /// The prompt weight `ω(r̂)`.
    pub normalize: NftNormalize,
    /// Floor `ε` of the negative ratio `(1 − r̂R)/(1 − r̂)` (value only, the gradient passes);
    /// > 0.
    pub clamp_negative: f32,
    /// Floor of the positive ratio `R` (value only); 0 = none (`R > 0` always).
    pub clamp_positive: f32,
    /// Aggregation of per-token losses (TRL `loss_type`; the release sums tokens over a
    /// constant, as `dr_grpo`).
    pub loss_type: LossType,
    /// KL penalty coefficient to the reference (k3 estimator); 0 = none.
    pub beta: f32,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            neg_weight: 1.0,
            normalize: NftNormalize::NegativeRate,
            clamp_negative: 0.1,
            clamp_positive: 0.0,
            loss_type: LossType::DrGrpo,
            beta: 0.0,
        }
    }
}

impl NftConfig {
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
        if !(self.neg_weight.is_finite() && self.neg_weight >= 0.0) {
            return Err(bad("neg_weight", self.neg_weight, "a finite value >= 0"));
        }
        if !(self.clamp_negative.is_finite() && self.clamp_negative > 0.0) {
            return Err(bad(
                "clamp_negative",
                self.clamp_negative,
                "a finite value > 0 (the log of the negative ratio needs a floor)",
            ));
        }
        if !(self.clamp_positive.is_finite() && (0.0..1.0).contains(&self.clamp_positive)) {
            return Err(bad(
                "clamp_positive",
                self.clamp_positive,
                "a value in [0, 1)",
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(bad("beta", self.beta, "a finite value >= 0"));
        }
        Ok(())
    }
}

/// One micro-batch of trained tokens for [`nft_loss`].
///
/// # Shapes
/// Every tensor and slice is `[n]`, one entry per trained token in the same order.
#[derive(Debug, Clone)]
pub struct NftBatch<'a> {
    /// `log π_θ(x_t)`, differentiable.
    pub logprobs: Tensor<1>,
    /// `log π_old(x_t)` (the sampling policy's); `None` = exactly on-policy (`R = 1`, gradient
    /// `∇ log π_θ`).
    pub old_logprobs: Option<Tensor<1>>,
    /// `log π_ref(x_t)`; required when `beta > 0`.
    pub ref_logprobs: Option<Tensor<1>>,
    /// Correctness `r ∈ [0, 1]` of each token's answer (its turn's verdict).
    pub correct: &'a [f32],
    /// Accuracy `r̂ ∈ [0, 1]` of each token's group (clamped to [`NFT_RATE_BOUNDS`]).
    pub rate: &'a [f32],
    /// Sequence (row) of each token, for the `loss_type` aggregation.
    pub rows: &'a [usize],
}

/// What [`nft_loss`] returns.
#[derive(Debug, Clone)]
pub struct NftOutput {
    /// This micro-batch's share of the step loss, `[1]`.
    pub loss: Tensor<1>,
    /// The value of `loss`.
    pub loss_value: f32,
    /// The share of the correct answers' term.
    pub pos_loss: f32,
    /// The share of the wrong answers' term (after `neg_weight`).
    pub neg_loss: f32,
    /// Mean likelihood ratio `R`.
    pub ratio_mean: f32,
    /// Fraction of wrong-answer tokens whose negative ratio was floored at `clamp_negative`.
    pub neg_clamp_frac: f32,
    /// Mean per-token KL estimate to the reference, when given.
    pub kl: Option<f32>,
    /// Tokens in the micro-batch.
    pub num_tokens: usize,
}

/// The NFT loss of one micro-batch (module docs).
///
/// # Errors
/// [`Error::Length`] when an input is not `[n]`, [`Error::NoTokens`] for `n = 0`,
/// [`Error::Config`] for a field out of range or a correctness/accuracy outside `[0, 1]`,
/// [`Error::MissingInput`] for `beta > 0` without reference log-probs, [`Error::Normalizer`]
/// as [`crate::grpo_loss`], [`Error::Read`] when metrics cannot be read back.
pub fn nft_loss(
    batch: NftBatch<'_>,
    step: &StepNormalizers,
    config: &NftConfig,
) -> Result<NftOutput, Error> {
    config.validate()?;
    let NftBatch {
        logprobs,
        old_logprobs,
        ref_logprobs,
        correct,
        rate,
        rows,
    } = batch;
    let [n] = logprobs.dims();
    check_lengths(
        "logprobs",
        n,
        &[
            ("correct", correct.len()),
            ("rate", rate.len()),
            ("rows", rows.len()),
            (
                "old_logprobs",
                old_logprobs.as_ref().map_or(n, |t| t.dims()[0]),
            ),
            (
                "ref_logprobs",
                ref_logprobs.as_ref().map_or(n, |t| t.dims()[0]),
            ),
        ],
    )?;
    if n == 0 {
        return Err(Error::NoTokens);
    }
    for (field, values) in [("correct", correct), ("rate", rate)] {
        if let Some(&v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::Config {
                field,
                value: f64::from(v),
                expected: "a value in [0, 1] (NFT needs verdicts: 1 correct, 0 wrong)",
            });
        }
    }
    if config.beta > 0.0 && ref_logprobs.is_none() {
        return Err(Error::MissingInput {
            input: "ref_logprobs",
            reason: "`beta` > 0 (KL penalty to the reference policy)",
        });
    }
    let device = logprobs.device();
    let aggregate = Aggregation::new(config.loss_type, rows, step, &device)?;
    let floats =
        |v: Vec<f32>| Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [n]), &device);
    let (lo, hi) = NFT_RATE_BOUNDS;
    let rate: Vec<f32> = rate.iter().map(|r| r.clamp(lo, hi)).collect();
    let omega: Vec<f32> = rate
        .iter()
        .map(|&r| match config.normalize {
            NftNormalize::None => 1.0,
            NftNormalize::NegativeRate => 1.0 - r,
            NftNormalize::Grpo => ((1.0 - r) / r).sqrt(),
        })
        .collect();
    let pos_w: Vec<f32> = correct.iter().zip(&omega).map(|(c, w)| c * w).collect();
    let neg_w: Vec<f32> = correct
        .iter()
        .zip(&omega)
        .map(|(c, w)| (1.0 - c) * w * config.neg_weight)
        .collect();
    let scale: Vec<f32> = rate.iter().map(|r| r / (1.0 - r)).collect();

    let old = old_logprobs.unwrap_or_else(|| logprobs.clone().detach());
    let log_ratio = (logprobs.clone() - old.clone()).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND);
    let ratio = log_ratio.clone().exp();
    // −log max_v(R, c): with c = 0 this is −log R exactly (no exp, no log).
    let pos = if config.clamp_positive > 0.0 {
        neg_log_floor(ratio.clone(), config.clamp_positive)
    } else {
        log_ratio.neg()
    };
    // (1 − r̂R)/(1 − r̂) = 1/(1 − r̂) − r̂/(1 − r̂) · R.
    let inv: Vec<f32> = rate.iter().map(|r| 1.0 / (1.0 - r)).collect();
    let proxy = floats(inv) - ratio.clone() * floats(scale);
    let floored = proxy
        .clone()
        .detach()
        .lower_elem(config.clamp_negative)
        .float();
    let neg = neg_log_floor(proxy, config.clamp_negative);
    let pos_term = pos * floats(pos_w);
    let neg_term = neg * floats(neg_w.clone());
    let kl = ref_logprobs.map(|r| kl_estimate(logprobs.clone(), r, KlEstimator::K3));
    let per_token = match &kl {
        Some(kl) if config.beta > 0.0 => {
            pos_term.clone() + neg_term.clone() + kl.clone() * config.beta
        }
        _ => pos_term.clone() + neg_term.clone(),
    };
    let loss = aggregate.apply(per_token);

    let negatives = neg_w.iter().filter(|&&w| w > 0.0).count();
    let neg_mask = floats(neg_w.iter().map(|&w| f32::from(w > 0.0)).collect());
    let mean = |v: &[f32]| (v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64) as f32;
    Ok(NftOutput {
        loss_value: read("loss", loss.clone().detach())?[0],
        pos_loss: read("pos_loss", aggregate.apply(pos_term.detach()))?[0],
        neg_loss: read("neg_loss", aggregate.apply(neg_term.detach()))?[0],
        ratio_mean: mean(&read("ratio", ratio.detach())?),
        neg_clamp_frac: if negatives == 0 {
            0.0
        } else {
            read("neg_clamp", (floored * neg_mask).sum())?[0] / negatives as f32
        },
        kl: kl
            .map(|k| read("kl", k.detach()))
            .transpose()?
            .map(|k| mean(&k)),
        num_tokens: n,
        loss,
    })
}

/// `−log max_v(x, floor)`: in value `−ln max(x, floor)`, in gradient `−∇x / max(x, floor)` (the
/// log of NFT's gradient-preserving clamp). Built as `−ln m + (−(x − sg(x)) / m)` with
/// `m = sg(max(x, floor))`: the second term is exactly 0 in value, so no rounding of
/// `x + (floor − x)` can turn the floor into 0 when `|x|` is huge.
fn neg_log_floor(x: Tensor<1>, floor: f32) -> Tensor<1> {
    let m = x.clone().clamp_min(floor).detach();
    let grad_only = (x.clone() - x.detach()) / m.clone();
    m.log().neg() - grad_only
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};

    /// NFT on tokens with log-probs `lp` (against `old`; on-policy when `None`), one token per
    /// row, normalisers of exactly these tokens: the output and the gradient on `lp`.
    fn run(
        lp: &[f32],
        old: Option<&[f32]>,
        correct: &[f32],
        rate: &[f32],
        config: &NftConfig,
    ) -> (NftOutput, Vec<f32>) {
        let device = Device::flex().autodiff();
        let logprobs = tensor(lp, &device).require_grad();
        let rows: Vec<usize> = (0..lp.len()).collect();
        let step = StepNormalizers {
            num_sequences: lp.len(),
            num_tokens: lp.len(),
            max_completion_length: 1,
        };
        let out = nft_loss(
            NftBatch {
                logprobs: logprobs.clone(),
                old_logprobs: old.map(|o| tensor(o, &device)),
                ref_logprobs: None,
                correct,
                rate,
                rows: &rows,
            },
            &step,
            config,
        )
        .unwrap();
        let g = values(logprobs.grad(&out.loss.backward()).unwrap());
        (out, g)
    }

    /// On-policy with `normalize = "negative_rate"` and `loss_type = "dapo"`, NFT's gradient is
    /// Dr. GRPO's: `−(r − r̂)/T` per token. A group of four answers, two right (`r̂ = 0.5`), one
    /// token each: gradients `−0.5/4, +0.5/4, +0.5/4, −0.5/4`.
    #[test]
    fn on_policy_gradient_is_dr_grpo() {
        let config = NftConfig {
            loss_type: LossType::Dapo,
            ..NftConfig::default()
        };
        let (out, g) = run(
            &[-1.0, -2.0, -0.5, -3.0],
            None,
            &[1.0, 0.0, 0.0, 1.0],
            &[0.5; 4],
            &config,
        );
        let want = [-0.125f32, 0.125, 0.125, -0.125];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        // On-policy both terms are exactly 0 in value (−log 1).
        assert!(out.loss_value.abs() < 1e-7 && out.ratio_mean == 1.0);
        assert_eq!(out.neg_clamp_frac, 0.0);
    }

    /// Off-policy, hand-computed: r̂ = 0.25, ω = 1 ("none"), one wrong token with
    /// R = e^0.5 ≈ 1.6487: proxy = (1 − 0.25·1.6487)/0.75 = 0.78377, neg = −ln 0.78377 = 0.24365;
    /// d neg / d log π = r̂ R / ((1 − r̂) · proxy) = 0.41218/(0.75·0.78377) = 0.70120.
    /// A right token with R = e^−0.2: pos = 0.2, gradient −1. Sum aggregation over 1 sequence
    /// each (dr_grpo with S = 2, L = 1: weight 1/2).
    #[test]
    fn off_policy_values_and_gradients_match_hand_computation() {
        let config = NftConfig {
            normalize: NftNormalize::None,
            ..NftConfig::default()
        };
        let (out, g) = run(
            &[-1.0, -1.0],
            Some(&[-1.5, -0.8]),
            &[0.0, 1.0],
            &[0.25, 0.25],
            &config,
        );
        let r = 0.5f64.exp();
        let proxy = (1.0 - 0.25 * r) / 0.75;
        let neg = -proxy.ln();
        let d_neg = 0.25 * r / (0.75 * proxy);
        assert!((f64::from(out.loss_value) - (neg + 0.2) / 2.0).abs() < 1e-5);
        assert!((f64::from(g[0]) - d_neg / 2.0).abs() < 1e-5, "{g:?}");
        assert!((f64::from(g[1]) + 0.5).abs() < 1e-6, "{g:?}");
    }

    /// A wrong token the policy now strongly prefers (`R` far past `1/r̂`): the negative ratio is
    /// negative, its value is floored at `clamp_negative` (finite loss), and the gradient still
    /// pushes the token down (positive gradient on its log-prob), finite. Past the log-ratio's
    /// bound (20) the clamp passes no gradient; inside it (log-ratio 10) it does.
    #[test]
    fn the_negative_ratio_floor_keeps_the_loss_finite_and_the_gradient() {
        let config = NftConfig::default();
        let (out, g) = run(&[0.0], Some(&[-40.0]), &[0.0], &[0.5], &config);
        assert!(out.loss_value.is_finite() && g[0].is_finite(), "{g:?}");
        assert_eq!(out.neg_clamp_frac, 1.0);
        let (out, g) = run(&[-30.0], Some(&[-40.0]), &[0.0], &[0.5], &config);
        assert!(
            out.loss_value.is_finite() && g[0] > 0.0 && g[0].is_finite(),
            "{g:?}"
        );
    }

    #[test]
    fn rft_ignores_wrong_answers_and_bad_inputs_are_named() {
        // neg_weight = 0: the wrong token gets no gradient.
        let config = NftConfig {
            neg_weight: 0.0,
            loss_type: LossType::Dapo,
            ..NftConfig::default()
        };
        let (_, g) = run(&[-1.0, -1.0], None, &[1.0, 0.0], &[0.5, 0.5], &config);
        assert_eq!(g[1], 0.0);
        assert!(g[0] < 0.0);
        let device = Device::flex();
        let err = nft_loss(
            NftBatch {
                logprobs: tensor(&[-1.0], &device),
                old_logprobs: None,
                ref_logprobs: None,
                correct: &[2.0],
                rate: &[0.5],
                rows: &[0],
            },
            &StepNormalizers {
                num_sequences: 1,
                num_tokens: 1,
                max_completion_length: 1,
            },
            &NftConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`correct`"), "{err}");
        let bad = NftConfig {
            clamp_negative: 0.0,
            ..NftConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("clamp_negative")
        );
        assert!(toml::from_str::<NftConfig>("neg_weight = 0.5\nnormalize = \"grpo\"").is_ok());
        assert!(toml::from_str::<NftConfig>("negative_weight = 0.5").is_err());
    }
}
