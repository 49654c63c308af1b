//! `self_verify`: the model solves a problem and then verifies its own solution, both rewarded
//! by the outcome verifier: Trust-but-Verify (RISE, Liu et al. 2025, "Trust, But Verify: A
//! Self-Verification Approach to Reinforcement Learning with Verifiable Rewards") and, with a
//! revision after a verdict of "incorrect", SPOC's spontaneous self-correction (Zhao et al.
//! 2025, "Boosting LLM Reasoning via Spontaneous Self-Correction").
//!
//! Turn-based (the default), one agent, `solver`:
//! 1. *solve*: the problem; reward 1 when the answer is right.
//! 2. *verify*: "check the solution above" and answer `\boxed{correct}` or
//!    `\boxed{incorrect}`; reward 1 when the verdict matches the verifier's judgement of the
//!    solution, 0 when it does not or cannot be read.
//! 3. with `revise = true` and a verdict of "incorrect": *revise*, a corrected solution,
//!    rewarded as turn 1.
//!
//! `one_pass = true`: a single turn whose answer holds both the solution and, after it, a line
//! `Verdict: correct` or `Verdict: incorrect` (SPOC's interleaved solution and verification in
//! one response); its reward is the mean of the two parts' rewards.
//!
//! Metrics: `correct@t1` (the first solution), `verdict_right` (the verification agrees with
//! the verifier), `says_correct` (the model calls its solution right), `verdict_missing`,
//! `recall_wrong` (of wrong solutions, the share the model calls incorrect: NaN-free, counted
//! as `wrong_flagged` and `wrong`), `final_correct` (after a revision, when one happened),
//! `revised`, `i_to_c` and `c_to_i` (first solution → revision); with `verdict_reward =
//! "balanced"`, `verdict_weight` (the weight of a right verdict on the episode's solution).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use serde::{Deserialize, Serialize};

use super::SOLVER;
use crate::problems::{Problem, ProblemGenerator, ProblemSet};
use crate::rewards::{BuiltinVerifier, Verifier, VerifierKind};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// Parameters of `self_verify` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfVerifyConfig {
    /// A JSONL problem set; without it, problems come from `generator`.
    #[serde(default)]
    pub problems: Option<PathBuf>,
    /// The problem generator (default: easy arithmetic) when `problems` is not given.
    #[serde(default)]
    pub generator: Option<ProblemGenerator>,
    /// The check every problem is scored with, overriding each problem's own `verifier`.
    #[serde(default)]
    pub verifier: Option<VerifierKind>,
    /// An optional system message.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Appended to each question (how to answer). In `one_pass` mode it must also ask for the
    /// verdict line; the default of each mode does.
    #[serde(default)]
    pub instruction: Option<String>,
    /// The message that asks the model to verify its solution (turn-based mode).
    #[serde(default = "default_verify_prompt")]
    pub verify_prompt: String,
    /// After a verdict of "incorrect", ask for a corrected solution (turn-based mode).
    #[serde(default)]
    pub revise: bool,
    /// The message that asks for the corrected solution.
    #[serde(default = "default_revise_prompt")]
    pub revise_prompt: String,
    /// Solution and verification in one answer (see the module docs).
    #[serde(default)]
    pub one_pass: bool,
    /// How a verdict is rewarded: `"agreement"` (the default, RISE) or `"balanced"` (see
    /// [`VerdictReward`]).
    #[serde(default)]
    pub verdict_reward: VerdictReward,
}

/// How a verdict is rewarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictReward {
    /// 1 when the verdict agrees with the verifier's judgement of the solution, else 0
    /// (RISE). When most solutions are wrong, a constant "incorrect" earns nearly 1: the
    /// policy learns the base rate, not to check (BENCHMARKS.md, run 35).
    #[default]
    Agreement,
    /// Agreement weighted by the inverse share of the solution's class:
    ///
    /// `r = 1[verdict = truth] / (2 · p̂(truth))`, with `p̂(right)` the share of right first
    /// solutions among the factory's episodes so far, including this one (their mean over the
    /// first [`CLASS_SHARE_HORIZON`], then an exponential moving average over about that many;
    /// each class's share floored at [`MIN_CLASS_SHARE`]) and `p̂(wrong) = 1 − p̂(right)`.
    ///
    /// Its expectation is `Σ_c p(c) · TPR_c / (2 p(c)) = (TPR_right + TPR_wrong) / 2`, the
    /// verdict's balanced accuracy: a constant verdict earns ½ whatever the base rate, and only
    /// telling right from wrong earns more. SPC (Chen et al. 2025) guards its critic the same
    /// way, by balancing right and wrong steps in its training data.
    Balanced,
}

