//! Multi-turn credit assignment: per-turn rewards become per-turn advantages.
//!
//! # The rule
//!
//! An episode in which the trained agent takes turns `k = 0..K` and receives rewards
//! `r_0..r_{K−1}` (one per turn, `Outcome::rewards[agent]`) gives turn `k` the *return to go*
//!
//! ```text
//! G_k = Σ_{j ≥ k} γ^{j−k} r_j          (γ = `gamma`, default 1.0)
//! ```
//!
//! and every token of turn `k` gets the advantage of `G_k` normalised within its group **at the
//! same turn index `k`**: turn-2 tokens are compared with the other samples' turn-2 returns,
//! never with turn-1 returns. Samples that ended before turn `k` simply take no part in the
//! comparison at `k`. Within one turn index the normalisation is exactly
//! [`group_advantages`] (same baseline, same `scale_rewards`, all-equal → exactly 0). With one
//! turn per episode this is plain GRPO.
//!
//! # Worked example
//!
//! A group of three self-correction episodes, γ = 1, `scale_rewards = "none"`:
//!
//! ```text
//!           rewards      returns G        turn-0 advantage        turn-1 advantage
//! sample a  [0, 1]       [1, 1]           1 − 2/3 = +1/3          1 − 1/2 = +1/2
//! sample b  [1]          [1]              1 − 2/3 = +1/3          (no turn 1)
//! sample c  [0, 0]       [0, 0]           0 − 2/3 = −2/3          0 − 1/2 = −1/2
//! ```
//!
//! Sample a's first attempt is credited for the correction it led to; b, right at once, is
//! compared with a and c at turn 0 only.
//!
//! # Only trained turns are compared
//!
//! A turn that will not be trained — its tokens all dropped before the loss (a thread skipped
//! for its mixed temperatures, a stale sample, an empty completion, an untrainable segment) —
//! takes no part in its group's comparison at its turn index: it neither moves the baseline nor
//! the standard deviation of the turns that are trained, and gets advantage 0. Otherwise a
//! sibling that is never trained would hand the remaining member a large advantage (with two
//! members, `±1/(σ + eps)`) for nothing it did. A group left with one trained member at some
//! turn gets 0 there, as any group of one (except under `reinforce_plus_plus`, whose baseline
//! is the whole batch's, not the group's). (Such a turn's rewards still enter *earlier* turns'
//! returns: they are consequences of those turns.)
//!
//! # Progress bonus (SCoRe)
//!
//! With `progress_bonus = α > 0`, turn `k ≥ 1` is judged on
//!
//! ```text
//! G'_k = G_k + α · (r_k − r_{k−1})
//! ```
//!
//! the reward shaping of SCoRe's stage II (Kumar et al. 2024, "Training Language Models to
//! Self-Correct via Reinforcement Learning", <https://arxiv.org/abs/2409.12917>, §5.2): a revision
//! that turns a wrong answer right earns `α` more, one that turns a right answer wrong loses `α`,
//! and repeating the first answer earns nothing extra — the pressure toward real correction that
//! plain rewards lack (a model that repeats itself scores Δ(t1→t2) = 0 and is not penalised).
//! The bonus enters turn `k`'s own advantage only; earlier turns' returns use the unshaped
//! rewards, so a first attempt gains nothing by being wrong.

use std::collections::BTreeMap;

use kaizen_core::{AgentId, Trajectory};

use crate::advantages::group_advantages;
use crate::{AdvantageConfig, Error};

/// Per-turn advantages of a batch of multi-turn samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnAdvantages {
    /// `advantages[i][k]`: advantage of turn `k` of sample `i` (same shape as the input rewards).
    pub advantages: Vec<Vec<f32>>,
    /// Number of distinct groups.
    pub num_groups: usize,
    /// Groups in which every advantage of every turn is exactly 0.0 (no learning signal).
    pub zero_signal_groups: usize,
}

