//! `self_correct`: multi-attempt self-correction on math problems (SCoRe, Kumar et al. 2024,
//! <https://arxiv.org/abs/2409.12917>).
//!
//! Turn 1: the `solver` answers a problem. Each later turn: the environment says there may be
//! an error and asks for a corrected solution (the conversation continues). Every attempt is
//! rewarded by the verifier; metrics carry `correct@t1` ... `correct@tN` and the transitions
//! between the first and last attempt, `i_to_c` (incorrect to correct) and `c_to_i`.
//!
//! With `strategies` (SMART, see [`super::strategies`]) the first message offers a menu of
//! strategies instead of the instruction; each attempt names the one it follows (or is read
//! from its shape), a program is run in the sandbox and what it prints is the attempt's answer
//! (shown back before the next attempt), and later attempts may switch.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use serde::{Deserialize, Serialize};

use super::strategies::{self, Strategy};
use crate::problems::{Problem, ProblemGenerator, ProblemSet};
use crate::rewards::{
    BuiltinVerifier, Verifier, VerifierKind, final_answer_span, last_number, math_expression,
};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// The agent that solves.
pub const SOLVER: &str = "solver";

/// Parameters of `self_correct` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCorrectConfig {
    /// A JSONL problem set; without it, problems come from `generator`.
    #[serde(default)]
    pub problems: Option<PathBuf>,
    /// The problem generator (default: easy arithmetic) when `problems` is not given.
    #[serde(default)]
    pub generator: Option<ProblemGenerator>,
    /// Number of attempts (>= 1; 2 in SCoRe).
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// An optional system message.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Appended to each question (how to answer).
    #[serde(default = "default_instruction")]
    pub instruction: String,
    /// The message that asks for another attempt.
    #[serde(default = "default_correction_prompt")]
    pub correction_prompt: String,
    /// The check every problem is scored with, overriding each problem's own `verifier`
    /// (e.g. `"numeric"` for arithmetic, where `"math"`'s symbolic equality would accept the
    /// question restated: `9 + 1` for 10).
    #[serde(default)]
    pub verifier: Option<VerifierKind>,
    /// Token budget of each attempt, in tokens: attempt `k` (0-based) may generate
    /// `max_new_tokens[min(k, len − 1)]` tokens, e.g. `[24, 64]` for a short first answer and a
    /// second attempt with room to check the calculation. Empty (the default): every attempt
    /// uses the job's `sampling.max_completion_length`. Entries must be ≥ 1.
    #[serde(default)]
    pub max_new_tokens: Vec<usize>,
    /// Sampling temperature of each attempt: attempt `k` (0-based) is sampled at
    /// `temperatures[min(k, len − 1)]` (the learner scores each turn at the temperature it was
    /// sampled at), e.g. `[0.3, 0.6]` for first attempts near the greedy ones a held-out
    /// evaluation sees, so that the second attempt learns to fix the errors the greedy first
    /// attempt makes rather than the noise of a hotter sample (measured on the main job,
    /// BENCHMARKS.md run 58: it left the second attempt almost nothing to fix). Empty (the
    /// default): every attempt uses the job's `sampling.temperature` (or `[eval]
    /// temperature`). Set it in `[env.params]` only: in `[env.eval_params]` it would override
    /// the evaluation's temperature. Entries must be finite and > 0 (a trained turn is scored
    /// at its temperature, and greedy has no log-probs to score).
    #[serde(default)]
    pub temperatures: Vec<f32>,
    /// Which wording of each problem is asked: `"question"` (the default); `"twin"`, the
    /// problem's rephrased twin (`Problem::twin`, same answer, written by a script), for
    /// Co-Reward's paired groups (`[[env]] twin = { ask = "twin" }` and `[grpo] reward_source
    /// = "co_reward"`; a problem without a twin ends its episode with an error naming it); or
    /// `"policy_rewrite"`: the policy rewords the question itself in a first, untrained turn
    /// (`rewrite_prompt`), and the attempts then answer its rewording in a fresh thread (an
    /// empty rewording falls back to the question). The rewriting turn's reward is 0 and it
    /// casts no vote; `correct@t1`... count the attempts only.
    #[serde(default)]
    pub ask: Ask,
    /// SMART's strategy menu (`"direct"`, `"step_by_step"`, `"program"`), offered in the first
    /// message in place of `instruction`; empty (the default): no menu. Metrics gain
    /// `strategy@t1/<name>` and `strategy@final/<name>` (the mix), `accuracy@t1/<name>` (on
    /// the episodes whose first attempt chose it), `declared@t1` and `switched`.
    #[serde(default)]
    pub strategies: Vec<Strategy>,
    /// The first attempt (1-based) offered the `strategies` menu; earlier attempts follow
    /// `instruction` and are scored as plain replies (no program runs). 1 (the default): the
    /// menu comes with the question (SMART). 2: the first attempt answers on its own and the
    /// menu comes with the correction prompt, so the second attempt may check the first with
    /// a program (tool-interactive self-correction, CRITIC; Gou et al. 2024,
    /// <https://arxiv.org/abs/2305.11738>). Must be at most `attempts`.
    #[serde(default = "default_strategies_from")]
    pub strategies_from: usize,
    /// The menu offered with each correction prompt after the attempt that first got
    /// `strategies`, in place of it; empty (the default): the same menu, and the correction
    /// prompt only adds that the attempt may keep its strategy or switch. With `strategies =
    /// ["direct", "step_by_step", "program"]` and `correction_strategies = ["program"]` the
    /// first attempt chooses its strategy (SMART) and the second checks it with a program
    /// (CRITIC). Needs `strategies` and an attempt after `strategies_from`.
    #[serde(default)]
    pub correction_strategies: Vec<Strategy>,
    /// Shown in place of the generated `strategies` menu where it is first offered, e.g.
    /// "Reply with only the final answer, like \\boxed{5}, or with a Python program in a
    /// ```python block that prints it." (a base model may follow a sentence better than a
    /// list); replies are read against `strategies` as with the menu. Needs `strategies`.
    #[serde(default)]
    pub menu_prompt: Option<String>,
    /// Limits of each program run (the `"program"` strategy).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Asks for the rewording (`ask = "policy_rewrite"`); the question follows it.
    #[serde(default = "default_rewrite_prompt")]
    pub rewrite_prompt: String,
}

