use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Problem;
use crate::rewards::VerifierKind;

/// Which kind of problem a [`ProblemGenerator`] makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// A chain of `+`, `-`, `*` over integers, e.g. `(3 + 4) * 5`.
    #[default]
    Arithmetic,
    /// A short story problem in GSM8K style (two steps).
    WordProblem,
}

/// How hard generated problems are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    /// 2-3 terms, numbers up to 20, `+` and `-` only, non-negative results (for small models).
    #[default]
    Easy,
    /// 3-4 terms, numbers up to 99, `*` by at most 12.
    Medium,
    /// 4-6 terms, numbers up to 999, results may be negative.
    Hard,
    /// 2 terms, one-digit numbers, `+` and `-` only, non-negative results: small enough for a
    /// tiny model trained from scratch in minutes (tests, demos). (Last, so the other levels
    /// keep their seeds' problems.)
    Starter,
}

impl Difficulty {
    fn terms(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Difficulty::Starter => 2..=2,
            Difficulty::Easy => 2..=3,
            Difficulty::Medium => 3..=4,
            Difficulty::Hard => 4..=6,
        }
    }

    fn max_operand(self) -> i64 {
        match self {
            Difficulty::Starter => 9,
            Difficulty::Easy => 20,
            Difficulty::Medium => 99,
            Difficulty::Hard => 999,
        }
    }
}

/// Makes problems with step-by-step solutions from a seed (deterministic: the same seed gives
/// the same problem). TOML: `generator = { family = "arithmetic", difficulty = "easy" }`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProblemGenerator {
    /// The kind of problem.
    #[serde(default)]
    pub family: Family,
    /// How hard.
    #[serde(default)]
    pub difficulty: Difficulty,
}

impl ProblemGenerator {
    /// The problem for `seed`, with its answer and `steps` (one `a op b = c` per step).
    pub fn generate(&self, seed: u64) -> Problem {
        let salt = (self.family as u64) << 8 | self.difficulty as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (question, answer, steps, twin) = match self.family {
            Family::Arithmetic => {
                let (question, answer, steps, twin) = arithmetic(&mut rng, self.difficulty);
                (question, answer, steps, Some(twin))
            }
            Family::WordProblem => {
                let (question, answer, steps) = word_problem(&mut rng, self.difficulty);
                (question, answer, steps, None)
            }
        };
        Problem {
            question,
            answer: answer.to_string(),
            verifier: VerifierKind::Math,
            steps,
            twin,
            metadata: serde_json::json!({
                "source": "kaizen_generator",
                "family": self.family,
                "difficulty": self.difficulty,
                "seed": seed,
            }),
        }
    }
}

/// An arithmetic problem: its question, answer, steps and twin (the question reworded, and for
/// sums of `+` and `-` terms the terms in reverse order: `Compute 7 - 3 + 2.` becomes `What is
/// the value of 2 - 3 + 7?`).
fn arithmetic(rng: &mut ChaCha8Rng, difficulty: Difficulty) -> (String, i64, Vec<String>, String) {
    let terms = rng.random_range(difficulty.terms());
    let max = difficulty.max_operand();
    let mut value = rng.random_range(1..=max);
    let mut text = value.to_string();
    let mut low_precedence = false;
    let mut steps = Vec::new();
    // The signed terms while the expression is a plain sum (no `*` yet).
    let mut signed: Option<Vec<i64>> = Some(vec![value]);
    for _ in 1..terms {
        let ops: &[char] = if matches!(difficulty, Difficulty::Easy | Difficulty::Starter) {
            &['+', '-']
        } else {
            &['+', '-', '*']
        };
        let op = *ops.choose(rng).unwrap_or(&'+');
        let operand = match op {
            '*' => rng.random_range(2..=12),
            '-' if difficulty != Difficulty::Hard => rng.random_range(0..=value.clamp(0, max)),
            _ => rng.random_range(1..=max),
        };
        let result = match op {
            '+' => value + operand,
            '-' => value - operand,
            _ => value * operand,
        };
        steps.push(format!("{value} {op} {operand} = {result}"));
        signed = match (signed, op) {
            (Some(mut terms), '+' | '-') => {
                terms.push(if op == '-' { -operand } else { operand });
                Some(terms)
            }
            _ => None,
        };
        if op == '*' && low_precedence {
            text = format!("({text}) * {operand}");
        } else {
            text = format!("{text} {op} {operand}");
        }
        low_precedence = op != '*';
        value = result;
    }
    let reworded = match signed {
        Some(terms) => {
            let mut twin = String::new();
            for (i, t) in terms.iter().rev().enumerate() {
                match (i, *t < 0) {
                    (0, _) => twin.push_str(&t.to_string()),
                    (_, true) => twin.push_str(&format!(" - {}", -t)),
                    (_, false) => twin.push_str(&format!(" + {t}")),
                }
            }
            twin
        }
        None => text.clone(),
    };
    (
        format!("Compute {text}."),
        value,
        steps,
        format!("What is the value of {reworded}?"),
    )
}

const NAMES: [&str; 8] = [
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro",
];
const ITEMS: [&str; 8] = [
    "apples", "marbles", "stickers", "pencils", "cookies", "cards", "shells", "stamps",
];

