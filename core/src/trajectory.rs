use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AgentId, Error, Outcome};

/// The version of the policy weights: 0 for the initial weights, +1 per learner publish.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WeightsVersion(pub u64);

impl WeightsVersion {
    /// How many versions `self` is behind `newest` (0 when it is the newest or newer).
    pub fn lag(self, newest: WeightsVersion) -> u64 {
        newest.0.saturating_sub(self.0)
    }

    /// The next version.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl std::fmt::Display for WeightsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Why generation of one completion stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was sampled (it is part of the completion).
    Eos,
    /// A stop string appeared in the decoded text.
    Stop,
    /// The token budget (`max_new_tokens`, or the context length) ran out.
    Length,
}

/// One model turn as tokens: what the model saw and what it produced.
///
/// Segments of one agent that continue the same conversation share a `thread`; the thread's
/// tokens are the concatenation of `prompt_tokens ++ completion_tokens` over its segments in
/// order. So `prompt_tokens` is the whole rendered prompt for a thread's first segment and only
/// the newly rendered environment messages for the following ones: the model's earlier
/// completions are never re-encoded from text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The agent that spoke.
    pub agent: AgentId,
    /// The conversation thread this segment extends (unique within a trajectory).
    pub thread: u32,
    /// Tokens appended to the thread before the completion (see the type's docs).
    pub prompt_tokens: Vec<u32>,
    /// Token ids exactly as sampled, including a final EOS token when one was sampled.
    pub completion_tokens: Vec<u32>,
    /// `log π_behaviour(token)` for each completion token, under the distribution actually
    /// sampled from (after temperature, top-k, top-p, min-p). Same length as
    /// `completion_tokens`.
    pub behavior_logprobs: Vec<f32>,
    /// Whether the learner trains on this turn.
    pub trainable: bool,
    /// The temperature the completion was sampled at (the learner scores at the same one).
    pub temperature: f32,
    /// The weights that produced the completion.
    pub weights_version: WeightsVersion,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The completion's self-certainty (nats): the mean over its tokens of the sampling
    /// distribution's KL divergence from uniform (Kang et al. 2025; see
    /// `kaizen_model::Sampled::self_certainty`). The model's own confidence, usable to select
    /// or reward samples without a verifier. `None` when not recorded (greedy decoding,
    /// trajectories from older peers).
    #[serde(default)]
    pub self_certainty: Option<f32>,
}

/// One finished episode, as sent from an actor to the learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Unique id (per run).
    pub id: u64,
    /// Name of the environment that produced it.
    pub env: String,
    /// The seed the environment was reset with.
    pub seed: u64,
    /// Trajectories played from the same seed share a group id (the G samples of GRPO).
    pub group_id: u64,
    /// The model turns, in the order they were taken.
    pub segments: Vec<Segment>,
    /// Rewards and metrics from the environment.
    pub outcome: Outcome,
}