/// Episodes over which [`VerdictReward::Balanced`] averages the share of right solutions.
pub const CLASS_SHARE_HORIZON: u64 = 512;
/// The smallest share [`VerdictReward::Balanced`] gives a class (a weight of at most 10).
pub const MIN_CLASS_SHARE: f64 = 0.05;

/// The running share of right first solutions (for [`VerdictReward::Balanced`]).
#[derive(Debug)]
struct ClassShare {
    episodes: u64,
    right: f64,
}

impl ClassShare {
    /// Adds one first solution and returns the weight of its class.
    fn add(&mut self, solved: bool) -> f64 {
        self.episodes += 1;
        let step = 1.0 / self.episodes.min(CLASS_SHARE_HORIZON) as f64;
        self.right += (f64::from(u8::from(solved)) - self.right) * step;
        let share = if solved { self.right } else { 1.0 - self.right };
        1.0 / (2.0 * share.max(MIN_CLASS_SHARE))
    }
}

fn default_instruction(one_pass: bool) -> String {
    if one_pass {
        "Solve the problem and put your final answer within \\boxed{}. Then check your \
         solution and end with one line: `Verdict: correct` or `Verdict: incorrect`."
            .into()
    } else {
        "Solve the problem step by step. Put your final answer within \\boxed{}.".into()
    }
}

fn default_verify_prompt() -> String {
    "Check the solution above step by step. Is its final answer correct? Reply with \
     \\boxed{correct} or \\boxed{incorrect}."
        .into()
}

fn default_revise_prompt() -> String {
    "You found an error. Please correct it and rewrite the solution. Put your final answer \
     within \\boxed{}."
        .into()
}

impl Default for SelfVerifyConfig {
    fn default() -> Self {
        Self {
            problems: None,
            generator: None,
            verifier: None,
            system_prompt: None,
            instruction: None,
            verify_prompt: default_verify_prompt(),
            revise: false,
            revise_prompt: default_revise_prompt(),
            one_pass: false,
            verdict_reward: VerdictReward::Agreement,
        }
    }
}

/// A model's verdict on a solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The model says the solution is right.
    Correct,
    /// The model says it is wrong.
    Incorrect,
}

/// Reads a verdict: the text after the last `verdict` (any case), else the content of the last
/// `\boxed{...}`; in it, the first of the words `incorrect` / `correct` (whole words, any
/// case). `None` when there is neither.
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    let lower = text.to_lowercase();
    let tail = match lower.rfind("verdict") {
        Some(i) => &lower[i + "verdict".len()..],
        None => {
            let start = lower.rfind("\\boxed{")? + "\\boxed{".len();
            let end = lower[start..].find('}').map_or(lower.len(), |e| start + e);
            &lower[start..end]
        }
    };
    tail.split(|c: char| !c.is_alphanumeric())
        .find_map(|word| match word {
            "incorrect" => Some(Verdict::Incorrect),
            "correct" => Some(Verdict::Correct),
            _ => None,
        })
}

/// The solution part of a one-pass answer: the text before its last `verdict` line (any case),
/// so that a boxed verdict is never read as the answer.
fn solution_part(text: &str) -> &str {
    match text.to_lowercase().rfind("verdict") {
        // Lower-casing can change byte lengths outside ASCII: cut only on a char boundary.
        Some(i) if text.is_char_boundary(i) => &text[..i],
        _ => text,
    }
}

struct Shared {
    problems: ProblemSet,
    verifier: Arc<dyn Verifier>,
    config: SelfVerifyConfig,
    instruction: String,
    /// The share of right first solutions, for `verdict_reward = "balanced"`.
    class_share: std::sync::Mutex<ClassShare>,
}

/// Makes `self_verify` episodes over a problem set, scored by a [`Verifier`].
#[derive(Clone)]
pub struct SelfVerifyFactory {
    shared: Arc<Shared>,
}

