//! `spc`: the Self-Play Critic game (Chen et al. 2025, <https://arxiv.org/abs/2504.19162>)
//! over step-by-step arithmetic solutions.
//!
//! The environment takes a problem with a correct step-by-step solution and picks a step. In a
//! *sneaky* round (probability `sneaky_probability`) the `sneaky` agent is asked to rewrite
//! that step so that it is wrong but hard to spot; the environment checks whether the rewrite
//! is really wrong (its left side or its value differs from the true value). In an honest
//! round the step is shown unchanged. The `critic` agent then judges the step
//! (`Verdict: correct|incorrect` and a reason).
//!
//! With `planted_probability`, a round that is not sneaky is instead, with that probability
//! overall, a *planted* round: the environment itself makes the shown step wrong (its value off
//! by 2 to 9, up or down) and only the critic plays. This balances the critic's training data
//! between right and wrong steps, as SPC does for its critic, while the sneaky agent's rewrites
//! are still mostly not wrong. Measured with SmolLM2-135M (BENCHMARKS.md): without it the
//! critic collapses to "correct"; with 0.25 it collapses to "incorrect" instead.
//! The kind of planted error differs from the held-out set's (off by one or ten, swapped
//! digits, the other operator), so held-out accuracy on wrong steps is not measured on errors
//! the critic was trained to spot.
//!
//! Rewards are zero-sum: the critic gets +1 when its verdict matches the truth and -1
//! otherwise (also when no verdict can be read); a sneaky step that is wrong gets the
//! opposite of the critic's reward. A rewrite that is not actually wrong earns
//! `invalid_penalty` (the critic still judges it, as a correct step); one that cannot be read
//! as `expression = value` earns the penalty and ends the episode. Both agents are trainable.
//!
//! With `critic_tool`, the critic is asked to check the step with a Python program (program of
//! thought as a critic's tool, as CRITIC (Gou et al. 2024, <https://arxiv.org/abs/2305.11738>)
//! verifies with a code interpreter): the first ```python block of its reply runs in the
//! sandbox, and the verdict is read from what it prints (`correct`/`incorrect`, `right`/
//! `wrong`, or Python's `True`/`False`). A reply without a program is read as a verdict in
//! words, as without the tool; a program that fails gives no verdict. Metrics
//! `critic_program` (the share of critic turns that ran a program) and `program_limits`.
//! Without the tool a 135M critic must redo multi-digit arithmetic in its head, which it
//! cannot (BENCHMARKS.md, "SPC with SmolLM2").

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::strategies;
use crate::problems::{Problem, ProblemGenerator, ProblemSet};
use crate::rewards::math_expression::{self, Expr};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// The agent that rewrites a step to be wrong.
pub const SNEAKY: &str = "sneaky";
/// The agent that judges a step.
pub const CRITIC: &str = "critic";

/// Parameters of `spc` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpcConfig {
    /// A JSONL problem set whose problems have `steps`; without it, `generator` is used.
    #[serde(default)]
    pub problems: Option<PathBuf>,
    /// The problem generator (default: easy arithmetic).
    #[serde(default)]
    pub generator: Option<ProblemGenerator>,
    /// Probability that a round is sneaky (the step is rewritten) rather than honest.
    #[serde(default = "default_sneaky_probability")]
    pub sneaky_probability: f64,
    /// Probability that a round is planted (the environment makes the shown step wrong and
    /// only the critic plays); `sneaky_probability + planted_probability` must be at most 1.
    #[serde(default)]
    pub planted_probability: f64,
    /// Reward of a sneaky rewrite that is not actually wrong or cannot be read.
    #[serde(default = "default_invalid_penalty")]
    pub invalid_penalty: f32,
    /// A held-out critic set (JSONL of [`CriticItem`], made by
    /// `scripts/data/make_spc_sets.sh`): each episode shows the critic item `seed mod n`'s step
    /// (planted error or not) and nothing else, so `critic_correct@incorrect` is the critic's
    /// accuracy on held-out erroneous steps. Meant for `[env.eval_params]`; `problems` and
    /// `generator` are then unused.
    #[serde(default)]
    pub critic_set: Option<PathBuf>,
    /// Balances the critic's judged steps between right and wrong (SPC balances its critic's
    /// training data): a round that is not sneaky is planted while fewer wrong than right
    /// steps have been shown to the critic by this factory's episodes so far, honest
    /// otherwise. The share of wrong steps then stays near one half whatever the sneaky
    /// agent's rewrites turn out to be (fixed `planted_probability` cannot follow them: with
    /// 0.25 the critic's data drifted to 70% wrong as the sneaky agent improved). Rounds then
    /// depend on the order episodes start in, not on their seed alone. Requires
    /// `planted_probability = 0`.
    #[serde(default)]
    pub balance_critic: bool,
    /// The critic checks the step with a Python program run in the sandbox, and its verdict
    /// is what the program prints (see the module's documentation).
    #[serde(default)]
    pub critic_tool: bool,
    /// The sandbox's limits for the critic's programs (`critic_tool`).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// With `critic_tool`: added to the critic's reward when its program gave a verdict and
    /// transcribes the judged step, that is, every number of the shown step (unsigned, with
    /// its multiplicity) is a number literal of the program. A shaping term outside the
    /// zero-sum game (the sneaky agent's reward is unchanged), for a critic whose programs
    /// run but mis-copy the step (BENCHMARKS.md, "SPC with a tool for the critic"); the
    /// environment can check a transcription, not a verdict's reasoning. 0 turns it off.
    #[serde(default)]
    pub transcription_bonus: f32,
    /// With `critic_tool`: a program that does not transcribe the judged step (see
    /// `transcription_bonus`) gives no verdict, as a placeholder left in does: a program that
    /// prints a constant does not check the step. Measured without it (BENCHMARKS.md), the
    /// critic's programs became `print("Correct")`.
    #[serde(default)]
    pub require_transcription: bool,
    /// With `critic_tool`: the prompt shows the program for an example step (`12 + 5 = 18`)
    /// instead of the one-line form with `LEFT`/`RIGHT` placeholders. Alone, a runnable
    /// example is what SmolLM2's critic learnt to copy (BENCHMARKS.md, run A); with
    /// `require_transcription` a copy of the example gives no verdict.
    #[serde(default)]
    pub critic_example: bool,
}

/// One held-out critic question: a problem's step-by-step solution up to step `index` (0-based),
/// where `shown` replaces the true step — with an error planted in it or unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticItem {
    /// The problem.
    pub question: String,
    /// The true steps (`expression = value`).
    pub steps: Vec<String>,
    /// The judged step (0-based).
    pub index: usize,
    /// The step shown in its place.
    pub shown: String,
    /// `"correct"` or `"incorrect"`.
    pub truth: String,
    /// The kind of planted error (`null` for a correct step).
    #[serde(default)]
    pub error: Option<String>,
}

