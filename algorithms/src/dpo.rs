//! Preference losses on pairs of the policy's own samples: DPO and IPO.
//!
//! DPO ([Rafailov et al. 2023](https://arxiv.org/abs/2305.18290), Eq. 7) trains on pairs of
//! responses to one prompt, a chosen `y_w` and a rejected `y_l`, without a reward model: with the
//! implicit reward `r(y) = β · (log π_θ(y) − log π_ref(y))` (sequence log-probs, sums over the
//! response's tokens),
//!
//! ```text
//! h      = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))
//! sigmoid: L = −log σ(β·h)  = softplus(−β·h)                       (DPO)
//! ipo:     L = (h − 1/(2β))²                                        (IPO, Azar et al. 2023)
//! loss   = 1/P · Σ_pairs L                                          P = pairs in the step
//! ```
//!
//! IPO ([Azar et al. 2023](https://arxiv.org/abs/2310.12036), Eq. 17) regresses the margin to
//! `1/(2β)` instead of pushing it to infinity, which keeps the policy near the reference when
//! the preferences are deterministic (as a verifier's are). `−log σ` is burn's stable
//! log-sigmoid: finite for any margin, no `exp` of an unbounded argument. `h` uses sequence
//! sums for both losses; TRL's `ipo` divides each response's log-probs by its length first (a
//! departure, kept so that both losses see the same margin).
//!
//! Self-improvement gets its pairs online: [`group_pairs`] pairs the best and the worst sample
//! of each GRPO group (a verifier's or the model's own judgement), so no one writes preference
//! data. Names follow TRL's `DPOConfig` (`beta`, `loss_type` `"sigmoid"` / `"ipo"`) and its
//! logged metrics (`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
//! `rewards/margins`).

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::advantages::group_members;
use crate::error::check_lengths;
use crate::grpo::read;
use crate::units::Units;

/// Which preference loss (TRL `loss_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferenceLoss {
    /// DPO: `−log σ(β·h)`.
    #[default]
    Sigmoid,
    /// IPO: `(h − 1/(2β))²`.
    Ipo,
}

/// Hyper-parameters of [`dpo_loss`] (TRL `DPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// β: the strength of the implicit KL to the reference (TRL default 0.1); > 0.
    pub beta: f32,
    /// `sigmoid` (DPO, default) or `ipo`.
    pub loss_type: PreferenceLoss,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: PreferenceLoss::Sigmoid,
        }
    }
}

/// One micro-batch of preference pairs over flat trained tokens.
///
/// # Shapes
/// `logprobs` (differentiable) and `ref_logprobs`: `[n]`; `rows.len() == n`; each pair names
/// the rows of its chosen and rejected responses (rows present in `rows`).
#[derive(Debug, Clone)]
pub struct PreferenceBatch<'a> {
    /// `log π_θ(x_t)` of every trained token.
    pub logprobs: Tensor<1>,
    /// `log π_ref(x_t)` of every trained token.
    pub ref_logprobs: Tensor<1>,
    /// The row (response) of each token.
    pub rows: &'a [usize],
    /// `(chosen row, rejected row)` pairs.
    pub pairs: &'a [(usize, usize)],
}

/// What [`dpo_loss`] returns: the loss and TRL's diagnostics (means over this micro-batch's
/// pairs).
#[derive(Debug, Clone)]
pub struct DpoOutput {
    /// This micro-batch's share of the step loss, `[1]`.
    pub loss: Tensor<1>,
    /// The value of `loss`.
    pub loss_value: f32,
    /// Mean implicit reward of the chosen responses, `β · (log π_θ − log π_ref)(y_w)`.
    pub rewards_chosen: f32,
    /// Mean implicit reward of the rejected responses.
    pub rewards_rejected: f32,
    /// Fraction of pairs whose chosen response has the larger implicit reward.
    pub rewards_accuracies: f32,
    /// Mean of `rewards_chosen − rewards_rejected` per pair.
    pub rewards_margins: f32,
}

