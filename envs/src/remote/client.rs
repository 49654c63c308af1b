use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kaizen_core::{AgentId, Step};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::protocol::{
    ErrorReply, Info, PROTOCOL_VERSION, ResetReply, ResetRequest, StepReply, StepRequest,
};
use crate::{Env, EnvFactory, Error, Result, parse_params};

/// Parameters of `remote` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// Longest one call may take, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Longest connecting may take, in seconds.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: f64,
    /// Extra attempts for `/info` and `/reset` after a connection failure, a timeout or a 5xx
    /// status (`/step` is never retried: it is not idempotent).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Largest reply accepted, in bytes.
    #[serde(default = "default_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Passed to the server's `/reset` as `params`.
    #[serde(default)]
    pub params: toml::Table,
    /// The server's episodes are a function of the seed and the texts stepped (the protocol
    /// asks this of the seed; here the user vouches for the whole episode). kaizen may then
    /// fork an episode for tree search ([`Env::fork`]): the copy replays the seed and the
    /// texts so far on a new server episode before its first step of its own, so any server
    /// can be searched without a fork endpoint. `false` (the default): episodes cannot fork.
    #[serde(default)]
    pub deterministic: bool,
}

fn default_timeout_s() -> f64 {
    30.0
}
fn default_connect_timeout_s() -> f64 {
    5.0
}
fn default_retries() -> u32 {
    2
}
fn default_max_reply_bytes() -> usize {
    8 << 20
}

impl RemoteConfig {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_s: default_timeout_s(),
            connect_timeout_s: default_connect_timeout_s(),
            retries: default_retries(),
            max_reply_bytes: default_max_reply_bytes(),
            params: toml::Table::new(),
            deterministic: false,
        }
    }
}

struct Shared {
    client: reqwest::Client,
    base: reqwest::Url,
    config: RemoteConfig,
    params: serde_json::Value,
}

/// Makes environments that play over HTTP/JSON against a remote server (see
/// [`super::protocol`]); each episode is one server-side episode.
#[derive(Clone)]
pub struct RemoteFactory {
    shared: Arc<Shared>,
}

fn seconds(env: &str, field: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Error::Params {
            env: env.into(),
            message: format!("`{field}` must be a positive number of seconds, got {s}"),
        })
}

impl RemoteFactory {
    /// A factory for the server at `config.url`. Nothing is contacted yet.
    ///
    /// # Errors
    /// [`Error::Params`] for a URL that is not `http(s)://...` or non-positive timeouts.
    pub fn new(config: RemoteConfig) -> Result<Self> {
        let env = "remote";
        let bad = |message: String| Error::Params {
            env: env.into(),
            message,
        };
        let mut base = reqwest::Url::parse(&config.url)
            .map_err(|e| bad(format!("`url` = {:?} is not a URL: {e}", config.url)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!(
                "`url` = {:?} must start with http:// or https://",
                config.url
            )));
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let client = reqwest::Client::builder()
            .timeout(seconds(env, "timeout_s", config.timeout_s)?)
            .connect_timeout(seconds(env, "connect_timeout_s", config.connect_timeout_s)?)
            .build()
            .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))?;
        let params = serde_json::to_value(&config.params)
            .map_err(|e| bad(format!("`params` cannot be sent as JSON: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                base,
                config,
                params,
            }),
        })
    }

    /// A factory from a TOML table (see [`RemoteConfig`]).
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        Self::new(parse_params(env, params)?)
    }

    /// The server's `GET /info`.
    ///
    /// # Errors
    /// [`Error::Remote`] when the server cannot be reached, fails, or speaks another protocol
    /// version.
    pub async fn info(&self) -> Result<Info> {
        let info: Info = self.shared.call("info", None::<&()>, true).await?;
        if info.protocol != PROTOCOL_VERSION {
            return Err(self.shared.error(
                "info",
                format!(
                    "server speaks protocol {}, this client speaks {PROTOCOL_VERSION}",
                    info.protocol
                ),
            ));
        }
        Ok(info)
    }
}

impl EnvFactory for RemoteFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(RemoteEnv {
            shared: self.shared.clone(),
            episode: None,
            expert: None,
            hint: None,
            seed: None,
            history: Vec::new(),
            replay: false,
        })
    }

    /// With `deterministic = true`: forks replay the episode (see [`RemoteConfig`]).
    fn can_fork(&self) -> bool {
        self.shared.config.deterministic
    }
}

/// Whether a failed call may be tried again (the server may not have seen it, or failed in a
/// way that may pass).
enum Failure {
    Retryable(String),
    Final(String),
}

impl Shared {
    fn error(&self, endpoint: &str, message: String) -> Error {
        Error::Remote {
            url: self
                .base
                .join(endpoint)
                .map_or_else(|_| self.base.to_string(), |u| u.to_string()),
            message,
        }
    }

