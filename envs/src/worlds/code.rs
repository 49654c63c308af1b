//! `code`: write a Python function, run it against unit tests, fix it from the failures
//! (self-debugging; LeDex, Jiang et al. 2024, <https://arxiv.org/abs/2405.18649>).
//!
//! Turn 1: the `coder` writes the function a task describes. kaizen extracts the last fenced
//! code block (else the whole reply) and runs it against the task's tests in the
//! [`Sandbox`]. While tests fail and attempts are left, the environment shows the failing
//! tests and errors (`add(1, 2) returned 4, expected 3`) and asks for a fix; with `explain`,
//! the model first explains what is wrong (LeDex's explanation turn), then fixes. A solved
//! task ends the episode.
//!
//! Rewards: attempt `k` earns `r_k = 1` when every test passes (`reward = "all"`, the
//! default) or the fraction passed (`"fraction"`); an explanation turn earns the reward of the
//! fix that follows it (LeDex rewards explanations by the refinement they lead to). Code that
//! breaks the sandbox's limits (a timeout, a memory or output flood, a forbidden operation)
//! ends the episode as a `fault/sandbox` fault with the reason, never the actor.
//!
//! Metrics: `correct@t1` … `correct@tN` (solved by attempt `k`; an episode solved early
//! counts as solved at every later attempt, so `correct@t2 − correct@t1` is the fixed rate),
//! `i_to_c` (failed first, fixed later), `c_to_i` (always 0: a solved task stops),
//! `tests_passed@t1` (fraction), `attempts` (attempts used), `sandbox_ms` (mean execution
//! time).
//!
//! Task sets are JSONL, one task per line:
//! `{"id": "...", "prompt": "Write a function ...", "entry_point": "add",
//!   "tests": ["assert add(1, 2) == 3", ...], "solution": "def add(a, b):\n    return a + b\n"}`
//! (`solution` optional: the expert answer for demonstrations; `prelude` optional: code run
//! before the model's, such as the imports a signature needs). `scripts/data/make_code_tasks.py`
//! makes train and held-out sets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use serde::{Deserialize, Serialize};

use crate::sandbox::{Execution, Sandbox, SandboxConfig};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// The agent that writes code.
pub const CODER: &str = "coder";

/// One programming task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeTask {
    /// A stable identifier.
    pub id: String,
    /// What to write, in words (the signature included).
    pub prompt: String,
    /// The function's name.
    pub entry_point: String,
    /// Python statements run after the solution, each a test (usually `assert f(x) == y`).
    pub tests: Vec<String>,
    /// A reference solution (the expert answer), when known.
    #[serde(default)]
    pub solution: Option<String>,
    /// Code run before the model's (e.g. the imports its signature needs), not shown to it.
    #[serde(default)]
    pub prelude: Option<String>,
}

/// How an attempt is rewarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeReward {
    /// 1 when every test passes, else 0 (pass@1).
    #[default]
    All,
    /// The fraction of tests that pass.
    Fraction,
}

/// Parameters of `code` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeConfig {
    /// The JSONL task set.
    pub tasks: PathBuf,
    /// Attempts at most (>= 1): the first, then fixes while tests fail.
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// Ask for an explanation of the failure before each fix (LeDex).
    #[serde(default)]
    pub explain: bool,
    /// How many of a task's tests the first message shows as examples.
    #[serde(default = "default_shown_tests")]
    pub shown_tests: usize,
    /// An optional system message.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Appended to the task (how to answer).
    #[serde(default = "default_instruction")]
    pub instruction: String,
    /// Asks for the explanation (with `explain`), after the failures are shown.
    #[serde(default = "default_explain_prompt")]
    pub explain_prompt: String,
    /// Asks for the fixed function.
    #[serde(default = "default_fix_prompt")]
    pub fix_prompt: String,
    /// Failing tests shown per feedback message, at most.
    #[serde(default = "default_shown_failures")]
    pub shown_failures: usize,
    /// See [`CodeReward`].
    #[serde(default)]
    pub reward: CodeReward,
    /// Token budget per code turn (`None`: the job's `sampling.max_completion_length`).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Limits of each execution.
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

