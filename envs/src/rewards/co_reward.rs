//! Label-free rewards by cross-agreement between a question and its rephrased twin (Co-Reward;
//! Zhang et al. 2025, "Co-Reward: Self-supervised Reinforcement Learning for Large Language
//! Model Reasoning via Contrastive Agreement", <https://arxiv.org/abs/2508.00410>).
//!
//! A question `q` and its twin `q'` (the same problem asked another way, same answer) each get
//! a group of responses, with final answers `a_1..a_G` and `b_1..b_G`. Each group votes:
//! `ŷ = argmax_y Σ_i 1[a_i = y]`, `ŷ' = argmax_y Σ_j 1[b_j = y]` (ties to the answer seen
//! first). Each group is then rewarded by the **other** group's vote:
//!
//! `r_i = 1[a_i = ŷ']`, `r'_j = 1[b_j = ŷ]`
//!
//! so a consensus earns reward only when it survives the rewording: a group cannot reward
//! itself for an answer its twin does not reach (the collapse plain majority vote invites).
//! A response without an answer earns 0; a group whose twin has no answer at all earns 0
//! everywhere.

use super::majority_vote::{
    Ballots, GroupMember, GroupVote, VoteAnswers, agreeing_with, majority_index,
};
use super::math_expression::Expr;

/// What [`relabel_twin_groups`] did to a question's group and its twin's.
#[derive(Debug, Clone, PartialEq)]
pub struct CoReward {
    /// The question's group, rewarded by the twin's vote: its `vote.answer` is the twin's
    /// majority answer (the question's pseudo-label), `vote.agreement` the share of the
    /// question's trained turns that agree with it.
    pub question: GroupVote,
    /// The twin's group, rewarded by the question's vote (the same fields, the other way).
    pub twin: GroupVote,
    /// Whether the two groups' majority answers are equal (`None` when either group has no
    /// answer): Co-Reward's consistency between rewordings.
    pub labels_agree: Option<bool>,
}

