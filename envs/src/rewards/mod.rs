//! Reward components: exact-answer verification (math, knights-and-knaves), model-judged
//! scores, majority vote, Co-Reward's cross-agreement between twin questions, the policy's self-certainty, and the [`Verifier`] hook for user
//! rewards.

mod co_reward;
mod group_reward;
mod judge_score;
mod knights_knaves;
mod majority_vote;
mod math_answer;
pub mod math_expression;
mod self_certainty;
mod verifier;

pub use co_reward::{CoReward, relabel_twin_groups};
pub use group_reward::{GroupReward, MemberVerdict};
pub use judge_score::{parse_judge_score, parse_judge_score_reading_fractions};
pub use knights_knaves::{assignments, knights_knaves_match};
pub use majority_vote::{
    GroupMember, GroupVote, MajorityVote, VoteAnswers, majority_vote, majority_vote_by,
    relabel_group_by_majority,
};
pub use math_answer::{
    answers_match, final_answer_span, final_number, last_number, numbers_match, parse_final_answer,
};
pub use self_certainty::{MissingSelfCertainty, pairwise_agreement, relabel_with_self_certainty};
pub use verifier::{BuiltinVerifier, Verifier, VerifierKind};