fn default_attempts() -> usize {
    2
}
fn default_shown_tests() -> usize {
    1
}
fn default_shown_failures() -> usize {
    3
}
fn default_instruction() -> String {
    "Write the function in a ```python code block.".into()
}
fn default_explain_prompt() -> String {
    "Explain briefly what is wrong with the code.".into()
}
fn default_fix_prompt() -> String {
    "Write the corrected function in a ```python code block.".into()
}

/// Reads a JSONL task set.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the line for a malformed
/// task (bad JSON, no tests, an empty entry point) or an empty file.
pub fn read_tasks(path: &Path) -> Result<Vec<CodeTask>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let data = |message: String| Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let task: CodeTask = serde_json::from_str(line).map_err(|e| {
            data(format!(
                "expected a code task {{id, prompt, entry_point, tests, solution?}}: {e}"
            ))
        })?;
        if task.tests.is_empty() {
            return Err(data(format!("task `{}` has no tests", task.id)));
        }
        if task.entry_point.trim().is_empty() {
            return Err(data(format!(
                "task `{}` has an empty `entry_point`",
                task.id
            )));
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 0,
            message: "no tasks".into(),
        });
    }
    Ok(tasks)
}

/// The code of a reply that should define `entry_point`: the first closed fenced block
/// (```` ```python ````, ```` ``` ````, any info string) that defines it (`def entry_point(`),
/// else the first closed block, else an unclosed last block (a reply cut off by its token
/// budget), else the whole reply. The first defining block, not the last: small models often
/// follow a right answer with a broken "alternatively" variant, as EvalPlus's sanitiser
/// also assumes.
pub fn extract_code(reply: &str, entry_point: &str) -> String {
    let (closed, unclosed) = fenced_blocks(reply);
    let defines = format!("def {entry_point}(");
    closed
        .iter()
        .find(|b| b.contains(&defines))
        .or(closed.first())
        .copied()
        .or(unclosed)
        .unwrap_or(reply)
        .to_string()
}

/// The bodies of the closed fenced blocks of `reply` (```` ``` ```` with any info string), in
/// order, and the body of an unclosed last block (a reply cut off by its token budget).
pub(crate) fn fenced_blocks(reply: &str) -> (Vec<&str>, Option<&str>) {
    let mut closed = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        // Skip the info string (`python`, `py`, ...) up to the end of the line.
        let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                closed.push(&body[..end]);
                rest = &body[end + 3..];
            }
            None => return (closed, Some(body)),
        }
    }
    (closed, None)
}

struct Shared {
    tasks: Vec<CodeTask>,
    sandbox: Sandbox,
    config: CodeConfig,
}

/// Makes `code` episodes over a task set.
#[derive(Clone)]
pub struct CodeFactory {
    shared: Arc<Shared>,
}

impl CodeFactory {
    /// A factory over `tasks`.
    ///
    /// # Errors
    /// [`Error::Params`] naming the field for `attempts = 0`, `max_new_tokens = 0`, an invalid
    /// sandbox limit, or an empty task list.
    pub fn new(env: &str, tasks: Vec<CodeTask>, config: CodeConfig) -> Result<Self> {
        let params = |message: String| Error::Params {
            env: env.to_string(),
            message,
        };
        if config.attempts == 0 {
            return Err(params("`attempts` must be at least 1".into()));
        }
        if config.max_new_tokens == Some(0) {
            return Err(params("`max_new_tokens` must be at least 1".into()));
        }
        if tasks.is_empty() {
            return Err(params("the task set is empty".into()));
        }
        config.sandbox.validate().map_err(params)?;
        Ok(Self {
            shared: Arc::new(Shared {
                tasks,
                sandbox: Sandbox::new(config.sandbox.clone()),
                config,
            }),
        })
    }

