//! The `openai_agent` environment: any agent program that talks to an OpenAI-compatible
//! endpoint is an environment, and its chat completions are the episode's turns.
//!
//! Each episode starts the configured command with `OPENAI_BASE_URL` pointing at a gateway
//! route of its own (`http://127.0.0.1:PORT/episodes/<id>/v1`; `OPENAI_API_KEY` is set too, so
//! an unmodified `openai.OpenAI()` client works). Every `POST …/chat/completions` the program
//! makes becomes a [`Step::Request`] for agent `agent`: the actor samples the answer with the
//! policy (recording tokens and behaviour log-probs, as for any environment) and the HTTP
//! request is answered with it. The episode ends when the program exits; its reward is the
//! last `POST $KAIZEN_REWARD_URL` (`…/episodes/<id>/v1/kaizen/reward`, also
//! `/v1/kaizen/episodes/<id>/reward`) body `{"reward": x}`, or else the last line of its stdout that
//! is a JSON object with a numeric `reward`. The reward is given to the last turn.
//!
//! An assistant message the program sends back unchanged continues the policy's token thread
//! (the trained ids are the sampled ids), also for tool calls: the gateway maps a call it
//! parsed back to the exact text the policy wrote.
//!
//! Training samples at the job's settings: a request's `temperature`/`top_p` are ignored;
//! `max_tokens`/`max_completion_tokens` and `stop` apply to the turn. Streaming is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kaizen_core::{AgentId, Message, Outcome, Request, Role, SamplingOverrides, Step};
use kaizen_envs::{Env, EnvFactory, Error, Result, parse_params};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::api::{self, ApiError, ChatRequest, json_response};
use crate::chat;
use kaizen_core::openai_chat;

/// The one agent of an `openai_agent` episode.
pub const AGENT: &str = "agent";

/// Parameters of `openai_agent` (the job's `[[env]] params` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiAgentConfig {
    /// The program to run per episode (looked up on `PATH` when it has no `/`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables for the program.
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// Longest episode in seconds (the program is killed and the episode fails beyond it).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
}

fn default_timeout() -> f64 {
    300.0
}

/// Builds `openai_agent` episodes; all of a factory's episodes share one gateway server.
pub struct OpenAiAgentFactory {
    config: Arc<OpenAiAgentConfig>,
    gateway: Arc<OnceCell<Arc<Gateway>>>,
}

impl OpenAiAgentFactory {
    /// A factory from the environment's TOML parameters.
    ///
    /// # Errors
    /// [`Error::Params`] naming the field: unknown fields, an empty `command`, a timeout that
    /// is not positive.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: OpenAiAgentConfig = parse_params(env, params)?;
        let invalid = |message: &str| Error::Params {
            env: env.to_string(),
            message: message.to_string(),
        };
        if config.command.trim().is_empty() {
            return Err(invalid("`command` must name a program"));
        }
        if !(config.timeout_seconds.is_finite() && config.timeout_seconds > 0.0) {
            return Err(invalid("`timeout_seconds` must be a positive number"));
        }
        Ok(Self {
            config: Arc::new(config),
            gateway: Arc::new(OnceCell::new()),
        })
    }
}

impl EnvFactory for OpenAiAgentFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(OpenAiAgentEnv {
            config: self.config.clone(),
            gateway: self.gateway.clone(),
            episode: None,
        })
    }
}

/// What the gateway forwards to an episode.
enum Event {
    /// A chat completion request, answered with the policy's text or an error.
    Chat {
        messages: Vec<Message>,
        sampling: SamplingOverrides,
        tools: bool,
        reply: oneshot::Sender<std::result::Result<String, ApiError>>,
    },
    /// The program's reward for the episode.
    Reward(RewardBody),
}

/// The HTTP server the episodes' programs talk to.
struct Gateway {
    address: SocketAddr,
    episodes: Mutex<HashMap<u64, mpsc::Sender<Event>>>,
    next: AtomicU64,
}