/// The DPO / IPO loss of a micro-batch (module docs), divided by `num_pairs`, the pairs of the
/// whole optimizer step (so micro-batch losses add up to the step's).
///
/// # Errors
/// [`Error::Length`] when `ref_logprobs` or `rows` is not `[n]`, [`Error::NoTokens`] without
/// pairs, [`Error::MissingInput`] when a pair names a row without tokens,
/// [`Error::Normalizer`] when `num_pairs` is smaller than the micro-batch's pairs,
/// [`Error::Config`] for `beta ≤ 0`, [`Error::Read`] when metrics cannot be read back.
pub fn dpo_loss(
    batch: PreferenceBatch<'_>,
    num_pairs: usize,
    config: &DpoConfig,
) -> Result<DpoOutput, Error> {
    let PreferenceBatch {
        logprobs,
        ref_logprobs,
        rows,
        pairs,
    } = batch;
    let [n] = logprobs.dims();
    check_lengths(
        "logprobs",
        n,
        &[
            ("ref_logprobs", ref_logprobs.dims()[0]),
            ("rows", rows.len()),
        ],
    )?;
    if !(config.beta.is_finite() && config.beta > 0.0) {
        return Err(Error::Config {
            field: "beta",
            value: f64::from(config.beta),
            expected: "a finite value > 0",
        });
    }
    if pairs.is_empty() {
        return Err(Error::NoTokens);
    }
    if num_pairs < pairs.len() {
        return Err(Error::Normalizer {
            field: "num_pairs",
            value: num_pairs,
            in_batch: pairs.len(),
        });
    }
    let device = logprobs.device();
    let responses = Units::new(rows, &device);
    let index = |row: usize| {
        responses.id(&row).ok_or(Error::MissingInput {
            input: "rows",
            reason: "a preference pair names a response without trained tokens",
        })
    };
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for &(w, l) in pairs {
        chosen.push(index(w)?);
        rejected.push(index(l)?);
    }
    let p = pairs.len();
    // Σ_t (log π_θ − log π_ref) per response: β times it is the implicit reward.
    let log_ratio = responses.sums(logprobs - ref_logprobs);
    let pick = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [p]), &device);
    let chosen = log_ratio.clone().select(0, pick(chosen));
    let rejected = log_ratio.select(0, pick(rejected));
    let h = chosen.clone() - rejected.clone();
    let beta = f64::from(config.beta);
    let per_pair = match config.loss_type {
        // −log σ(β·h) with burn's stable log-sigmoid (finite for any margin, and its own
        // backward σ(−β·h)·β, right at h = 0 too).
        PreferenceLoss::Sigmoid => burn::tensor::activation::log_sigmoid(h.clone() * beta).neg(),
        PreferenceLoss::Ipo => (h.clone() - 1.0 / (2.0 * beta)).square(),
    };
    let loss = per_pair.sum() / num_pairs as f64;
    let chosen = read("rewards/chosen", (chosen * beta).detach())?;
    let rejected = read("rewards/rejected", (rejected * beta).detach())?;
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() as f32 / p as f32;
    let margins: Vec<f32> = chosen.iter().zip(&rejected).map(|(c, r)| c - r).collect();
    Ok(DpoOutput {
        loss_value: read("loss", loss.clone().detach())?[0],
        rewards_chosen: mean(&chosen),
        rewards_rejected: mean(&rejected),
        rewards_accuracies: margins.iter().filter(|&&m| m > 0.0).count() as f32 / p as f32,
        rewards_margins: mean(&margins),
        loss,
    })
}