    /// A factory from a TOML table (see [`CodeConfig`]); `env` names the environment in errors.
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields; task-set read errors.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: CodeConfig = parse_params(env, params)?;
        let tasks = read_tasks(&config.tasks)?;
        Self::new(env, tasks, config)
    }
}

impl EnvFactory for CodeFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(Code {
            shared: self.shared.clone(),
            task: None,
            dialogue: Dialogue::new(),
            turns: Vec::new(),
            executions: Vec::new(),
        })
    }
}

/// What one answered turn was.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TurnKind {
    Code,
    Explanation,
}

struct Code {
    shared: Arc<Shared>,
    task: Option<usize>,
    dialogue: Dialogue,
    /// Every answered turn, in order.
    turns: Vec<TurnKind>,
    /// One per code turn.
    executions: Vec<Execution>,
}

impl Code {
    fn task(&self) -> Result<&CodeTask> {
        Ok(&self.shared.tasks[self.task.ok_or(Error::NoEpisode)?])
    }

    fn ask(&mut self, messages: Vec<Message>, kind: TurnKind) -> Step {
        let mut request = self.dialogue.ask(CODER, messages);
        if kind == TurnKind::Code {
            request.sampling.max_new_tokens = self.shared.config.max_new_tokens;
        }
        Step::Request(request)
    }

    /// The kind of the turn after those answered so far (so, while a request is in flight, of
    /// that request): an explanation before each fix when `explain` is on.
    fn next_kind(&self) -> TurnKind {
        match self.turns.last() {
            Some(TurnKind::Code) if self.shared.config.explain => TurnKind::Explanation,
            _ => TurnKind::Code,
        }
    }

    fn score(&self, e: &Execution) -> f32 {
        match self.shared.config.reward {
            CodeReward::All => f32::from(u8::from(e.all_passed())),
            CodeReward::Fraction => e.passed() as f32 / e.tests.len().max(1) as f32,
        }
    }

    fn feedback(&self, e: &Execution) -> String {
        let c = &self.shared.config;
        let mut text = String::new();
        if let Some(error) = e.load_error.as_ref().filter(|_| !e.loaded) {
            text.push_str(&format!("Your code raised an error: {error}\n"));
        } else {
            let failed: Vec<_> = e.tests.iter().filter(|t| !t.passed).collect();
            text.push_str(&format!(
                "Your code failed {} of {} tests:\n",
                failed.len(),
                e.tests.len()
            ));
            for t in failed.iter().take(c.shown_failures) {
                let error = t.error.as_deref().unwrap_or("failed");
                text.push_str(&format!("{}\n  {error}\n", t.test));
            }
        }
        text.push('\n');
        text.push_str(if c.explain {
            &c.explain_prompt
        } else {
            &c.fix_prompt
        });
        text
    }

    fn outcome(&self) -> Outcome {
        let c = &self.shared.config;
        let scores: Vec<f32> = self.executions.iter().map(|e| self.score(e)).collect();
        // Rewards per answered turn: a code turn its score, an explanation the next code
        // turn's.
        let mut rewards = Vec::with_capacity(self.turns.len());
        let mut code_turn = 0;
        for kind in &self.turns {
            match kind {
                TurnKind::Code => {
                    rewards.push(scores[code_turn]);
                    code_turn += 1;
                }
                TurnKind::Explanation => {
                    rewards.push(scores.get(code_turn).copied().unwrap_or(0.0))
                }
            }
        }
        let solved: Vec<bool> = self.executions.iter().map(Execution::all_passed).collect();
        let mut outcome = Outcome::single(CODER, rewards);
        let m = &mut outcome.metrics;
        let mut any = false;
        for k in 0..c.attempts {
            any |= solved.get(k).copied().unwrap_or(false);
            m.insert(format!("correct@t{}", k + 1), f64::from(u8::from(any)));
        }
        let (first, last) = (solved[0], solved[solved.len() - 1]);
        m.insert("i_to_c".into(), f64::from(u8::from(!first && last)));
        m.insert("c_to_i".into(), f64::from(u8::from(first && !last)));
        let e0 = &self.executions[0];
        m.insert(
            "tests_passed@t1".into(),
            e0.passed() as f64 / e0.tests.len().max(1) as f64,
        );
        m.insert("attempts".into(), self.executions.len() as f64);
        let ms: f64 = self
            .executions
            .iter()
            .map(|e| e.elapsed.as_secs_f64() * 1e3)
            .sum::<f64>()
            / self.executions.len() as f64;
        m.insert("sandbox_ms".into(), ms);
        outcome.info =
            serde_json::json!({ "task": self.task().map(|t| t.id.clone()).unwrap_or_default() });
        outcome
    }
}