impl Gateway {
    async fn start() -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway = Arc::new(Self {
            address: listener.local_addr()?,
            episodes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/episodes/{id}/v1/chat/completions", post(gateway_chat))
            .route("/episodes/{id}/v1/kaizen/reward", post(gateway_reward))
            .route("/v1/kaizen/episodes/{id}/reward", post(gateway_reward))
            .route("/episodes/{id}/v1/models", get(gateway_models))
            .with_state(gateway.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "openai_agent gateway stopped");
            }
        });
        Ok(gateway)
    }

    fn episode(&self, id: u64) -> std::result::Result<mpsc::Sender<Event>, ApiError> {
        let episodes = self.episodes.lock().unwrap_or_else(|e| e.into_inner());
        episodes.get(&id).cloned().ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no running episode {id}"),
            param: None,
            code: None,
        })
    }
}

async fn gateway_models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": "policy", "object": "model", "owned_by": "kaizen"}]}),
    )
}

/// A reward report: `{"reward": x, "metrics": {"name": number, ...}}` (`metrics` optional),
/// POSTed or printed as the last JSON line of stdout. The metrics are logged with the episode's
/// (`env/<name>`, averaged over a step's episodes), e.g. the parts a reward is made of.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RewardBody {
    reward: f32,
    #[serde(default)]
    metrics: std::collections::BTreeMap<String, f64>,
}

impl RewardBody {
    /// The field at fault when the report cannot be used.
    fn check(&self) -> std::result::Result<(), (String, String)> {
        if !self.reward.is_finite() {
            return Err(("reward".into(), "`reward` must be a finite number".into()));
        }
        for (name, value) in &self.metrics {
            if RESERVED_METRICS.contains(&name.as_str()) || name.is_empty() {
                return Err((
                    format!("metrics.{name}"),
                    format!(
                        "metric name `{name}` is taken (not one of {})",
                        RESERVED_METRICS.join(", ")
                    ),
                ));
            }
            if !value.is_finite() {
                return Err((
                    format!("metrics.{name}"),
                    format!("`metrics.{name}` must be a finite number, got {value}"),
                ));
            }
        }
        Ok(())
    }
}

/// Episode metrics the environment sets itself.
const RESERVED_METRICS: [&str; 3] = ["reward", "turns", "fault"];

async fn gateway_reward(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<u64>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body: RewardBody = api::parse(&api::body(body)?)?;
        body.check()
            .map_err(|(field, message)| ApiError::invalid(&field, message))?;
        let episode = gateway.episode(id)?;
        episode
            .send(Event::Reward(body))
            .await
            .map_err(|_| ApiError::internal("the episode has ended"))?;
        Ok::<(), ApiError>(())
    }
    .await;
    match result {
        Ok(()) => json_response(StatusCode::OK, &json!({"ok": true})),
        Err(e) => e.into_response(),
    }
}

async fn gateway_chat(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<u64>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let request: ChatRequest = api::parse(&api::body(body)?)?;
        if request.sampling.stream == Some(true) {
            return Err(ApiError::invalid(
                "stream",
                "an `openai_agent` episode does not stream",
            ));
        }
        if request.sampling.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "an `openai_agent` turn has one choice"));
        }
        let tools = request.tools.as_ref().is_some_and(|t| !t.is_empty())
            && request.tool_choice.as_ref().is_none_or(|c| c != "none");
        let messages = chat::to_messages(
            &request.messages,
            tools.then(|| request.tools.as_deref().unwrap_or_default()),
        )?;
        let sampling = SamplingOverrides {
            max_new_tokens: request.max_completion_tokens.or(request.max_tokens),
            stop: api::Stop::strings(request.sampling.stop.clone())?,
            ..SamplingOverrides::default()
        };
        let (reply, answer) = oneshot::channel();
        gateway
            .episode(id)?
            .send(Event::Chat {
                messages,
                sampling,
                tools,
                reply,
            })
            .await
            .map_err(|_| ApiError::internal("the episode has ended"))?;
        let text = answer
            .await
            .map_err(|_| ApiError::internal("the episode ended before answering"))??;
        let (content, calls) = if tools {
            openai_chat::parse_calls(&text, &format!("call_{id}"))
        } else {
            (Some(text.clone()), Vec::new())
        };
        let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
        let mut message = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = json!(calls);
        }
        Ok(json!({
            "id": format!("chatcmpl-episode-{id}"),
            "object": "chat.completion",
            "created": api::now_seconds(),
            "model": request.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        }))
    }
    .await;
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => e.into_response(),
    }
}