impl Trajectory {
    /// The oldest weights version among trainable segments (`None` when nothing is trainable).
    /// This is the version that decides the trajectory's policy lag.
    pub fn oldest_trainable_version(&self) -> Option<WeightsVersion> {
        self.segments
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.weights_version)
            .min()
    }

    /// Number of completion tokens over all segments.
    pub fn completion_tokens(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.completion_tokens.len())
            .sum()
    }

    /// The reward of every segment, in segment order: `outcome.rewards[agent][k]` for the
    /// agent's `k`-th segment (0 for agents without rewards).
    ///
    /// # Errors
    /// [`Error::RewardCount`] when an agent's reward list does not have one entry per turn,
    /// [`Error::NonFiniteReward`] for NaN or infinite rewards.
    pub fn segment_rewards(&self) -> Result<Vec<f32>, Error> {
        let mut turns: BTreeMap<&AgentId, usize> = BTreeMap::new();
        for s in &self.segments {
            *turns.entry(&s.agent).or_default() += 1;
        }
        for (agent, rewards) in &self.outcome.rewards {
            let n = turns.get(agent).copied().unwrap_or(0);
            if rewards.len() != n {
                return Err(Error::RewardCount {
                    trajectory: self.id,
                    agent: agent.to_string(),
                    turns: n,
                    rewards: rewards.len(),
                });
            }
            if let Some((turn, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
                return Err(Error::NonFiniteReward {
                    trajectory: self.id,
                    agent: agent.to_string(),
                    turn,
                    value,
                });
            }
        }
        let mut seen: BTreeMap<&AgentId, usize> = BTreeMap::new();
        Ok(self
            .segments
            .iter()
            .map(|s| {
                let k = seen.entry(&s.agent).or_default();
                let r = self
                    .outcome
                    .rewards
                    .get(&s.agent)
                    .and_then(|r| r.get(*k))
                    .copied()
                    .unwrap_or(0.0);
                *k += 1;
                r
            })
            .collect())
    }

    /// Checks the invariants the learner relies on: one behaviour log-prob per completion
    /// token, one finite reward per turn.
    ///
    /// # Errors
    /// The first violated invariant, naming the trajectory, segment or agent.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, s) in self.segments.iter().enumerate() {
            if s.behavior_logprobs.len() != s.completion_tokens.len() {
                return Err(Error::LogprobLength {
                    trajectory: self.id,
                    segment: i,
                    completion: s.completion_tokens.len(),
                    logprobs: s.behavior_logprobs.len(),
                });
            }
        }
        self.segment_rewards().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(agent: &str, n: usize, version: u64, trainable: bool) -> Segment {
        Segment {
            agent: agent.into(),
            thread: 0,
            prompt_tokens: vec![1, 2],
            completion_tokens: vec![7; n],
            behavior_logprobs: vec![-0.5; n],
            trainable,
            temperature: 1.0,
            weights_version: WeightsVersion(version),
            finish_reason: FinishReason::Eos,
            self_certainty: None,
        }
    }

    fn trajectory(segments: Vec<Segment>, outcome: Outcome) -> Trajectory {
        Trajectory {
            id: 9,
            env: "test".into(),
            seed: 1,
            group_id: 3,
            segments,
            outcome,
        }
    }

    #[test]
    fn segment_rewards_follow_each_agents_turn_order() {
        let mut outcome = Outcome::single("gen", vec![0.5, -1.0]);
        outcome.rewards.insert("critic".into(), vec![1.0]);
        let t = trajectory(
            vec![
                segment("gen", 2, 0, true),
                segment("critic", 1, 0, true),
                segment("judge", 1, 0, false),
                segment("gen", 3, 0, true),
            ],
            outcome,
        );
        assert_eq!(t.segment_rewards().unwrap(), vec![0.5, 1.0, 0.0, -1.0]);
        assert_eq!(t.completion_tokens(), 7);
        t.validate().unwrap();
    }

    #[test]
    fn wrong_reward_count_names_the_agent() {
        let t = trajectory(
            vec![segment("solver", 2, 0, true)],
            Outcome::single("solver", vec![1.0, 0.0]),
        );
        let err = t.validate().unwrap_err();
        assert_eq!(
            err,
            Error::RewardCount {
                trajectory: 9,
                agent: "solver".into(),
                turns: 1,
                rewards: 2
            }
        );
        assert!(err.to_string().contains("`solver`"));
    }

    #[test]
    fn nan_reward_and_logprob_mismatch_are_errors() {
        let t = trajectory(
            vec![segment("a", 1, 0, true)],
            Outcome::single("a", vec![f32::NAN]),
        );
        assert!(matches!(t.validate(), Err(Error::NonFiniteReward { .. })));
        let mut s = segment("a", 2, 0, true);
        s.behavior_logprobs.pop();
        let t = trajectory(vec![s], Outcome::single("a", vec![1.0]));
        assert!(matches!(t.validate(), Err(Error::LogprobLength { .. })));
    }

    #[test]
    fn oldest_trainable_version_ignores_untrained_turns() {
        let t = trajectory(
            vec![
                segment("a", 1, 5, true),
                segment("a", 1, 2, false),
                segment("a", 1, 4, true),
            ],
            Outcome::default(),
        );
        assert_eq!(t.oldest_trainable_version(), Some(WeightsVersion(4)));
        assert_eq!(WeightsVersion(4).lag(WeightsVersion(6)), 2);
        assert_eq!(WeightsVersion(7).lag(WeightsVersion(6)), 0);
    }
}
