//! Problem sources: [`ProblemSet`] reads JSONL problem sets (GSM8K style, or made by
//! `scripts/data/make_problem_sets.py` from reasoning-gym) or draws from a
//! [`ProblemGenerator`] (arithmetic and word problems with step-by-step solutions).

mod generator;
mod problem_set;

pub use generator::{Difficulty, Family, ProblemGenerator};
pub use problem_set::{Problem, ProblemSet};