impl SelfCorrectConfig {
    /// The menu offered to attempt `attempt` (1-based): empty before `strategies_from` (a
    /// plain reply), `strategies` at it, then `correction_strategies` when given.
    fn offered(&self, attempt: usize) -> &[Strategy] {
        if self.strategies.is_empty() || attempt < self.strategies_from {
            &[]
        } else if attempt == self.strategies_from || self.correction_strategies.is_empty() {
            &self.strategies
        } else {
            &self.correction_strategies
        }
    }

    /// The text that offers `strategies` where they are first offered.
    fn first_menu(&self) -> String {
        self.menu_prompt
            .clone()
            .unwrap_or_else(|| strategies::menu(&self.strategies))
    }

    /// Every strategy some attempt is offered, `strategies` first.
    fn every_strategy(&self) -> impl Iterator<Item = Strategy> + '_ {
        let extra = self
            .correction_strategies
            .iter()
            .filter(|s| !self.strategies.contains(s));
        self.strategies.iter().chain(extra).copied()
    }
}

fn default_rewrite_prompt() -> String {
    "Reword the following question without solving it. Reply with only the reworded question."
        .into()
}

/// `self_correct`'s `ask`: see [`SelfCorrectConfig::ask`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// The problem's `question`.
    #[default]
    Question,
    /// The problem's `twin`.
    Twin,
    /// The policy's own rewording of the question, asked for in an untrained first turn.
    PolicyRewrite,
}

fn default_attempts() -> usize {
    2
}

fn default_strategies_from() -> usize {
    1
}

fn default_instruction() -> String {
    "Solve the problem step by step. Put your final answer within \\boxed{}.".into()
}

/// The self-correction instruction of the SCoRe paper (its Appendix), answer format adapted.
fn default_correction_prompt() -> String {
    "There might be an error in the solution above because of lack of understanding of the \
     question. Please correct the error, if any, and rewrite the solution. Put your final \
     answer within \\boxed{}."
        .into()
}

impl Default for SelfCorrectConfig {
    fn default() -> Self {
        Self {
            problems: None,
            generator: None,
            attempts: default_attempts(),
            system_prompt: None,
            instruction: default_instruction(),
            correction_prompt: default_correction_prompt(),
            verifier: None,
            max_new_tokens: Vec::new(),
            temperatures: Vec::new(),
            ask: Ask::Question,
            strategies: Vec::new(),
            strategies_from: default_strategies_from(),
            correction_strategies: Vec::new(),
            menu_prompt: None,
            sandbox: SandboxConfig::default(),
            rewrite_prompt: default_rewrite_prompt(),
        }
    }
}

/// A reply's final answer: its [`final_answer_span`] (sentence punctuation trimmed) when that
/// parses as math, else the span's last number, else the span.
fn answer_of(text: &str) -> String {
    let span = final_answer_span(text).trim_end_matches(['.', ',', ';', ':', '!']);
    if math_expression::parse(span).is_some() {
        return span.to_string();
    }
    last_number(span).unwrap_or_else(|| span.to_string())
}

struct Shared {
    problems: ProblemSet,
    verifier: Arc<dyn Verifier>,
    config: SelfCorrectConfig,
    /// Runs programs (`"program"` among `strategies` or `correction_strategies`).
    sandbox: Option<Sandbox>,
}

/// Makes `self_correct` episodes over a problem set, scored by a [`Verifier`].
#[derive(Clone)]
pub struct SelfCorrectFactory {
    shared: Arc<Shared>,
}

impl SelfCorrectFactory {
    /// A factory over `problems` with the built-in verifier.
    ///
    /// # Errors
    /// [`Error::Params`] when `config.attempts` is 0 or a `max_new_tokens` entry is 0.
    pub fn new(problems: ProblemSet, config: SelfCorrectConfig) -> Result<Self> {
        Self::with_verifier(problems, config, Arc::new(BuiltinVerifier))
    }