/// Reads a critic set; errors name the file, the line and what was expected.
fn read_critic_set(env: &str, path: &std::path::Path) -> Result<Vec<CriticItem>> {
    let bad = |message: String| Error::Params {
        env: env.into(),
        message: format!("critic_set {}: {message}", path.display()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut items = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let item: CriticItem =
            serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        if item.index >= item.steps.len() {
            return Err(bad(format!(
                "line {}: `index` {} is past the {} steps",
                i + 1,
                item.index,
                item.steps.len()
            )));
        }
        if item.truth != "correct" && item.truth != "incorrect" {
            return Err(bad(format!(
                "line {}: `truth` must be \"correct\" or \"incorrect\", got {:?}",
                i + 1,
                item.truth
            )));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(bad("no items".into()));
    }
    Ok(items)
}

fn default_sneaky_probability() -> f64 {
    0.5
}

fn default_invalid_penalty() -> f32 {
    -1.0
}

impl Default for SpcConfig {
    fn default() -> Self {
        Self {
            problems: None,
            generator: None,
            sneaky_probability: default_sneaky_probability(),
            planted_probability: 0.0,
            invalid_penalty: default_invalid_penalty(),
            critic_set: None,
            balance_critic: false,
            critic_tool: false,
            sandbox: SandboxConfig::default(),
            transcription_bonus: 0.0,
            require_transcription: false,
            critic_example: false,
        }
    }
}

/// Makes `spc` episodes.
#[derive(Clone)]
pub struct SpcFactory {
    shared: Arc<(ProblemSet, SpcConfig)>,
    critic_set: Option<Arc<Vec<CriticItem>>>,
    sandbox: Option<Sandbox>,
    judged: Arc<Judged>,
}

/// Steps shown to the critic by one factory's episodes: right (`[0]`) and wrong (`[1]`).
type Judged = [AtomicU64; 2];

impl SpcFactory {
    /// A factory over `problems` (each needs at least one step).
    ///
    /// # Errors
    /// [`Error::Params`] when `sneaky_probability` or `planted_probability` is outside [0, 1],
    /// their sum is above 1, the penalty is not finite, or (with `critic_tool`) a sandbox limit
    /// is invalid.
    pub fn new(problems: ProblemSet, config: SpcConfig) -> Result<Self> {
        let bad = |message: &str| Error::Params {
            env: "spc".into(),
            message: message.into(),
        };
        if !(0.0..=1.0).contains(&config.sneaky_probability) {
            return Err(bad("`sneaky_probability` must be in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&config.planted_probability) {
            return Err(bad("`planted_probability` must be in [0, 1]"));
        }
        if config.sneaky_probability + config.planted_probability > 1.0 + 1e-9 {
            return Err(bad(
                "`sneaky_probability` + `planted_probability` must be at most 1",
            ));
        }
        if !config.invalid_penalty.is_finite() {
            return Err(bad("`invalid_penalty` must be a finite number"));
        }
        if !config.transcription_bonus.is_finite() {
            return Err(bad("`transcription_bonus` must be a finite number"));
        }
        if config.transcription_bonus != 0.0 && !config.critic_tool {
            return Err(bad(
                "`transcription_bonus` rewards the critic's program: it needs `critic_tool = true`",
            ));
        }
        if config.critic_example && !config.critic_tool {
            return Err(bad(
                "`critic_example` shows an example program: it needs `critic_tool = true`",
            ));
        }
        if config.require_transcription && !config.critic_tool {
            return Err(bad(
                "`require_transcription` checks the critic's program: it needs `critic_tool = true`",
            ));
        }
        if config.balance_critic && config.planted_probability > 0.0 {
            return Err(bad(
                "`balance_critic` chooses the planted rounds itself: set `planted_probability = 0`",
            ));
        }
        let sandbox = if config.critic_tool {
            config
                .sandbox
                .validate()
                .map_err(|m| bad(&format!("`sandbox`: {m}")))?;
            Some(Sandbox::new(config.sandbox.clone()))
        } else {
            None
        };
        Ok(Self {
            shared: Arc::new((problems, config)),
            critic_set: None,
            sandbox,
            judged: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        })
    }

    /// A factory from a TOML table (see [`SpcConfig`]).
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields; problem-set read errors.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: SpcConfig = parse_params(env, params)?;
        let critic_set = match &config.critic_set {
            Some(path) => Some(Arc::new(read_critic_set(env, path)?)),
            None => None,
        };
        let problems = ProblemSet::from_params(env, config.problems.as_ref(), config.generator)?;
        let mut factory = Self::new(problems, config)?;
        factory.critic_set = critic_set;
        Ok(factory)
    }
}

impl EnvFactory for SpcFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(Spc {
            shared: self.shared.clone(),
            critic_set: self.critic_set.clone(),
            sandbox: self.sandbox.clone(),
            judged: self.judged.clone(),
            round: None,
            dialogue: Dialogue::new(),
            critic_program: None,
            critic_faithful: None,
            limits_broken: false,
        })
    }
}

/// Whether a step is right, as far as the environment can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Correct,
    Incorrect,
}

/// What the sneaky agent's rewrite (or the environment's planted error) turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    Wrong,
    NotWrong,
    Unreadable,
}

struct Round {
    problem: Problem,
    /// 0-based index of the chosen step.
    index: usize,
    /// The value the chosen step must have.
    value: Expr,
    sneaky: bool,
    /// The environment planted an error in the shown step.
    planted: bool,
    rewrite: Option<Rewrite>,
    /// The step the critic is shown.
    shown: Option<String>,
}

struct Spc {
    shared: Arc<(ProblemSet, SpcConfig)>,
    critic_set: Option<Arc<Vec<CriticItem>>>,
    /// Runs the critic's programs (`critic_tool`).
    sandbox: Option<Sandbox>,
    /// The factory's counts of the steps shown to the critic (`balance_critic`).
    judged: Arc<Judged>,
    round: Option<Round>,
    dialogue: Dialogue,
    /// With `critic_tool`: whether the critic's reply ran a program (`None` before it replied).
    critic_program: Option<bool>,
    /// With `critic_tool`: whether the critic's program transcribes the shown step
    /// ([`transcribes`]; `None` before it replied or without a program).
    critic_faithful: Option<bool>,
    /// With `critic_tool`: the critic's program broke a sandbox limit.
    limits_broken: bool,
}

