use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use kaizen_core::{AgentId, Outcome, Request, Step};
use serde::{Deserialize, Serialize};

use crate::Env;

/// Answers an environment's requests with text: the policy in an actor, a person in
/// `kaizen envs play`, a script in tests and benchmarks.
#[async_trait]
pub trait Responder: Send {
    /// The text `request.agent` says next. `Err` (with a cause) ends the episode as a
    /// [`FaultKind::Policy`] fault.
    async fn respond(&mut self, request: &Request) -> std::result::Result<String, String>;
}

/// Closures answer requests too: `|request: &Request| Ok("42".to_string())`.
#[async_trait]
impl<F> Responder for F
where
    F: FnMut(&Request) -> std::result::Result<String, String> + Send,
{
    async fn respond(&mut self, request: &Request) -> std::result::Result<String, String> {
        self(request)
    }
}

/// Bounds on one episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeLimits {
    /// Longest a single `reset` or `step` of the environment may take.
    pub env_call_timeout: Duration,
    /// Longest a single answer of the responder may take (`None`: no limit).
    pub respond_timeout: Option<Duration>,
    /// Most requests an episode may ask before it is ended as [`FaultKind::TurnLimit`].
    pub max_turns: usize,
}

impl Default for EpisodeLimits {
    fn default() -> Self {
        Self {
            env_call_timeout: Duration::from_secs(30),
            respond_timeout: None,
            max_turns: 1000,
        }
    }
}

/// Why an episode ended without an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `reset` or `step` returned an error.
    EnvError,
    /// `reset`, `step` or `expert_answer` panicked.
    EnvPanic,
    /// `reset` or `step` took longer than [`EpisodeLimits::env_call_timeout`].
    EnvTimeout,
    /// The responder failed, panicked or timed out.
    Policy,
    /// The episode asked more than [`EpisodeLimits::max_turns`] requests.
    TurnLimit,
    /// The outcome breaks the reward contract (count per agent, finite values).
    BadOutcome,
    /// A demonstration was asked of an environment that has no expert answer.
    NoExpert,
    /// The episode's actor process left the job and the episode could not be played again
    /// before the job ended (reported by the coordinator at shutdown, so accounting closes).
    ActorLost,
    /// The episode's report is larger than the transport carries (`cluster.max_message_mib`,
    /// the smaller of the actor's and the coordinator's): its actor sends this fault in its
    /// place, so the episode is counted and the link is not broken by a message the peer would
    /// refuse.
    ReportTooLarge,
    /// Model-written code broke a limit of the sandbox that ran it, or did something it
    /// forbids (`kaizen_envs::sandbox`): the environment's step returned
    /// [`crate::Error::Sandbox`].
    Sandbox,
}

impl FaultKind {
    /// The metric name counting this fault, e.g. `fault/env_timeout`.
    pub fn metric(self) -> &'static str {
        match self {
            FaultKind::EnvError => "fault/env_error",
            FaultKind::EnvPanic => "fault/env_panic",
            FaultKind::EnvTimeout => "fault/env_timeout",
            FaultKind::Policy => "fault/policy",
            FaultKind::TurnLimit => "fault/turn_limit",
            FaultKind::BadOutcome => "fault/bad_outcome",
            FaultKind::NoExpert => "fault/no_expert",
            FaultKind::ActorLost => "fault/actor_lost",
            FaultKind::ReportTooLarge => "fault/report_too_large",
            FaultKind::Sandbox => "fault/sandbox",
        }
    }
}

/// An episode that ended early, with its cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// The class of failure.
    pub kind: FaultKind,
    /// What happened, in words (the error or panic message).
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.metric(), self.message)
    }
}

/// One answered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// What the environment asked.
    pub request: Request,
    /// What was answered.
    pub answer: String,
}

/// A played episode: the turns in order and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The seed it was reset with.
    pub seed: u64,
    /// Every answered request, in order.
    pub turns: Vec<Turn>,
    /// The outcome, or the fault that ended it.
    pub end: std::result::Result<Outcome, Fault>,
}

