//! How a user crate adds environments to kaizen.
//!
//! - [`LetterCount`] is a new environment written from scratch: the `counter` agent is asked
//!   how often a letter occurs in a word, and may revise once after a hint.
//! - `strict_math` reuses kaizen's `self_correct` world with a user reward (a
//!   [`Verifier`]): only answers written as `\boxed{...}` count.
//!
//! [`register`] adds both to a [`Registry`]; a job config then selects them by name like any
//! built-in environment.

use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use kaizen_envs::problems::{Problem, ProblemGenerator, ProblemSet};
use kaizen_envs::rewards::{BuiltinVerifier, Verifier};
use kaizen_envs::worlds::{SelfCorrectConfig, SelfCorrectFactory};
use kaizen_envs::{Dialogue, Env, EnvFactory, Error, Registry, Result, parse_params};
use serde::Deserialize;

const WORDS: [&str; 8] = [
    "strawberry",
    "banana",
    "mississippi",
    "committee",
    "bookkeeper",
    "parallel",
    "assessment",
    "occurrence",
];

/// Parameters of `letter_count`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterCountConfig {
    /// Whether a wrong first answer gets a hint and a second try.
    #[serde(default = "yes")]
    pub second_try: bool,
}

fn yes() -> bool {
    true
}

/// The `letter_count` environment: one instance per episode.
pub struct LetterCount {
    config: LetterCountConfig,
    dialogue: Dialogue,
    word: &'static str,
    letter: char,
    rewards: Vec<f32>,
}

impl LetterCount {
    fn answer(&self) -> usize {
        self.word.chars().filter(|&c| c == self.letter).count()
    }
}

#[async_trait]
impl Env for LetterCount {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        self.word = WORDS[(seed % WORDS.len() as u64) as usize];
        let letters: Vec<char> = self.word.chars().collect();
        self.letter = letters[(seed / WORDS.len() as u64 % letters.len() as u64) as usize];
        self.dialogue = Dialogue::new();
        self.rewards.clear();
        let question = format!(
            "How many times does the letter '{}' occur in \"{}\"? Reply with a number.",
            self.letter, self.word
        );
        Ok(Step::Request(
            self.dialogue.ask("counter", [Message::user(question)]),
        ))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let said: Option<usize> = text
            .split(|c: char| !c.is_ascii_digit())
            .rev()
            .find_map(|w| w.parse().ok());
        let correct = said == Some(self.answer());
        self.rewards.push(if correct { 1.0 } else { 0.0 });
        if !correct && self.config.second_try && self.rewards.len() == 1 {
            let hint = format!(
                "Not quite. Spell \"{}\" letter by letter and count again.",
                self.word
            );
            return Ok(Step::Request(
                self.dialogue.ask("counter", [Message::user(hint)]),
            ));
        }
        self.dialogue.finish();
        let outcome = Outcome::single("counter", self.rewards.clone())
            .with_metric("correct", f64::from(u8::from(correct)));
        Ok(Step::Done(outcome))
    }

    fn expert_answer(&self) -> Option<String> {
        self.dialogue.pending()?;
        Some(self.answer().to_string())
    }
}

/// Makes [`LetterCount`] episodes.
pub struct LetterCountFactory(LetterCountConfig);

impl EnvFactory for LetterCountFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(LetterCount {
            config: self.0.clone(),
            dialogue: Dialogue::new(),
            word: WORDS[0],
            letter: 's',
            rewards: Vec::new(),
        })
    }
}

/// A user reward: the built-in check, but only for answers given as `\boxed{...}`.
pub struct BoxedOnly;

impl Verifier for BoxedOnly {
    fn score(&self, problem: &Problem, response: &str) -> f32 {
        if response.contains("\\boxed{") {
            BuiltinVerifier.score(problem, response)
        } else {
            0.0
        }
    }
}

/// Registers `letter_count` and `strict_math` in `registry`.
///
/// # Errors
/// When either name is already taken.
pub fn register(registry: &mut Registry) -> Result<()> {
    registry.register(
        "letter_count",
        "count a letter in a word, with a hint and a second try (example user env)",
        |params| {
            let config: LetterCountConfig = parse_params("letter_count", params)?;
            Ok(Arc::new(LetterCountFactory(config)) as Arc<dyn EnvFactory>)
        },
    )?;
    registry.register(
        "strict_math",
        "self_correct on generated arithmetic, rewarding only \\boxed{} answers (example user reward)",
        |params| {
            if !params.is_empty() {
                return Err(Error::Params {
                    env: "strict_math".into(),
                    message: "takes no parameters".into(),
                });
            }
            let problems = ProblemSet::generated(ProblemGenerator::default());
            let factory = SelfCorrectFactory::with_verifier(
                problems,
                SelfCorrectConfig::default(),
                Arc::new(BoxedOnly),
            )?;
            Ok(Arc::new(factory) as Arc<dyn EnvFactory>)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen_core::Request;
    use kaizen_envs::{EpisodeLimits, Responder, demonstrate, run_episode};

    struct Say(Vec<String>);

    #[async_trait]
    impl Responder for Say {
        async fn respond(&mut self, _: &Request) -> std::result::Result<String, String> {
            self.0.pop().ok_or_else(|| "no more answers".into())
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::with_builtins();
        register(&mut registry).unwrap();
        registry
    }

    #[tokio::test]
    async fn user_envs_sit_beside_the_builtins() {
        let registry = registry();
        let names: Vec<&str> = registry.names().collect();
        assert!(names.contains(&"letter_count") && names.contains(&"self_correct"));
        let factory = registry.build("letter_count", &toml::Table::new()).unwrap();
        for seed in 0..20 {
            let ep = demonstrate(factory.make(), seed, EpisodeLimits::default()).await;
            assert_eq!(
                ep.outcome().unwrap().rewards[&AgentId::new("counter")],
                vec![1.0]
            );
        }
        // "strawberry", letter 's' (seed 0): wrong, then right after the hint.
        let ep = run_episode(
            factory.make(),
            0,
            &mut Say(vec!["1".into(), "0".into()]),
            EpisodeLimits::default(),
        )
        .await;
        assert_eq!(
            ep.outcome().unwrap().rewards[&AgentId::new("counter")],
            vec![0.0, 1.0]
        );
        assert!(ep.turns[1].request.continues(&ep.turns[0].request, "0"));
        let bad: toml::Table = toml::from_str("second_tries = false").unwrap();
        let err = registry
            .build("letter_count", &bad)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("second_tries"), "{err}");
    }

    #[tokio::test]
    async fn the_user_reward_replaces_the_builtin_one() {
        let factory = registry()
            .build("strict_math", &toml::Table::new())
            .unwrap();
        let gold = ProblemGenerator::default().generate(1).answer;
        let plain = format!("The answer is {gold}");
        let boxed = format!("\\boxed{{{gold}}}");
        let ep = run_episode(
            factory.make(),
            1,
            &mut Say(vec![boxed, plain]),
            EpisodeLimits::default(),
        )
        .await;
        assert_eq!(
            ep.outcome().unwrap().rewards[&AgentId::new("solver")],
            vec![0.0, 1.0]
        );
    }
}
