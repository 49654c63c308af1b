//! The OpenAI wire format: request bodies as clients send them, response bodies, and errors.
//!
//! Field names and meanings follow OpenAI's API reference (Chat Completions and the legacy
//! Completions); unknown fields are ignored, as OpenAI-compatible servers do, but a known
//! field kaizen cannot honour (e.g. `logit_bias`, `echo`) is a 400 naming it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status (400, 401, 404, 413, 500, 503).
    pub status: StatusCode,
    /// What went wrong, naming the field and what was expected.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// A 400 not tied to one field (e.g. a body that is not JSON).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 500: the engine failed a request it had accepted.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// With a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Parses a request body, answering a 400 that quotes serde's message (it names the field).
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The strings, checked: at most 4, none empty.
    pub fn strings(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
        let all = match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if all.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                format!("`stop` takes at most 4 strings, got {}", all.len()),
            ));
        }
        if all.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "`stop` strings must not be empty",
            ));
        }
        Ok(all)
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices).
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints, as sent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// `[0, 2]`, default 1; 0 = greedy.
    pub temperature: Option<f32>,
    /// `(0, 1]`, default 1.
    pub top_p: Option<f32>,
    /// Choices per prompt, `1..=max_n`, default 1.
    pub n: Option<usize>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed: the same seed and request give the same tokens, whatever else the server runs.
    pub seed: Option<i64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Only 0 (or absent) is accepted.
    pub presence_penalty: Option<f32>,
    /// Only 0 (or absent) is accepted.
    pub frequency_penalty: Option<f32>,
    /// Only empty (or absent) is accepted.
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// vLLM's extension: the completion must be one of these texts (each non-empty); the
    /// sampler draws only tokens that continue a choice, then the end of the turn.
    pub guided_choice: Option<Vec<String>>,
}

pub use kaizen_core::openai_chat::{
    ChatMessage, Content, ContentPart, FunctionCall, Tool, ToolCall,
};

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The served model's name.
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (deprecated name).
    pub max_tokens: Option<usize>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<usize>,
    /// Return each token's log-prob.
    pub logprobs: Option<bool>,
    /// Alternatives per token, `0..=20` (needs `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Tools the model may call.
    pub tools: Option<Vec<Tool>>,
    /// `auto` or `none` (forcing a call is not supported).
    pub tool_choice: Option<Value>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` of the legacy endpoint: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts (one choice set each).
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<u32>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name.
    pub model: String,
    /// The prompt(s).
    pub prompt: Prompt,
    /// Most tokens to generate (default 16, as OpenAI).
    pub max_tokens: Option<usize>,
    /// Alternatives per token, `0..=5` (the legacy `logprobs`).
    pub logprobs: Option<usize>,
    /// Only `false` is supported.
    pub echo: Option<bool>,
    /// Not supported.
    pub suffix: Option<String>,
    /// Only `best_of == n` is supported.
    pub best_of: Option<usize>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens (counted once per prompt, not once per choice).
    pub prompt_tokens: usize,
    /// Tokens sampled, over all choices (an EOS token included).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage of `prompt` tokens and `completion` tokens.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// Seconds since the Unix epoch (`created`).
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The request body, or the extractor's rejection (413 when over the body limit) as an
/// OpenAI-shaped error.
pub fn body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rejection| ApiError {
        status: rejection.status(),
        message: format!("could not read the request body: {}", rejection.body_text()),
        param: None,
        code: None,
    })
}