impl Episode {
    /// The outcome when the episode finished normally.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.end.as_ref().ok()
    }

    /// Episode metrics: the outcome's, plus `fault` (0 or 1) and, on a fault, its
    /// [`FaultKind::metric`] = 1.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        match &self.end {
            Ok(outcome) => {
                let mut m = outcome.metrics.clone();
                m.insert("fault".into(), 0.0);
                m
            }
            Err(fault) => BTreeMap::from([
                ("fault".to_string(), 1.0),
                (fault.kind.metric().to_string(), 1.0),
            ]),
        }
    }
}

enum Answerer<'a> {
    /// The policy, shown the environment's hint at these turns (1-based).
    Policy(&'a mut dyn Responder, &'a [u32]),
    Expert,
}

/// Plays one episode of `env` from `seed`, asking `responder` for every request.
///
/// Every environment call runs in its own tokio task under
/// [`EpisodeLimits::env_call_timeout`], so an environment that errors, panics or hangs ends
/// only this episode, with the cause in [`Episode::end`]; the responder's panics and timeouts
/// are caught too. The outcome is checked against the reward contract (one finite reward per
/// answered request of each agent). Must be called inside a tokio runtime.
pub async fn run_episode(
    env: Box<dyn Env>,
    seed: u64,
    responder: &mut dyn Responder,
    limits: EpisodeLimits,
) -> Episode {
    drive(env, seed, Answerer::Policy(responder, &[]), limits).await
}

/// [`run_episode`] with STaR's rationalisation: at each turn in `hint_turns` (1-based,
/// counting the episode's requests) the request carries the environment's [`Env::hint`] in
/// [`Request::hint`] (none when the environment has no hint for it; the recorded
/// [`Turn`] shows whether it had one). A hint that panics ends the episode as
/// [`FaultKind::EnvPanic`].
pub async fn run_episode_with_hints(
    env: Box<dyn Env>,
    seed: u64,
    responder: &mut dyn Responder,
    limits: EpisodeLimits,
    hint_turns: &[u32],
) -> Episode {
    drive(env, seed, Answerer::Policy(responder, hint_turns), limits).await
}

/// Plays one episode answering every request with the environment's
/// [`Env::expert_answer`]: a demonstration for supervised warm starts. Ends with
/// [`FaultKind::NoExpert`] when the environment has no expert for a request.
pub async fn demonstrate(env: Box<dyn Env>, seed: u64, limits: EpisodeLimits) -> Episode {
    drive(env, seed, Answerer::Expert, limits).await
}

async fn drive(
    env: Box<dyn Env>,
    seed: u64,
    mut answerer: Answerer<'_>,
    limits: EpisodeLimits,
) -> Episode {
    let mut turns = Vec::new();
    let end = drive_turns(env, seed, &mut answerer, limits, &mut turns).await;
    if let Err(fault) = &end {
        tracing::debug!(seed, %fault, "episode ended by a fault");
    }
    Episode { seed, turns, end }
}

async fn drive_turns(
    env: Box<dyn Env>,
    seed: u64,
    answerer: &mut Answerer<'_>,
    limits: EpisodeLimits,
    turns: &mut Vec<Turn>,
) -> std::result::Result<Outcome, Fault> {
    let (mut env, mut step) = call_env(env, limits, move |env| env.reset(seed)).await?;
    loop {
        let request = match step {
            Step::Done(outcome) => {
                check_outcome(&outcome, turns)?;
                return Ok(outcome);
            }
            Step::Request(request) => request,
        };
        if turns.len() >= limits.max_turns {
            return Err(Fault {
                kind: FaultKind::TurnLimit,
                message: format!("more than {} requests", limits.max_turns),
            });
        }
        let mut request = request;
        let answer = match answerer {
            Answerer::Policy(responder, hint_turns) => {
                if hint_turns.contains(&(turns.len() as u32 + 1)) {
                    request.hint = hint(env.as_ref())?;
                }
                respond(&mut **responder, &request, limits).await?
            }
            Answerer::Expert => expert(env.as_ref())?,
        };
        let agent = request.agent.clone();
        let text = answer.clone();
        turns.push(Turn { request, answer });
        (env, step) = call_env(env, limits, move |env| env.step_owned(agent, text)).await?;
    }
}