/// One running episode.
struct Episode {
    id: u64,
    child: tokio::process::Child,
    events: mpsc::Receiver<Event>,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
    deadline: tokio::time::Instant,
    /// The request waiting for the policy's answer, and whether it offered tools.
    pending: Option<(oneshot::Sender<std::result::Result<String, ApiError>>, bool)>,
    /// Assistant texts as the program will send them back (tool calls re-rendered) → the
    /// policy's exact text, so a thread continues with the sampled ids.
    written: HashMap<String, String>,
    turns: usize,
    reward: Option<RewardBody>,
}

struct OpenAiAgentEnv {
    config: Arc<OpenAiAgentConfig>,
    gateway: Arc<OnceCell<Arc<Gateway>>>,
    episode: Option<Episode>,
}

impl OpenAiAgentEnv {
    fn fail(&self, message: String) -> Error {
        Error::Env(format!("openai_agent `{}`: {message}", self.config.command))
    }

    /// Waits for the program's next chat request, or its exit.
    async fn next(&mut self) -> Result<Step> {
        let Some(episode) = self.episode.as_mut() else {
            return Err(Error::NoEpisode);
        };
        loop {
            tokio::select! {
                event = episode.events.recv() => match event {
                    Some(Event::Reward(r)) => episode.reward = Some(r),
                    Some(Event::Chat { mut messages, sampling, tools, reply }) => {
                        for m in &mut messages {
                            if m.role == Role::Assistant
                                && let Some(raw) = episode.written.get(&m.content)
                            {
                                m.content = raw.clone();
                            }
                        }
                        episode.pending = Some((reply, tools));
                        episode.turns += 1;
                        let mut request = Request::new(AGENT, messages);
                        request.sampling = sampling;
                        return Ok(Step::Request(request));
                    }
                    None => return Err(Error::Env("the openai_agent gateway stopped".into())),
                },
                status = episode.child.wait() => {
                    let status = status.map_err(|e| Error::Env(format!("waiting for the agent program: {e}")))?;
                    return self.finish(status).await;
                }
                () = tokio::time::sleep_until(episode.deadline) => {
                    let _ = episode.child.kill().await;
                    let message = format!("episode {} ran past timeout_seconds = {}", episode.id, self.config.timeout_seconds);
                    self.end();
                    return Err(self.fail(message));
                }
            }
        }
    }

    /// The program exited: its reward ends the episode.
    async fn finish(&mut self, status: std::process::ExitStatus) -> Result<Step> {
        let Some(mut episode) = self.episode.take() else {
            return Err(Error::NoEpisode);
        };
        self.unregister(episode.id);
        while let Ok(event) = episode.events.try_recv() {
            if let Event::Reward(r) = event {
                episode.reward = Some(r);
            }
        }
        let stdout = episode.stdout.await.unwrap_or_default();
        let stderr = episode.stderr.await.unwrap_or_default();
        if !status.success() {
            let tail: String = stderr
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(self.fail(format!("exited with {status}; stderr ends:\n{tail}")));
        }
        let report = match episode.reward {
            Some(report) => report,
            None => reward_line(&stdout)
                .ok_or_else(|| {
                    self.fail("exited without a reward (POST {\"reward\": x} to $KAIZEN_REWARD_URL, or print it as the last JSON line)".into())
                })?
                .map_err(|(field, message)| {
                    self.fail(format!("its reward line's `{field}`: {message}"))
                })?,
        };
        let reward = report.reward;
        if episode.turns == 0 {
            return Err(self.fail("exited without asking the policy anything".into()));
        }
        let mut rewards = vec![0.0; episode.turns];
        rewards[episode.turns - 1] = reward;
        let mut outcome = Outcome::single(AGENT, rewards);
        outcome.metrics.extend(report.metrics);
        outcome.metrics.insert("reward".into(), f64::from(reward));
        outcome.metrics.insert("turns".into(), episode.turns as f64);
        Ok(Step::Done(outcome))
    }

    fn unregister(&self, id: u64) {
        if let Some(gateway) = self.gateway.get() {
            let mut episodes = gateway.episodes.lock().unwrap_or_else(|e| e.into_inner());
            episodes.remove(&id);
        }
    }

    fn end(&mut self) {
        if let Some(episode) = self.episode.take() {
            self.unregister(episode.id);
        }
    }
}

