//! Group-relative advantages: each sample is judged against the other samples of its prompt.
//!
//! GRPO ([Shao et al. 2024](https://arxiv.org/abs/2402.03300)) plays every prompt `G` times
//! (`num_generations`) and replaces PPO's learned value baseline with the group's mean reward.
//! RLOO ([Ahmadian et al. 2024](https://arxiv.org/abs/2402.14740)) uses the mean of the *other*
//! `G − 1` samples instead, which makes the baseline independent of the sample it judges.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Added to the standard deviation before dividing, as TRL's `GRPOTrainer` does (`std + 1e-4`).
pub const STD_EPS: f64 = 1e-4;

/// How rewards are scaled after the baseline is subtracted (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the standard deviation of the sample's group (TRL's default).
    #[default]
    Group,
    /// Divide by the standard deviation over the whole batch
    /// ([PPO Lite](https://huggingface.co/papers/2508.08221)).
    Batch,
    /// Do not divide: Dr. GRPO's choice ([Liu et al. 2025](https://arxiv.org/abs/2503.20783)),
    /// which removes the question-difficulty bias of the group std.
    None,
}

/// The baseline subtracted from each reward (veRL's `adv_estimator`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// `b_i = mean_g(r)`: the mean reward of the sample's group (GRPO).
    #[default]
    Grpo,
    /// `b_i = (Σ_{j∈g} r_j − r_i) / (|g| − 1)`: the mean of the other samples (RLOO).
    Rloo,
    /// REINFORCE++: rewards whitened over the whole batch, `(r_i − mean_B) / (std_B + eps)`;
    /// no group baseline, and `scale_rewards` does not apply (see `crate::reinforce_pp`).
    ReinforcePlusPlus,
    /// REINFORCE++-baseline: `r_i − mean_g(r)`, then divided by the batch std; a sample alone
    /// in its group gets 0 (see `crate::reinforce_pp`). `scale_rewards` does not apply.
    ReinforcePlusPlusBaseline,
}

/// How per-sample (and, for multi-turn episodes, per-turn) advantages are computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvantageConfig {
    /// Baseline: group mean (`grpo`) or leave-one-out mean (`rloo`).
    pub adv_estimator: AdvantageEstimator,
    /// Divisor: group std (`group`), batch std (`batch`) or none (`none`, Dr. GRPO).
    pub scale_rewards: ScaleRewards,
    /// Discount of later turns' rewards in a turn's return (1.0: undiscounted sum).
    pub gamma: f32,
    /// SCoRe's progress bonus `α ≥ 0`: turn `k ≥ 1`'s own return gains `α · (r_k − r_{k−1})`
    /// (see `multi_turn`); 0 turns it off.
    pub progress_bonus: f32,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self {
            adv_estimator: AdvantageEstimator::Grpo,
            scale_rewards: ScaleRewards::Group,
            gamma: 1.0,
            progress_bonus: 0.0,
        }
    }
}

/// Advantages of a batch, in input order, and how many groups carried a learning signal.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// One advantage per input reward.
    pub advantages: Vec<f32>,
    /// Number of distinct groups in the batch.
    pub num_groups: usize,
    /// Groups whose rewards were all equal: their advantages are exactly 0.0 and they contribute
    /// nothing to the policy gradient (DAPO's dynamic sampling drops or resamples them).
    pub zero_signal_groups: usize,
}

