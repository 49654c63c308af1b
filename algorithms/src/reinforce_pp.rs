//! REINFORCE++'s global advantage normalisation.
//!
//! REINFORCE++ ([Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to
//! Both Prompt and Reward Models"](https://arxiv.org/abs/2501.03262), §3) drops PPO's critic and
//! GRPO's per-prompt normalisation: the return of every sample is *whitened over the whole
//! batch*,
//!
//! ```text
//! A_i = (G_i − mean_B(G)) / (std_B(G) + eps)                  reinforce_plus_plus
//! A_i = c_i / (std_B(c) + eps),  c_i = G_i − mean_g(G)         reinforce_plus_plus_baseline
//! ```
//!
//! where `B` is every sample of the batch (at one turn index, see `multi_turn`), `g` the
//! sample's group and `std` unbiased. The batch statistics are less noisy than a group's of 8
//! and do not inflate the advantages of nearly-solved prompts (the paper's argument against
//! GRPO's per-group std). The `_baseline` variant (the paper's §3.3, for reasoning tasks with
//! several samples per prompt) subtracts the group mean first; the centred values already have
//! batch mean 0, so they are only divided by the batch std (re-centring would turn a flat
//! group's exact zeros into rounding residues). A sample alone in its group has no baseline,
//! gets exactly 0 and is left out of the batch statistics (veRL keeps its raw reward). Names
//! are veRL's `adv_estimator` values. Departure: kaizen whitens per sample (per turn), veRL and
//! the paper per token, where longer answers weigh more.
//!
//! Departure: REINFORCE++ puts the per-token KL to the reference into the reward (`r_t − β·KL_t`
//! before the return); kaizen's KL stays in the loss (`loss.beta`, the paper's §3.3 "k2 in the
//! loss" variant).

/// Whitens `x` over its entries, `(x − mean) / (std + eps)` with the unbiased std; every entry
/// exactly 0 when all are equal (no rounding residue) or when there are fewer than two.
///
/// # Shapes
/// `[n]` → `[n]`.
pub fn whiten(x: &[f64]) -> Vec<f64> {
    whiten_with(x, true)
}

/// [`whiten`], or with `centre = false` only the division by `std + eps` (for values already
/// centred per group, whose batch mean is 0 up to rounding: an exact 0 stays exactly 0).
pub(crate) fn whiten_with(x: &[f64], centre: bool) -> Vec<f64> {
    if x.len() < 2 || x.iter().all(|&v| v == x[0]) {
        return vec![0.0; x.len()];
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    let scale = var.sqrt() + crate::STD_EPS;
    let shift = if centre { mean } else { 0.0 };
    x.iter().map(|v| (v - shift) / scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdvantageEstimator, ScaleRewards, group_advantages};

    #[test]
    fn whiten_matches_hand_computed_values() {
        // 3, 0, 1, 0, 3: mean 1.4, Σ(x − x̄)² = 9.2, unbiased std sqrt(2.3).
        let got = whiten(&[3.0, 0.0, 1.0, 0.0, 3.0]);
        let s = 2.3f64.sqrt() + 1e-4;
        let want = [1.6 / s, -1.4 / s, -0.4 / s, -1.4 / s, 1.6 / s];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(whiten(&[0.1, 0.1, 0.1]), vec![0.0; 3]);
        assert_eq!(whiten(&[2.0]), vec![0.0]);
    }

    #[test]
    fn reinforce_plus_plus_whitens_rewards_over_the_batch() {
        // Groups a: 3, 1; b: 0, 0, 3. Batch 3, 1, 0, 0, 3 in input order below.
        let rewards = [3.0, 0.0, 1.0, 0.0, 3.0];
        let groups = ["a", "b", "a", "b", "b"];
        for scale in [ScaleRewards::Group, ScaleRewards::None] {
            let out = group_advantages(
                &rewards,
                &groups,
                AdvantageEstimator::ReinforcePlusPlus,
                scale,
            )
            .unwrap();
            let s = (2.3f64.sqrt() + 1e-4) as f32;
            let want = [1.6 / s, -1.4 / s, -0.4 / s, -1.4 / s, 1.6 / s];
            for (g, w) in out.advantages.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{:?}", out.advantages);
            }
            assert_eq!(out.zero_signal_groups, 0);
        }
    }

    #[test]
    fn reinforce_plus_plus_baseline_centres_per_group_then_scales_by_the_batch_std() {
        // Group a: 3, 1 (mean 2) → 1, −1; group b: 0, 0, 3 (mean 1) → −1, −1, 2; group c: a
        // lone sample → 0, left out. Batch of centred values 1, −1, −1, −1, 2: mean 0,
        // Σ x² = 8, unbiased std sqrt(2).
        let rewards = [3.0, 0.0, 1.0, 0.0, 3.0, 7.0];
        let groups = ["a", "b", "a", "b", "b", "c"];
        let out = group_advantages(
            &rewards,
            &groups,
            AdvantageEstimator::ReinforcePlusPlusBaseline,
            ScaleRewards::Group,
        )
        .unwrap();
        let s = (2.0f64.sqrt() + 1e-4) as f32;
        let want = [1.0 / s, -1.0 / s, -1.0 / s, -1.0 / s, 2.0 / s, 0.0];
        for (g, w) in out.advantages.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", out.advantages);
        }
        assert_eq!(out.advantages[5], 0.0);
        assert_eq!((out.num_groups, out.zero_signal_groups), (3, 1));
        // A flat group next to groups with signal stays exactly 0 (a re-centring by the batch
        // mean, 0 only up to rounding, left ±1e-18 residues that defeated skip_zero_signal).
        let out = group_advantages(
            &[0.1, 0.1, 0.1, 0.7, 0.2, 0.3],
            &[0, 0, 0, 1, 1, 1],
            AdvantageEstimator::ReinforcePlusPlusBaseline,
            ScaleRewards::Group,
        )
        .unwrap();
        assert_eq!(&out.advantages[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(out.zero_signal_groups, 1);
        // An all-equal batch is exactly zero.
        let flat = group_advantages(
            &[0.5; 4],
            &[0, 0, 1, 1],
            AdvantageEstimator::ReinforcePlusPlus,
            ScaleRewards::Group,
        )
        .unwrap();
        assert_eq!(flat.advantages, vec![0.0; 4]);
        assert_eq!(flat.zero_signal_groups, 2);
    }
}