impl SelfVerifyFactory {
    /// A factory over `problems` with the built-in verifier.
    ///
    /// # Errors
    /// [`Error::Params`] when `revise` is asked with `one_pass` (one answer has no turn to
    /// revise in).
    pub fn new(problems: ProblemSet, config: SelfVerifyConfig) -> Result<Self> {
        Self::with_verifier(problems, config, Arc::new(BuiltinVerifier))
    }

    /// A factory whose rewards come from a user `verifier`.
    ///
    /// # Errors
    /// As [`SelfVerifyFactory::new`].
    pub fn with_verifier(
        problems: ProblemSet,
        config: SelfVerifyConfig,
        verifier: Arc<dyn Verifier>,
    ) -> Result<Self> {
        if config.one_pass && config.revise {
            return Err(Error::Params {
                env: "self_verify".into(),
                message: "`revise` needs the turn-based mode; it cannot be set with `one_pass`"
                    .into(),
            });
        }
        let instruction = config
            .instruction
            .clone()
            .unwrap_or_else(|| default_instruction(config.one_pass));
        Ok(Self {
            shared: Arc::new(Shared {
                problems,
                verifier,
                config,
                instruction,
                class_share: std::sync::Mutex::new(ClassShare {
                    episodes: 0,
                    right: 0.5,
                }),
            }),
        })
    }

    /// A factory from a TOML table (see [`SelfVerifyConfig`]); `env` names the environment in
    /// errors.
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields; problem-set read errors.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: SelfVerifyConfig = parse_params(env, params)?;
        let problems = ProblemSet::from_params(env, config.problems.as_ref(), config.generator)?;
        Self::new(problems, config)
    }
}

impl EnvFactory for SelfVerifyFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(SelfVerify {
            shared: self.shared.clone(),
            problem: None,
            dialogue: Dialogue::new(),
            state: State::default(),
        })
    }
}

/// What an episode has seen so far.
#[derive(Debug, Default)]
struct State {
    /// Whether the first solution is right.
    solved: Option<bool>,
    /// The weight of a right verdict on that solution (1 unless `verdict_reward = "balanced"`).
    verdict_weight: f32,
    verdict: Option<Option<Verdict>>,
    /// Whether the revision is right, when there was one.
    revised: Option<bool>,
    rewards: Vec<f32>,
}

struct SelfVerify {
    shared: Arc<Shared>,
    problem: Option<Problem>,
    dialogue: Dialogue,
    state: State,
}

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

impl SelfVerify {
    fn outcome(&self) -> Outcome {
        let s = &self.state;
        let solved = s.solved.unwrap_or(false);
        let verdict = s.verdict.flatten();
        let right_verdict = verdict
            == Some(if solved {
                Verdict::Correct
            } else {
                Verdict::Incorrect
            });
        let mut outcome = Outcome::single(SOLVER, s.rewards.clone());
        let m = &mut outcome.metrics;
        m.insert("correct@t1".into(), flag(solved));
        m.insert("verdict_right".into(), flag(right_verdict));
        if self.shared.config.verdict_reward == VerdictReward::Balanced {
            m.insert("verdict_weight".into(), f64::from(s.verdict_weight));
        }
        m.insert(
            "says_correct".into(),
            flag(verdict == Some(Verdict::Correct)),
        );
        m.insert("verdict_missing".into(), flag(verdict.is_none()));
        m.insert("wrong".into(), flag(!solved));
        m.insert(
            "wrong_flagged".into(),
            flag(!solved && verdict == Some(Verdict::Incorrect)),
        );
        m.insert("revised".into(), flag(s.revised.is_some()));
        let last = s.revised.unwrap_or(solved);
        m.insert("final_correct".into(), flag(last));
        m.insert("i_to_c".into(), flag(!solved && last));
        m.insert("c_to_i".into(), flag(solved && !last));
        outcome
    }

    fn score(&self, text: &str) -> Result<f32> {
        let problem = self.problem.as_ref().ok_or(Error::NoEpisode)?;
        Ok(self.shared.verifier.score(problem, text))
    }

    fn verdict_reward(&self, verdict: Option<Verdict>) -> f32 {
        let solved = self.state.solved.unwrap_or(false);
        let expected = if solved {
            Verdict::Correct
        } else {
            Verdict::Incorrect
        };
        f32::from(u8::from(verdict == Some(expected))) * self.state.verdict_weight
    }

