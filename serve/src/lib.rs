//! # kaizen-serve
//!
//! The policy behind an OpenAI-compatible HTTP endpoint.
//!
//! - [`serve`] answers `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not,
//!   with `logprobs`/`top_logprobs`, `temperature`, `top_p`, `max_tokens`, `stop`, `n`, `seed`,
//!   and tool calls in ChatML's `<tool_call>` convention), `GET /v1/models`, `GET /health` and
//!   `GET /v1/kaizen/stats` (the engine's counters). Requests are decoded by
//!   [`kaizen_actors::ServingEngine`], the actors' continuous-batching engine: concurrent
//!   requests share decode steps.
//! - [`agent`]: the `openai_agent` environment — a program that talks to an OpenAI endpoint
//!   is an environment; its chat completions are the episode's turns.
//! - Malformed requests get OpenAI-shaped 4xx errors naming the field; bodies are limited to
//!   [`ServeConfig::max_body_bytes`]; [`ServeConfig::api_key`] requires a bearer token.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
mod chat;
mod completions;
mod stream;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use kaizen_actors::ServingEngine;
use kaizen_model::{ChatTemplate, SamplingParams, Tokenizer};
use serde_json::json;

use api::{ApiError, Sampling, json_response};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model id clients name (`model`) and `/v1/models` lists.
    pub served_model_name: String,
    /// When set, every `/v1` request needs `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `n` (choices per prompt).
    pub max_n: usize,
    /// Seeds of requests that give none are drawn from this seed, one per request.
    pub seed: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            served_model_name: "kaizen".into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            max_n: 16,
            seed: 0,
        }
    }
}

/// What the server knows about the model it serves.
#[derive(Clone)]
pub struct ServedModel {
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Its context length (`max_position_embeddings`).
    pub max_context: usize,
}

/// The server's shared state.
pub struct AppState {
    engine: ServingEngine,
    model: ServedModel,
    config: ServeConfig,
    token_bytes: text::TokenBytes,
    requests: AtomicU64,
}

impl AppState {
    /// State serving `model` with `engine`.
    pub fn new(engine: ServingEngine, model: ServedModel, config: ServeConfig) -> Self {
        Self {
            engine,
            model,
            config,
            token_bytes: text::TokenBytes::new(),
            requests: AtomicU64::new(0),
        }
    }

    /// The engine (for counters, or to publish new weights).
    pub fn engine(&self) -> &ServingEngine {
        &self.engine
    }

    /// A fresh id suffix and, for requests without a seed, the request's seed.
    fn next_request(&self) -> (u64, u64) {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        (n, kaizen_transport::derive_seed(self.config.seed, n))
    }