    /// Calls `endpoint` (GET without a body, POST with one); retries when `idempotent`.
    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<R> {
        let attempts = if idempotent {
            self.config.retries + 1
        } else {
            1
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                tracing::debug!(endpoint, attempt, %last, "retrying remote environment call");
            }
            match self.call_once(endpoint, body).await {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        self.error(
                            endpoint,
                            format!("malformed reply ({e}): {}", preview(&bytes)),
                        )
                    });
                }
                Err(Failure::Final(message)) => return Err(self.error(endpoint, message)),
                Err(Failure::Retryable(message)) => last = message,
            }
        }
        let tries = if attempts > 1 {
            format!(" (after {attempts} attempts)")
        } else {
            String::new()
        };
        Err(self.error(endpoint, format!("{last}{tries}")))
    }

    async fn call_once<B: Serialize + ?Sized>(
        &self,
        endpoint: &str,
        body: Option<&B>,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let url = self
            .base
            .join(endpoint)
            .map_err(|e| Failure::Final(format!("bad endpoint: {e}")))?;
        let request = match body {
            Some(b) => self.client.post(url).json(b),
            None => self.client.get(url),
        };
        let mut response = request.send().await.map_err(|e| {
            let message = if e.is_timeout() {
                format!("no reply within {} s", self.config.timeout_s)
            } else {
                format!("cannot reach the server: {}", error_chain(&e))
            };
            Failure::Retryable(message)
        })?;
        let limit = self.config.max_reply_bytes;
        let too_large = |n: usize| {
            Failure::Final(format!(
                "reply larger than the limit of {limit} bytes ({n} bytes)"
            ))
        };
        if let Some(n) = response.content_length()
            && n > limit as u64
        {
            return Err(too_large(n as usize));
        }
        let status = response.status();
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > limit {
                        return Err(too_large(bytes.len()));
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Retryable(format!(
                        "reply not finished within {} s",
                        self.config.timeout_s
                    )));
                }
                Err(e) => {
                    return Err(Failure::Retryable(format!(
                        "reading the reply: {}",
                        error_chain(&e)
                    )));
                }
            }
        }
        if status.is_success() {
            return Ok(bytes);
        }
        let detail = serde_json::from_slice::<ErrorReply>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| preview(&bytes));
        let message = format!("HTTP {status}: {detail}");
        if status.is_server_error() {
            Err(Failure::Retryable(message))
        } else {
            Err(Failure::Final(message))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        short.push('…');
    }
    format!("{short:?}")
}

struct RemoteEnv {
    shared: Arc<Shared>,
    episode: Option<String>,
    expert: Option<String>,
    hint: Option<String>,
    /// The episode's seed, once reset.
    seed: Option<u64>,
    /// Every (agent, text) stepped since the reset, for a fork's replay.
    history: Vec<(AgentId, String)>,
    /// A fork not yet on the server: its first step replays `seed` and `history` first.
    replay: bool,
}

impl RemoteEnv {
    /// Replays a fork's episode on a new server episode: `/reset` with its seed, then every
    /// text of its history, each of which must leave the episode running.
    async fn replay(&mut self) -> Result<()> {
        let seed = self.seed.ok_or(Error::NoEpisode)?;
        let body = ResetRequest {
            seed,
            params: self.shared.params.clone(),
        };
        let reply: ResetReply = self.shared.call("reset", Some(&body), true).await?;
        let episode = reply.episode_id;
        let mut running = matches!(reply.step, Step::Request(_));
        for (agent, text) in &self.history {
            if !running {
                break;
            }
            let body = StepRequest {
                episode_id: episode.clone(),
                agent: agent.clone(),
                text: text.clone(),
            };
            let reply: StepReply = self.shared.call("step", Some(&body), false).await?;
            running = matches!(reply.step, Step::Request(_));
        }
        if !running {
            return Err(self.shared.error(
                "step",
                format!(
                    "replaying a forked episode (seed {seed}, {} texts) ended it early: the \
                     server's episodes are not deterministic, so `deterministic = true` is wrong",
                    self.history.len()
                ),
            ));
        }
        self.episode = Some(episode);
        self.replay = false;
        Ok(())
    }
}

#[async_trait]
impl Env for RemoteEnv {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let body = ResetRequest {
            seed,
            params: self.shared.params.clone(),
        };
        let reply: ResetReply = self.shared.call("reset", Some(&body), true).await?;
        self.episode = matches!(reply.step, Step::Request(_)).then_some(reply.episode_id);
        self.expert = reply.expert;
        self.hint = reply.hint;
        self.seed = Some(seed);
        self.history.clear();
        self.replay = false;
        Ok(reply.step)
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        if self.replay {
            self.replay().await?;
        }
        let episode_id = self.episode.clone().ok_or(Error::NoEpisode)?;
        let body = StepRequest {
            episode_id,
            agent: agent.clone(),
            text: text.to_string(),
        };
        self.expert = None;
        self.hint = None;
        let reply: StepReply = self.shared.call("step", Some(&body), false).await?;
        if matches!(reply.step, Step::Done(_)) {
            self.episode = None;
        }
        self.history.push((agent.clone(), text.to_string()));
        self.expert = reply.expert;
        self.hint = reply.hint;
        Ok(reply.step)
    }

    fn expert_answer(&self) -> Option<String> {
        self.expert.clone()
    }

    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }

    /// With `deterministic = true`, a copy that replays this episode on the server before its
    /// first step (the pending request's expert answer and hint carry over); `None` otherwise,
    /// or when no episode is running.
    fn fork(&self) -> Option<Box<dyn Env>> {
        if !self.shared.config.deterministic || (self.episode.is_none() && !self.replay) {
            return None;
        }
        Some(Box::new(RemoteEnv {
            shared: self.shared.clone(),
            episode: None,
            expert: self.expert.clone(),
            hint: self.hint.clone(),
            seed: self.seed,
            history: self.history.clone(),
            replay: true,
        }))
    }
}
