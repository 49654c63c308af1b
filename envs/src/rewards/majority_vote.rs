//! Label-free rewards by majority vote across a group of samples (test-time RL, TTRL style):
//! the answer most samples agree on stands in for the gold answer.

use super::math_answer::{final_answer_span, parse_final_answer};
use super::math_expression::Expr;

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

/// Votes over `responses` (the group's samples): answers are compared by value, as in
/// [`super::answers_match`]; ties go to the answer seen first.
pub fn majority_vote(responses: &[&str]) -> MajorityVote {
    let parsed: Vec<Option<Expr>> = responses.iter().map(|r| parse_final_answer(r)).collect();
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

#[cfg(test)]
mod tests {
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
}
