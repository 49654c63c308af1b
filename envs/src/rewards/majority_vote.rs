//! Label-free rewards by majority vote across a group of samples (test-time RL; Zuo et al.
//! 2025, "TTRL: Test-Time Reinforcement Learning"): the answer most samples agree on stands in
//! for the gold answer.
//!
//! For a group of `G` responses to one prompt with final answers `a_1..a_G`, the pseudo-label is
//! `y* = argmax_y Σ_i 1[a_i = y]` (ties to the answer seen first) and the reward of response `i`
//! is `r_i = 1[a_i = y*]`; a response without an answer votes for nothing and earns 0.

use kaizen_core::{AgentId, Trajectory};
use serde::{Deserialize, Serialize};

use super::math_answer::{final_answer_span, final_number, parse_final_answer};
use super::math_expression::{self, Expr};

/// The result of a vote over one group of responses to the same prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct MajorityVote {
    /// The final-answer text of the first response in the majority (`None` when no response
    /// had an answer).
    pub answer: Option<String>,
    /// 1 for responses whose answer equals the majority's, else 0 (also for no answer).
    pub rewards: Vec<f32>,
    /// Fraction of the group in the majority, in `[0, 1]`.
    pub agreement: f64,
}

/// How a vote reads each response's final answer (`[grpo] vote_answers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteAnswers {
    /// The final answer as math ([`parse_final_answer`]), compared by value as in
    /// [`super::answers_match`]: `1/2` votes with `0.5`, and a restated question (`3 + 4`)
    /// with its value.
    #[default]
    Math,
    /// Only a computed number ([`final_number`]), the reading of [`super::numbers_match`]: a
    /// restated question is no answer. Use it when the task's verifier is numeric, or the
    /// policy can win every vote by echoing the question.
    Numeric,
}

impl VoteAnswers {
    fn parse(self, response: &str) -> Option<Expr> {
        match self {
            Self::Math => parse_final_answer(response),
            Self::Numeric => math_expression::parse(&final_number(response)?),
        }
    }
}

/// Votes over `responses` (the group's samples): answers are compared by value, as in
/// [`super::answers_match`]; ties go to the answer seen first.
pub fn majority_vote(responses: &[&str]) -> MajorityVote {
    majority_vote_by(responses, VoteAnswers::Math)
}

/// [`majority_vote`] with the answers read as `answers` says.
pub fn majority_vote_by(responses: &[&str], answers: VoteAnswers) -> MajorityVote {
    let parsed: Vec<Option<Expr>> = responses.iter().map(|r| answers.parse(r)).collect();
    // clusters[i] = (representative response index, member indices)
    let mut clusters: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, answer) in parsed.iter().enumerate() {
        let Some(answer) = answer else { continue };
        let home = clusters
            .iter_mut()
            .find(|(rep, _)| parsed[*rep].as_ref().is_some_and(|r| r.equals(answer)));
        match home {
            Some((_, members)) => members.push(i),
            None => clusters.push((i, vec![i])),
        }
    }
    let mut majority: Option<&(usize, Vec<usize>)> = None;
    for c in &clusters {
        if majority.is_none_or(|m| c.1.len() > m.1.len()) {
            majority = Some(c);
        }
    }
    let mut rewards = vec![0.0; responses.len()];
    let Some((rep, members)) = majority else {
        return MajorityVote {
            answer: None,
            rewards,
            agreement: 0.0,
        };
    };
    for &i in members {
        rewards[i] = 1.0;
    }
    MajorityVote {
        answer: Some(final_answer_span(responses[*rep]).to_string()),
        rewards,
        agreement: members.len() as f64 / responses.len() as f64,
    }
}

/// One episode of a group to relabel: its trajectory and the text of each of its turns, one
/// per segment in segment order (the report's `turns[k].answer`).
#[derive(Debug)]
pub struct GroupMember<'a> {
    /// The episode's trajectory; its `outcome.rewards` are replaced.
    pub trajectory: &'a mut Trajectory,
    /// The model's text of each segment.
    pub texts: Vec<&'a str>,
}

/// What [`relabel_group_by_majority`] did to one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupVote {
    /// The vote over every trained turn of the group (its `rewards` in member, then turn
    /// order).
    pub vote: MajorityVote,
    /// Per member, the rewards of its trained turns before the vote, in segment order (aligned
    /// with [`GroupVote::in_majority`]); `None` for a member left out (texts not one per
    /// segment, or rewards that do not line up with its turns), whose rewards are unchanged:
    /// the caller should reject it.
    pub previous: Vec<Option<Vec<f32>>>,
    /// Per member, whether each trained turn is in the majority (its new reward is 1), in
    /// segment order over trained segments; empty for a member left out.
    pub in_majority: Vec<Vec<bool>>,
}

