//! The reward hook for answers to problems: [`Verifier`].

use serde::{Deserialize, Serialize};

use super::knights_knaves::knights_knaves_match;
use super::math_answer::answers_match;
use crate::problems::Problem;

/// Scores a response to a problem, in `[0, 1]` (1 = correct).
///
/// This is the hook for user rewards: environments built on problems (e.g.
/// [`crate::worlds::SelfCorrectFactory`]) take an `Arc<dyn Verifier>`. Closures
/// `Fn(&Problem, &str) -> f32` are verifiers.
pub trait Verifier: Send + Sync {
    /// The score of `response` (the model's whole text) for `problem`.
    fn score(&self, problem: &Problem, response: &str) -> f32;
}

impl<F> Verifier for F
where
    F: Fn(&Problem, &str) -> f32 + Send + Sync,
{
    fn score(&self, problem: &Problem, response: &str) -> f32 {
        self(problem, response)
    }
}

/// Which built-in check a problem's answer needs (the `verifier` field of a problem-set line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifierKind {
    /// Numeric/symbolic equality of final answers ([`super::answers_match`]).
    #[default]
    Math,
    /// The final answer is a number equal to the gold number ([`super::numbers_match`]): an
    /// expression left uncomputed (`9 + 1` for 10) is wrong. The scoring of reasoning-gym's
    /// arithmetic tasks, whose answer is the computed value.
    Numeric,
    /// Same set of name-role assignments ([`super::knights_knaves_match`]).
    KnightsKnaves,
    /// The final answer equals the gold text, ignoring case and surrounding space.
    Exact,
}

/// Checks each problem with the built-in check its [`Problem::verifier`] names.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinVerifier;

impl Verifier for BuiltinVerifier {
    fn score(&self, problem: &Problem, response: &str) -> f32 {
        let correct = match problem.verifier {
            VerifierKind::Math => answers_match(&problem.answer, response),
            VerifierKind::Numeric => super::numbers_match(&problem.answer, response),
            VerifierKind::KnightsKnaves => knights_knaves_match(&problem.answer, response),
            VerifierKind::Exact => super::final_answer_span(response)
                .trim_end_matches('.')
                .eq_ignore_ascii_case(problem.answer.trim().trim_end_matches('.')),
        };
        if correct { 1.0 } else { 0.0 }
    }
}