/// Object-safe helper so a spawned task can own the agent and text it passes to `step`.
pub(crate) trait StepOwned {
    fn step_owned(
        &mut self,
        agent: AgentId,
        text: String,
    ) -> Pin<Box<dyn Future<Output = crate::Result<Step>> + Send + '_>>;
}

impl StepOwned for Box<dyn Env> {
    fn step_owned(
        &mut self,
        agent: AgentId,
        text: String,
    ) -> Pin<Box<dyn Future<Output = crate::Result<Step>> + Send + '_>> {
        Box::pin(async move { self.step(&agent, &text).await })
    }
}

pub(crate) async fn call_env<F>(
    mut env: Box<dyn Env>,
    limits: EpisodeLimits,
    call: F,
) -> std::result::Result<(Box<dyn Env>, Step), Fault>
where
    F: for<'e> FnOnce(
            &'e mut Box<dyn Env>,
        ) -> Pin<Box<dyn Future<Output = crate::Result<Step>> + Send + 'e>>
        + Send
        + 'static,
{
    let task = tokio::spawn(async move {
        let result = call(&mut env).await;
        (env, result)
    });
    let abort = task.abort_handle();
    match tokio::time::timeout(limits.env_call_timeout, task).await {
        Err(_) => {
            abort.abort();
            Err(Fault {
                kind: FaultKind::EnvTimeout,
                message: format!(
                    "no reply within {:.3} s",
                    limits.env_call_timeout.as_secs_f64()
                ),
            })
        }
        Ok(Err(join)) => Err(Fault {
            kind: FaultKind::EnvPanic,
            message: if join.is_panic() {
                panic_message(join.into_panic())
            } else {
                "environment task was cancelled".into()
            },
        }),
        Ok(Ok((_, Err(e)))) => Err(Fault {
            kind: match e {
                crate::Error::Sandbox(_) => FaultKind::Sandbox,
                _ => FaultKind::EnvError,
            },
            message: e.to_string(),
        }),
        Ok(Ok((env, Ok(step)))) => Ok((env, step)),
    }
}

pub(crate) async fn respond(
    responder: &mut dyn Responder,
    request: &Request,
    limits: EpisodeLimits,
) -> std::result::Result<String, Fault> {
    let policy = |message: String| Fault {
        kind: FaultKind::Policy,
        message,
    };
    let answer = CatchUnwind(responder.respond(request));
    let caught = match limits.respond_timeout {
        Some(limit) => tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| policy(format!("no answer within {:.3} s", limit.as_secs_f64())))?,
        None => answer.await,
    };
    match caught {
        Err(panic) => Err(policy(format!(
            "responder panicked: {}",
            panic_message(panic)
        ))),
        Ok(Err(cause)) => Err(policy(cause)),
        Ok(Ok(text)) => Ok(text),
    }
}

fn expert(env: &dyn Env) -> std::result::Result<String, Fault> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| env.expert_answer())) {
        Err(panic) => Err(Fault {
            kind: FaultKind::EnvPanic,
            message: format!("expert_answer panicked: {}", panic_message(panic)),
        }),
        Ok(None) => Err(Fault {
            kind: FaultKind::NoExpert,
            message: "the environment has no expert answer for this request".into(),
        }),
        Ok(Some(answer)) => Ok(answer),
    }
}

fn hint(env: &dyn Env) -> std::result::Result<Option<String>, Fault> {
    std::panic::catch_unwind(AssertUnwindSafe(|| env.hint())).map_err(|panic| Fault {
        kind: FaultKind::EnvPanic,
        message: format!("hint panicked: {}", panic_message(panic)),
    })
}