static STEP_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*(?:\*\*)?step\s*\d+\s*(?:\*\*)?\s*[:.)-]?\s*").expect("valid regex")
});
static VERDICT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)verdict\W*(correct|incorrect|wrong|right)").expect("valid regex")
});

/// The step the sneaky agent wrote: its last line with an `=`, without a `Step k:` prefix,
/// backticks or bold.
fn rewritten_step(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| l.contains('='))?;
    let line = STEP_PREFIX.replace(line, "");
    let line = line.trim_matches(|c: char| c == '`' || c == '*' || c.is_whitespace());
    (!line.is_empty()).then(|| line.to_string())
}

/// Classifies a rewritten step against the true value of the original step: wrong when its
/// left side or its stated value differs from the true value.
fn classify(step: &str, value: &Expr) -> Rewrite {
    let Some((lhs, rhs)) = step.rsplit_once('=') else {
        return Rewrite::Unreadable;
    };
    let lhs = lhs.rsplit('=').next().unwrap_or(lhs);
    match (math_expression::parse(lhs), math_expression::parse(rhs)) {
        (Some(l), Some(r)) if l.equals(value) && r.equals(value) => Rewrite::NotWrong,
        (Some(_), Some(_)) => Rewrite::Wrong,
        _ => Rewrite::Unreadable,
    }
}

/// The critic's verdict: `Verdict: correct|incorrect` (also `wrong`/`right`), else the words
/// "incorrect"/"not correct"/"wrong" or "correct" anywhere; `None` when there is none.
fn parse_verdict(text: &str) -> Option<Truth> {
    let word = match VERDICT.captures_iter(text).last() {
        Some(c) => c.get(1).map(|m| m.as_str().to_lowercase())?,
        None => {
            let lower = text.to_lowercase();
            if lower.contains("incorrect")
                || lower.contains("not correct")
                || lower.contains("wrong")
            {
                "incorrect".into()
            } else if lower.contains("correct") {
                "correct".into()
            } else {
                return None;
            }
        }
    };
    Some(if word == "correct" || word == "right" {
        Truth::Correct
    } else {
        Truth::Incorrect
    })
}

/// The verdict a critic's program printed: its last non-empty line read as a verdict in words
/// ([`parse_verdict`]), or Python's `True` (correct) / `False` (incorrect).
fn printed_verdict(stdout: &str) -> Option<Truth> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    match line.trim_matches(|c: char| !c.is_alphanumeric()) {
        "True" => Some(Truth::Correct),
        "False" => Some(Truth::Incorrect),
        _ => parse_verdict(line),
    }
}

static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d+(?:\.\d+)?").expect("valid regex"));

/// Whether `program` transcribes `step`: every unsigned number literal of the step (`117 - 402
/// = -284` has 117, 402 and 284) occurs among the program's number literals at least as
/// often. Signs are left out because `- 402` and `-402` are both faithful copies.
fn transcribes(program: &str, step: &str) -> bool {
    let mut have: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for m in NUMBER.find_iter(program) {
        *have.entry(m.as_str()).or_default() += 1;
    }
    let mut any = false;
    for m in NUMBER.find_iter(step) {
        any = true;
        match have.get_mut(m.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return false,
        }
    }
    any
}

/// `step` (`expression = value`) with its value moved by 2 to 9, up or down (a move that would
/// turn a non-negative value negative moves up); `None` when the value is not an exact number.
fn plant_error(step: &str, value: &Expr, rng: &mut ChaCha8Rng) -> Option<String> {
    let (lhs, _) = step.rsplit_once('=')?;
    let v = value.exact()?.to_f64();
    if !v.is_finite() {
        return None;
    }
    let k = f64::from(rng.random_range(2u8..=9));
    let wrong = if (v >= 0.0 && v - k < 0.0) || rng.random_bool(0.5) {
        v + k
    } else {
        v - k
    };
    let wrong = if wrong.fract() == 0.0 {
        format!("{wrong:.0}")
    } else {
        format!("{wrong}")
    };
    Some(format!("{} = {wrong}", lhs.trim()))
}

