//! The HTTP/JSON protocol between kaizen and a remote environment (version 1). The full
//! description, with a JSON schema, is in `docs/environments.md`.
//!
//! - `GET /info` → [`Info`]
//! - `POST /reset` with [`ResetRequest`] → [`ResetReply`]
//! - `POST /step` with [`StepRequest`] → [`StepReply`]
//! - any failure: a non-2xx status with [`ErrorReply`]
//!
//! A step is kaizen's [`kaizen_core::Step`] as JSON:
//! `{"kind": "request", "agent": "...", "messages": [{"role": "user", "content": "..."}],
//! "trainable": true, "sampling": {...}}` or `{"kind": "done", "rewards": {"agent": [1.0]},
//! "metrics": {...}, "info": ...}`.

use kaizen_core::{AgentId, Step};
use serde::{Deserialize, Serialize};

/// The protocol version this client speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Reply to `GET /info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The environment's name.
    pub name: String,
    /// One line about it.
    #[serde(default)]
    pub description: String,
    /// The protocol version the server speaks (1).
    pub protocol: u32,
}

/// Body of `POST /reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetRequest {
    /// The episode's seed (the same seed must give the same episode).
    pub seed: u64,
    /// The `params` table of kaizen's config, passed through unchanged.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// Reply to `POST /reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetReply {
    /// Names the episode in the following `/step` calls.
    pub episode_id: String,
    /// The first step.
    pub step: Step,
    /// What an expert would answer to the request in `step`, when the server knows.
    #[serde(default)]
    pub expert: Option<String>,
    /// A hint for the request in `step` (the gold answer; `Env::hint`), when the server has
    /// one. Optional: older servers omit it.
    #[serde(default)]
    pub hint: Option<String>,
}

/// Body of `POST /step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRequest {
    /// The episode, as returned by `/reset`.
    pub episode_id: String,
    /// The agent that answers.
    pub agent: AgentId,
    /// Its text.
    pub text: String,
}

/// Reply to `POST /step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReply {
    /// The next step. After a `done` step the server forgets the episode.
    pub step: Step,
    /// What an expert would answer to the request in `step`, when the server knows.
    #[serde(default)]
    pub expert: Option<String>,
    /// A hint for the request in `step` (the gold answer; `Env::hint`), when the server has
    /// one. Optional: older servers omit it.
    #[serde(default)]
    pub hint: Option<String>,
}

/// Body of a failure reply (any non-2xx status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: String,
}
