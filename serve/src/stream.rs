//! Server-sent events: chunks as `data: {json}` events, then `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;
use tokio::sync::mpsc;

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