/// Group-relative advantages of `rewards`, where `groups[i]` names the group of sample `i`
/// (e.g. the trajectory's `group_id`; any ordered key works, groups may be ragged and
/// interleaved):
///
/// ```text
/// A_i = (r_i − b_i) / (σ + eps)      scale_rewards = group | batch
/// A_i =  r_i − b_i                   scale_rewards = none   (Dr. GRPO)
/// ```
///
/// with `b_i` the group mean (`Grpo`) or the leave-one-out mean (`Rloo`), `σ` the unbiased
/// (Bessel-corrected, as `torch.std`) standard deviation of the sample's group (`group`) or of
/// all rewards (`batch`), and `eps` = [`STD_EPS`].
///
/// A group whose rewards are all equal gets exactly `0.0` (never NaN, never a rounding residue),
/// and is counted in [`GroupAdvantages::zero_signal_groups`]. A group of one sample has no
/// baseline to compare with and also gets `0.0`.
///
/// The REINFORCE++ estimators replace this rule with a whitening over the whole batch (see
/// `crate::reinforce_pp`); `scale_rewards` does not apply to them.
///
/// # Errors
/// [`Error::Length`] when `groups` and `rewards` differ in length, [`Error::NonFiniteReward`]
/// for a NaN or infinite reward.
pub fn group_advantages<K: Ord>(
    rewards: &[f32],
    groups: &[K],
    adv_estimator: AdvantageEstimator,
    scale_rewards: ScaleRewards,
) -> Result<GroupAdvantages, Error> {
    let members = group_members(rewards, groups)?;
    let all: Vec<f64> = rewards.iter().map(|&r| f64::from(r)).collect();
    let batch_std = std_unbiased(&all);

    let mut advantages = vec![0.0f32; rewards.len()];
    if matches!(
        adv_estimator,
        AdvantageEstimator::ReinforcePlusPlus | AdvantageEstimator::ReinforcePlusPlusBaseline
    ) {
        // Centre per group (the `_baseline` variant) or not, then whiten over the batch.
        let mut centred: Vec<(usize, f64)> = Vec::with_capacity(rewards.len());
        for indices in members.values() {
            if adv_estimator == AdvantageEstimator::ReinforcePlusPlus {
                centred.extend(indices.iter().map(|&i| (i, all[i])));
            } else if indices.len() > 1 {
                let mean = indices.iter().map(|&i| all[i]).sum::<f64>() / indices.len() as f64;
                let equal = indices.iter().all(|&i| all[i] == all[indices[0]]);
                // An all-equal group centres to exact zeros.
                centred.extend(
                    indices
                        .iter()
                        .map(|&i| (i, if equal { 0.0 } else { all[i] - mean })),
                );
            }
        }
        let values: Vec<f64> = centred.iter().map(|&(_, c)| c).collect();
        let recentre = adv_estimator == AdvantageEstimator::ReinforcePlusPlus;
        for ((i, _), a) in centred
            .iter()
            .zip(crate::reinforce_pp::whiten_with(&values, recentre))
        {
            advantages[*i] = a as f32;
        }
        let zero_signal_groups = members
            .values()
            .filter(|indices| indices.iter().all(|&i| advantages[i] == 0.0))
            .count();
        return Ok(GroupAdvantages {
            advantages,
            num_groups: members.len(),
            zero_signal_groups,
        });
    }
    let mut zero_signal_groups = 0;
    for indices in members.values() {
        let r: Vec<f64> = indices.iter().map(|&i| all[i]).collect();
        let n = r.len();
        // All-equal groups (and single samples) carry no signal: exact zeros, no arithmetic.
        if r.iter().all(|&x| x == r[0]) {
            zero_signal_groups += 1;
            continue;
        }
        let sum: f64 = r.iter().sum();
        let sigma = match scale_rewards {
            ScaleRewards::Group => Some(std_unbiased(&r)),
            ScaleRewards::Batch => Some(batch_std),
            ScaleRewards::None => None,
        };
        for (&i, &r_i) in indices.iter().zip(&r) {
            let baseline = match adv_estimator {
                AdvantageEstimator::Rloo => (sum - r_i) / (n - 1) as f64,
                _ => sum / n as f64,
            };
            let centred = r_i - baseline;
            let a = match sigma {
                Some(sigma) => centred / (sigma + STD_EPS),
                None => centred,
            };
            advantages[i] = a as f32;
        }
    }
    Ok(GroupAdvantages {
        advantages,
        num_groups: members.len(),
        zero_signal_groups,
    })
}

/// The sample indices of each group (groups in key order, members in input order), after
/// checking one finite reward per sample.
///
/// # Errors
/// [`Error::Length`] when `groups` and `rewards` differ in length, [`Error::NonFiniteReward`]
/// for a NaN or infinite reward.
pub(crate) fn group_members<'k, K: Ord>(
    rewards: &[f32],
    groups: &'k [K],
) -> Result<BTreeMap<&'k K, Vec<usize>>, Error> {
    if groups.len() != rewards.len() {
        return Err(Error::Length {
            input: "groups",
            reference: "rewards",
            expected: rewards.len(),
            actual: groups.len(),
        });
    }
    if let Some((index, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        return Err(Error::NonFiniteReward { index, value });
    }
    let mut members: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    Ok(members)
}