    /// Completes one API request's choices: the completions in order and the tokens they
    /// sampled, or a 500 naming the engine's reason.
    async fn complete_all(
        &self,
        requests: Vec<kaizen_model::GenerationRequest>,
    ) -> Result<(Vec<kaizen_actors::Completion>, usize), ApiError> {
        let completions = self
            .engine
            .complete(requests)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| ApiError::internal(format!("generation failed: {e}")))?;
        let tokens = completions.iter().map(|c| c.generation.tokens.len()).sum();
        Ok((completions, tokens))
    }

    /// Checks the `model` field against the served name.
    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.config.served_model_name {
            return Ok(());
        }
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist; this server serves `{}`",
                self.config.served_model_name
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
    }

    /// The sampling parameters of each of a prompt's `n` choices, checked.
    fn choice_params(
        &self,
        sampling: &Sampling,
        max_tokens: Option<usize>,
        prompt_len: usize,
        top_logprobs: Option<usize>,
        request_seed: u64,
    ) -> Result<Vec<SamplingParams>, ApiError> {
        let temperature = sampling.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("`temperature` must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = sampling.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be in (0, 1], got {top_p}"),
            ));
        }
        let n = sampling.n.unwrap_or(1);
        if n == 0 || n > self.config.max_n {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be in 1..={}, got {n}", self.config.max_n),
            ));
        }
        for (name, value) in [
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    name,
                    format!("`{name}` is not supported (only 0)"),
                ));
            }
        }
        if sampling.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` is not supported",
            ));
        }
        let room = self.model.max_context.saturating_sub(prompt_len);
        if room == 0 {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "the prompt is {prompt_len} tokens; the model's context is {} tokens",
                    self.model.max_context
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let max_new_tokens = match max_tokens {
            Some(0) => {
                return Err(ApiError::invalid("max_tokens", "`max_tokens` must be >= 1"));
            }
            // Generation also stops at the end of the context (finish reason `length`).
            Some(m) => m.min(room),
            None => room,
        };
        let stop = api::Stop::strings(sampling.stop.clone())?;
        let choices = self.guided_choices(sampling.guided_choice.as_deref())?;
        let seed = sampling.seed.map_or(request_seed, |s| s as u64);
        let params: Vec<SamplingParams> = (0..n)
            .map(|i| SamplingParams {
                temperature,
                top_p,
                max_new_tokens,
                stop: stop.clone(),
                seed: kaizen_transport::derive_seed(seed, i as u64),
                top_logprobs,
                choices: choices.clone(),
                ..SamplingParams::default()
            })
            .collect();
        Ok(params)
    }

    /// The token ids of each `guided_choice` text (encoded as plain text), checked.
    fn guided_choices(&self, texts: Option<&[String]>) -> Result<Vec<Vec<u32>>, ApiError> {
        let Some(texts) = texts else {
            return Ok(Vec::new());
        };
        if texts.is_empty() {
            return Err(ApiError::invalid(
                "guided_choice",
                "`guided_choice` must list at least one choice",
            ));
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| match self.model.tokenizer.encode_text(text) {
                Ok(ids) if !ids.is_empty() => Ok(ids),
                Ok(_) => Err(ApiError::invalid(
                    "guided_choice",
                    format!("`guided_choice[{i}]` is empty"),
                )),
                Err(e) => Err(ApiError::invalid(
                    "guided_choice",
                    format!("`guided_choice[{i}]`: {e}"),
                )),
            })
            .collect()
    }
}

/// The router of the whole API over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/kaizen/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_length));
    Router::new()
        .merge(v1)
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves (requests in flight finish).
///
/// # Errors
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {} {}", request.method(), request.uri().path()),
        param: None,
        code: None,
    }
}

/// Answers 413 at once when `Content-Length` is over the limit, before the body is sent
/// (the body extractor also counts the bytes of a body without a length).
async fn limit_length(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length
        && length > state.config.max_body_bytes as u64
    {
        return axum::response::IntoResponse::into_response(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request body is {length} bytes; the limit is {} bytes",
                state.config.max_body_bytes
            ),
            param: None,
            code: None,
        });
    }
    next.run(request).await
}

/// Requires the bearer token when one is configured.
async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return axum::response::IntoResponse::into_response(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "a valid `Authorization: Bearer <key>` header is required".into(),
                param: None,
                code: Some("invalid_api_key"),
            });
        }
    }
    next.run(request).await
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": [{
                "id": state.config.served_model_name,
                "object": "model",
                "created": api::now_seconds(),
                "owned_by": "kaizen",
                "max_model_len": state.model.max_context,
            }],
        }),
    )
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let c = state.engine.counters();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    json_response(
        StatusCode::OK,
        &json!({
            "requests": state.requests.load(Ordering::Relaxed),
            "completions": get(&c.completions),
            "generated_tokens": get(&c.generated_tokens),
            "prompt_tokens": get(&c.prompt_tokens),
            "prefill_tokens": get(&c.prefill_tokens),
            "decode_steps": get(&c.decode_steps),
            "busy_seconds": get(&c.busy_micros) as f64 / 1e6,
        }),
    )
}