/// `G_k = Σ_{j ≥ k} γ^{j−k} r_j` for each turn `k`, computed backwards as
/// `G_k = r_k + γ · G_{k+1}`.
///
/// # Shapes
/// `rewards: [K]` → `[K]`.
pub fn returns_to_go(rewards: &[f32], gamma: f32) -> Vec<f32> {
    let mut returns = vec![0.0f32; rewards.len()];
    let mut next = 0.0f64;
    for (k, &r) in rewards.iter().enumerate().rev() {
        next = f64::from(r) + f64::from(gamma) * next;
        returns[k] = next as f32;
    }
    returns
}

/// Per-turn advantages by the rule of this module: returns to go, then
/// [`group_advantages`] over the samples of each group at each turn index.
///
/// `turn_rewards[i]` are the per-turn rewards of sample `i` (samples may have different numbers
/// of turns, including none), `groups[i]` its group.
///
/// # Errors
/// [`Error::Length`] when `groups` and `turn_rewards` differ in length,
/// [`Error::NonFiniteReward`] for a NaN or infinite reward, [`Error::Config`] for `gamma`
/// outside `[0, 1]`.
pub fn turn_advantages<K: Ord + Clone>(
    turn_rewards: &[Vec<f32>],
    groups: &[K],
    config: &AdvantageConfig,
) -> Result<TurnAdvantages, Error> {
    trained_turn_advantages(turn_rewards, None, groups, config)
}

