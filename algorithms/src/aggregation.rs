//! How per-token losses become a step loss: TRL's `loss_type` aggregations over the flat token
//! layout, with normalisers of the whole optimizer step ([`StepNormalizers`]).

use burn::tensor::Tensor;

use crate::Error;
use crate::grpo::{LossType, StepNormalizers};
use crate::units::Units;

/// How a micro-batch's per-token losses become its share of the step loss (`loss_type`, see
/// [`crate::grpo_loss`]): `scale · Σ_t l_t`, or, with `per_row` (`grpo`),
/// `scale · Σ_i mean_{t∈i} l_t`. Shared by every loss that aggregates per-token terms (GRPO's
/// surrogate, PPO's value loss, NFT).
pub(crate) struct Aggregation {
    /// `1/T` (`bnpo`, `dapo`), `1/(S · max_completion_length)` (`dr_grpo`), `1/S` (`grpo`).
    scale: f64,
    /// `grpo`: the rows of the micro-batch's tokens.
    per_row: Option<Units<usize>>,
}

impl Aggregation {
    /// The aggregation of a micro-batch whose tokens belong to `rows`.
    ///
    /// # Errors
    /// [`Error::Normalizer`] when `step` counts fewer tokens or sequences than the micro-batch
    /// holds, or `max_completion_length` is 0 for `dr_grpo`.
    pub(crate) fn new(
        loss_type: LossType,
        rows: &[usize],
        step: &StepNormalizers,
        device: &burn::tensor::Device,
    ) -> Result<Self, Error> {
        let scale = scale(loss_type, rows, step)?;
        let per_row = (loss_type == LossType::Grpo).then(|| Units::new(rows, device));
        Ok(Self { scale, per_row })
    }

    /// The aggregated `[1]` loss of per-token losses `[n]`.
    pub(crate) fn apply(&self, per_token: Tensor<1>) -> Tensor<1> {
        match &self.per_row {
            None => per_token.sum() * self.scale,
            Some(rows) => rows.means(per_token).sum() * self.scale,
        }
    }
}

/// `1/T` (`bnpo`, `dapo`), `1/(S · max_completion_length)` (`dr_grpo`), `1/S` (`grpo`), after
/// checking the normalisers against the micro-batch (see [`Aggregation::new`]).
fn scale(loss_type: LossType, rows: &[usize], step: &StepNormalizers) -> Result<f64, Error> {
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
        LossType::Grpo => 1.0 / sequences,
        LossType::Bnpo | LossType::Dapo => 1.0 / step.num_tokens as f64,
        LossType::DrGrpo => {
            if step.max_completion_length == 0 {
                return Err(Error::Normalizer {
                    field: "max_completion_length",
                    value: 0,
                    in_batch: 1,
                });
            }
            1.0 / (sequences * step.max_completion_length as f64)
        }
    })
}

/// The weight `w_t` of each token in the step loss `L = Σ_t w_t · l_t` under `loss_type`:
/// `1/T` (`bnpo`, `dapo`), `1/(S · max_completion_length)` (`dr_grpo`), `1/(S · |o_i|)`
/// (`grpo`, `|o_i|` the tokens of the token's row in `rows`, which must hold whole rows).
/// For losses computed outside burn's autodiff graph, or weighted elementwise (PPO's value loss).
///
/// # Shapes
/// `rows: [n]` → `[n]`.
///
/// # Errors
/// As [`Aggregation::new`].
pub fn token_weights(
    loss_type: LossType,
    rows: &[usize],
    step: &StepNormalizers,
) -> Result<Vec<f32>, Error> {
    let scale = scale(loss_type, rows, step)?;
    Ok(match loss_type {
        LossType::Grpo => {
            let mut counts = std::collections::BTreeMap::<usize, usize>::new();
            for &r in rows {
                *counts.entry(r).or_default() += 1;
            }
            rows.iter()
                .map(|r| (scale / counts[r] as f64) as f32)
                .collect()
        }
        _ => vec![scale as f32; rows.len()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpo::tests::{tensor, values};

    /// `token_weights` and `Aggregation::apply` agree: `Σ_t w_t l_t` equals the aggregated loss
    /// for every `loss_type` (hand-computed for `grpo`: rows of 2 and 1 tokens, S = 4).
    #[test]
    fn token_weights_reproduce_each_aggregation() {
        let device = burn::tensor::Device::flex();
        let rows = [0, 0, 1];
        let step = StepNormalizers {
            num_sequences: 4,
            num_tokens: 10,
            max_completion_length: 5,
        };
        let w = token_weights(LossType::Grpo, &rows, &step).unwrap();
        assert_eq!(w, vec![0.125, 0.125, 0.25]);
        let losses = [1.0f32, 3.0, -2.0];
        for loss_type in [
            LossType::Grpo,
            LossType::Bnpo,
            LossType::Dapo,
            LossType::DrGrpo,
        ] {
            let w = token_weights(loss_type, &rows, &step).unwrap();
            let by_weights: f32 = w.iter().zip(&losses).map(|(w, l)| w * l).sum();
            let aggregated = Aggregation::new(loss_type, &rows, &step, &device)
                .unwrap()
                .apply(tensor(&losses, &device));
            let aggregated = values(aggregated)[0];
            assert!((by_weights - aggregated).abs() < 1e-6, "{loss_type:?}");
        }
        assert!(
            token_weights(
                LossType::Dapo,
                &rows,
                &StepNormalizers {
                    num_tokens: 2,
                    ..step
                }
            )
            .is_err()
        );
    }
}
