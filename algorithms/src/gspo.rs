//! GSPO's sequence-level importance ratio.
//!
//! GSPO ([Zheng et al. 2025, "Group Sequence Policy Optimization"](https://arxiv.org/abs/2507.18071),
//! Eq. 7) replaces GRPO's per-token ratio with one ratio per response, the geometric mean of
//! its tokens' ratios (length-normalised so that responses of any length share one clip range):
//!
//! ```text
//! s_i(θ) = (π_θ(y_i | x) / π_old(y_i | x))^{1/|y_i|}
//!        = exp( 1/|y_i| · Σ_{t∈y_i} (log π_θ(y_{i,t}) − log π_old(y_{i,t})) )
//! ```
//!
//! and clips `s_i` instead of each token's ratio (the paper's clip range is tiny, `3e-4` /
//! `4e-4`, since a sequence ratio moves far less than a token's). A token-level noise in one
//! token no longer decides whether that token is clipped; the whole response is kept or clipped
//! together. TRL selects it with `importance_sampling_level = "sequence"`
//! (`GRPOConfig`), which is the name kaizen's `[loss]` uses; `loss_type = "grpo"` gives the
//! paper's `1/G Σ_i` aggregation.
//!
//! In a multi-turn thread, a "response" is one trained turn: the ratio is taken over the
//! tokens of each (row, turn) unit, so each turn — which carries its own advantage — is kept or
//! clipped as a whole.

use burn::tensor::Tensor;

use crate::units::Units;

/// Each token's response-level log-ratio: the mean of `log_ratio` over the tokens of its unit
/// (`units[t]`, any ordered key, e.g. `(row, turn)`), given back at every token of the unit.
/// Differentiable: each token of a unit of length `L` receives `1/L` of the unit's gradient.
///
/// # Shapes
/// `log_ratio: [n]`, `units.len() == n` → `[n]`.
///
/// # Panics
/// When `units.len()` differs from `n` (a programmer error: both come from one token list).
pub fn sequence_log_ratio<K: Ord + Clone>(log_ratio: Tensor<1>, units: &[K]) -> Tensor<1> {
    let [n] = log_ratio.dims();
    assert_eq!(units.len(), n, "sequence_log_ratio: one unit per token");
    let units = Units::new(units, &log_ratio.device());
    units.broadcast(units.means(log_ratio))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};
    use crate::{
        GrpoBatch, GrpoLossConfig, ImportanceSamplingLevel, LossType, StepNormalizers, grpo_loss,
    };

    #[test]
    fn each_token_gets_its_units_mean_log_ratio_and_a_share_of_its_gradient() {
        let device = Device::flex().autodiff();
        let x = tensor(&[0.3, -0.1, 0.4, 1.0, -2.0], &device).require_grad();
        // Units: row 0 turn 0 (tokens 0, 1, 2), row 1 turn 0 (token 3), row 0 turn 1 (token 4).
        let units = [(0, 0), (0, 0), (0, 0), (1, 0), (0, 1)];
        let s = sequence_log_ratio(x.clone(), &units);
        let got = values(s.clone());
        let want = [0.2, 0.2, 0.2, 1.0, -2.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let w = tensor(&[1.0, 2.0, 3.0, 4.0, 5.0], &device);
        let g = values(x.grad(&(s * w).sum().backward()).unwrap());
        // Unit 0 gathers weights 1 + 2 + 3 = 6, spread as 6/3 on each of its tokens.
        for (g, w) in g.iter().zip([2.0, 2.0, 2.0, 4.0, 5.0]) {
            assert!((g - w).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn gspo_clips_whole_responses_by_their_geometric_mean_ratio() {
        // One response of two tokens with per-token ratios 1.5 and 1.0 (log-ratios ln 1.5, 0):
        // token level clips token 0 only (ε = 0.2); sequence level uses s = sqrt(1.5) = 1.2247
        // for both tokens, clipped at 1.2 as a whole, so neither token gets a gradient.
        let device = Device::flex().autodiff();
        let old = [-1.0f32, -1.0];
        let step = StepNormalizers {
            num_sequences: 1,
            num_tokens: 2,
            max_completion_length: 4,
        };
        // Token 0's ratio is `ratio`, token 1's is 1.
        let run = |level, ratio: f32| {
            let logprobs = tensor(&[-1.0 + ratio.ln(), -1.0], &device).require_grad();
            let config = GrpoLossConfig {
                importance_sampling_level: level,
                loss_type: LossType::Grpo,
                ..GrpoLossConfig::default()
            };
            let batch = GrpoBatch {
                logprobs: logprobs.clone(),
                old_logprobs: Some(tensor(&old, &device)),
                behavior_logprobs: None,
                advantages: tensor(&[1.0, 1.0], &device),
                ref_logprobs: None,
                entropy: None,
                rows: &[0, 0],
                turns: None,
            };
            let out = grpo_loss(batch, &step, &config).unwrap();
            let loss = values(out.loss.clone())[0];
            let g = values(logprobs.grad(&out.loss.backward()).unwrap());
            (loss, g, out.metrics)
        };
        let (loss, g, m) = run(ImportanceSamplingLevel::Token, 1.5);
        assert!((loss - -(1.2 + 1.0) / 2.0).abs() < 1e-6);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - -0.5).abs() < 1e-6);
        assert_eq!(m.clip_frac, 0.5);
        let (loss, g, m) = run(ImportanceSamplingLevel::Sequence, 1.5);
        assert!((loss - -1.2).abs() < 1e-6, "{loss}");
        assert_eq!(g, vec![0.0, 0.0]);
        assert_eq!(m.clip_frac, 1.0);
        assert!((m.ratio_max - 1.5f32.sqrt()).abs() < 1e-6);
        // Below the clip range the sequence ratio's gradient is shared: d/dlogp_t of
        // −s·A with s = exp(mean log-ratio) is −s·A/|y| for each token.
        let (_, g, _) = run(ImportanceSamplingLevel::Sequence, 1.1);
        let s = 1.1f32.sqrt();
        for x in g {
            assert!((x - -s / 2.0).abs() < 1e-6, "{x}");
        }
    }
}