/// [`turn_advantages`] where only the turns with `trained[i][k]` (default: all) are compared at
/// their turn index (see the module docs); the others get 0.
fn trained_turn_advantages<K: Ord + Clone>(
    turn_rewards: &[Vec<f32>],
    trained: Option<&[Vec<bool>]>,
    groups: &[K],
    config: &AdvantageConfig,
) -> Result<TurnAdvantages, Error> {
    if groups.len() != turn_rewards.len() {
        return Err(Error::Length {
            input: "groups",
            reference: "turn_rewards",
            expected: turn_rewards.len(),
            actual: groups.len(),
        });
    }
    if !(0.0..=1.0).contains(&config.gamma) {
        return Err(Error::Config {
            field: "gamma",
            value: f64::from(config.gamma),
            expected: "a discount in [0, 1]",
        });
    }
    if !(config.progress_bonus.is_finite() && config.progress_bonus >= 0.0) {
        return Err(Error::Config {
            field: "progress_bonus",
            value: f64::from(config.progress_bonus),
            expected: "a finite coefficient >= 0",
        });
    }
    for rewards in turn_rewards {
        if let Some((index, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
            return Err(Error::NonFiniteReward { index, value });
        }
    }
    let returns: Vec<Vec<f32>> = turn_rewards
        .iter()
        .map(|r| {
            let mut g = returns_to_go(r, config.gamma);
            if config.progress_bonus > 0.0 {
                for k in 1..r.len() {
                    g[k] += config.progress_bonus * (r[k] - r[k - 1]);
                }
            }
            g
        })
        .collect();
    let mut advantages: Vec<Vec<f32>> = returns.iter().map(|g| vec![0.0; g.len()]).collect();
    let max_turns = returns.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..max_turns {
        let is_trained = |i: usize| trained.is_none_or(|t| t[i].get(k).copied().unwrap_or(false));
        let present: Vec<usize> = (0..returns.len())
            .filter(|&i| returns[i].len() > k && is_trained(i))
            .collect();
        let g_k: Vec<f32> = present.iter().map(|&i| returns[i][k]).collect();
        let keys: Vec<&K> = present.iter().map(|&i| &groups[i]).collect();
        let at_k = group_advantages(&g_k, &keys, config.adv_estimator, config.scale_rewards)?;
        for (&i, a) in present.iter().zip(at_k.advantages) {
            advantages[i][k] = a;
        }
    }

    let mut signal: BTreeMap<&K, bool> = BTreeMap::new();
    for (g, a) in groups.iter().zip(&advantages) {
        *signal.entry(g).or_default() |= a.iter().any(|&x| x != 0.0);
    }
    Ok(TurnAdvantages {
        advantages,
        num_groups: signal.len(),
        zero_signal_groups: signal.values().filter(|&&s| !s).count(),
    })
}

/// Per-segment advantages of whole trajectories, by the rule of this module applied to each
/// agent separately: an agent's turns are its segments in order, its rewards
/// `outcome.rewards[agent]` (0 for agents without rewards), and it is compared with the same
/// agent at the same turn index in trajectories of the same `group_id`.
///
/// `trained[t][s]` says whether segment `s` of trajectory `t` will have tokens in the loss
/// (`None`: every segment): only trained segments are compared at their turn index (module
/// docs); the others get 0 but still count as turns, their rewards flowing into earlier turns'
/// returns.
///
/// Returns `advantages[t][s]` for segment `s` of trajectory `t`. `num_groups` and
/// `zero_signal_groups` count `group_id`s.
///
/// # Errors
/// [`Error::Trajectory`] when a trajectory's rewards do not have one finite entry per turn,
/// [`Error::Config`] for `gamma` outside `[0, 1]`, [`Error::Length`] when `trained` does not
/// have one entry per trajectory.
pub fn segment_advantages(
    trajectories: &[Trajectory],
    trained: Option<&[Vec<bool>]>,
    config: &AdvantageConfig,
) -> Result<TurnAdvantages, Error> {
    if let Some(trained) = trained
        && trained.len() != trajectories.len()
    {
        return Err(Error::Length {
            input: "trained",
            reference: "trajectories",
            expected: trajectories.len(),
            actual: trained.len(),
        });
    }
    let segment_trained =
        |t: usize, s: usize| trained.is_none_or(|m| m[t].get(s).copied().unwrap_or(false));
    let mut turn_trained: Vec<Vec<bool>> = Vec::new();
    // One "sample" per (trajectory, agent): its rewards and the segments they belong to.
    let mut rewards: Vec<Vec<f32>> = Vec::new();
    let mut keys: Vec<(u64, &AgentId)> = Vec::new();
    let mut places: Vec<(usize, Vec<usize>)> = Vec::new();
    for (t, trajectory) in trajectories.iter().enumerate() {
        let per_segment = trajectory.segment_rewards()?;
        let mut by_agent: BTreeMap<&AgentId, (Vec<f32>, Vec<usize>)> = BTreeMap::new();
        for (s, (segment, r)) in trajectory.segments.iter().zip(per_segment).enumerate() {
            let entry = by_agent.entry(&segment.agent).or_default();
            entry.0.push(r);
            entry.1.push(s);
        }
        for (agent, (r, segments)) in by_agent {
            turn_trained.push(segments.iter().map(|&s| segment_trained(t, s)).collect());
            rewards.push(r);
            keys.push((trajectory.group_id, agent));
            places.push((t, segments));
        }
    }
    let turns = trained_turn_advantages(&rewards, Some(&turn_trained), &keys, config)?;

    let mut advantages: Vec<Vec<f32>> = trajectories
        .iter()
        .map(|t| vec![0.0; t.segments.len()])
        .collect();
    let mut signal: BTreeMap<u64, bool> = BTreeMap::new();
    for ((t, segments), a) in places.iter().zip(&turns.advantages) {
        for (&s, &value) in segments.iter().zip(a) {
            advantages[*t][s] = value;
        }
        *signal.entry(trajectories[*t].group_id).or_default() |= a.iter().any(|&x| x != 0.0);
    }
    for t in trajectories {
        signal.entry(t.group_id).or_default();
    }
    Ok(TurnAdvantages {
        advantages,
        num_groups: signal.len(),
        zero_signal_groups: signal.values().filter(|&&s| !s).count(),
    })
}

#[cfg(test)]
mod tests {
    use kaizen_core::{FinishReason, Outcome, Segment, WeightsVersion};

    use super::*;
    use crate::{AdvantageEstimator, ScaleRewards};

    fn config(scale_rewards: ScaleRewards, gamma: f32) -> AdvantageConfig {
        AdvantageConfig {
            adv_estimator: AdvantageEstimator::Grpo,
            scale_rewards,
            gamma,
            progress_bonus: 0.0,
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn returns_to_go_discount_later_turns() {
        close(&returns_to_go(&[1.0, 0.0, 2.0], 1.0), &[3.0, 2.0, 2.0]);
        close(&returns_to_go(&[1.0, 0.0, 2.0], 0.5), &[1.5, 1.0, 2.0]);
        close(&returns_to_go(&[1.0, 0.0, 2.0], 0.0), &[1.0, 0.0, 2.0]);
        assert!(returns_to_go(&[], 1.0).is_empty());
    }

    #[test]
    fn worked_example_of_the_module_docs() {
        let rewards = vec![vec![0.0, 1.0], vec![1.0], vec![0.0, 0.0]];
        let out = turn_advantages(&rewards, &[5, 5, 5], &config(ScaleRewards::None, 1.0)).unwrap();
        close(&out.advantages[0], &[1.0 / 3.0, 0.5]);
        close(&out.advantages[1], &[1.0 / 3.0]);
        close(&out.advantages[2], &[-2.0 / 3.0, -0.5]);
        assert_eq!((out.num_groups, out.zero_signal_groups), (1, 0));
    }

    /// SCoRe's bonus, by hand: four two-attempt episodes (wrong→right, right→right,
    /// right→wrong, wrong→wrong), α = 2, γ = 1, no scaling.
    #[test]
    fn progress_bonus_rewards_corrections_and_only_the_revising_turn() {
        let rewards = vec![
            vec![0.0, 1.0],
            vec![1.0, 1.0],
            vec![1.0, 0.0],
            vec![0.0, 0.0],
        ];
        let mut cfg = config(ScaleRewards::None, 1.0);
        cfg.progress_bonus = 2.0;
        let out = turn_advantages(&rewards, &[0; 4], &cfg).unwrap();
        // Turn 0 returns are unshaped: 1, 2, 1, 0 -> mean 1.
        // Turn 1 returns: 1 + 2·1 = 3, 1 + 0 = 1, 0 − 2 = −2, 0 -> mean 0.5.
        close(&out.advantages[0], &[0.0, 2.5]);
        close(&out.advantages[1], &[1.0, 0.5]);
        close(&out.advantages[2], &[0.0, -2.5]);
        close(&out.advantages[3], &[-1.0, -0.5]);
        // Off, it is the plain rule; negative or NaN coefficients are errors.
        cfg.progress_bonus = 0.0;
        let plain = turn_advantages(&rewards, &[0; 4], &cfg).unwrap();
        close(&plain.advantages[0], &[0.0, 0.5]);
        for bad in [-1.0, f32::NAN] {
            cfg.progress_bonus = bad;
            assert!(matches!(
                turn_advantages(&rewards, &[0; 4], &cfg),
                Err(Error::Config {
                    field: "progress_bonus",
                    ..
                })
            ));
        }
    }

    #[test]
    fn turns_are_normalised_per_turn_index_with_group_std() {
        // γ = 0.5. Group 1: a [1, 1] -> G [1.5, 1]; b [0, 0, 1] -> G [0.25, 0.5, 1];
        // c [1] -> G [1]. Group 2: d [0, 2] -> G [1, 2]; e [0, 0] -> G [0, 0].
        let rewards = vec![
            vec![1.0, 1.0],
            vec![0.0, 0.0, 1.0],
            vec![1.0],
            vec![0.0, 2.0],
            vec![0.0, 0.0],
        ];
        let groups = [1, 1, 1, 2, 2];
        let out = turn_advantages(&rewards, &groups, &config(ScaleRewards::Group, 0.5)).unwrap();
        let norm = |x: f64, mean: f64, std: f64| ((x - mean) / (std + 1e-4)) as f32;
        // Group 1, turn 0: 1.5, 0.25, 1 -> mean 11/12, unbiased std 0.629153.
        let (m, s) = (11.0 / 12.0, 0.629_152_870_4);
        // Group 1, turn 1: 1 (a), 0.5 (b) -> mean 0.75, std sqrt(0.125) = 0.353553.
        let (m1, s1) = (0.75, 0.125f64.sqrt());
        close(&out.advantages[0], &[norm(1.5, m, s), norm(1.0, m1, s1)]);
        // Turn 2 of b is alone in its group at that index: no baseline, exactly 0.
        close(
            &out.advantages[1],
            &[norm(0.25, m, s), norm(0.5, m1, s1), 0.0],
        );
        close(&out.advantages[2], &[norm(1.0, m, s)]);
        // Group 2, turn 0: 1, 0; turn 1: 2, 0. Both have std sqrt(0.5) or sqrt(2).
        let s0 = 0.5f64.sqrt();
        let s1 = 2.0f64.sqrt();
        close(
            &out.advantages[3],
            &[norm(1.0, 0.5, s0), norm(2.0, 1.0, s1)],
        );
        close(
            &out.advantages[4],
            &[norm(0.0, 0.5, s0), norm(0.0, 1.0, s1)],
        );
        assert_eq!((out.num_groups, out.zero_signal_groups), (2, 0));
    }

    #[test]
    fn a_group_equal_at_every_turn_is_zero_signal() {
        let rewards = vec![vec![0.0, 1.0], vec![0.0, 1.0], vec![1.0], vec![0.0]];
        let groups = ["same", "same", "other", "other"];
        let out = turn_advantages(&rewards, &groups, &config(ScaleRewards::Group, 1.0)).unwrap();
        assert_eq!(out.advantages[0], vec![0.0, 0.0]);
        assert_eq!(out.advantages[1], vec![0.0, 0.0]);
        assert!(out.advantages[2][0] > 0.0);
        assert_eq!((out.num_groups, out.zero_signal_groups), (2, 1));
        let err = turn_advantages(&rewards, &groups, &config(ScaleRewards::Group, 1.5));
        assert!(matches!(err, Err(Error::Config { field: "gamma", .. })));
    }

    fn segment(agent: &str, trainable: bool) -> Segment {
        Segment {
            agent: agent.into(),
            thread: 0,
            prompt_tokens: vec![1],
            completion_tokens: vec![2, 3],
            behavior_logprobs: vec![-0.1, -0.2],
            trainable,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Eos,
            self_certainty: None,
        }
    }

    fn trajectory(group_id: u64, segments: Vec<Segment>, outcome: Outcome) -> Trajectory {
        Trajectory {
            id: group_id * 10 + segments.len() as u64,
            env: "test".into(),
            seed: group_id,
            group_id,
            segments,
            outcome,
        }
    }

    #[test]
    fn segment_advantages_compare_each_agent_at_the_same_turn() {
        // Group 0: two solver/critic episodes. Solver turns s0, s1; critic turn c0 in between.
        let mut o1 = Outcome::single("solver", vec![0.0, 1.0]);
        o1.rewards.insert("critic".into(), vec![1.0]);
        let mut o2 = Outcome::single("solver", vec![0.0, 0.0]);
        o2.rewards.insert("critic".into(), vec![0.0]);
        let segs = || {
            vec![
                segment("solver", true),
                segment("critic", true),
                segment("solver", true),
            ]
        };
        // Group 9: one episode with a single solver turn (a group of one: no signal).
        let batch = [
            trajectory(0, segs(), o1),
            trajectory(0, segs(), o2),
            trajectory(
                9,
                vec![segment("solver", false)],
                Outcome::single("solver", vec![1.0]),
            ),
        ];
        let out = segment_advantages(&batch, None, &config(ScaleRewards::None, 1.0)).unwrap();
        // Solver turn 0: returns 1 vs 0 -> ±0.5; solver turn 1: 1 vs 0 -> ±0.5;
        // critic turn 0: 1 vs 0 -> ±0.5.
        close(&out.advantages[0], &[0.5, 0.5, 0.5]);
        close(&out.advantages[1], &[-0.5, -0.5, -0.5]);
        close(&out.advantages[2], &[0.0]);
        assert_eq!((out.num_groups, out.zero_signal_groups), (2, 1));
    }

    /// Guards against untrained group members shaping their siblings' advantages (issue
    /// 14.4): a member whose tokens are all dropped before the loss used to enter its group's
    /// mean and std, handing the remaining members advantages earned by comparison with a
    /// sample that is never trained.
    #[test]
    fn members_that_are_not_trained_take_no_part_in_the_baseline() {
        let one_turn = |g: u64, r: f32| {
            trajectory(
                g,
                vec![segment("solver", true)],
                Outcome::single("solver", vec![r]),
            )
        };
        // Group 0: rewards 1, 0, 0, 1 with the last member dropped (e.g. mixed temperature).
        // Group 1: rewards 1, 0 with the 0 dropped: one trained member left, advantage 0.
        let batch = [
            one_turn(0, 1.0),
            one_turn(0, 0.0),
            one_turn(0, 0.0),
            one_turn(0, 1.0),
            one_turn(1, 1.0),
            one_turn(1, 0.0),
        ];
        let trained = vec![
            vec![true],
            vec![true],
            vec![true],
            vec![false],
            vec![true],
            vec![false],
        ];
        let cfg = config(ScaleRewards::Group, 1.0);
        let out = segment_advantages(&batch, Some(&trained), &cfg).unwrap();
        // Trained members of group 0: 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3).
        let sd = (1.0f64 / 3.0).sqrt();
        let a = |r: f64| ((r - 1.0 / 3.0) / (sd + crate::STD_EPS)) as f32;
        close(
            &[
                out.advantages[0][0],
                out.advantages[1][0],
                out.advantages[2][0],
            ],
            &[a(1.0), a(0.0), a(0.0)],
        );
        assert_eq!(out.advantages[3], vec![0.0]);
        assert_eq!(
            out.advantages[4],
            vec![0.0],
            "a group of one trained member"
        );
        assert_eq!(out.advantages[5], vec![0.0]);
        assert_eq!((out.num_groups, out.zero_signal_groups), (2, 1));
        // Without the mask the dropped members would move the baseline (the old behaviour).
        let all = segment_advantages(&batch, None, &cfg).unwrap();
        let lone = (0.5 / (0.5f64.sqrt() + crate::STD_EPS)) as f32;
        assert!((all.advantages[4][0] - lone).abs() < 1e-6);
        assert!((all.advantages[0][0] - a(1.0)).abs() > 0.1);

        // Multi-turn: a dropped second turn leaves the first turn's comparison alone, and its
        // reward still flows into its own first turn's return.
        let two = |r: [f32; 2]| {
            trajectory(
                5,
                vec![segment("solver", true), segment("solver", true)],
                Outcome::single("solver", r.to_vec()),
            )
        };
        let batch = [two([0.0, 1.0]), two([0.0, 0.0]), two([1.0, 1.0])];
        let trained = vec![vec![true, true], vec![true, false], vec![true, true]];
        let cfg = config(ScaleRewards::None, 1.0);
        let out = segment_advantages(&batch, Some(&trained), &cfg).unwrap();
        // Turn 0 returns 1, 0, 2 (mean 1); turn 1 among trained: 1, 1 (mean 1).
        close(&out.advantages[0], &[0.0, 0.0]);
        close(&out.advantages[1], &[-1.0, 0.0]);
        close(&out.advantages[2], &[1.0, 0.0]);
        let err = segment_advantages(&batch, Some(&trained[..2]), &cfg).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Length {
                    input: "trained",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn segment_advantages_reject_inconsistent_rewards() {
        let bad = trajectory(
            0,
            vec![segment("solver", true)],
            Outcome::single("solver", vec![1.0, 0.0]),
        );
        let err = segment_advantages(&[bad], None, &AdvantageConfig::default()).unwrap_err();
        assert!(matches!(err, Error::Trajectory(_)), "{err}");
        assert!(err.to_string().contains("solver"), "{err}");
    }
}