/// Online preference pairs from groups of samples: for each group (`groups[i]` of sample `i`)
/// whose rewards are not all equal, the sample with the highest reward is chosen and the one
/// with the lowest rejected (the first of each on ties). Returns `(chosen, rejected)` sample
/// indices, by group order.
///
/// # Errors
/// [`Error::Length`] when `groups` and `rewards` differ in length, [`Error::NonFiniteReward`]
/// for a NaN or infinite reward.
pub fn group_pairs<K: Ord>(rewards: &[f32], groups: &[K]) -> Result<Vec<(usize, usize)>, Error> {
    let members = group_members(rewards, groups)?;
    let mut pairs = Vec::new();
    for indices in members.values() {
        let best =
            indices.iter().copied().fold(
                indices[0],
                |b, i| if rewards[i] > rewards[b] { i } else { b },
            );
        let worst =
            indices.iter().copied().fold(
                indices[0],
                |w, i| if rewards[i] < rewards[w] { i } else { w },
            );
        if rewards[best] > rewards[worst] {
            pairs.push((best, worst));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};

    /// Rows 0 (chosen, 2 tokens) and 1 (rejected, 1 token): log-ratios 0.3 + 0.2 = 0.5 and
    /// −0.5, so h = 1.0.
    fn batch<'a>(logprobs: Tensor<1>, device: &Device) -> PreferenceBatch<'a> {
        PreferenceBatch {
            logprobs,
            ref_logprobs: tensor(&[-1.0, -2.0, -1.0], device),
            rows: &[0, 0, 1],
            pairs: &[(0, 1)],
        }
    }

    /// The loss of `batch` with `logp` for a step of `num_pairs` pairs, and its gradient.
    fn run(
        logp: &[f32],
        num_pairs: usize,
        beta: f32,
        loss_type: PreferenceLoss,
    ) -> (DpoOutput, Vec<f32>) {
        let device = Device::flex().autodiff();
        let x = tensor(logp, &device).require_grad();
        let config = DpoConfig { beta, loss_type };
        let out = dpo_loss(batch(x.clone(), &device), num_pairs, &config).unwrap();
        let g = values(x.grad(&out.loss.clone().backward()).unwrap());
        (out, g)
    }

    #[test]
    fn dpo_and_ipo_match_hand_computed_values_and_gradients() {
        let logp = [-0.7f32, -1.8, -1.5];
        // DPO, β = 0.5: L = −log σ(0.5) = softplus(−0.5) = 0.474077; dL/dh = −β·σ(−β·h).
        let (out, g) = run(&logp, 1, 0.5, PreferenceLoss::Sigmoid);
        assert!(
            (out.loss_value - 0.474_077).abs() < 1e-5,
            "{}",
            out.loss_value
        );
        let s = 1.0 / (1.0 + 0.5f32.exp());
        for (a, b) in g.iter().zip([-0.5 * s, -0.5 * s, 0.5 * s]) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        assert!((out.rewards_chosen - 0.25).abs() < 1e-6);
        assert!((out.rewards_rejected - -0.25).abs() < 1e-6);
        assert!((out.rewards_margins - 0.5).abs() < 1e-6);
        assert_eq!(out.rewards_accuracies, 1.0);
        // IPO, β = 0.25: target margin 1/(2β) = 2, L = (1 − 2)² = 1, dL/dh = 2(h − 2) = −2,
        // divided by the step's 2 pairs.
        let (out, g) = run(&logp, 2, 0.25, PreferenceLoss::Ipo);
        assert!((out.loss_value - 0.5).abs() < 1e-6, "{}", out.loss_value);
        for (a, b) in g.iter().zip([-1.0, -1.0, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    /// At a zero margin (where DPO starts, the reference being the policy) the gradient is
    /// −β·σ(0) = −β/2 per unit of `h`; a `max(x, 0)`-based softplus gave −β there.
    #[test]
    fn dpo_gradient_at_a_zero_margin_is_half_beta() {
        let (out, g) = run(&[-1.0, -2.0, -1.0], 1, 0.5, PreferenceLoss::Sigmoid);
        assert!((out.loss_value - 2f32.ln()).abs() < 1e-6);
        for (a, b) in g.iter().zip([-0.25, -0.25, 0.25]) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn dpo_stays_finite_for_any_margin() {
        for shift in [-1e4f32, 1e4] {
            let (out, g) = run(&[-1.0 + shift, -2.0, -1.0], 1, 0.1, PreferenceLoss::Sigmoid);
            assert!(out.loss_value.is_finite(), "{shift}: {}", out.loss_value);
            assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        }
    }

    #[test]
    fn group_pairs_take_the_best_and_worst_of_each_group_with_signal() {
        let rewards = [0.0, 1.0, 0.5, 1.0, 1.0, 0.2, 0.9];
        let groups = [3, 3, 3, 7, 7, 9, 9];
        let pairs = group_pairs(&rewards, &groups).unwrap();
        assert_eq!(pairs, vec![(1, 0), (6, 5)], "group 7 is flat: no pair");
        assert!(group_pairs(&[1.0], &[0, 0]).is_err());
    }

    #[test]
    fn bad_batches_are_errors_naming_the_input() {
        let device = Device::flex();
        let logp = tensor(&[-0.7, -1.8, -1.5], &device);
        let err = dpo_loss(
            PreferenceBatch {
                pairs: &[(0, 5)],
                ..batch(logp.clone(), &device)
            },
            1,
            &DpoConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("without trained tokens"), "{err}");
        let err = dpo_loss(
            batch(logp.clone(), &device),
            1,
            &DpoConfig {
                beta: 0.0,
                ..DpoConfig::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("`beta`"), "{err}");
        assert!(matches!(
            dpo_loss(batch(logp, &device), 0, &DpoConfig::default()),
            Err(Error::Normalizer {
                field: "num_pairs",
                ..
            })
        ));
    }
}
