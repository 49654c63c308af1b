//! Rewards from the policy's own confidence, without a verifier: self-certainty (Kang et al.
//! 2025, "Scalable Best-of-N Selection for Large Language Models via Self-Certainty") as the
//! reward of every turn, as in Intuitor (Zhao et al. 2025, "Learning to Reason without External
//! Rewards"), and the agreement of that score with a verifier, for reporting.
//!
//! A turn's self-certainty is the mean over its sampled tokens of `KL(U ‖ p_t)`, the divergence
//! of the sampling distribution at step `t` from the uniform distribution over the vocabulary
//! (recorded by the sampler in [`Segment::self_certainty`]): high when the model puts its mass
//! on few tokens.

use kaizen_core::{AgentId, Segment, Trajectory};

/// A turn that should carry a self-certainty score but does not.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "trajectory {trajectory}: segment {segment} (agent `{agent}`) is trained but has no \
     self-certainty (sampled greedily?); self-certainty rewards need sampling with temperature > 0"
)]
pub struct MissingSelfCertainty {
    /// The trajectory's id.
    pub trajectory: u64,
    /// Index of the segment in the trajectory.
    pub segment: usize,
    /// The agent that spoke.
    pub agent: String,
}

/// Replaces every agent's per-turn rewards by its turns' self-certainty (nats; 0 for a turn
/// that is not trained and has none). Returns the rewards as they were, one per segment in
/// segment order ([`Trajectory::segment_rewards`]), for reporting.
///
/// # Errors
/// [`MissingSelfCertainty`] for a trained turn without a score; the trajectory is then left
/// unchanged. A trajectory whose rewards do not line up with its turns keeps them and reports
/// no previous rewards (`Ok(None)`): the learner rejects it as it would any such trajectory.
pub fn relabel_with_self_certainty(
    trajectory: &mut Trajectory,
) -> Result<Option<Vec<f32>>, MissingSelfCertainty> {
    let Ok(previous) = trajectory.segment_rewards() else {
        return Ok(None);
    };
    if let Some((segment, s)) = trajectory
        .segments
        .iter()
        .enumerate()
        .find(|(_, s)| s.trainable && s.self_certainty.is_none_or(|c| !c.is_finite()))
    {
        return Err(MissingSelfCertainty {
            trajectory: trajectory.id,
            segment,
            agent: s.agent.to_string(),
        });
    }
    let mut rewards: std::collections::BTreeMap<AgentId, Vec<f32>> = Default::default();
    for s in &trajectory.segments {
        rewards
            .entry(s.agent.clone())
            .or_default()
            .push(score(s).unwrap_or(0.0));
    }
    // Agents that had rewards but spoke no turn keep their (empty) lists.
    for (agent, list) in &mut trajectory.outcome.rewards {
        *list = rewards.remove(agent).unwrap_or_default();
    }
    trajectory.outcome.rewards.extend(rewards);
    Ok(Some(previous))
}

fn score(s: &Segment) -> Option<f32> {
    s.self_certainty.filter(|c| c.is_finite())
}

/// How often a score orders samples of the same prompt as the verifier does: over every pair
/// `(i, j)` within a group with `reward_i > reward_j`, the fraction with `score_i > score_j`
/// (ties in score count ½). This is the area under the ROC curve of the score as a detector
/// of the better sample, pooled over groups: 0.5 is chance, 1 always agrees. `None` when no
/// group has two samples with different rewards.
///
/// `groups`: per prompt, `(score, reward)` of each sample.
pub fn pairwise_agreement(groups: &[Vec<(f32, f32)>]) -> Option<f64> {
    let mut agree = 0.0f64;
    let mut pairs = 0usize;
    for group in groups {
        for (i, &(si, ri)) in group.iter().enumerate() {
            for &(sj, rj) in &group[i + 1..] {
                if ri == rj {
                    continue;
                }
                let (better, worse) = if ri > rj { (si, sj) } else { (sj, si) };
                pairs += 1;
                if better > worse {
                    agree += 1.0;
                } else if better == worse {
                    agree += 0.5;
                }
            }
        }
    }
    (pairs > 0).then(|| agree / pairs as f64)
}

#[cfg(test)]
mod tests {
    use kaizen_core::{FinishReason, Outcome, WeightsVersion};

    use super::*;

    fn segment(agent: &str, trainable: bool, score: Option<f32>) -> Segment {
        Segment {
            agent: AgentId::new(agent),
            thread: 0,
            prompt_tokens: vec![1],
            completion_tokens: vec![2, 3],
            behavior_logprobs: vec![-0.5, -0.25],
            trainable,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Eos,
            self_certainty: score,
        }
    }

    fn trajectory(segments: Vec<Segment>, outcome: Outcome) -> Trajectory {
        Trajectory {
            id: 4,
            env: "self_correct".into(),
            seed: 0,
            group_id: 0,
            segments,
            outcome,
        }
    }

    #[test]
    fn every_turn_is_rewarded_with_its_own_self_certainty() {
        let mut outcome = Outcome::single("solver", vec![0.0, 1.0]);
        outcome.rewards.insert("critic".into(), vec![1.0]);
        let mut t = trajectory(
            vec![
                segment("solver", true, Some(2.5)),
                segment("critic", true, Some(7.0)),
                segment("judge", false, None),
                segment("solver", true, Some(4.0)),
            ],
            outcome,
        );
        let before = relabel_with_self_certainty(&mut t).unwrap();
        assert_eq!(before, Some(vec![0.0, 1.0, 0.0, 1.0]));
        assert_eq!(t.segment_rewards().unwrap(), vec![2.5, 7.0, 0.0, 4.0]);
        t.validate().unwrap();
    }

    #[test]
    fn a_trained_turn_without_a_score_is_named_and_nothing_changes() {
        let mut t = trajectory(
            vec![
                segment("solver", true, Some(2.0)),
                segment("solver", true, None),
            ],
            Outcome::single("solver", vec![0.0, 1.0]),
        );
        let err = relabel_with_self_certainty(&mut t).unwrap_err();
        assert_eq!(err.segment, 1);
        assert!(err.to_string().contains("temperature > 0"), "{err}");
        assert_eq!(t.segment_rewards().unwrap(), vec![0.0, 1.0]);
    }

    #[test]
    fn agreement_is_the_pooled_auc_of_the_score() {
        // Group 1: the right sample scores highest (2 agreeing pairs of 2).
        // Group 2: one right sample below a wrong one, one tie (0 + 0.5 of 2).
        // Group 3: all rewards equal: no pairs.
        let groups = vec![
            vec![(5.0, 1.0), (3.0, 0.0), (1.0, 0.0)],
            vec![(2.0, 1.0), (4.0, 0.0), (2.0, 0.0)],
            vec![(1.0, 1.0), (9.0, 1.0)],
        ];
        assert_eq!(pairwise_agreement(&groups), Some(2.5 / 4.0));
        assert_eq!(pairwise_agreement(&groups[2..]), None);
    }
}