    /// Records whether the first solution is right, and the weight its verdict will get.
    fn solved(&mut self, solved: bool) {
        self.state.solved = Some(solved);
        self.state.verdict_weight = match self.shared.config.verdict_reward {
            VerdictReward::Agreement => 1.0,
            VerdictReward::Balanced => {
                // A poisoned lock only means another episode panicked mid-update: the share
                // is still a number in [0, 1].
                let mut share = self
                    .shared
                    .class_share
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                share.add(solved) as f32
            }
        };
    }
}

#[async_trait]
impl Env for SelfVerify {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let shared = &self.shared;
        let mut problem = shared.problems.problem(seed);
        if let Some(kind) = shared.config.verifier {
            problem.verifier = kind;
        }
        self.dialogue = Dialogue::new();
        self.state = State::default();
        let mut messages = Vec::new();
        if let Some(system) = &shared.config.system_prompt {
            messages.push(Message::system(system));
        }
        messages.push(Message::user(format!(
            "{}\n\n{}",
            problem.question, shared.instruction
        )));
        self.problem = Some(problem);
        Ok(Step::Request(self.dialogue.ask(SOLVER, messages)))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let shared = self.shared.clone();
        let config = &shared.config;
        if self.state.solved.is_none() {
            let solution = if config.one_pass {
                solution_part(text)
            } else {
                text
            };
            let reward = self.score(solution)?;
            self.solved(reward >= 1.0);
            if config.one_pass {
                let verdict = parse_verdict(&text[solution.len()..]);
                self.state.verdict = Some(verdict);
                let both = (reward + self.verdict_reward(verdict)) / 2.0;
                self.state.rewards.push(both);
                self.dialogue.finish();
                return Ok(Step::Done(self.outcome()));
            }
            self.state.rewards.push(reward);
            let prompt = Message::user(&config.verify_prompt);
            return Ok(Step::Request(self.dialogue.ask(SOLVER, vec![prompt])));
        }
        if self.state.verdict.is_none() {
            let verdict = parse_verdict(text);
            self.state.verdict = Some(verdict);
            self.state.rewards.push(self.verdict_reward(verdict));
            if config.revise && verdict == Some(Verdict::Incorrect) {
                let prompt = Message::user(&config.revise_prompt);
                return Ok(Step::Request(self.dialogue.ask(SOLVER, vec![prompt])));
            }
            self.dialogue.finish();
            return Ok(Step::Done(self.outcome()));
        }
        let reward = self.score(text)?;
        self.state.revised = Some(reward >= 1.0);
        self.state.rewards.push(reward);
        self.dialogue.finish();
        Ok(Step::Done(self.outcome()))
    }

    /// The worked solution for a solving turn; for a verification, the verdict the verifier
    /// gives the solution actually in the conversation (an oracle, for warm starts and
    /// baselines).
    fn expert_answer(&self) -> Option<String> {
        self.dialogue.pending()?;
        let problem = self.problem.as_ref()?;
        let solution = || problem.worked_solution();
        match (self.state.solved, self.state.verdict) {
            (None, _) if self.shared.config.one_pass => {
                Some(format!("{}\nVerdict: correct", solution()))
            }
            (None, _) | (Some(_), Some(_)) => Some(solution()),
            (Some(solved), None) => Some(
                if solved {
                    "\\boxed{correct}"
                } else {
                    "\\boxed{incorrect}"
                }
                .into(),
            ),
        }
    }

    /// For a solving turn the gold answer ([`Problem::hint`]); for a verification, whether
    /// the solution in the conversation is right.
    fn hint(&self) -> Option<String> {
        self.dialogue.pending()?;
        let problem = self.problem.as_ref()?;
        match (self.state.solved, self.state.verdict) {
            (Some(solved), None) if !self.shared.config.one_pass => Some(format!(
                "Hint: the solution above is {}.",
                if solved { "correct" } else { "incorrect" }
            )),
            _ => Some(problem.hint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(config: SelfVerifyConfig) -> SelfVerifyFactory {
        SelfVerifyFactory::new(ProblemSet::generated(ProblemGenerator::default()), config).unwrap()
    }

    async fn play(config: SelfVerifyConfig, seed: u64, answers: &[&str]) -> Outcome {
        let mut env = factory(config).make();
        let mut step = env.reset(seed).await.unwrap();
        for answer in answers {
            let Step::Request(r) = step else {
                panic!("ended early")
            };
            step = env.step(&r.agent, answer).await.unwrap();
        }
        let Step::Done(outcome) = step else {
            panic!("not done after {} answers", answers.len())
        };
        outcome
    }

    fn gold(seed: u64) -> String {
        ProblemGenerator::default().generate(seed).answer
    }

    /// The mean verdict reward of 200 episodes, one in ten with a right solution, each judged
    /// by `judge(solved)`.
    async fn mean_verdict_reward(reward: VerdictReward, judge: fn(bool) -> &'static str) -> f64 {
        let config = SelfVerifyConfig {
            verdict_reward: reward,
            ..SelfVerifyConfig::default()
        };
        let factory = factory(config);
        let mut total = 0.0;
        for seed in 0..200u64 {
            let solved = seed % 10 == 0;
            let answer = if solved {
                format!("\\boxed{{{}}}", gold(seed))
            } else {
                "\\boxed{-999}".to_string()
            };
            let mut env = factory.make();
            let Step::Request(r) = env.reset(seed).await.unwrap() else {
                panic!("no first request")
            };
            env.step(&r.agent, &answer).await.unwrap();
            let Step::Done(o) = env.step(&r.agent, judge(solved)).await.unwrap() else {
                panic!("not done after the verdict")
            };
            total += f64::from(o.rewards[&AgentId::new(SOLVER)][1]);
        }
        total / 200.0
    }

    #[tokio::test]
    async fn a_balanced_verdict_reward_pays_a_constant_verdict_one_half() {
        type Judge = fn(bool) -> &'static str;
        let always_incorrect: Judge = |_| "\\boxed{incorrect}";
        let always_correct: Judge = |_| "\\boxed{correct}";
        let perfect: Judge = |solved| {
            if solved {
                "\\boxed{correct}"
            } else {
                "\\boxed{incorrect}"
            }
        };
        // Agreement pays the base rate: 0.9 for always "incorrect" when 90% are wrong.
        let agreement = mean_verdict_reward(VerdictReward::Agreement, always_incorrect).await;
        assert!((agreement - 0.9).abs() < 1e-6, "{agreement}");
        // Balanced pays a constant verdict about 1/2 either way, a perfect judge about 1.
        for (judge, expected) in [
            (always_incorrect, 0.5),
            (always_correct, 0.5),
            (perfect, 1.0),
        ] {
            let mean = mean_verdict_reward(VerdictReward::Balanced, judge).await;
            assert!((mean - expected).abs() < 0.1, "{mean} vs {expected}");
        }
        // The first episode alone sets the share (weight 1/2 for its class, whose share is
        // then 1), and a class's weight is capped at 10.
        let mut share = ClassShare {
            episodes: 0,
            right: 0.5,
        };
        assert_eq!(share.add(false), 0.5);
        for _ in 0..1000 {
            share.add(false);
        }
        assert_eq!(share.add(true), 1.0 / (2.0 * MIN_CLASS_SHARE));
    }

    #[test]
    fn verdicts_are_read_from_the_verdict_line_or_the_last_box() {
        assert_eq!(parse_verdict("\\boxed{correct}"), Some(Verdict::Correct));
        assert_eq!(
            parse_verdict("It says 4. \\boxed{Incorrect}"),
            Some(Verdict::Incorrect)
        );
        assert_eq!(
            parse_verdict("\\boxed{4}\nVerdict: correct"),
            Some(Verdict::Correct)
        );
        // The verdict line wins over an earlier box; "incorrectly" is not a verdict word.
        assert_eq!(
            parse_verdict("\\boxed{correct} ... verdict: INCORRECT."),
            Some(Verdict::Incorrect)
        );
        assert_eq!(parse_verdict("I computed it incorrectly"), None);
        assert_eq!(parse_verdict("\\boxed{12}"), None);
        assert_eq!(parse_verdict("no idea"), None);
    }

    #[tokio::test]
    async fn the_verification_is_rewarded_when_it_agrees_with_the_verifier() {
        let right = format!("\\boxed{{{}}}", gold(5));
        // Right solution, verified as right.
        let o = play(
            SelfVerifyConfig::default(),
            5,
            &[&right, "\\boxed{correct}"],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![1.0, 1.0]);
        assert_eq!(o.metrics["verdict_right"], 1.0);
        // Wrong solution, called right: the verification earns nothing.
        let o = play(
            SelfVerifyConfig::default(),
            5,
            &["\\boxed{-7}", "\\boxed{correct}"],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.0, 0.0]);
        assert_eq!(
            (o.metrics["says_correct"], o.metrics["wrong_flagged"]),
            (1.0, 0.0)
        );
        // Wrong solution, flagged: the verification earns 1; an unreadable verdict 0.
        let o = play(
            SelfVerifyConfig::default(),
            5,
            &["\\boxed{-7}", "incorrect, \\boxed{incorrect}"],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        assert_eq!(o.metrics["wrong_flagged"], 1.0);
        let o = play(SelfVerifyConfig::default(), 5, &[&right, "maybe"]).await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![1.0, 0.0]);
        assert_eq!(o.metrics["verdict_missing"], 1.0);
    }

    #[tokio::test]
    async fn the_expert_solves_and_then_gives_the_verifiers_verdict() {
        let config = SelfVerifyConfig {
            revise: true,
            ..SelfVerifyConfig::default()
        };
        let mut env = factory(config).make();
        let Step::Request(r) = env.reset(4).await.unwrap() else {
            panic!()
        };
        let solution = env.expert_answer().unwrap();
        assert!(solution.contains(&gold(4)), "{solution}");
        // A wrong solution in the conversation: the expert's verdict is "incorrect".
        env.step(&r.agent, "\\boxed{-7}").await.unwrap();
        assert_eq!(env.expert_answer().as_deref(), Some("\\boxed{incorrect}"));
        env.step(&r.agent, "\\boxed{incorrect}").await.unwrap();
        assert_eq!(env.expert_answer(), Some(solution.clone()));
        let Step::Done(o) = env.step(&r.agent, &solution).await.unwrap() else {
            panic!()
        };
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0, 1.0]);
        assert_eq!(env.expert_answer(), None);
    }

    #[tokio::test]
    async fn an_incorrect_verdict_gets_a_revision_when_asked() {
        let config = SelfVerifyConfig {
            revise: true,
            ..SelfVerifyConfig::default()
        };
        let right = format!("\\boxed{{{}}}", gold(9));
        let o = play(
            config.clone(),
            9,
            &["\\boxed{-7}", "\\boxed{incorrect}", &right],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0, 1.0]);
        assert_eq!(
            (o.metrics["i_to_c"], o.metrics["final_correct"]),
            (1.0, 1.0)
        );
        // Talked out of a right answer: a wrong verdict, then a wrong revision.
        let o = play(
            config.clone(),
            9,
            &[&right, "\\boxed{incorrect}", "\\boxed{-7}"],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![1.0, 0.0, 0.0]);
        assert_eq!(o.metrics["c_to_i"], 1.0);
        // A verdict of correct ends the episode after two turns.
        let o = play(config, 9, &[&right, "\\boxed{correct}"]).await;
        assert_eq!(o.metrics["revised"], 0.0);
    }

    #[tokio::test]
    async fn one_pass_scores_the_solution_before_the_verdict_and_averages_both() {
        let config = SelfVerifyConfig {
            one_pass: true,
            ..SelfVerifyConfig::default()
        };
        let g = gold(2);
        let o = play(
            config.clone(),
            2,
            &[&format!("\\boxed{{{g}}}\nVerdict: correct")],
        )
        .await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![1.0]);
        let o = play(config.clone(), 2, &["\\boxed{-7}\nVerdict: correct"]).await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.0]);
        let o = play(config.clone(), 2, &["\\boxed{-7}\nVerdict: incorrect"]).await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.5]);
        let o = play(config.clone(), 2, &[&format!("\\boxed{{{g}}}")]).await;
        assert_eq!(o.rewards[&AgentId::new(SOLVER)], vec![0.5]);
        assert_eq!(o.metrics["verdict_missing"], 1.0);
        let bad = SelfVerifyConfig {
            revise: true,
            ..config
        };
        let err = SelfVerifyFactory::new(ProblemSet::generated(ProblemGenerator::default()), bad)
            .err()
            .unwrap();
        assert!(err.to_string().contains("revise"), "{err}");
    }
}