/// The report on the last stdout line that is a JSON object with a numeric `reward` (other
/// fields but `metrics` are ignored); an error names the field of a report that cannot be used.
fn reward_line(stdout: &str) -> Option<std::result::Result<RewardBody, (String, String)>> {
    stdout.lines().rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        // A line without a numeric reward is not a report.
        value.get("reward")?.as_f64()?;
        let report = serde_json::from_value::<RewardBody>(value).map_err(|e| {
            (
                "metrics".to_string(),
                format!("`metrics` must map names to numbers: {e}"),
            )
        });
        Some(report.and_then(|r| r.check().map(|()| r)))
    })
}

async fn read_all(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut text = String::new();
    if let Some(mut s) = stream {
        let mut bytes = Vec::new();
        let _ = s.read_to_end(&mut bytes).await;
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

#[async_trait]
impl Env for OpenAiAgentEnv {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        self.end();
        let gateway = self
            .gateway
            .get_or_try_init(Gateway::start)
            .await
            .map_err(|e| self.fail(format!("cannot start the gateway: {e}")))?
            .clone();
        let id = gateway.next.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::channel(4);
        gateway
            .episodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let base = format!("http://{}/episodes/{id}/v1", gateway.address);
        let mut child = tokio::process::Command::new(&self.config.command)
            .args(&self.config.args)
            .envs(&self.config.env)
            .env("OPENAI_BASE_URL", &base)
            .env("OPENAI_API_KEY", "kaizen")
            .env("KAIZEN_REWARD_URL", format!("{base}/kaizen/reward"))
            .env("KAIZEN_EPISODE_SEED", seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                self.unregister(id);
                self.fail(format!("cannot start it: {e}"))
            })?;
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        self.episode = Some(Episode {
            id,
            child,
            events,
            stdout,
            stderr,
            deadline: tokio::time::Instant::now()
                + Duration::from_secs_f64(self.config.timeout_seconds),
            pending: None,
            written: HashMap::new(),
            turns: 0,
            reward: None,
        });
        self.next().await
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        let Some(episode) = self.episode.as_mut() else {
            return Err(Error::NoEpisode);
        };
        if agent.as_str() != AGENT {
            return Err(Error::WrongAgent {
                expected: AGENT.into(),
                got: agent.clone(),
            });
        }
        let Some((reply, tools)) = episode.pending.take() else {
            return Err(Error::NoEpisode);
        };
        if tools {
            let (content, calls) = openai_chat::parse_calls(text, "call");
            if !calls.is_empty() {
                let rendered =
                    openai_chat::render_calls(content.as_deref().unwrap_or_default(), &calls);
                episode.written.insert(rendered, text.to_string());
            }
        }
        // The program may have given up on the request (its HTTP client timed out): the
        // episode goes on and ends when the program does.
        let _ = reply.send(Ok(text.to_string()));
        self.next().await
    }
}

impl Drop for OpenAiAgentEnv {
    fn drop(&mut self) {
        self.end();
    }
}

/// Registers `openai_agent` in `registry`.
///
/// # Errors
/// [`Error::DuplicateEnv`] when the name is taken.
pub fn register(registry: &mut kaizen_envs::Registry) -> Result<()> {
    registry.register(
        "openai_agent",
        "any program using an OpenAI client: its chat completions are the episode's turns",
        |params: &toml::Table| {
            OpenAiAgentFactory::from_params("openai_agent", params)
                .map(|f| Arc::new(f) as Arc<dyn EnvFactory>)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_reward_line_is_the_report_with_its_metrics() {
        let stdout = "{\"reward\": 0.1}\nnot json\n{\"reward\": 0.5, \"called\": true, \"metrics\": {\"called\": 1, \"answered\": 0.0}}\n{\"note\": 1}\n";
        let report = reward_line(stdout).unwrap().unwrap();
        assert_eq!(report.reward, 0.5);
        assert_eq!(
            report.metrics.into_iter().collect::<Vec<_>>(),
            [("answered".to_string(), 0.0), ("called".to_string(), 1.0)]
        );
        assert_eq!(reward_line("{\"note\": 1}\nplain text"), None);
        for (line, field) in [
            (r#"{"reward": 1, "metrics": {"turns": 2}}"#, "metrics.turns"),
            (r#"{"reward": 1, "metrics": {"x": "high"}}"#, "metrics"),
            (r#"{"reward": 1, "metrics": [1]}"#, "metrics"),
        ] {
            let (at, message) = reward_line(line).unwrap().unwrap_err();
            assert_eq!(at, field, "{line}: {message}");
        }
    }
}