pub(crate) fn check_outcome(outcome: &Outcome, turns: &[Turn]) -> std::result::Result<(), Fault> {
    let mut counts: BTreeMap<&AgentId, usize> = BTreeMap::new();
    for turn in turns {
        *counts.entry(&turn.request.agent).or_default() += 1;
    }
    let bad = |message: String| Fault {
        kind: FaultKind::BadOutcome,
        message,
    };
    for (agent, rewards) in &outcome.rewards {
        let n = counts.get(agent).copied().unwrap_or(0);
        if rewards.len() != n {
            return Err(bad(format!(
                "agent `{agent}` answered {n} requests but has {} rewards (expected one per request)",
                rewards.len()
            )));
        }
        if let Some((k, r)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
            return Err(bad(format!(
                "agent `{agent}` turn {k} has non-finite reward {r}"
            )));
        }
    }
    Ok(())
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Polls a future inside `catch_unwind`, turning a panic into an `Err`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dialogue, Error};
    use kaizen_core::Message;

    /// Counts to `n`: asks `n` times, rewards 1 per answer equal to the turn number; `fail`
    /// picks how it misbehaves on the last step.
    struct Counter {
        n: usize,
        fail: Option<&'static str>,
        dialogue: Dialogue,
        asked: usize,
    }

    impl Counter {
        fn boxed(n: usize, fail: Option<&'static str>) -> Box<dyn Env> {
            Box::new(Counter {
                n,
                fail,
                dialogue: Dialogue::new(),
                asked: 0,
            })
        }
    }

    #[async_trait]
    impl Env for Counter {
        async fn reset(&mut self, _seed: u64) -> crate::Result<Step> {
            self.dialogue = Dialogue::new();
            self.asked = 1;
            Ok(Step::Request(
                self.dialogue.ask("a", [Message::user("say 1")]),
            ))
        }

        async fn step(&mut self, agent: &AgentId, text: &str) -> crate::Result<Step> {
            self.dialogue.answer(agent, text)?;
            if self.asked == self.n {
                match self.fail {
                    Some("error") => return Err(Error::Env("counter broke".into())),
                    Some("panic") => panic!("counter exploded"),
                    Some("hang") => std::future::pending::<()>().await,
                    Some("bad_rewards") => {
                        return Ok(Step::Done(Outcome::single("a", vec![1.0])));
                    }
                    Some("nan") => {
                        return Ok(Step::Done(Outcome::single("a", vec![f32::NAN; self.n])));
                    }
                    _ => {}
                }
                return Ok(Step::Done(Outcome::single("a", vec![1.0; self.n])));
            }
            self.asked += 1;
            let ask = format!("say {}", self.asked);
            Ok(Step::Request(self.dialogue.ask("a", [Message::user(ask)])))
        }

        fn expert_answer(&self) -> Option<String> {
            Some(self.asked.to_string())
        }

        fn hint(&self) -> Option<String> {
            Some(format!("the answer is {}", self.asked))
        }
    }

    struct Script(Vec<&'static str>);

    #[async_trait]
    impl Responder for Script {
        async fn respond(&mut self, _request: &Request) -> std::result::Result<String, String> {
            match self.0.pop() {
                Some("panic") => panic!("policy exploded"),
                Some("hang") => std::future::pending().await,
                Some(s) => Ok(s.to_string()),
                None => Err("script exhausted".into()),
            }
        }
    }

    fn limits() -> EpisodeLimits {
        EpisodeLimits {
            env_call_timeout: Duration::from_millis(200),
            respond_timeout: Some(Duration::from_millis(200)),
            max_turns: 10,
        }
    }

    async fn play(env: Box<dyn Env>, script: Vec<&'static str>) -> Episode {
        run_episode(env, 7, &mut Script(script), limits()).await
    }

    #[tokio::test]
    async fn a_normal_episode_records_every_turn() {
        let ep = play(Counter::boxed(3, None), vec!["3", "2", "1"]).await;
        assert_eq!(
            ep.outcome().unwrap().rewards[&AgentId::new("a")],
            vec![1.0; 3]
        );
        assert_eq!(ep.turns.len(), 3);
        assert!(ep.turns[1].request.continues(&ep.turns[0].request, "1"));
        assert_eq!(ep.metrics()["fault"], 0.0);
    }

    #[tokio::test]
    async fn env_faults_end_only_the_episode_with_their_cause() {
        for (fail, kind, text) in [
            ("error", FaultKind::EnvError, "counter broke"),
            ("panic", FaultKind::EnvPanic, "counter exploded"),
            ("hang", FaultKind::EnvTimeout, "no reply within 0.200 s"),
            (
                "bad_rewards",
                FaultKind::BadOutcome,
                "answered 2 requests but has 1",
            ),
            ("nan", FaultKind::BadOutcome, "non-finite"),
        ] {
            let ep = play(Counter::boxed(2, Some(fail)), vec!["2", "1"]).await;
            let fault = ep.end.clone().unwrap_err();
            assert_eq!(fault.kind, kind, "{fail}");
            assert!(fault.message.contains(text), "{fail}: {}", fault.message);
            assert_eq!(ep.metrics()[kind.metric()], 1.0);
            assert_eq!(ep.turns.len(), 2);
        }
        // The runtime is still fine: the next episode runs normally.
        let ep = play(Counter::boxed(1, None), vec!["1"]).await;
        assert!(ep.outcome().is_some());
    }

    #[tokio::test]
    async fn responder_failures_are_policy_faults() {
        for (script, text) in [
            (vec!["panic"], "policy exploded"),
            (vec!["hang"], "no answer within"),
            (vec![], "script exhausted"),
        ] {
            let ep = play(Counter::boxed(2, None), script).await;
            let fault = ep.end.unwrap_err();
            assert_eq!(fault.kind, FaultKind::Policy);
            assert!(fault.message.contains(text), "{}", fault.message);
        }
    }

    #[tokio::test]
    async fn turn_limit_ends_a_runaway_episode() {
        let ep = play(Counter::boxed(50, None), vec!["x"; 50]).await;
        assert_eq!(ep.end.unwrap_err().kind, FaultKind::TurnLimit);
        assert_eq!(ep.turns.len(), 10);
    }

    #[tokio::test]
    async fn a_closure_is_a_responder() {
        let mut asked = 0;
        let mut answer = |r: &Request| {
            asked += 1;
            Ok(r.messages
                .last()
                .unwrap()
                .content
                .trim_start_matches("say ")
                .to_string())
        };
        let ep = run_episode(Counter::boxed(3, None), 0, &mut answer, limits()).await;
        assert!(ep.outcome().is_some());
        assert_eq!(asked, 3);
    }

    #[tokio::test]
    async fn hints_reach_the_policy_at_the_named_turns_only() {
        let mut seen = Vec::new();
        let mut answer = |r: &Request| {
            seen.push(r.hint.clone());
            Ok(r.hint
                .as_deref()
                .unwrap_or("?")
                .replace("the answer is ", ""))
        };
        let ep = run_episode_with_hints(Counter::boxed(3, None), 0, &mut answer, limits(), &[2, 3])
            .await;
        assert_eq!(
            seen,
            [
                None,
                Some("the answer is 2".into()),
                Some("the answer is 3".into())
            ]
        );
        // The recorded turns show which were hinted; the messages never contain the hint.
        assert_eq!(ep.turns[1].request.hint.as_deref(), Some("the answer is 2"));
        assert!(ep.turns.iter().all(|t| {
            t.request
                .messages
                .iter()
                .all(|m| !m.content.contains("answer is"))
        }));
        let answers: Vec<&str> = ep.turns.iter().map(|t| t.answer.as_str()).collect();
        assert_eq!(answers, ["?", "2", "3"]);
        // Without hint turns nothing is hinted.
        let mut plain = |r: &Request| Ok(if r.hint.is_some() { "hinted" } else { "1" }.into());
        let ep = run_episode(Counter::boxed(1, None), 0, &mut plain, limits()).await;
        assert_eq!(ep.turns[0].answer, "1");
    }

    #[tokio::test]
    async fn demonstrate_plays_the_expert() {
        let ep = demonstrate(Counter::boxed(3, None), 0, limits()).await;
        let answers: Vec<&str> = ep.turns.iter().map(|t| t.answer.as_str()).collect();
        assert_eq!(answers, ["1", "2", "3"]);
        assert!(ep.outcome().is_some());
    }
}