fn word_problem(rng: &mut ChaCha8Rng, difficulty: Difficulty) -> (String, i64, Vec<String>) {
    let max = difficulty.max_operand();
    let name = *NAMES.choose(rng).unwrap_or(&NAMES[0]);
    let items = *ITEMS.choose(rng).unwrap_or(&ITEMS[0]);
    let small = max.min(12);
    match rng.random_range(0..4) {
        0 => {
            let (a, b) = (rng.random_range(1..=max), rng.random_range(1..=max));
            let c = rng.random_range(0..=a + b);
            (
                format!(
                    "{name} has {a} {items}. {name} gets {b} more {items} and then gives away {c}. How many {items} does {name} have now?"
                ),
                a + b - c,
                vec![
                    format!("{a} + {b} = {}", a + b),
                    format!("{} - {c} = {}", a + b, a + b - c),
                ],
            )
        }
        1 => {
            let (a, b) = (rng.random_range(2..=small), rng.random_range(2..=small));
            let c = rng.random_range(0..=a * b);
            (
                format!(
                    "{name} buys {a} boxes of {items}. Each box holds {b} {items}. {name} uses {c} of them. How many {items} are left?"
                ),
                a * b - c,
                vec![
                    format!("{a} * {b} = {}", a * b),
                    format!("{} - {c} = {}", a * b, a * b - c),
                ],
            )
        }
        2 => {
            let (a, b) = (rng.random_range(2..=small), rng.random_range(2..=small));
            let c = rng.random_range(1..=max);
            (
                format!(
                    "There are {a} rows of {items} with {b} {items} in each row. Then {c} more {items} are added. How many {items} are there in total?"
                ),
                a * b + c,
                vec![
                    format!("{a} * {b} = {}", a * b),
                    format!("{} + {c} = {}", a * b, a * b + c),
                ],
            )
        }
        _ => {
            let (a, b) = (rng.random_range(1..=max), rng.random_range(1..=max));
            let total = a + b + rng.random_range(0..=max);
            (
                format!(
                    "A book has {total} pages. {name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages are left to read?"
                ),
                total - a - b,
                vec![
                    format!("{a} + {b} = {}", a + b),
                    format!("{total} - {} = {}", a + b, total - a - b),
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewards::{answers_match, math_expression};

    /// Every step `lhs = rhs` holds, chains into the next, and the last value is the answer.
    fn check_steps(p: &Problem) {
        assert!(!p.steps.is_empty());
        for step in &p.steps {
            let (lhs, rhs) = step.split_once('=').unwrap();
            let (l, r) = (
                math_expression::parse(lhs).unwrap(),
                math_expression::parse(rhs).unwrap(),
            );
            assert!(l.equals(&r), "{step} in {}", p.question);
        }
        let last = p.steps.last().unwrap().rsplit('=').next().unwrap();
        assert!(answers_match(&p.answer, last), "{} vs {last}", p.answer);
    }

    #[test]
    fn problems_are_deterministic_and_their_steps_are_correct() {
        for family in [Family::Arithmetic, Family::WordProblem] {
            for difficulty in [Difficulty::Easy, Difficulty::Medium, Difficulty::Hard] {
                let g = ProblemGenerator { family, difficulty };
                assert_eq!(g.generate(5), g.generate(5));
                assert_ne!(g.generate(5).question, g.generate(6).question);
                for seed in 0..200 {
                    check_steps(&g.generate(seed));
                }
            }
        }
    }

    #[test]
    fn the_question_and_its_twin_evaluate_to_the_answer_for_arithmetic() {
        for difficulty in [
            Difficulty::Starter,
            Difficulty::Easy,
            Difficulty::Medium,
            Difficulty::Hard,
        ] {
            let g = ProblemGenerator {
                family: Family::Arithmetic,
                difficulty,
            };
            let mut reordered = 0;
            for seed in 0..200 {
                let p = g.generate(seed);
                let expr = p
                    .question
                    .trim_start_matches("Compute ")
                    .trim_end_matches('.');
                assert!(answers_match(&p.answer, expr), "{expr} = {}", p.answer);
                let twin = p.twin.as_deref().unwrap();
                let reworded = twin
                    .strip_prefix("What is the value of ")
                    .and_then(|t| t.strip_suffix('?'))
                    .unwrap();
                assert!(answers_match(&p.answer, reworded), "{twin} = {}", p.answer);
                reordered += usize::from(reworded != expr);
            }
            // Sums have their terms reversed (`3 + 3` stays as it is); products keep theirs.
            if matches!(difficulty, Difficulty::Starter | Difficulty::Easy) {
                assert!(
                    reordered > 150,
                    "{difficulty:?}: {reordered} of 200 reordered"
                );
            }
        }
        let words = ProblemGenerator {
            family: Family::WordProblem,
            difficulty: Difficulty::Easy,
        };
        assert_eq!(words.generate(1).twin, None);
    }

    #[test]
    fn easy_problems_are_small_and_non_negative() {
        let g = ProblemGenerator::default();
        for seed in 0..500 {
            let p = g.generate(seed);
            assert!((1..=2).contains(&p.steps.len()), "{}", p.question);
            let answer: i64 = p.answer.parse().unwrap();
            assert!((0..=60).contains(&answer), "{}", p.question);
        }
    }
}