/// Unbiased standard deviation `sqrt(Σ (x − x̄)² / (n − 1))`; 0 for fewer than two values.
fn std_unbiased(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let ss: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    (ss / (n - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn grpo_group_scaling_matches_hand_computed_values() {
        // Group 7: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3) = 0.57735.
        // Group 3: rewards 2, 0 -> mean 1, std sqrt(2) = 1.41421.
        let rewards = [1.0, 2.0, 0.0, 0.0, 0.0, 1.0];
        let groups = [7u64, 3, 7, 3, 7, 7];
        let out = group_advantages(
            &rewards,
            &groups,
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        )
        .unwrap();
        let a7 = 0.5 / (0.577_350_3 + 1e-4);
        let a3 = 1.0 / (std::f32::consts::SQRT_2 + 1e-4);
        close(&out.advantages, &[a7, a3, -a7, -a3, -a7, a7], 1e-6);
        assert_eq!(out.num_groups, 2);
        assert_eq!(out.zero_signal_groups, 0);
    }

    #[test]
    fn all_equal_groups_give_exact_zeros_and_are_counted() {
        // 0.1 three times: a naive mean is 0.10000000000000002, so r − mean would not be 0.
        let rewards = [0.1, 0.1, 0.1, 1.0, 0.0, 5.0];
        let groups = [0, 0, 0, 1, 1, 2];
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            for est in [AdvantageEstimator::Grpo, AdvantageEstimator::Rloo] {
                let out = group_advantages(&rewards, &groups, est, scale).unwrap();
                assert_eq!(&out.advantages[..3], &[0.0, 0.0, 0.0]);
                assert_eq!(out.advantages[5], 0.0, "a group of one has no baseline");
                assert!(out.advantages.iter().all(|a| a.is_finite()));
                assert!(out.advantages[3] > 0.0 && out.advantages[4] < 0.0);
                assert_eq!(out.num_groups, 3);
                assert_eq!(out.zero_signal_groups, 2);
            }
        }
    }

    #[test]
    fn ragged_groups_with_batch_and_no_scaling() {
        // Group a: 3, 1 (mean 2); group b: 0, 0, 3 (mean 1).
        let rewards = [3.0, 0.0, 1.0, 0.0, 3.0];
        let groups = ["a", "b", "a", "b", "b"];
        let none = group_advantages(
            &rewards,
            &groups,
            AdvantageEstimator::Grpo,
            ScaleRewards::None,
        )
        .unwrap();
        close(&none.advantages, &[1.0, -1.0, -1.0, -1.0, 2.0], 0.0);
        // Batch std over 3, 0, 1, 0, 3: mean 1.4, Σ(x−x̄)² = 9.2, unbiased std sqrt(2.3).
        let batch = group_advantages(
            &rewards,
            &groups,
            AdvantageEstimator::Grpo,
            ScaleRewards::Batch,
        )
        .unwrap();
        let s = 2.3f32.sqrt() + 1e-4;
        close(
            &batch.advantages,
            &[1.0 / s, -1.0 / s, -1.0 / s, -1.0 / s, 2.0 / s],
            1e-6,
        );
    }

    #[test]
    fn rloo_uses_the_mean_of_the_other_samples() {
        // Group of 3: 1, 0, 2. Baselines: (0+2)/2 = 1, (1+2)/2 = 1.5, (1+0)/2 = 0.5.
        let advantages = |est, scale| {
            group_advantages(&[1.0, 0.0, 2.0], &[0, 0, 0], est, scale)
                .unwrap()
                .advantages
        };
        let rloo = advantages(AdvantageEstimator::Rloo, ScaleRewards::None);
        close(&rloo, &[0.0, -1.5, 1.5], 0.0);
        // RLOO = G/(G−1) · (r − mean): scaled by the group std (1.0) it is 1.5 · GRPO's.
        let rloo = advantages(AdvantageEstimator::Rloo, ScaleRewards::Group);
        let grpo = advantages(AdvantageEstimator::Grpo, ScaleRewards::Group);
        for (r, g) in rloo.iter().zip(&grpo) {
            assert!((r - 1.5 * g).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_input() {
        let err = group_advantages(
            &[1.0, 2.0],
            &[0],
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`groups` has 1"), "{err}");
        let err = group_advantages(
            &[1.0, f32::NAN],
            &[0, 0],
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NonFiniteReward { index: 1, .. }));
    }

    #[test]
    fn config_uses_trl_names_and_rejects_unknown_keys() {
        let c: AdvantageConfig =
            toml::from_str("scale_rewards = \"none\"\nadv_estimator = \"rloo\"\ngamma = 0.9")
                .unwrap();
        assert_eq!(c.scale_rewards, ScaleRewards::None);
        assert_eq!(c.adv_estimator, AdvantageEstimator::Rloo);
        assert_eq!(c.gamma, 0.9);
        let d: AdvantageConfig = toml::from_str("").unwrap();
        assert_eq!(d, AdvantageConfig::default());
        let err = toml::from_str::<AdvantageConfig>("scale_reward = \"none\"").unwrap_err();
        assert!(err.to_string().contains("scale_reward"), "{err}");
    }
}