/// Replaces the rewards of a group of episodes of one prompt with majority-vote pseudo-labels
/// (TTRL): the final answers of every trained turn of the group vote together (a two-attempt
/// episode casts two votes); each trained turn then earns `1[a = y*]`, every untrained turn 0.
/// The environment's own rewards are returned in [`GroupVote::previous`], for logging only.
///
/// Meant for single-answer tasks (every trained turn answers the same question); in games whose
/// agents answer different questions the vote is meaningless.
pub fn relabel_group_by_majority(
    members: &mut [GroupMember<'_>],
    answers: VoteAnswers,
) -> GroupVote {
    let previous: Vec<Option<Vec<f32>>> = members
        .iter()
        .map(|m| {
            let rewards = m.trajectory.segment_rewards().ok()?;
            let segments = &m.trajectory.segments;
            (m.texts.len() == segments.len()).then(|| {
                let trained = segments.iter().zip(rewards).filter(|(s, _)| s.trainable);
                trained.map(|(_, r)| r).collect()
            })
        })
        .collect();
    let mut voters: Vec<&str> = Vec::new();
    for (m, prev) in members.iter().zip(&previous) {
        if prev.is_none() {
            continue;
        }
        for (s, text) in m.trajectory.segments.iter().zip(&m.texts) {
            if s.trainable {
                voters.push(text);
            }
        }
    }
    let vote = majority_vote_by(&voters, answers);
    let mut next = vote.rewards.iter();
    let mut in_majority = Vec::with_capacity(members.len());
    for (m, prev) in members.iter_mut().zip(&previous) {
        let mut flags = Vec::new();
        if prev.is_none() {
            in_majority.push(flags);
            continue;
        }
        let mut rewards: std::collections::BTreeMap<AgentId, Vec<f32>> = Default::default();
        for s in &m.trajectory.segments {
            let r = if s.trainable {
                let r = next.next().copied().unwrap_or(0.0);
                flags.push(r > 0.0);
                r
            } else {
                0.0
            };
            rewards.entry(s.agent.clone()).or_default().push(r);
        }
        for (agent, list) in &mut m.trajectory.outcome.rewards {
            *list = rewards.remove(agent).unwrap_or_default();
        }
        m.trajectory.outcome.rewards.extend(rewards);
        in_majority.push(flags);
    }
    GroupVote {
        vote,
        previous,
        in_majority,
    }
}

#[cfg(test)]
mod tests {
    use kaizen_core::{FinishReason, Outcome, Segment, WeightsVersion};

    use super::*;

    #[test]
    fn the_most_common_value_wins_across_notations() {
        let vote = majority_vote(&[
            "\\boxed{0.5}",
            "1/2",
            "#### 3",
            "no idea",
            "The answer is 1/2",
        ]);
        assert_eq!(vote.rewards, vec![1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(vote.answer.as_deref(), Some("0.5"));
        assert!((vote.agreement - 0.6).abs() < 1e-12);
    }

    #[test]
    fn ties_go_to_the_first_answer_and_empty_groups_have_none() {
        let vote = majority_vote(&["2", "3", "3", "2"]);
        assert_eq!(vote.rewards, vec![1.0, 0.0, 0.0, 1.0]);
        let none = majority_vote(&["hmm", "?"]);
        assert_eq!(none.answer, None);
        assert_eq!(none.rewards, vec![0.0, 0.0]);
    }

    #[test]
    fn numeric_answers_do_not_count_a_restated_question() {
        let math = majority_vote_by(&["\\boxed{3+4}", "\\boxed{3+4}", "7"], VoteAnswers::Math);
        assert_eq!(math.rewards, vec![1.0, 1.0, 1.0]);
        let numeric =
            majority_vote_by(&["\\boxed{3+4}", "\\boxed{3+4}", "7"], VoteAnswers::Numeric);
        assert_eq!(numeric.rewards, vec![0.0, 0.0, 1.0]);
        assert_eq!(numeric.answer.as_deref(), Some("7"));
    }

    fn segment(agent: &str, trainable: bool) -> Segment {
        Segment {
            agent: AgentId::new(agent),
            thread: 0,
            prompt_tokens: vec![1],
            completion_tokens: vec![2],
            behavior_logprobs: vec![-0.5],
            trainable,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Stop,
            self_certainty: None,
        }
    }

    fn episode(id: u64, trainable: &[bool], rewards: Vec<f32>) -> Trajectory {
        Trajectory {
            id,
            env: "self_correct".into(),
            seed: 0,
            group_id: 3,
            segments: trainable.iter().map(|&t| segment("solver", t)).collect(),
            outcome: Outcome::single("solver", rewards),
        }
    }

    #[test]
    fn every_trained_turn_of_the_group_votes_and_is_rewarded_by_the_majority() {
        let mut a = episode(1, &[true, true], vec![0.0, 1.0]);
        let mut b = episode(2, &[true, true], vec![1.0, 1.0]);
        let mut c = episode(3, &[false, true], vec![0.0, 0.0]);
        let mut bad = episode(4, &[true, true], vec![1.0, 0.0]);
        let mut members = vec![
            GroupMember {
                trajectory: &mut a,
                texts: vec!["12", "\\boxed{7}"],
            },
            GroupMember {
                trajectory: &mut b,
                texts: vec!["7", "so 7"],
            },
            // The untrained turn's "12" does not vote; the trained one's "12" does.
            GroupMember {
                trajectory: &mut c,
                texts: vec!["12", "12"],
            },
            // Texts that do not line up with the segments: left out, unchanged.
            GroupMember {
                trajectory: &mut bad,
                texts: vec!["12"],
            },
        ];
        let group = relabel_group_by_majority(&mut members, VoteAnswers::Numeric);
        // Votes: 12, 7, 7, 7, 12 -> 7 with 3 of 5.
        assert_eq!(group.vote.answer.as_deref(), Some("7"));
        assert!((group.vote.agreement - 0.6).abs() < 1e-12);
        assert_eq!(group.previous[0], Some(vec![0.0, 1.0]));
        assert_eq!(group.previous[2], Some(vec![0.0]), "trained turns only");
        assert_eq!(group.previous[3], None);
        assert_eq!(
            group.in_majority,
            vec![vec![false, true], vec![true, true], vec![false], vec![]]
        );
        drop(members);
        assert_eq!(a.outcome.rewards[&AgentId::new("solver")], vec![0.0, 1.0]);
        assert_eq!(b.outcome.rewards[&AgentId::new("solver")], vec![1.0, 1.0]);
        assert_eq!(c.outcome.rewards[&AgentId::new("solver")], vec![0.0, 0.0]);
        assert_eq!(bad.outcome.rewards[&AgentId::new("solver")], vec![1.0, 0.0]);
    }
}
