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
    pub(super) fn parse(self, response: &str) -> Option<Expr> {
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
    let Some(rep) = majority_index(&parsed) else {
        return MajorityVote {
            answer: None,
            rewards: vec![0.0; responses.len()],
            agreement: 0.0,
        };
    };
    agreeing_with(responses, &parsed, parsed[rep].as_ref(), responses[rep])
}

/// The index of the first response of the largest cluster of equal answers (ties to the
/// cluster seen first); `None` when no response has an answer.
pub(super) fn majority_index(parsed: &[Option<Expr>]) -> Option<usize> {
    // clusters[i] = (representative response index, member count)
    let mut clusters: Vec<(usize, usize)> = Vec::new();
    for (i, answer) in parsed.iter().enumerate() {
        let Some(answer) = answer else { continue };
        let home = clusters
            .iter_mut()
            .find(|(rep, _)| parsed[*rep].as_ref().is_some_and(|r| r.equals(answer)));
        match home {
            Some((_, count)) => *count += 1,
            None => clusters.push((i, 1)),
        }
    }
    let mut majority: Option<(usize, usize)> = None;
    for c in clusters {
        if majority.is_none_or(|m| c.1 > m.1) {
            majority = Some(c);
        }
    }
    majority.map(|(rep, _)| rep)
}

/// Rewards `responses` (answers `parsed`) with `1[a_i = label]`; `label_text` is the response
/// the label was read from (its final-answer span becomes [`MajorityVote::answer`]).
pub(super) fn agreeing_with(
    responses: &[&str],
    parsed: &[Option<Expr>],
    label: Option<&Expr>,
    label_text: &str,
) -> MajorityVote {
    let Some(label) = label else {
        return MajorityVote {
            answer: None,
            rewards: vec![0.0; responses.len()],
            agreement: 0.0,
        };
    };
    let rewards: Vec<f32> = parsed
        .iter()
        .map(|a| f32::from(u8::from(a.as_ref().is_some_and(|a| a.equals(label)))))
        .collect();
    let agreeing = rewards.iter().filter(|&&r| r > 0.0).count();
    MajorityVote {
        answer: Some(final_answer_span(label_text).to_string()),
        agreement: agreeing as f64 / responses.len().max(1) as f64,
        rewards,
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
    let ballots = Ballots::of(members, answers);
    let label = majority_index(&ballots.parsed);
    let vote = agreeing_with(
        &ballots.texts,
        &ballots.parsed,
        label.and_then(|i| ballots.parsed[i].as_ref()),
        label.map_or("", |i| ballots.texts[i]),
    );
    let in_majority = ballots.assign(members, &vote.rewards);
    GroupVote {
        vote,
        previous: ballots.previous,
        in_majority,
    }
}

/// The trained turns of a group, as votes.
pub(super) struct Ballots<'a> {
    /// Per member, its trained turns' rewards before relabelling (`None`: left out).
    pub previous: Vec<Option<Vec<f32>>>,
    /// The texts of the trained turns of the members not left out, member then turn order.
    pub texts: Vec<&'a str>,
    /// Their answers.
    pub parsed: Vec<Option<Expr>>,
}

impl<'a> Ballots<'a> {
    /// The ballots of `members`: a member is left out when its texts are not one per segment
    /// or its rewards do not line up with its turns.
    pub fn of(members: &[GroupMember<'a>], answers: VoteAnswers) -> Self {
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
        let mut texts: Vec<&'a str> = Vec::new();
        for (m, prev) in members.iter().zip(&previous) {
            if prev.is_none() {
                continue;
            }
            for (s, text) in m.trajectory.segments.iter().zip(&m.texts) {
                if s.trainable {
                    texts.push(text);
                }
            }
        }
        let parsed = texts.iter().map(|t| answers.parse(t)).collect();
        Self {
            previous,
            texts,
            parsed,
        }
    }

    /// Gives the trained turns of the members not left out the `rewards` (one per ballot, in
    /// ballot order) and every untrained turn 0; returns, per member, which trained turns got
    /// a positive reward (empty for a member left out).
    pub fn assign(&self, members: &mut [GroupMember<'_>], rewards: &[f32]) -> Vec<Vec<bool>> {
        let mut next = rewards.iter();
        let mut flags_all = Vec::with_capacity(members.len());
        for (m, prev) in members.iter_mut().zip(&self.previous) {
            let mut flags = Vec::new();
            if prev.is_none() {
                flags_all.push(flags);
                continue;
            }
            let mut by_agent: std::collections::BTreeMap<AgentId, Vec<f32>> = Default::default();
            for s in &m.trajectory.segments {
                let r = if s.trainable {
                    let r = next.next().copied().unwrap_or(0.0);
                    flags.push(r > 0.0);
                    r
                } else {
                    0.0
                };
                by_agent.entry(s.agent.clone()).or_default().push(r);
            }
            for (agent, list) in &mut m.trajectory.outcome.rewards {
                *list = by_agent.remove(agent).unwrap_or_default();
            }
            m.trajectory.outcome.rewards.extend(by_agent);
            flags_all.push(flags);
        }
        flags_all
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