fn numbered(steps: &[String]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("Step {}: {s}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Spc {
    /// A held-out critic question: the critic alone judges `item`'s shown step.
    fn reset_critic_item(&mut self, item: &CriticItem) -> Result<Step> {
        let problem = Problem {
            question: item.question.clone(),
            answer: String::new(),
            verifier: Default::default(),
            steps: item.steps.clone(),
            twin: None,
            metadata: serde_json::Value::Null,
        };
        let wrong = item.truth == "incorrect";
        self.dialogue = Dialogue::new();
        self.round = Some(Round {
            problem,
            index: item.index,
            value: math_expression::parse("0").ok_or_else(|| Error::Env("internal".into()))?,
            sneaky: false,
            planted: false,
            rewrite: wrong.then_some(Rewrite::Wrong),
            shown: None,
        });
        self.ask_critic(item.shown.clone())
    }

    fn round(&self) -> Result<&Round> {
        self.round.as_ref().ok_or(Error::NoEpisode)
    }

    fn ask_critic(&mut self, shown: String) -> Result<Step> {
        let round = self.round.as_mut().ok_or(Error::NoEpisode)?;
        let k = round.index;
        let mut steps = round.problem.steps[..k].to_vec();
        steps.push(shown.clone());
        let ask = if self.sandbox.is_some() && self.shared.1.critic_example {
            format!(
                "Is step {k} correct? Check it with a Python program in a ```python block that prints \
                 `correct` if the step is right and `incorrect` if it is wrong. For example, for the \
                 step `12 + 5 = 18` the program is:\n\
                 ```python\nprint(\"correct\" if 12 + 5 == 18 else \"incorrect\")\n```\n\
                 Write the program for step {k}.",
                k = k + 1
            )
        } else if self.sandbox.is_some() {
            format!(
                "Is step {k} correct? Check it with a Python program in a ```python block that prints \
                 `correct` if the step is right and `incorrect` if it is wrong:\n\
                 ```python\nprint(\"correct\" if LEFT == RIGHT else \"incorrect\")\n```\n\
                 with LEFT and RIGHT replaced by the two sides of step {k}.",
                k = k + 1
            )
        } else {
            format!(
                "Is step {} correct? Reply with `Verdict: correct` or `Verdict: incorrect`, then one \
                 sentence explaining why.",
                k + 1
            )
        };
        let prompt = format!(
            "Here is a math problem and a partial step-by-step solution.\n\nProblem: {}\n\nSolution:\n{}\n\n{ask}",
            round.problem.question,
            numbered(&steps),
        );
        round.shown = Some(shown);
        let wrong = Self::truth(round) == Truth::Incorrect;
        self.judged[usize::from(wrong)].fetch_add(1, Ordering::Relaxed);
        Ok(Step::Request(
            self.dialogue.ask(CRITIC, [Message::user(prompt)]),
        ))
    }

    fn truth(round: &Round) -> Truth {
        if round.rewrite == Some(Rewrite::Wrong) {
            Truth::Incorrect
        } else {
            Truth::Correct
        }
    }

    /// The critic's verdict on `text`: in words, or (with `critic_tool`) what the program in its
    /// first ```python block printed; `None` when there is none, no program (with the tool) or
    /// the program failed.
    ///
    /// # Errors
    /// [`Error::Sandbox`] when the sandbox cannot start the interpreter or prepare its
    /// directory (the episode ends as a `fault/sandbox` fault).
    async fn critic_verdict(&mut self, text: &str) -> Result<Option<Truth>> {
        let Some(sandbox) = &self.sandbox else {
            return Ok(parse_verdict(text));
        };
        let Some(code) = strategies::program(text) else {
            // The tool is the critic's only way to a verdict: words alone would let it fall
            // back to a constant verdict in words (measured: its programs went from 56% to 11%
            // of replies in 3 steps when words counted).
            self.critic_program = Some(false);
            return Ok(None);
        };
        self.critic_program = Some(true);
        let shown = self.round()?.shown.as_deref().unwrap_or_default();
        let faithful = transcribes(code, shown);
        self.critic_faithful = Some(faithful);
        if !faithful && self.shared.1.require_transcription {
            return Ok(None);
        }
        match sandbox.run_tests(code, &[]).await {
            Ok(run) if run.load_error.is_none() => Ok(printed_verdict(&run.stdout)),
            Ok(_) => Ok(None),
            Err(e @ (SandboxError::Spawn { .. } | SandboxError::Io(_))) => Err(e.into()),
            Err(_) => {
                self.limits_broken = true;
                Ok(None)
            }
        }
    }

    fn finish(&mut self, verdict: Option<Option<Truth>>) -> Result<Step> {
        let penalty = self.shared.1.invalid_penalty;
        let round = self.round()?;
        let mut outcome = Outcome::default();
        let metric = |b: bool| f64::from(u8::from(b));
        let truth = Self::truth(round);
        let critic_reward = verdict.map(|v| if v == Some(truth) { 1.0 } else { -1.0 });
        if let Some(r) = critic_reward {
            // The shaping term: a program that gave a verdict and copied the step faithfully.
            let faithful = self.critic_faithful == Some(true);
            let bonus = if faithful && verdict.is_some_and(|v| v.is_some()) {
                self.shared.1.transcription_bonus
            } else {
                0.0
            };
            outcome
                .rewards
                .insert(AgentId::new(CRITIC), vec![r + bonus]);
            outcome
                .metrics
                .insert("critic_correct".into(), metric(r > 0.0));
            outcome
                .metrics
                .insert("critic_unparsed".into(), metric(verdict == Some(None)));
            // Accuracy on wrong steps and on right ones, apart (each averaged over the episodes
            // that have it).
            let key = match truth {
                Truth::Correct => "critic_correct@correct",
                Truth::Incorrect => "critic_correct@incorrect",
            };
            outcome.metrics.insert(key.into(), metric(r > 0.0));
            if let Some(ran) = self.critic_program {
                outcome.metrics.insert("critic_program".into(), metric(ran));
                outcome
                    .metrics
                    .insert("critic_faithful".into(), metric(faithful));
                outcome
                    .metrics
                    .insert("program_limits".into(), metric(self.limits_broken));
            }
        }
        if round.sneaky {
            let sneaky_reward = match (round.rewrite, critic_reward) {
                (Some(Rewrite::Wrong), Some(r)) => -r,
                _ => penalty,
            };
            outcome
                .rewards
                .insert(AgentId::new(SNEAKY), vec![sneaky_reward]);
            outcome.metrics.insert(
                "sneaky_valid".into(),
                metric(round.rewrite == Some(Rewrite::Wrong)),
            );
            outcome.metrics.insert(
                "sneaky_fooled_critic".into(),
                metric(round.rewrite == Some(Rewrite::Wrong) && critic_reward == Some(-1.0)),
            );
        }
        outcome
            .metrics
            .insert("sneaky_round".into(), metric(round.sneaky));
        outcome
            .metrics
            .insert("planted_round".into(), metric(round.planted));
        outcome.info = serde_json::json!({
            "step": round.index + 1,
            "original": round.problem.steps[round.index],
            "shown": round.shown,
            "truth": if truth == Truth::Correct { "correct" } else { "incorrect" },
        });
        self.dialogue.finish();
        Ok(Step::Done(outcome))
    }
}

#[async_trait]
impl Env for Spc {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        self.critic_program = None;
        self.critic_faithful = None;
        self.limits_broken = false;
        if let Some(items) = self.critic_set.clone() {
            return self.reset_critic_item(&items[(seed % items.len() as u64) as usize]);
        }
        let (problems, config) = &*self.shared;
        let problem = problems.problem(seed);
        if problem.steps.is_empty() {
            return Err(Error::Env(format!(
                "spc needs problems with `steps`; problem of seed {seed} has none"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let index = rng.random_range(0..problem.steps.len());
        let value = problem.steps[index]
            .rsplit('=')
            .next()
            .and_then(math_expression::parse)
            .ok_or_else(|| {
                Error::Env(format!(
                    "step `{}` of seed {seed} is not `expression = value`",
                    problem.steps[index]
                ))
            })?;
        let sneaky = rng.random_bool(config.sneaky_probability);
        // Drawn only when planting is on, so that the rounds of `planted_probability = 0`
        // follow the same random stream as before it existed.
        let planted = !sneaky
            && if config.balance_critic {
                let [right, wrong] = &*self.judged;
                wrong.load(Ordering::Relaxed) < right.load(Ordering::Relaxed)
            } else {
                config.planted_probability > 0.0
                    && rng.random_bool(
                        (config.planted_probability / (1.0 - config.sneaky_probability)).min(1.0),
                    )
            };
        let planted_step =
            if planted {
                Some(plant_error(&problem.steps[index], &value, &mut rng).ok_or_else(|| {
                Error::Env(format!(
                    "cannot plant an error in step `{}` of seed {seed}: its value is not an \
                     exact number",
                    problem.steps[index]
                ))
            })?)
            } else {
                None
            };
        self.dialogue = Dialogue::new();
        self.round = Some(Round {
            problem,
            index,
            value,
            sneaky,
            planted,
            rewrite: planted.then_some(Rewrite::Wrong),
            shown: None,
        });
        let round = self.round()?;
        if !sneaky {
            let shown = planted_step.unwrap_or_else(|| round.problem.steps[index].clone());
            return self.ask_critic(shown);
        }
        let prompt = format!(
            "Here is a math problem and a correct step-by-step solution.\n\nProblem: {}\n\nSolution:\n{}\n\n\
             Rewrite step {} so that it becomes wrong, in a way that is hard to notice. Keep the form \
             `expression = value`. Reply with the rewritten step only.",
            round.problem.question,
            numbered(&round.problem.steps),
            index + 1
        );
        Ok(Step::Request(
            self.dialogue.ask(SNEAKY, [Message::user(prompt)]),
        ))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        if agent.as_str() == CRITIC {
            let verdict = self.critic_verdict(text).await?;
            return self.finish(Some(verdict));
        }
        let round = self.round.as_mut().ok_or(Error::NoEpisode)?;
        let step = rewritten_step(text);
        let rewrite = step
            .as_deref()
            .map_or(Rewrite::Unreadable, |s| classify(s, &round.value));
        round.rewrite = Some(rewrite);
        match (rewrite, step) {
            (Rewrite::Unreadable, _) | (_, None) => self.finish(None),
            (_, Some(step)) => self.ask_critic(step),
        }
    }

    fn expert_answer(&self) -> Option<String> {
        let round = self.round.as_ref()?;
        match self.dialogue.pending()?.as_str() {
            SNEAKY => {
                let original = &round.problem.steps[round.index];
                let (lhs, _) = original.rsplit_once('=')?;
                let wrong = round.value.exact()?.to_f64() + 1.0;
                Some(format!("{} = {wrong}", lhs.trim()))
            }
            _ if self.sandbox.is_some() => {
                // Recompute the step and compare both of its sides with the true value (what
                // `classify` checks).
                let shown = round.shown.as_deref()?;
                let (lhs, rhs) = shown.rsplit_once('=')?;
                let lhs = lhs.rsplit('=').next().unwrap_or(lhs);
                let truth = round.problem.steps[round.index].rsplit('=').next()?.trim();
                Some(format!(
                    "```python\nstep = {}\nprint(\"correct\" if step == {truth} and {} == {truth} else \"incorrect\")\n```",
                    lhs.trim(),
                    rhs.trim()
                ))
            }
            _ => Some(match Self::truth(round) {
                Truth::Correct => "Verdict: correct. The arithmetic checks out.".into(),
                Truth::Incorrect => format!(
                    "Verdict: incorrect. The step should give {}.",
                    round.problem.steps[round.index].rsplit('=').next()?.trim()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpisodeLimits, demonstrate};

    fn factory(sneaky_probability: f64) -> SpcFactory {
        let config = SpcConfig {
            sneaky_probability,
            ..SpcConfig::default()
        };
        let generator = ProblemGenerator {
            difficulty: crate::problems::Difficulty::Medium,
            ..ProblemGenerator::default()
        };
        SpcFactory::new(ProblemSet::generated(generator), config).unwrap()
    }

    /// Plays a sneaky round with the given rewrite and critic answer.
    async fn sneaky_round(rewrite: &str, critic: &str) -> (Outcome, Vec<kaizen_core::Request>) {
        let mut env = factory(1.0).make();
        let mut requests = Vec::new();
        let Step::Request(r) = env.reset(4).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.agent.as_str(), SNEAKY);
        requests.push(r);
        let mut step = env.step(&AgentId::new(SNEAKY), rewrite).await.unwrap();
        if let Step::Request(r) = step {
            assert_eq!(r.agent.as_str(), CRITIC);
            requests.push(r);
            step = env.step(&AgentId::new(CRITIC), critic).await.unwrap();
        }
        let Step::Done(outcome) = step else { panic!() };
        (outcome, requests)
    }

    fn original_step() -> (String, Expr) {
        let p = ProblemGenerator {
            difficulty: crate::problems::Difficulty::Medium,
            ..ProblemGenerator::default()
        }
        .generate(4);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let k = rng.random_range(0..p.steps.len());
        let step = p.steps[k].clone();
        let value = math_expression::parse(step.rsplit('=').next().unwrap()).unwrap();
        (step, value)
    }

    fn rewards(o: &Outcome, agent: &str) -> Vec<f32> {
        o.rewards[&AgentId::new(agent)].clone()
    }

    #[tokio::test]
    async fn a_wrong_step_that_fools_the_critic_wins_for_the_sneaky_agent() {
        let (step, value) = original_step();
        let lhs = step.rsplit_once('=').unwrap().0;
        let wrong = format!("Step 1: {lhs}= {}", value.exact().unwrap().to_f64() + 10.0);
        let (fooled, requests) = sneaky_round(&wrong, "Verdict: correct. Looks fine.").await;
        assert_eq!(rewards(&fooled, SNEAKY), vec![1.0]);
        assert_eq!(rewards(&fooled, CRITIC), vec![-1.0]);
        assert_eq!(fooled.metrics["sneaky_fooled_critic"], 1.0);
        assert!(
            requests[1].messages[0]
                .content
                .contains(&wrong["Step 1: ".len()..])
        );
        let (caught, _) = sneaky_round(&wrong, "Verdict: incorrect, the sum is off").await;
        assert_eq!(rewards(&caught, SNEAKY), vec![-1.0]);
        assert_eq!(rewards(&caught, CRITIC), vec![1.0]);
    }

    #[tokio::test]
    async fn a_rewrite_that_is_not_wrong_is_penalised_and_judged_as_correct() {
        let (step, _) = original_step();
        let (o, _) = sneaky_round(&step, "Verdict: incorrect").await;
        assert_eq!(rewards(&o, SNEAKY), vec![-1.0]);
        assert_eq!(rewards(&o, CRITIC), vec![-1.0], "the step was correct");
        assert_eq!(o.metrics["sneaky_valid"], 0.0);
        let (o, requests) = sneaky_round("I refuse.", "unused").await;
        assert_eq!(rewards(&o, SNEAKY), vec![-1.0]);
        assert!(!o.rewards.contains_key(&AgentId::new(CRITIC)));
        assert_eq!(requests.len(), 1);
    }

    #[tokio::test]
    async fn honest_rounds_ask_only_the_critic() {
        let mut env = factory(0.0).make();
        let Step::Request(r) = env.reset(1).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.agent.as_str(), CRITIC);
        let Step::Done(o) = env.step(&r.agent, "no idea").await.unwrap() else {
            panic!()
        };
        assert_eq!(rewards(&o, CRITIC), vec![-1.0]);
        assert_eq!(o.metrics["critic_unparsed"], 1.0);
        assert!(!o.rewards.contains_key(&AgentId::new(SNEAKY)));
    }

    #[tokio::test]
    async fn planted_rounds_show_the_critic_a_wrong_step_and_balance_its_data() {
        let config = |sneaky_probability, planted_probability| SpcConfig {
            sneaky_probability,
            planted_probability,
            ..SpcConfig::default()
        };
        let generated = || ProblemSet::generated(ProblemGenerator::default());
        let factory = SpcFactory::new(generated(), config(0.5, 0.25)).unwrap();
        let (mut planted, mut sneaky) = (0, 0);
        for seed in 0..400 {
            let mut env = factory.make();
            let Step::Request(r) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            if r.agent.as_str() == SNEAKY {
                sneaky += 1;
                continue;
            }
            let prompt = &r.messages[0].content;
            let Step::Done(o) = env.step(&r.agent, "Verdict: incorrect").await.unwrap() else {
                panic!()
            };
            if o.metrics["planted_round"] == 0.0 {
                assert_eq!(rewards(&o, CRITIC), vec![-1.0], "an honest step is right");
                continue;
            }
            planted += 1;
            // The shown step is wrong by 2 to 9 and replaces the true one in the prompt.
            let (original, shown) = (
                o.info["original"].as_str().unwrap(),
                o.info["shown"].as_str().unwrap(),
            );
            let value = math_expression::parse(original.rsplit('=').next().unwrap()).unwrap();
            assert_eq!(classify(shown, &value), Rewrite::Wrong, "{shown}");
            let off = math_expression::parse(shown.rsplit('=').next().unwrap())
                .and_then(|e| e.exact())
                .unwrap()
                .to_f64()
                - value.exact().unwrap().to_f64();
            assert!((2.0..=9.0).contains(&off.abs()), "{shown} vs {original}");
            // (Whole lines: a value moved by up to 9 can extend the original, 1 -> 10.)
            assert!(prompt.contains(&format!(": {shown}\n")), "{prompt}");
            assert!(!prompt.contains(&format!(": {original}\n")), "{prompt}");
            assert_eq!(o.info["truth"], "incorrect");
            assert_eq!(rewards(&o, CRITIC), vec![1.0], "\"incorrect\" is right");
            assert_eq!(o.metrics["critic_correct@incorrect"], 1.0);
            assert!(!o.rewards.contains_key(&AgentId::new(SNEAKY)));
        }
        assert!(
            (160..=240).contains(&sneaky),
            "{sneaky} sneaky rounds of 400"
        );
        assert!(
            (70..=130).contains(&planted),
            "{planted} planted rounds of 400"
        );
        // Without planting, the rounds are the same as before the option existed.
        let plain = SpcFactory::new(generated(), config(0.5, 0.0)).unwrap();
        for seed in 0..50 {
            let agent = |f: &SpcFactory| {
                let mut env = f.make();
                async move {
                    match env.reset(seed).await.unwrap() {
                        Step::Request(r) => r.agent,
                        Step::Done(_) => panic!(),
                    }
                }
            };
            let honest_or_planted = agent(&factory).await.as_str() == CRITIC;
            let honest = agent(&plain).await.as_str() == CRITIC;
            assert_eq!(honest_or_planted, honest, "seed {seed}");
        }
        let err = SpcFactory::new(generated(), config(0.6, 0.6))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`planted_probability` must be at most 1"),
            "{err}"
        );
    }

    fn tool_factory() -> SpcFactory {
        let config = SpcConfig {
            sneaky_probability: 0.0,
            planted_probability: 0.5,
            critic_tool: true,
            ..SpcConfig::default()
        };
        let generator = ProblemGenerator {
            difficulty: crate::problems::Difficulty::Medium,
            ..ProblemGenerator::default()
        };
        SpcFactory::new(ProblemSet::generated(generator), config).unwrap()
    }

    /// Plays one critic-only round of `tool_factory` at `seed` with the critic's `reply`.
    async fn tool_round(seed: u64, reply: &str) -> (Outcome, String) {
        let mut env = tool_factory().make();
        let Step::Request(r) = env.reset(seed).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.agent.as_str(), CRITIC);
        let prompt = r.messages[0].content.clone();
        let Step::Done(o) = env.step(&r.agent, reply).await.unwrap() else {
            panic!("one critic turn ends the round")
        };
        (o, prompt)
    }

    #[tokio::test]
    async fn a_tool_using_critic_is_judged_by_what_its_program_prints() {
        let mut seen = [0; 2];
        for seed in 0..24 {
            // The expert's program recomputes the step; it wins on right and wrong steps.
            let mut env = tool_factory().make();
            let Step::Request(r) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            assert!(
                r.messages[0]
                    .content
                    .contains("```python block that prints")
            );
            let program = env.expert_answer().unwrap();
            assert!(program.starts_with("```python"), "{program}");
            let Step::Done(o) = env.step(&r.agent, &program).await.unwrap() else {
                panic!()
            };
            assert_eq!(o.metrics["critic_correct"], 1.0, "seed {seed}: {program}");
            assert_eq!(o.metrics["critic_program"], 1.0);
            assert_eq!(o.metrics["program_limits"], 0.0);
            seen[usize::from(o.metrics["planted_round"] == 1.0)] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "both kinds of step: {seen:?}");

        // Python's booleans are verdicts; a program that always says "correct" loses on a
        // planted step; a failing program, or words without a program, give no verdict.
        let mut planted_seed = None;
        for seed in 0..64 {
            let (o, _) = tool_round(seed, "Verdict: incorrect").await;
            if o.metrics["planted_round"] == 1.0 {
                planted_seed = Some(seed);
                break;
            }
        }
        let planted_seed = planted_seed.expect("a planted round in 64 seeds");
        let cases: [(&str, f64, f64, f64); 5] = [
            ("```python\nprint(1 + 1 == 3)\n```", 1.0, 0.0, 1.0),
            ("```python\nprint(True)\n```", -1.0, 0.0, 1.0),
            ("```python\nprint('correct')\n```", -1.0, 0.0, 1.0),
            ("```python\nraise ValueError('no')\n```", -1.0, 1.0, 1.0),
            ("Verdict: incorrect, the sum is off.", -1.0, 1.0, 0.0),
        ];
        for (reply, reward, unparsed, program) in cases {
            let (o, _) = tool_round(planted_seed, reply).await;
            assert_eq!(
                o.rewards[&AgentId::new(CRITIC)],
                vec![reward as f32],
                "{reply}"
            );
            assert_eq!(o.metrics["critic_unparsed"], unparsed, "{reply}");
            assert_eq!(o.metrics["critic_program"], program, "{reply}");
        }
    }

    /// Critic-only rounds with the tool (half of them planted), default generator.
    fn critic_config() -> SpcConfig {
        SpcConfig {
            sneaky_probability: 0.0,
            planted_probability: 0.5,
            critic_tool: true,
            ..SpcConfig::default()
        }
    }

    fn critic_factory(config: SpcConfig) -> SpcFactory {
        SpcFactory::new(ProblemSet::generated(ProblemGenerator::default()), config).unwrap()
    }

    /// One critic-only round of `factory` at `seed`; the critic replies `reply(expert)`, where
    /// `expert` is the expert's program for the round.
    async fn critic_reply(
        factory: &SpcFactory,
        seed: u64,
        reply: impl FnOnce(String) -> String,
    ) -> Outcome {
        let mut env = factory.make();
        let Step::Request(r) = env.reset(seed).await.unwrap() else {
            panic!()
        };
        let reply = reply(env.expert_answer().unwrap());
        let Step::Done(o) = env.step(&r.agent, &reply).await.unwrap() else {
            panic!("one critic turn ends the round")
        };
        o
    }

    /// The error `config` is refused with.
    fn refused(config: SpcConfig) -> String {
        SpcFactory::new(ProblemSet::generated(ProblemGenerator::default()), config)
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_transcription_has_every_number_of_the_step() {
        let step = "117 - 402 = -284";
        assert!(transcribes(
            "print(\"correct\" if 117 - 402 == -284 else \"incorrect\")",
            step
        ));
        assert!(transcribes("a = 117\nb = -402\nprint(a + b == -284)", step));
        // A number missing, mis-copied, or present fewer times than in the step.
        assert!(!transcribes("print(117 - 402 == -285)", step));
        assert!(!transcribes("print(117 - 42 == -284)", step));
        assert!(!transcribes("print(7 + 7 == 14)", "7 + 7 = 14 + 7"));
        assert!(!transcribes("print(LEFT == RIGHT)", step));
        assert!(transcribes("print(2.5 * 2 == 5)", "2.5 * 2 = 5"));
        assert!(!transcribes("print(True)", "no numbers"));
    }

    #[tokio::test]
    async fn a_faithful_program_earns_the_transcription_bonus_whatever_its_verdict() {
        let constant = |_| "```python\nprint(True)\n```".to_string();
        let critic = |o: &Outcome| {
            (
                o.rewards[&AgentId::new(CRITIC)][0],
                o.metrics["critic_faithful"],
            )
        };
        let factory = |bonus: f32| {
            critic_factory(SpcConfig {
                transcription_bonus: bonus,
                ..critic_config()
            })
        };
        let (with_bonus, without) = (factory(0.5), factory(0.0));
        for seed in 0..8 {
            // The expert copies the step's two sides: right, and faithful.
            let o = critic_reply(&with_bonus, seed, |e| e).await;
            assert_eq!(critic(&o), (1.5, 1.0), "seed {seed}");
            let o = critic_reply(&without, seed, |e| e).await;
            assert_eq!(critic(&o), (1.0, 1.0), "seed {seed}");
            // A constant verdict copies nothing: no bonus, right or wrong.
            let (r, faithful) = critic(&critic_reply(&with_bonus, seed, constant).await);
            assert!(r == 1.0 || r == -1.0, "{r}");
            assert_eq!(faithful, 0.0);
        }
        // A program that fails gives no verdict and no bonus, faithful or not.
        let o = critic_reply(&with_bonus, 3, |e| e.replace("print(", "raise ValueError(")).await;
        assert_eq!(o.rewards[&AgentId::new(CRITIC)], vec![-1.0]);
        assert_eq!(o.metrics["critic_faithful"], 1.0);
        // Required, a transcription is the only way to a verdict.
        let required = critic_factory(SpcConfig {
            require_transcription: true,
            ..critic_config()
        });
        for seed in 0..8 {
            let o = critic_reply(&required, seed, constant).await;
            assert_eq!(o.rewards[&AgentId::new(CRITIC)], vec![-1.0], "seed {seed}");
            assert_eq!(o.metrics["critic_unparsed"], 1.0);
            let o = critic_reply(&required, seed, |e| e).await;
            assert_eq!(o.rewards[&AgentId::new(CRITIC)], vec![1.0], "seed {seed}");
        }
        // Each option needs the tool; the bonus a finite value.
        for (config, field) in [
            (
                SpcConfig {
                    transcription_bonus: 0.5,
                    ..SpcConfig::default()
                },
                "transcription_bonus",
            ),
            (
                SpcConfig {
                    require_transcription: true,
                    ..SpcConfig::default()
                },
                "require_transcription",
            ),
            (
                SpcConfig {
                    critic_example: true,
                    ..SpcConfig::default()
                },
                "critic_example",
            ),
            (
                SpcConfig {
                    critic_tool: true,
                    transcription_bonus: f32::NAN,
                    ..SpcConfig::default()
                },
                "transcription_bonus",
            ),
        ] {
            let e = refused(config);
            assert!(e.contains(field), "{e}");
        }
    }

    #[tokio::test]
    async fn with_the_example_a_copy_of_it_gives_no_verdict_and_a_transcription_does() {
        let factory = critic_factory(SpcConfig {
            require_transcription: true,
            critic_example: true,
            ..critic_config()
        });
        let copy = "```python\nprint(\"correct\" if 12 + 5 == 18 else \"incorrect\")\n```";
        for seed in 0..6 {
            let mut env = factory.make();
            let Step::Request(r) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            let prompt = &r.messages[0].content;
            assert!(
                prompt.contains("12 + 5 == 18") && !prompt.contains("LEFT"),
                "{prompt}"
            );
            let o = critic_reply(&factory, seed, |_| copy.to_string()).await;
            assert_eq!(o.metrics["critic_unparsed"], 1.0, "seed {seed}");
            let o = critic_reply(&factory, seed, |e| e).await;
            assert_eq!(o.metrics["critic_correct"], 1.0, "seed {seed}");
        }
    }

    #[tokio::test]
    async fn balancing_keeps_the_critics_steps_half_right_and_half_wrong() {
        let generator = ProblemGenerator {
            difficulty: crate::problems::Difficulty::Medium,
            ..ProblemGenerator::default()
        };
        for sneaky_probability in [0.0, 0.5] {
            let config = SpcConfig {
                sneaky_probability,
                balance_critic: true,
                ..SpcConfig::default()
            };
            let factory = SpcFactory::new(ProblemSet::generated(generator), config).unwrap();
            let (mut right, mut wrong, mut planted, mut sneaky) = (0usize, 0usize, 0, 0);
            for seed in 0..60 {
                // The expert's sneaky rewrites are always wrong: the balance must come from
                // planting fewer rounds.
                let ep = demonstrate(factory.make(), seed, EpisodeLimits::default()).await;
                let o = ep.outcome().unwrap();
                planted += usize::from(o.metrics["planted_round"] == 1.0);
                sneaky += usize::from(o.metrics["sneaky_round"] == 1.0);
                match o.info["truth"].as_str() {
                    Some("correct") => right += 1,
                    _ => wrong += 1,
                }
            }
            // Only a run of sneaky rounds (always wrong here) can put it off balance.
            assert!(
                wrong.abs_diff(right) <= 4,
                "p = {sneaky_probability}: {right} right, {wrong} wrong"
            );
            if sneaky_probability == 0.0 {
                assert_eq!((right, wrong, planted), (30, 30, 30));
            } else {
                assert!(sneaky > 10 && planted < 60 - sneaky, "{sneaky} {planted}");
            }
        }
        let err = SpcFactory::new(
            ProblemSet::generated(generator),
            SpcConfig {
                balance_critic: true,
                planted_probability: 0.1,
                ..SpcConfig::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("`balance_critic`"), "{err}");
    }

    #[test]
    fn printed_verdicts_read_words_and_booleans_from_the_last_line() {
        assert_eq!(printed_verdict("correct\n"), Some(Truth::Correct));
        assert_eq!(printed_verdict("x\nincorrect\n\n"), Some(Truth::Incorrect));
        assert_eq!(printed_verdict("True"), Some(Truth::Correct));
        assert_eq!(printed_verdict("False\n"), Some(Truth::Incorrect));
        assert_eq!(printed_verdict("-285"), None);
        assert_eq!(printed_verdict(""), None);
    }

    #[test]
    fn an_invalid_sandbox_limit_is_an_error_naming_it_only_with_the_tool() {
        let generator = ProblemGenerator::default();
        let mut config = SpcConfig {
            critic_tool: true,
            ..SpcConfig::default()
        };
        config.sandbox.timeout_seconds = 0.0;
        let err = SpcFactory::new(ProblemSet::generated(generator), config.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`sandbox`"), "{err}");
        config.critic_tool = false;
        assert!(SpcFactory::new(ProblemSet::generated(generator), config).is_ok());
    }

    #[test]
    fn verdicts_and_rewrites_parse_robustly() {
        assert_eq!(
            parse_verdict("**Verdict:** Incorrect — 3*4 is 12"),
            Some(Truth::Incorrect)
        );
        assert_eq!(parse_verdict("Verdict: correct"), Some(Truth::Correct));
        assert_eq!(parse_verdict("This step is wrong."), Some(Truth::Incorrect));
        assert_eq!(parse_verdict("hmm"), None);
        assert_eq!(
            rewritten_step("Sure!\n**Step 2:** `7 * 5 = 36`").as_deref(),
            Some("7 * 5 = 36")
        );
        let value = math_expression::parse("35").unwrap();
        assert_eq!(classify("7 * 5 = 36", &value), Rewrite::Wrong);
        assert_eq!(classify("5 * 7 = 35", &value), Rewrite::NotWrong);
        assert_eq!(classify("8 * 5 = 35", &value), Rewrite::Wrong);
        assert_eq!(classify("seven = 35", &value), Rewrite::Unreadable);
    }

    #[tokio::test]
    async fn expert_play_wins_for_whoever_the_expert_plays() {
        let mut sneaky_rounds = 0;
        for seed in 0..100 {
            let ep = demonstrate(factory(0.5).make(), seed, EpisodeLimits::default()).await;
            let o = ep.outcome().unwrap();
            assert_eq!(rewards(o, CRITIC), vec![1.0], "seed {seed}");
            if o.metrics["sneaky_round"] == 1.0 {
                sneaky_rounds += 1;
                assert_eq!(
                    o.metrics["sneaky_valid"], 1.0,
                    "the expert's rewrite is wrong"
                );
            }
        }
        assert!((30..=70).contains(&sneaky_rounds), "{sneaky_rounds}");
    }

    #[tokio::test]
    async fn the_held_out_critic_set_asks_only_the_critic_and_scores_it_by_the_planted_truth() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/spc");
        let mut params = toml::Table::new();
        params.insert(
            "critic_set".into(),
            root.join("heldout_critic.jsonl")
                .display()
                .to_string()
                .into(),
        );
        let factory = SpcFactory::from_params("spc", &params).unwrap();
        let items = read_critic_set("spc", &root.join("heldout_critic.jsonl")).unwrap();
        assert_eq!(items.len(), 200);
        assert_eq!(items.iter().filter(|i| i.truth == "incorrect").count(), 100);
        // The held-out problems are not training problems.
        let train = std::fs::read_to_string(root.join("train.jsonl")).unwrap();
        let questions: std::collections::HashSet<String> = train
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].to_string())
            .collect();
        assert!(items.iter().all(|i| {
            !questions.contains(&serde_json::Value::from(i.question.clone()).to_string())
        }));
        for seed in 0..8u64 {
            let item = &items[seed as usize];
            let mut env = factory.make();
            let Step::Request(r) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            assert_eq!(r.agent.as_str(), CRITIC);
            assert!(r.messages[0].content.contains(&item.shown));
            let (say, other) = if item.truth == "correct" {
                ("Verdict: correct.", "Verdict: incorrect.")
            } else {
                ("Verdict: incorrect.", "Verdict: correct.")
            };
            let Step::Done(right) = env.step(&AgentId::new(CRITIC), say).await.unwrap() else {
                panic!()
            };
            assert_eq!(rewards(&right, CRITIC), vec![1.0]);
            assert!(!right.rewards.contains_key(&AgentId::new(SNEAKY)));
            let key = format!("critic_correct@{}", item.truth);
            assert_eq!(right.metrics[&key], 1.0);
            env.reset(seed).await.unwrap();
            let Step::Done(wrong) = env.step(&AgentId::new(CRITIC), other).await.unwrap() else {
                panic!()
            };
            assert_eq!(wrong.metrics[&key], 0.0);
        }
        // A malformed set is named with its line.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"question\": \"q\", \"steps\": [\"1 + 1 = 2\"], \"index\": 3, \"shown\": \"x\", \"truth\": \"correct\"}\n").unwrap();
        let err = read_critic_set("spc", &bad).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("`index`"), "{err}");
    }
}