#[async_trait]
impl Env for Code {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let n = self.shared.tasks.len();
        let index = (seed % n as u64) as usize;
        self.task = Some(index);
        self.dialogue = Dialogue::new();
        self.turns.clear();
        self.executions.clear();
        let c = &self.shared.config;
        let task = &self.shared.tasks[index];
        let mut messages = Vec::new();
        if let Some(system) = &c.system_prompt {
            messages.push(Message::system(system));
        }
        let mut text = task.prompt.trim_end().to_string();
        let shown: Vec<&String> = task.tests.iter().take(c.shown_tests).collect();
        if !shown.is_empty() {
            text.push_str("\n\nFor example:\n");
            for t in shown {
                text.push_str(t);
                text.push('\n');
            }
        }
        text.push('\n');
        text.push_str(&c.instruction);
        messages.push(Message::user(text));
        Ok(self.ask(messages, TurnKind::Code))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let kind = self.next_kind();
        self.turns.push(kind);
        if kind == TurnKind::Explanation {
            let prompt = Message::user(&self.shared.config.fix_prompt);
            return Ok(self.ask(vec![prompt], TurnKind::Code));
        }
        let task = self.task()?;
        let code = match &task.prelude {
            Some(prelude) => format!("{prelude}\n{}", extract_code(text, &task.entry_point)),
            None => extract_code(text, &task.entry_point),
        };
        let tests = task.tests.clone();
        let execution = self.shared.sandbox.run_tests(&code, &tests).await?;
        let solved = execution.all_passed();
        let feedback = self.feedback(&execution);
        self.executions.push(execution);
        if solved || self.executions.len() >= self.shared.config.attempts {
            self.dialogue.finish();
            return Ok(Step::Done(self.outcome()));
        }
        let next = self.next_kind();
        Ok(self.ask(vec![Message::user(feedback)], next))
    }

    fn expert_answer(&self) -> Option<String> {
        self.dialogue.pending()?;
        let task = self.task().ok()?;
        match self.next_kind() {
            TurnKind::Code => Some(format!("```python\n{}```", task.solution.as_ref()?)),
            TurnKind::Explanation => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_block_defining_the_function_is_the_code() {
        assert_eq!(extract_code("def f(): pass", "f"), "def f(): pass");
        assert_eq!(
            extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "f"),
            "def f():\n    return 1\n"
        );
        // A right answer, then a broken "alternatively": the first definition counts.
        assert_eq!(
            extract_code(
                "```python\ndef f(x):\n    return x\n```\nOr:\n```python\ndef f(x):\n    return math.x\n```",
                "f"
            ),
            "def f(x):\n    return x\n"
        );
        // A block that does not define it is skipped for one that does.
        assert_eq!(
            extract_code("```\nx = 1\n```\nthen\n```py\ndef g(): return 2\n```", "g"),
            "def g(): return 2\n"
        );
        assert_eq!(extract_code("```\nx = 1\n```", "g"), "x = 1\n");
        assert_eq!(
            extract_code("```python\ndef g(): return 2", "g"),
            "def g(): return 2"
        );
    }
}