    /// A factory whose rewards come from a user `verifier`.
    ///
    /// # Errors
    /// [`Error::Params`] when `config.attempts` is 0, a `max_new_tokens` entry is 0, a
    /// strategy is listed twice or a sandbox limit is invalid.
    pub fn with_verifier(
        problems: ProblemSet,
        config: SelfCorrectConfig,
        verifier: Arc<dyn Verifier>,
    ) -> Result<Self> {
        if config.attempts == 0 {
            return Err(Error::Params {
                env: "self_correct".into(),
                message: "`attempts` must be at least 1".into(),
            });
        }
        if let Some(k) = config.max_new_tokens.iter().position(|&n| n == 0) {
            return Err(Error::Params {
                env: "self_correct".into(),
                message: format!("`max_new_tokens[{k}]` must be at least 1, got 0"),
            });
        }
        if let Some((k, t)) = config
            .temperatures
            .iter()
            .enumerate()
            .find(|(_, t)| !(t.is_finite() && **t > 0.0))
        {
            return Err(Error::Params {
                env: "self_correct".into(),
                message: format!("`temperatures[{k}]` must be a finite number > 0, got {t}"),
            });
        }
        let params = |message: String| Error::Params {
            env: "self_correct".into(),
            message,
        };
        for (field, list) in [
            ("strategies", &config.strategies),
            ("correction_strategies", &config.correction_strategies),
        ] {
            let mut offered = list.clone();
            offered.sort();
            offered.dedup();
            if offered.len() != list.len() {
                return Err(params(format!(
                    "`{field}` lists a strategy twice: {list:?}"
                )));
            }
        }
        if !config.strategies.is_empty() && !(1..=config.attempts).contains(&config.strategies_from)
        {
            return Err(params(format!(
                "`strategies_from` must be between 1 and `attempts` ({}), got {}",
                config.attempts, config.strategies_from
            )));
        }
        if config.menu_prompt.is_some() && config.strategies.is_empty() {
            return Err(params("`menu_prompt` needs `strategies`".into()));
        }
        if !config.correction_strategies.is_empty()
            && (config.strategies.is_empty() || config.strategies_from >= config.attempts)
        {
            return Err(params(format!(
                "`correction_strategies` needs `strategies` and an attempt after \
                 `strategies_from` ({}) among the {} `attempts`",
                config.strategies_from, config.attempts
            )));
        }
        let runs_programs = config.strategies.contains(&Strategy::Program)
            || config.correction_strategies.contains(&Strategy::Program);
        let sandbox = if runs_programs {
            config.sandbox.validate().map_err(params)?;
            Some(Sandbox::new(config.sandbox.clone()))
        } else {
            None
        };
        Ok(Self {
            shared: Arc::new(Shared {
                problems,
                verifier,
                config,
                sandbox,
            }),
        })
    }

    /// A factory from a TOML table (see [`SelfCorrectConfig`]); `env` names the environment
    /// in errors.
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields; problem-set read errors.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: SelfCorrectConfig = parse_params(env, params)?;
        let problems = ProblemSet::from_params(env, config.problems.as_ref(), config.generator)?;
        Self::new(problems, config)
    }
}

impl EnvFactory for SelfCorrectFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(SelfCorrect {
            shared: self.shared.clone(),
            problem: None,
            dialogue: Dialogue::new(),
            scores: Vec::new(),
            chosen: Vec::new(),
            sandbox_ms: Vec::new(),
            limits_broken: 0,
            first_replies: Vec::new(),
            rewriting: false,
            rewritten: false,
        })
    }
}

struct SelfCorrect {
    shared: Arc<Shared>,
    problem: Option<Problem>,
    dialogue: Dialogue,
    scores: Vec<f32>,
    /// Each attempt's strategy and whether it was declared (with `strategies`).
    chosen: Vec<(Strategy, bool)>,
    /// Milliseconds of each program run.
    sandbox_ms: Vec<f64>,
    /// Programs of this episode that broke a sandbox limit.
    limits_broken: usize,
    /// Each answered turn's final answer as a first-attempt reply (`\\boxed{..}`); `None` for
    /// the rewording turn. Reported as the outcome's `info.first_replies`.
    first_replies: Vec<Option<String>>,
    /// The pending request is the policy's rewording (`ask = "policy_rewrite"`).
    rewriting: bool,
    /// The episode began with a rewording turn.
    rewritten: bool,
}

impl SelfCorrect {
    /// The solver's request for the next attempt, with that attempt's token budget and
    /// temperature.
    fn ask(&mut self, messages: Vec<Message>) -> Step {
        let config = &self.shared.config;
        let k = self.scores.len();
        let mut request = self.dialogue.ask(SOLVER, messages);
        let nth = |list_len: usize| k.min(list_len.saturating_sub(1));
        if !config.max_new_tokens.is_empty() {
            request.sampling.max_new_tokens =
                Some(config.max_new_tokens[nth(config.max_new_tokens.len())]);
        }
        if !config.temperatures.is_empty() {
            request.sampling.temperature =
                Some(config.temperatures[nth(config.temperatures.len())]);
        }
        Step::Request(request)
    }

    fn outcome(&self) -> Outcome {
        let correct: Vec<bool> = self.scores.iter().map(|&s| s >= 1.0).collect();
        // The rewording turn (untrained) is the solver's first answered request: reward 0.
        let rewards = std::iter::repeat_n(0.0, usize::from(self.rewritten))
            .chain(self.scores.iter().copied())
            .collect();
        let mut outcome = Outcome::single(SOLVER, rewards);
        for (t, c) in correct.iter().enumerate() {
            outcome
                .metrics
                .insert(format!("correct@t{}", t + 1), f64::from(u8::from(*c)));
        }
        let (first, last) = (correct[0], correct[correct.len() - 1]);
        outcome
            .metrics
            .insert("i_to_c".into(), f64::from(u8::from(!first && last)));
        outcome
            .metrics
            .insert("c_to_i".into(), f64::from(u8::from(first && !last)));
        if let (Some(&(s1, declared)), Some(&(sn, _))) = (self.chosen.first(), self.chosen.last()) {
            let m = &mut outcome.metrics;
            for s in self.shared.config.every_strategy() {
                let name = s.name();
                m.insert(format!("strategy@t1/{name}"), f64::from(u8::from(s1 == s)));
                m.insert(
                    format!("strategy@final/{name}"),
                    f64::from(u8::from(sn == s)),
                );
            }
            m.insert(
                format!("accuracy@t1/{}", s1.name()),
                f64::from(u8::from(first)),
            );
            m.insert(
                format!("accuracy@final/{}", sn.name()),
                f64::from(u8::from(last)),
            );
            m.insert("declared@t1".into(), f64::from(u8::from(declared)));
            m.insert("switched".into(), f64::from(u8::from(s1 != sn)));
        }
        if !self.sandbox_ms.is_empty() {
            let ms = self.sandbox_ms.iter().sum::<f64>() / self.sandbox_ms.len() as f64;
            outcome.metrics.insert("sandbox_ms".into(), ms);
        }
        if self.shared.sandbox.is_some() {
            outcome
                .metrics
                .insert("program_limits".into(), self.limits_broken as f64);
        }
        outcome.info = serde_json::json!({ "first_replies": self.first_replies });
        outcome
    }

