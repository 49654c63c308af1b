//! kaizen's built-in environments, each registered under its name by
//! [`crate::Registry::with_builtins`]:
//!
//! - `self_correct` ([`SelfCorrectFactory`]): two-attempt self-correction on math problems.
//! - `self_verify` ([`SelfVerifyFactory`]): solve, then verify the solution (and revise it),
//!   every part rewarded by the outcome verifier.
//! - `spc` ([`SpcFactory`]): the Self-Play Critic game, sneaky generator against critic.
//! - `household` ([`household::HouseholdFactory`]): an ALFWorld-like text world.
//! - `translate` ([`TranslateFactory`]): translation with a self-judged reward.
//! - `code` ([`CodeFactory`]): write a Python function, run its tests in a sandbox, fix it
//!   from the failures (LeDex-style self-debugging).

mod code;
pub mod household;
mod self_correct;
mod self_verify;
mod spc;
pub mod strategies;
pub mod synthetic_language;
mod translate;

use std::sync::Arc;

pub use code::{CODER, CodeConfig, CodeFactory, CodeReward, CodeTask, extract_code, read_tasks};
pub use self_correct::{Ask, SOLVER, SelfCorrectConfig, SelfCorrectFactory};
pub use self_verify::{SelfVerifyConfig, SelfVerifyFactory, Verdict, parse_verdict};
pub use spc::{CRITIC, CriticItem, SNEAKY, SpcConfig, SpcFactory};
pub use translate::{
    Direction, JUDGE, Judge, SentenceToTranslate, TRANSLATOR, TranslateConfig, TranslateFactory,
    read_pairs,
};

use crate::{Builder, EnvFactory};

/// `(name, description, builder)` of every built-in environment.
pub(crate) fn builtins() -> Vec<(&'static str, &'static str, Builder)> {
    fn boxed<F: EnvFactory + 'static>(f: F) -> Arc<dyn EnvFactory> {
        Arc::new(f)
    }
    vec![
        (
            "self_correct",
            "two-attempt self-correction (SCoRe) on math problems: JSONL sets or generated",
            Arc::new(|p| SelfCorrectFactory::from_params("self_correct", p).map(boxed)),
        ),
        (
            "self_verify",
            "solve, then verify your own solution (and revise it): RISE / SPOC self-verification",
            Arc::new(|p| SelfVerifyFactory::from_params("self_verify", p).map(boxed)),
        ),
        (
            "spc",
            "Self-Play Critic: a sneaky agent corrupts a solution step, a critic judges it",
            Arc::new(|p| SpcFactory::from_params("spc", p).map(boxed)),
        ),
        (
            "household",
            "ALFWorld-like text world: six task types, admissible actions, step limit",
            Arc::new(|p| household::HouseholdFactory::from_params("household", p).map(boxed)),
        ),
        (
            "code",
            "write a Python function, run its unit tests in a sandbox, fix it from the failures",
            Arc::new(|p| CodeFactory::from_params("code", p).map(boxed)),
        ),
        (
            "translate",
            "translation with a self-judged 0-100 score; chrF/BLEU against references as metrics",
            Arc::new(|p| TranslateFactory::from_params("translate", p).map(boxed)),
        ),
        (
            "remote",
            "an environment served over HTTP/JSON by any language (`url = \"http://...\"`)",
            Arc::new(|p| crate::remote::RemoteFactory::from_params("remote", p).map(boxed)),
        ),
    ]
}
