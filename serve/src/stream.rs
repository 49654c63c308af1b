//! Server-sent events: chunks as `data: {json}` events, then `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::Usage;

/// How many chunks may wait for a slow client before the producer waits too.
pub(crate) const CHUNK_BUFFER: usize = 64;

/// A `text/event-stream` response sending each chunk `rx` yields, then `[DONE]`. When the
/// client goes away the response (and `rx`) is dropped, so the producer's next send fails and
/// it stops — dropping the engine's stream, which cancels the rows still decoding.
pub(crate) fn sse(rx: mpsc::Receiver<Value>) -> Response {
    let events = stream::unfold(Some(rx), |state| async move {
        let mut rx = state?;
        match rx.recv().await {
            Some(chunk) => Some((
                Ok::<_, Infallible>(Event::default().data(chunk.to_string())),
                Some(rx),
            )),
            None => Some((Ok(Event::default().data("[DONE]")), None)),
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What every chunk of one streamed response repeats.
pub(crate) struct ChunkHeader {
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Every chunk has `usage: null`, and a last chunk with no choices has the usage.
    pub include_usage: bool,
}

impl ChunkHeader {
    /// A chunk with these choices.
    pub fn chunk(&self, choices: Value) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// The last chunk: no choices, the usage.
    pub fn usage(&self, usage: Usage) -> Value {
        let mut c = self.chunk(json!([]));
        c["usage"] = json!(usage);
        c
    }
}