    /// The first attempt's request: `question` with the instruction (or the strategy menu),
    /// after the system prompt.
    fn ask_question(&mut self, question: &str) -> Step {
        let config = &self.shared.config;
        let mut messages = Vec::new();
        if let Some(system) = &config.system_prompt {
            messages.push(Message::system(system));
        }
        let instruction = if config.strategies.is_empty() || config.strategies_from > 1 {
            config.instruction.clone()
        } else {
            config.first_menu()
        };
        messages.push(Message::user(format!("{question}\n\n{instruction}")));
        self.ask(messages)
    }

    /// Scores attempt `attempt` (1-based), which follows a strategy menu: its score, what its program printed
    /// (`None` for other strategies) and its final answer ([`answer_of`] the printed line or
    /// of the reply; empty when a program did not run).
    ///
    /// A program that breaks a sandbox limit scores 0 (counted in `program_limits`).
    ///
    /// # Errors
    /// [`Error::Sandbox`] when the sandbox cannot start the interpreter or prepare its
    /// directory (the episode ends as a `fault/sandbox` fault).
    async fn score_strategy(
        &mut self,
        problem: &Problem,
        text: &str,
        attempt: usize,
    ) -> Result<(f32, Option<String>, String)> {
        let offered = self.shared.config.offered(attempt);
        let (strategy, declared) = strategies::chosen(text, offered);
        self.chosen.push((strategy, declared));
        let sandbox = match (strategy, &self.shared.sandbox) {
            (Strategy::Program, Some(sandbox)) => sandbox,
            _ => {
                return Ok((
                    self.shared.verifier.score(problem, text),
                    None,
                    answer_of(text),
                ));
            }
        };
        let Some(code) = strategies::program(text) else {
            return Ok((
                0.0,
                Some("Your reply has no ```python block to run.".into()),
                String::new(),
            ));
        };
        let run = match sandbox.run_tests(code, &[]).await {
            Ok(run) => run,
            // The sandbox itself failing is a fault of the episode, not of the attempt.
            Err(e @ (SandboxError::Spawn { .. } | SandboxError::Io(_))) => return Err(e.into()),
            // The program's own doing (past the time limit, a memory or output flood, a
            // forbidden call): a wrong attempt, and the next one is told why.
            Err(e) => {
                self.limits_broken += 1;
                let why = e.to_string();
                let why = why.strip_prefix("sandbox: ").unwrap_or(&why);
                return Ok((
                    0.0,
                    Some(format!("Your program failed: {why}")),
                    String::new(),
                ));
            }
        };
        self.sandbox_ms.push(run.elapsed.as_secs_f64() * 1e3);
        Ok(match &run.load_error {
            Some(error) => (
                0.0,
                Some(format!("Your program failed: {error}")),
                String::new(),
            ),
            None => {
                let printed = strategies::printed_answer(&run.stdout);
                let score = self.shared.verifier.score(problem, printed);
                (
                    score,
                    Some(format!("Your program printed: {printed}")),
                    answer_of(printed),
                )
            }
        })
    }
}

