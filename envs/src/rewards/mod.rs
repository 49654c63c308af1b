//! Reward components: exact-answer verification (math, knights-and-knaves), model-judged
//! scores, majority vote, and the [`Verifier`] hook for user rewards.

mod judge_score;
mod knights_knaves;
mod majority_vote;
mod math_answer;
pub mod math_expression;
mod verifier;

pub use judge_score::parse_judge_score;
pub use knights_knaves::{assignments, knights_knaves_match};
pub use majority_vote::{MajorityVote, majority_vote};
pub use math_answer::{
    answers_match, final_answer_span, final_number, last_number, numbers_match, parse_final_answer,
};
pub use verifier::{BuiltinVerifier, Verifier, VerifierKind};