/// Replaces the rewards of `question`'s episodes with agreement with `twin`'s majority answer,
/// and the other way round (see the module docs). Every trained turn of a group votes (a
/// two-attempt episode casts two votes) and earns `1[a = ŷ_other]`; untrained turns earn 0.
/// Members whose texts do not line up with their segments are left out, their rewards
/// unchanged (`previous[i] = None`): the caller should reject them.
pub fn relabel_twin_groups(
    question: &mut [GroupMember<'_>],
    twin: &mut [GroupMember<'_>],
    answers: VoteAnswers,
) -> CoReward {
    let (q, t) = (Ballots::of(question, answers), Ballots::of(twin, answers));
    let (q_major, t_major) = (majority_index(&q.parsed), majority_index(&t.parsed));
    let (q_label, q_label_text) = label(&q, q_major);
    let (t_label, t_label_text) = label(&t, t_major);
    let labels_agree = match (&q_label, &t_label) {
        (Some(a), Some(b)) => Some(a.equals(b)),
        _ => None,
    };
    let q_vote = agreeing_with(&q.texts, &q.parsed, t_label.as_ref(), t_label_text);
    let t_vote = agreeing_with(&t.texts, &t.parsed, q_label.as_ref(), q_label_text);
    let q_flags = q.assign(question, &q_vote.rewards);
    let t_flags = t.assign(twin, &t_vote.rewards);
    CoReward {
        question: GroupVote {
            vote: q_vote,
            previous: q.previous,
            in_majority: q_flags,
        },
        twin: GroupVote {
            vote: t_vote,
            previous: t.previous,
            in_majority: t_flags,
        },
        labels_agree,
    }
}

/// The answer of ballot `i` of `b` and its text.
fn label<'a>(b: &Ballots<'a>, i: Option<usize>) -> (Option<Expr>, &'a str) {
    (
        i.and_then(|i| b.parsed[i].clone()),
        i.map_or("", |i| b.texts[i]),
    )
}

#[cfg(test)]
mod tests {
    use kaizen_core::{AgentId, FinishReason, Outcome, Segment, Trajectory, WeightsVersion};

    use super::*;

    fn episode(id: u64, rewards: Vec<f32>) -> Trajectory {
        let segment = Segment {
            agent: AgentId::new("solver"),
            thread: 0,
            prompt_tokens: vec![1],
            completion_tokens: vec![2],
            behavior_logprobs: vec![-0.5],
            trainable: true,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Stop,
            self_certainty: None,
        };
        Trajectory {
            id,
            env: "self_correct".into(),
            seed: 0,
            group_id: id / 10,
            segments: vec![segment; rewards.len()],
            outcome: Outcome::single("solver", rewards),
        }
    }

    fn rewards(t: &Trajectory) -> &[f32] {
        &t.outcome.rewards[&AgentId::new("solver")]
    }

    #[test]
    fn each_group_is_rewarded_by_its_twins_majority() {
        // The question's group says 7 (2 of 3), its twin says 9 (2 of 3).
        let (mut q1, mut q2, mut q3) = (
            episode(11, vec![1.0]),
            episode(12, vec![1.0]),
            episode(13, vec![0.0]),
        );
        let (mut t1, mut t2, mut t3) = (
            episode(21, vec![0.0]),
            episode(22, vec![0.0]),
            episode(23, vec![1.0]),
        );
        let mut question = vec![
            GroupMember {
                trajectory: &mut q1,
                texts: vec!["\\boxed{7}"],
            },
            GroupMember {
                trajectory: &mut q2,
                texts: vec!["7"],
            },
            GroupMember {
                trajectory: &mut q3,
                texts: vec!["9"],
            },
        ];
        let mut twin = vec![
            GroupMember {
                trajectory: &mut t1,
                texts: vec!["9"],
            },
            GroupMember {
                trajectory: &mut t2,
                texts: vec!["so 9"],
            },
            GroupMember {
                trajectory: &mut t3,
                texts: vec!["7"],
            },
        ];
        let co = relabel_twin_groups(&mut question, &mut twin, VoteAnswers::Numeric);
        assert_eq!(co.labels_agree, Some(false));
        assert_eq!(
            co.question.vote.answer.as_deref(),
            Some("9"),
            "the twin's label"
        );
        assert_eq!(
            co.twin.vote.answer.as_deref(),
            Some("7"),
            "the question's label"
        );
        assert!((co.question.vote.agreement - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(co.question.previous[0], Some(vec![1.0]));
        assert_eq!(
            co.question.in_majority,
            vec![vec![false], vec![false], vec![true]]
        );
        drop((question, twin));
        assert_eq!(rewards(&q1), [0.0]);
        assert_eq!(rewards(&q3), [1.0]);
        assert_eq!(rewards(&t1), [0.0]);
        assert_eq!(rewards(&t3), [1.0]);
    }

    #[test]
    fn agreeing_groups_reward_the_shared_answer_and_a_silent_twin_rewards_nothing() {
        let (mut q1, mut q2) = (episode(11, vec![0.0, 1.0]), episode(12, vec![0.0, 0.0]));
        let (mut t1, mut t2) = (episode(21, vec![1.0]), episode(22, vec![1.0]));
        let mut question = vec![
            GroupMember {
                trajectory: &mut q1,
                texts: vec!["3", "4"],
            },
            GroupMember {
                trajectory: &mut q2,
                texts: vec!["4", "oops"],
            },
        ];
        let mut twin = vec![
            GroupMember {
                trajectory: &mut t1,
                texts: vec!["4"],
            },
            GroupMember {
                trajectory: &mut t2,
                texts: vec!["4"],
            },
        ];
        let co = relabel_twin_groups(&mut question, &mut twin, VoteAnswers::Numeric);
        assert_eq!(co.labels_agree, Some(true));
        drop((question, twin));
        assert_eq!(rewards(&q1), [0.0, 1.0]);
        assert_eq!(rewards(&q2), [1.0, 0.0]);
        assert_eq!(rewards(&t1), [1.0]);

        let mut q = episode(11, vec![1.0]);
        let mut t = episode(21, vec![1.0]);
        let mut question = vec![GroupMember {
            trajectory: &mut q,
            texts: vec!["4"],
        }];
        let mut twin = vec![GroupMember {
            trajectory: &mut t,
            texts: vec!["no idea"],
        }];
        let co = relabel_twin_groups(&mut question, &mut twin, VoteAnswers::Numeric);
        assert_eq!(co.labels_agree, None);
        assert_eq!(co.question.vote.answer, None);
        drop((question, twin));
        assert_eq!(rewards(&q), [0.0]);
        assert_eq!(rewards(&t), [0.0]);
    }
}
