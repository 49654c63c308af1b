use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Message;

/// The name of an agent (a role) in an environment, e.g. `"solver"`, `"generator"`, `"critic"`.
///
/// Single-agent environments use one name throughout. Rewards are keyed by agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

impl AgentId {
    /// An agent id from any string.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AgentId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// Per-request changes to the actor's sampling settings. `None` keeps the actor's value.
///
/// An environment uses these for turns that need other settings than the trained turns, e.g. a
/// greedy, short judging turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    /// Softmax temperature (> 0; 0 means greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Keep only the `top_k` most likely tokens (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` × the top probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Maximum number of tokens to generate for this turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Extra stop strings for this turn (the text stops before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// When non-empty, the reply must be one of these texts (vLLM's `guided_choice`; an agent's
    /// admissible actions): the actor encodes each as the reply's tokens and samples only ids
    /// that continue a choice, then the end-of-turn id, so every reply is a choice verbatim.
    /// The turn's token budget grows to fit the longest choice. The learner trains the
    /// unconstrained policy's log-probs of the sampled ids; the behaviour log-probs are those of
    /// the constrained distribution actually sampled from. CPU decoding only. Empty texts are
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// What an environment asks of a model: the next turn of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Which agent must speak.
    pub agent: AgentId,
    /// The whole conversation this agent sees, oldest first, ending with the message the agent
    /// answers. When it extends an earlier request of the same agent (the earlier messages plus
    /// the agent's own answer, unchanged), the actor continues that token thread and keeps the
    /// sampled ids as they were; otherwise it starts a new thread.
    pub messages: Vec<Message>,
    /// Whether the learner trains on this turn. `false` for e.g. a self-judging turn.
    #[serde(default = "default_true")]
    pub trainable: bool,
    /// Sampling changes for this turn only.
    #[serde(default)]
    pub sampling: SamplingOverrides,
    /// A hint shown to the policy for this turn only (STaR's rationalisation, Zelikman et
    /// al. 2022, §3.2: the gold answer, so the model can write a solution that reaches it). The
    /// actor samples with the hint as an extra user message after `messages`, but records the
    /// turn without it: the thread, the segment's prompt tokens and every later turn stay
    /// hint-free, so a turn answered with a hint trains with the unhinted context. Its
    /// behaviour log-probs are those of the hinted context, so such turns are supervised data
    /// only. Set by the episode runner from `kaizen_envs::Env::hint` at the turns an
    /// episode task names; environments leave it `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Request {
    /// A trainable request for `agent` with default sampling.
    pub fn new(agent: impl Into<AgentId>, messages: Vec<Message>) -> Self {
        Self {
            agent: agent.into(),
            messages,
            trainable: true,
            sampling: SamplingOverrides::default(),
            hint: None,
        }
    }

    /// The same request, not trained on (e.g. a judging turn answered by the policy).
    pub fn untrained(mut self) -> Self {
        self.trainable = false;
        self
    }

    /// The same request with sampling overrides.
    pub fn with_sampling(mut self, sampling: SamplingOverrides) -> Self {
        self.sampling = sampling;
        self
    }

    /// Whether this request continues `previous` after the agent answered it with `answer`:
    /// same agent, and the messages start with `previous.messages` unchanged followed by the
    /// answer as an assistant message (verbatim). An actor that sees `true` extends the token
    /// thread of `previous` (keeping the sampled ids) instead of re-encoding the conversation.
    pub fn continues(&self, previous: &Request, answer: &str) -> bool {
        let n = previous.messages.len();
        self.agent == previous.agent
            && self.messages.len() > n
            && self.messages[..n] == previous.messages[..]
            && self.messages[n].role == crate::Role::Assistant
            && self.messages[n].content == answer
    }
}

/// How an episode ended: rewards and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `rewards[agent][k]` is the reward of the agent's `k`-th turn (the `k`-th request it
    /// answered, trainable or not). Agents that took turns but are absent get 0 for every turn.
    #[serde(default)]
    pub rewards: BTreeMap<AgentId, Vec<f32>>,
    /// Numeric episode metrics (e.g. `correct@t1`), averaged over episodes by the runtime.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Free-form details kept with the trajectory sample (not aggregated).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub info: serde_json::Value,
}

impl Outcome {
    /// An outcome with the given per-turn rewards for one agent.
    pub fn single(agent: impl Into<AgentId>, rewards: Vec<f32>) -> Self {
        let mut map = BTreeMap::new();
        map.insert(agent.into(), rewards);
        Self {
            rewards: map,
            ..Self::default()
        }
    }

    /// Adds a metric and returns the outcome.
    pub fn with_metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }
}

/// What an environment returns from `reset` and `step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// The episode goes on: this agent must answer.
    Request(Request),
    /// The episode is over.
    Done(Outcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_json_is_tagged_and_defaults_apply() {
        let json =
            r#"{"kind":"request","agent":"solver","messages":[{"role":"user","content":"2+2?"}]}"#;
        let step: Step = serde_json::from_str(json).unwrap();
        match step {
            Step::Request(r) => {
                assert_eq!(r.agent.as_str(), "solver");
                assert!(r.trainable);
                assert_eq!(r.sampling, SamplingOverrides::default());
            }
            Step::Done(_) => panic!("expected a request"),
        }
        let done = Step::Done(Outcome::single("solver", vec![1.0]).with_metric("correct", 1.0));
        let text = serde_json::to_string(&done).unwrap();
        assert!(text.starts_with(r#"{"kind":"done""#), "{text}");
        assert_eq!(serde_json::from_str::<Step>(&text).unwrap(), done);
    }

    #[test]
    fn continuation_needs_same_agent_same_prefix_and_verbatim_answer() {
        let first = Request::new("solver", vec![Message::user("2+2?")]);
        let mut messages = first.messages.clone();
        messages.push(Message::assistant("4"));
        messages.push(Message::user("Sure?"));
        let next = Request::new("solver", messages.clone());
        assert!(next.continues(&first, "4"));
        assert!(!next.continues(&first, "4 "), "answer must be verbatim");
        assert!(!Request::new("critic", messages.clone()).continues(&first, "4"));
        let mut edited = messages;
        edited[0] = Message::user("2+3?");
        assert!(!Request::new("solver", edited).continues(&first, "4"));
        assert!(
            !first.continues(&first, "4"),
            "a request does not continue itself"
        );
    }

    #[test]
    fn unknown_sampling_field_is_rejected() {
        let err = serde_json::from_str::<SamplingOverrides>(r#"{"temprature":0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("temprature"), "{err}");
    }
}