#[async_trait]
impl Env for SelfCorrect {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let config = &self.shared.config;
        let mut problem = self.shared.problems.problem(seed);
        if let Some(kind) = config.verifier {
            problem.verifier = kind;
        }
        self.dialogue = Dialogue::new();
        self.scores.clear();
        self.chosen.clear();
        self.sandbox_ms.clear();
        self.limits_broken = 0;
        self.first_replies.clear();
        self.rewriting = false;
        self.rewritten = false;
        let question = match config.ask {
            Ask::Question => problem.question.clone(),
            Ask::Twin => problem.twin.clone().ok_or_else(|| {
                Error::Env(format!(
                    "`ask = \"twin\"` but problem {:?} (seed {seed}) has no `twin`",
                    problem.question
                ))
            })?,
            Ask::PolicyRewrite => {
                let mut messages = Vec::new();
                if let Some(system) = &config.system_prompt {
                    messages.push(Message::system(system));
                }
                messages.push(Message::user(format!(
                    "{}\n\n{}",
                    config.rewrite_prompt, problem.question
                )));
                self.problem = Some(problem);
                self.rewriting = true;
                let mut request = self.dialogue.ask(SOLVER, messages);
                request.trainable = false;
                if let Some(&budget) = config.max_new_tokens.first() {
                    request.sampling.max_new_tokens = Some(budget);
                }
                return Ok(Step::Request(request));
            }
        };
        self.problem = Some(problem);
        Ok(self.ask_question(&question))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let problem = self.problem.clone().ok_or(Error::NoEpisode)?;
        if self.rewriting {
            self.rewriting = false;
            self.rewritten = true;
            self.first_replies.push(None);
            let reworded = text.trim();
            let question = if reworded.is_empty() {
                problem.question.as_str()
            } else {
                reworded
            };
            self.dialogue.restart(agent);
            return Ok(self.ask_question(question));
        }
        let config = &self.shared.config;
        let attempt = self.scores.len() + 1;
        let (score, printed, answer) = if config.offered(attempt).is_empty() {
            if !config.strategies.is_empty() {
                // Before the menu: a plain reply, its shape read among the text strategies.
                let shape = strategies::chosen(text, &[Strategy::Direct, Strategy::StepByStep]);
                self.chosen.push(shape);
            }
            (
                self.shared.verifier.score(&problem, text),
                None,
                answer_of(text),
            )
        } else {
            self.score_strategy(&problem, text, attempt).await?
        };
        self.scores.push(score);
        // The same answer as a first-attempt reply, kept only when it scores as the attempt did.
        let reply = format!("\\boxed{{{answer}}}");
        let same = self.shared.verifier.score(&problem, &reply) == score;
        self.first_replies.push(same.then_some(reply));
        let config = &self.shared.config;
        if attempt < config.attempts {
            let mut prompt = String::new();
            if let Some(printed) = printed {
                prompt.push_str(&printed);
                prompt.push_str("\n\n");
            }
            prompt.push_str(&config.correction_prompt);
            let (next, menu) = (attempt + 1, config.offered(attempt + 1));
            if menu.is_empty() {
            } else if next == config.strategies_from {
                prompt.push_str("\n\n");
                prompt.push_str(&config.first_menu());
            } else if !config.correction_strategies.is_empty() {
                prompt.push_str("\n\n");
                prompt.push_str(&strategies::menu(menu));
            } else {
                prompt.push_str(" You may keep your strategy or switch to another from the list.");
            }
            return Ok(self.ask(vec![Message::user(prompt)]));
        }
        self.dialogue.finish();
        Ok(Step::Done(self.outcome()))
    }

    /// The worked solution; with a strategy menu at this attempt, declared as `step_by_step`
    /// when offered (else the first offered strategy: a program prints the answer, another
    /// strategy's name is declared with the solution unchanged).
    fn expert_answer(&self) -> Option<String> {
        self.dialogue.pending()?;
        let solution = self.problem.as_ref()?.worked_solution();
        let attempt = self.scores.len() + 1;
        let offered = if self.rewriting {
            &[]
        } else {
            self.shared.config.offered(attempt)
        };
        Some(match offered.first() {
            None => solution,
            Some(first) => {
                let s = if offered.contains(&Strategy::StepByStep) {
                    Strategy::StepByStep
                } else {
                    *first
                };
                match s {
                    Strategy::Program => format!(
                        "Strategy: program\n```python\nprint({})\n```",
                        crate::rewards::final_answer_span(&self.problem.as_ref()?.answer)
                    ),
                    s => format!("Strategy: {}\n{solution}", s.name()),
                }
            }
        })
    }

    /// The gold answer ([`Problem::hint`]), at any attempt.
    fn hint(&self) -> Option<String> {
        self.dialogue.pending()?;
        Some(self.problem.as_ref()?.hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpisodeLimits, demonstrate};

    /// A `self_correct` environment from a TOML parameter table.
    fn env_from(params: &str) -> Box<dyn Env> {
        let params: toml::Table = toml::from_str(params).unwrap();
        SelfCorrectFactory::from_params("self_correct", &params)
            .unwrap()
            .make()
    }

    /// The error a `self_correct` TOML parameter table is refused with.
    fn params_error(params: &str) -> String {
        let params: toml::Table = toml::from_str(params).unwrap();
        SelfCorrectFactory::from_params("self_correct", &params)
            .err()
            .unwrap()
            .to_string()
    }

    /// Problem `seed` of the default generator, its expression and a program that prints it.
    fn problem_with_program(seed: u64) -> (Problem, String, String) {
        let problem = ProblemGenerator::default().generate(seed);
        let expression = problem
            .question
            .trim_start_matches("Compute ")
            .trim_end_matches('.')
            .to_string();
        let program = format!("```python\nprint({expression})\n```");
        (problem, expression, program)
    }

    fn factory(attempts: usize) -> SelfCorrectFactory {
        let config = SelfCorrectConfig {
            attempts,
            ..SelfCorrectConfig::default()
        };
        SelfCorrectFactory::new(ProblemSet::generated(ProblemGenerator::default()), config).unwrap()
    }

    async fn play(
        attempts: usize,
        seed: u64,
        answers: &[&str],
    ) -> (Vec<kaizen_core::Request>, Outcome) {
        play_env(factory(attempts).make(), seed, answers)
            .await
            .unwrap()
    }

    /// Plays `env` from `seed` with `answers`; returns the requests and the outcome.
    async fn play_env(
        mut env: Box<dyn Env>,
        seed: u64,
        answers: &[&str],
    ) -> Result<(Vec<kaizen_core::Request>, Outcome)> {
        let mut step = env.reset(seed).await?;
        let mut requests = Vec::new();
        for answer in answers {
            let Step::Request(r) = step else {
                panic!("ended early")
            };
            requests.push(r.clone());
            step = env.step(&r.agent, answer).await?;
        }
        let Step::Done(outcome) = step else {
            panic!("not done")
        };
        Ok((requests, outcome))
    }

    #[tokio::test]
    async fn two_attempts_reward_each_turn_and_count_transitions() {
        let gold = ProblemGenerator::default().generate(3).answer;
        let right = format!("so \\boxed{{{gold}}}");
        let (requests, outcome) = play(2, 3, &["\\boxed{-1}", &right]).await;
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        assert_eq!(outcome.metrics["correct@t1"], 0.0);
        assert_eq!(outcome.metrics["correct@t2"], 1.0);
        assert_eq!(outcome.metrics["i_to_c"], 1.0);
        assert_eq!(outcome.metrics["c_to_i"], 0.0);
        assert!(requests[1].continues(&requests[0], "\\boxed{-1}"));
        assert!(
            requests[1]
                .messages
                .last()
                .unwrap()
                .content
                .contains("might be an error")
        );

        let (_, outcome) = play(2, 3, &[&right, "\\boxed{-1}"]).await;
        assert_eq!(outcome.metrics["c_to_i"], 1.0);
    }

    #[tokio::test]
    async fn attempts_are_configurable_and_the_same_seed_gives_the_same_episode() {
        let (requests, outcome) = play(3, 9, &["a", "b", "c"]).await;
        assert_eq!(requests.len(), 3);
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)].len(), 3);
        assert!(outcome.metrics.contains_key("correct@t3"));
        let (again, _) = play(3, 9, &["a", "b", "c"]).await;
        assert_eq!(requests, again);
        assert!(params_error("attempts = 0").contains("`attempts`"));
    }

    #[tokio::test]
    async fn each_attempt_gets_its_token_budget() {
        let mut env = env_from("attempts = 3\nmax_new_tokens = [24, 64]");
        let mut budgets = Vec::new();
        let mut step = env.reset(1).await.unwrap();
        while let Step::Request(r) = step {
            budgets.push(r.sampling.max_new_tokens);
            step = env.step(&r.agent, "\\boxed{0}").await.unwrap();
        }
        assert_eq!(budgets, [Some(24), Some(64), Some(64)]);

        let (requests, _) = play(2, 1, &["a", "b"]).await;
        assert!(requests.iter().all(|r| r.sampling.max_new_tokens.is_none()));

        let err = params_error("max_new_tokens = [24, 0]");
        assert!(err.contains("max_new_tokens[1]"), "{err}");
    }

    #[tokio::test]
    async fn each_attempt_gets_its_temperature() {
        let mut env = env_from("attempts = 3\ntemperatures = [0.3, 0.6]");
        let mut temperatures = Vec::new();
        let mut step = env.reset(1).await.unwrap();
        while let Step::Request(r) = step {
            temperatures.push(r.sampling.temperature);
            step = env.step(&r.agent, "\\boxed{0}").await.unwrap();
        }
        assert_eq!(temperatures, [Some(0.3), Some(0.6), Some(0.6)]);

        let (requests, _) = play(2, 1, &["a", "b"]).await;
        assert!(requests.iter().all(|r| r.sampling.temperature.is_none()));

        let err = params_error("temperatures = [0.3, -1.0]");
        assert!(err.contains("temperatures[1]"), "{err}");
        let err = params_error("temperatures = [nan]");
        assert!(err.contains("temperatures[0]"), "{err}");
        let err = params_error("temperatures = [0.0]");
        assert!(
            err.contains("temperatures[0]") && err.contains("> 0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_twin_asks_the_rephrased_question_with_the_same_answer() {
        let mut env = env_from("ask = \"twin\"");
        let problem = ProblemGenerator::default().generate(4);
        let Step::Request(r) = env.reset(4).await.unwrap() else {
            panic!("no request")
        };
        let shown = &r.messages.last().unwrap().content;
        assert!(
            shown.starts_with(problem.twin.as_deref().unwrap()),
            "{shown}"
        );
        let right = format!("\\boxed{{{}}}", problem.answer);
        let step = env.step(&r.agent, &right).await.unwrap();
        let Step::Request(r) = step else {
            panic!("one attempt left")
        };
        let Step::Done(outcome) = env.step(&r.agent, &right).await.unwrap() else {
            panic!("not done")
        };
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![1.0, 1.0]);

        // Problems without a twin: the episode fails, naming the problem.
        let mut env = env_from("ask = \"twin\"\ngenerator = { family = \"word_problem\" }");
        let err = env.reset(4).await.err().unwrap().to_string();
        assert!(err.contains("has no `twin`"), "{err}");
    }

    #[tokio::test]
    async fn a_policy_rewrite_is_an_untrained_first_turn_whose_rewording_is_answered() {
        let mut env = env_from("ask = \"policy_rewrite\"");
        let problem = ProblemGenerator::default().generate(4);
        let Step::Request(r) = env.reset(4).await.unwrap() else {
            panic!("no request")
        };
        assert!(!r.trainable, "the rewording is not trained");
        assert!(r.messages[0].content.starts_with("Reword"));
        assert!(r.messages[0].content.ends_with(&problem.question));
        let Step::Request(first) = env.step(&r.agent, "  How much is it?  ").await.unwrap() else {
            panic!("no attempt")
        };
        assert!(first.trainable);
        assert!(
            !first.continues(&r, "  How much is it?  "),
            "a fresh thread"
        );
        assert!(first.messages[0].content.starts_with("How much is it?\n\n"));
        let right = format!("\\boxed{{{}}}", problem.answer);
        let Step::Request(second) = env.step(&first.agent, "\\boxed{-3}").await.unwrap() else {
            panic!("one attempt left")
        };
        let Step::Done(outcome) = env.step(&second.agent, &right).await.unwrap() else {
            panic!("not done")
        };
        // One reward per answered request: the rewording's 0, then the attempts'.
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 0.0, 1.0]);
        assert_eq!(outcome.metrics["correct@t1"], 0.0);
        assert_eq!(outcome.metrics["correct@t2"], 1.0);
        assert!(!outcome.metrics.contains_key("correct@t3"));

        // An empty rewording falls back to the question.
        let Step::Request(r) = env.reset(4).await.unwrap() else {
            panic!("no request")
        };
        let Step::Request(first) = env.step(&r.agent, " ").await.unwrap() else {
            panic!("no attempt")
        };
        assert!(first.messages[0].content.starts_with(&problem.question));
    }

    /// Plays a strategy-menu episode (all three strategies) with `answers`; returns the
    /// requests and the outcome.
    async fn play_strategies(answers: &[&str]) -> Result<(Vec<kaizen_core::Request>, Outcome)> {
        let env = env_from(
            "strategies = [\"direct\", \"step_by_step\", \"program\"]\nsandbox = { timeout_seconds = 2.0 }",
        );
        play_env(env, 3, answers).await
    }

    #[tokio::test]
    async fn a_strategy_menu_runs_programs_lets_attempts_switch_and_logs_the_mix() {
        let (_, _, program) = problem_with_program(3);
        let program = format!("Strategy: program\n{program}");
        let (requests, outcome) = play_strategies(&["Strategy: direct\n\\boxed{-1}", &program])
            .await
            .unwrap();
        let first = &requests[0].messages.last().unwrap().content;
        assert!(
            first.contains("- program: write a Python program"),
            "{first}"
        );
        let second = &requests[1].messages.last().unwrap().content;
        assert!(second.contains("switch to another"), "{second}");
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        let m = &outcome.metrics;
        assert_eq!(m["strategy@t1/direct"], 1.0);
        assert_eq!(m["strategy@t1/program"], 0.0);
        assert_eq!(m["strategy@final/program"], 1.0);
        assert_eq!(m["accuracy@t1/direct"], 0.0);
        assert!(!m.contains_key("accuracy@t1/program"));
        assert_eq!((m["declared@t1"], m["switched"]), (1.0, 1.0));
        assert!(m["sandbox_ms"] > 0.0);

        // A program's output (or its failure) is shown before the next attempt.
        let (requests, outcome) =
            play_strategies(&["```python\nprint(1/0)\n```", "2 + 2 = 4\nso \\boxed{4}"])
                .await
                .unwrap();
        let second = &requests[1].messages.last().unwrap().content;
        assert!(
            second.starts_with("Your program failed: ZeroDivisionError"),
            "{second}"
        );
        let m = &outcome.metrics;
        assert_eq!((m["strategy@t1/program"], m["declared@t1"]), (1.0, 0.0));
        assert_eq!(m["strategy@final/step_by_step"], 1.0);

        assert_eq!(m["program_limits"], 0.0);

        // A runaway program is a wrong attempt, told why; the episode goes on.
        let (requests, outcome) =
            play_strategies(&["```python\nwhile True: pass\n```", "\\boxed{x}"])
                .await
                .unwrap();
        let second = &requests[1].messages.last().unwrap().content;
        assert!(
            second.starts_with(
                "Your program failed: still running after the 2 s wall-clock limit (killed)"
            ),
            "{second}"
        );
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 0.0]);
        assert_eq!(outcome.metrics["program_limits"], 1.0);
        // So is a forbidden call, with the right answer after it.
        let (_, _, program) = problem_with_program(3);
        let (requests, outcome) =
            play_strategies(&["```python\nimport os\nos.system('true')\n```", &program])
                .await
                .unwrap();
        let second = &requests[1].messages.last().unwrap().content;
        assert!(
            second.starts_with("Your program failed: forbidden operation"),
            "{second}"
        );
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        assert_eq!(outcome.metrics["program_limits"], 1.0);

        // The expert declares its strategy and is right.
        for seed in 0..10 {
            let env = env_from("strategies = [\"program\"]");
            let ep = demonstrate(env, seed, EpisodeLimits::default()).await;
            let outcome = ep.outcome().unwrap();
            assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![1.0, 1.0]);
        }
        let err = params_error("strategies = [\"direct\", \"direct\"]");
        assert!(err.contains("twice"), "{err}");
    }

    #[tokio::test]
    async fn a_menu_from_the_second_attempt_lets_it_check_the_first_with_a_program() {
        let (problem, expression, program) = problem_with_program(3);
        let play = |answers: Vec<String>| async move {
            let env = env_from(
                "strategies = [\"direct\", \"step_by_step\", \"program\"]\n\
                 strategies_from = 2\nsandbox = { timeout_seconds = 2.0 }",
            );
            let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
            play_env(env, 3, &answers).await.unwrap()
        };
        // A wrong first answer, then a program that prints the right one.
        let (requests, outcome) = play(vec!["\\boxed{-1}".into(), program.clone()]).await;
        let first = &requests[0].messages.last().unwrap().content;
        assert!(
            first.ends_with(&SelfCorrectConfig::default().instruction),
            "{first}"
        );
        assert!(!first.contains("- program"), "{first}");
        let second = &requests[1].messages.last().unwrap().content;
        assert!(
            second.contains("- program: write a Python program"),
            "{second}"
        );
        assert!(!second.contains("switch to another"), "{second}");
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        let m = &outcome.metrics;
        assert_eq!(
            (m["strategy@t1/direct"], m["strategy@final/program"]),
            (1.0, 1.0)
        );
        assert_eq!(
            (m["accuracy@t1/direct"], m["accuracy@final/program"]),
            (0.0, 1.0)
        );
        assert!(m["sandbox_ms"] > 0.0);
        // The program's answer, written as a first-attempt reply, is right too.
        let replies = &outcome.info["first_replies"];
        let reply = replies[1].as_str().unwrap();
        assert_eq!(reply, format!("\\boxed{{{}}}", problem.answer));
        assert_eq!(BuiltinVerifier.score(&problem, reply), 1.0);
        assert_eq!(replies[0], "\\boxed{-1}");

        // A program that prints a sentence: the first reply holds only its answer.
        let wordy = format!("```python\nprint(f\"The final answer is {{{expression}}}.\")\n```");
        let (_, outcome) = play(vec!["\\boxed{-1}".into(), wordy]).await;
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0]);
        assert_eq!(
            outcome.info["first_replies"][1],
            format!("\\boxed{{{}}}", problem.answer)
        );

        // Before the menu a program is a plain reply: not run, and wrong.
        let (_, outcome) = play(vec![program.clone(), "x".into()]).await;
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 0.0]);
        assert!(!outcome.metrics.contains_key("sandbox_ms"));

        let err = params_error("strategies = [\"program\"]\nstrategies_from = 3");
        assert!(err.contains("`strategies_from`"), "{err}");
    }

    #[tokio::test]
    async fn correction_strategies_give_the_second_attempt_its_own_menu() {
        let (_, _, program) = problem_with_program(5);
        let play = |answers: Vec<String>| async move {
            let env = env_from(
                "attempts = 3\nstrategies = [\"direct\", \"step_by_step\"]\n\
                 correction_strategies = [\"program\"]\nsandbox = { timeout_seconds = 2.0 }",
            );
            let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
            play_env(env, 5, &answers).await.unwrap()
        };
        // The first attempt chooses from its menu (no program); every correction asks for one.
        let (requests, outcome) =
            play(vec![program.clone(), program.clone(), "\\boxed{-1}".into()]).await;
        let first = &requests[0].messages.last().unwrap().content;
        assert!(first.contains("- step_by_step"), "{first}");
        assert!(!first.contains("program"), "{first}");
        for request in &requests[1..] {
            let prompt = &request.messages.last().unwrap().content;
            assert!(prompt.contains("Write a Python program"), "{prompt}");
            assert!(!prompt.contains("switch to another"), "{prompt}");
        }
        // A program is not on the first menu, so it is a plain (wrong) reply and is not run;
        // the second attempt's program runs and is right; the third, asked for a program,
        // has no block to run.
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0, 0.0]);
        let m = &outcome.metrics;
        assert_eq!(
            (m["strategy@t1/program"], m["strategy@t1/direct"]),
            (0.0, 1.0)
        );
        assert_eq!(m["strategy@final/program"], 1.0);
        assert!(m["sandbox_ms"] > 0.0);
        let (_, outcome) = play(vec!["\\boxed{-1}".into(), program.clone(), program.clone()]).await;
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![0.0, 1.0, 1.0]);
        assert_eq!(outcome.metrics["accuracy@final/program"], 1.0);

        // The expert follows each attempt's own menu, and is right on every attempt.
        for seed in 0..10 {
            let env = env_from(
                "strategies = [\"direct\", \"step_by_step\"]\ncorrection_strategies = [\"program\"]",
            );
            let ep = demonstrate(env, seed, EpisodeLimits::default()).await;
            assert!(
                ep.turns[1].answer.contains("```python"),
                "{}",
                ep.turns[1].answer
            );
            let outcome = ep.outcome().unwrap();
            assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![1.0, 1.0]);
        }

        // `menu_prompt` replaces the first menu's text; a program on it still runs.
        let env = env_from(
            "strategies = [\"direct\", \"program\"]\ncorrection_strategies = [\"program\"]\n\
             menu_prompt = \"Answer, or write a program that prints the answer.\"\n\
             sandbox = { timeout_seconds = 2.0 }",
        );
        let (requests, outcome) = play_env(env, 5, &[program.as_str(), "\\boxed{-1}"])
            .await
            .unwrap();
        let first = &requests[0].messages.last().unwrap().content;
        assert!(
            first.ends_with("\n\nAnswer, or write a program that prints the answer."),
            "{first}"
        );
        assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![1.0, 0.0]);
        assert_eq!(outcome.metrics["strategy@t1/program"], 1.0);

        for (params, field) in [
            (
                "correction_strategies = [\"program\"]",
                "`correction_strategies`",
            ),
            (
                "attempts = 2\nstrategies = [\"direct\"]\nstrategies_from = 2\n\
                 correction_strategies = [\"program\"]",
                "`correction_strategies`",
            ),
            (
                "strategies = [\"direct\"]\ncorrection_strategies = [\"program\", \"program\"]",
                "twice",
            ),
            ("menu_prompt = \"Answer.\"", "`menu_prompt`"),
        ] {
            let err = params_error(params);
            assert!(err.contains(field), "{params}: {err}");
        }
    }

    #[tokio::test]
    async fn the_expert_demonstration_is_correct_on_every_turn() {
        for seed in 0..50 {
            let ep = demonstrate(factory(2).make(), seed, EpisodeLimits::default()).await;
            let outcome = ep.outcome().unwrap();
            assert_eq!(outcome.rewards[&AgentId::new(SOLVER)], vec![1.0, 1.0]);
        }
    }
}
