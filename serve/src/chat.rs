//! `POST /v1/chat/completions`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kaizen_actors::{Completion, StreamEvent};
use kaizen_core::FinishReason;
use kaizen_model::{GenerationRequest, MAX_TOP_LOGPROBS, TokenLogprobs};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{self, ApiError, ChatMessage, ChatRequest, Usage, json_response};
use crate::text::Detokenizer;
use crate::{AppState, stream};
use kaizen_core::openai_chat;

/// A checked chat request, ready for the engine.
struct ChatJob {
    /// Id, creation time, model name and `include_usage`, as every chunk repeats them.
    header: stream::ChunkHeader,
    prompt_len: usize,
    requests: Vec<GenerationRequest>,
    stop: Vec<String>,
    /// `Some(k)`: return log-probs with `k` alternatives per token.
    logprobs: Option<usize>,
    /// Parse `<tool_call>` blocks out of completions.
    tools: bool,
    stream: bool,
}

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = match api::body(body).and_then(|b| prepare(&state, &b)) {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    if job.stream {
        return stream_chat(state, job);
    }
    let (completions, completion_tokens) = match state.complete_all(job.requests.clone()).await {
        Ok(done) => done,
        Err(e) => return e.into_response(),
    };
    let mut choices = Vec::with_capacity(completions.len());
    for (index, completion) in completions.iter().enumerate() {
        let text = text_of(&state, completion);
        let (message, has_calls) = assistant_message(&job, index, &text);
        let logprobs = job.logprobs.map(|_| {
            json!({"content": logprob_content(&state, &completion.generation.tokens, &completion.generation.token_logprobs)})
        });
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason(completion.generation.finish_reason, has_calls),
        }));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "id": job.header.id,
            "object": "chat.completion",
            "created": job.header.created,
            "model": job.header.model,
            "choices": choices,
            "usage": Usage::new(job.prompt_len, completion_tokens),
        }),
    )
}

fn prepare(state: &AppState, body: &[u8]) -> Result<ChatJob, ApiError> {
    let request: ChatRequest = api::parse(body)?;
    state.check_model(&request.model)?;
    let tools = match request.tool_choice.as_ref() {
        None => request.tools.as_ref().is_some_and(|t| !t.is_empty()),
        Some(Value::String(s)) if s == "auto" => {
            request.tools.as_ref().is_some_and(|t| !t.is_empty())
        }
        Some(Value::String(s)) if s == "none" => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "`tool_choice` must be \"auto\" or \"none\" (forcing a call is not supported), got {other}"
                ),
            ));
        }
    };
    if let Some(tool) = request
        .tools
        .iter()
        .flatten()
        .find(|t| t.kind != "function")
    {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "only `function` tools are supported, got type `{}`",
                tool.kind
            ),
        ));
    }
    let messages = to_messages(
        &request.messages,
        tools.then(|| request.tools.as_deref().unwrap_or_default()),
    )?;
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be in 0..={MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
        (true, k) => Some(k.unwrap_or(0)),
        (false, _) => None,
    };
    let prompt = state
        .model
        .template
        .render_ids(&state.model.tokenizer, &messages, true)
        .map_err(|e| {
            ApiError::invalid("messages", format!("cannot render the conversation: {e}"))
        })?;
    let (n, seed) = state.next_request();
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let params =
        state.choice_params(&request.sampling, max_tokens, prompt.len(), logprobs, seed)?;
    let stop = params[0].stop.clone();
    let requests = params
        .into_iter()
        .map(|params| GenerationRequest {
            prompt: prompt.clone(),
            params,
            session: None,
        })
        .collect();
    Ok(ChatJob {
        header: stream::ChunkHeader {
            id: format!("chatcmpl-{n}"),
            object: "chat.completion.chunk",
            created: api::now_seconds(),
            model: request.model,
            include_usage: request
                .sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        },
        prompt_len: prompt.len(),
        requests,
        stop,
        logprobs,
        tools,
        stream: request.sampling.stream.unwrap_or(false),
    })
}

/// The request's messages as kaizen's ([`kaizen_core::openai_chat::to_messages`]); a 400
/// naming the field when they cannot be read.
pub(crate) fn to_messages(
    messages: &[ChatMessage],
    tools: Option<&[api::Tool]>,
) -> Result<Vec<kaizen_core::Message>, ApiError> {
    openai_chat::to_messages(messages, tools).map_err(|e| ApiError::invalid(&e.field, e.message))
}

/// The completion's text (the engine decodes it; this is the fallback).
pub(crate) fn text_of(state: &AppState, completion: &Completion) -> String {
    completion.generation.text.clone().unwrap_or_else(|| {
        state
            .model
            .tokenizer
            .decode(&completion.generation.tokens, true)
            .unwrap_or_default()
    })
}

/// The assistant message of choice `index`, and whether it makes tool calls.
fn assistant_message(job: &ChatJob, index: usize, text: &str) -> (Value, bool) {
    if job.tools {
        let (content, calls) =
            openai_chat::parse_calls(text, &format!("call_{}_{index}", job.header.id));
        if !calls.is_empty() {
            return (
                json!({"role": "assistant", "content": content, "tool_calls": calls}),
                true,
            );
        }
    }
    (json!({"role": "assistant", "content": text}), false)
}

/// OpenAI's finish reason.
pub(crate) fn finish_reason(reason: FinishReason, tool_calls: bool) -> &'static str {
    match reason {
        _ if tool_calls => "tool_calls",
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// `logprobs.content` of the chat API: one entry per sampled token, EOS tokens left out (they
/// are not part of the text).
pub(crate) fn logprob_content(
    state: &AppState,
    tokens: &[u32],
    logprobs: &[TokenLogprobs],
) -> Vec<Value> {
    let tokenizer = &state.model.tokenizer;
    let eos = tokenizer.eos_token_ids();
    let entry = |id: u32, logprob: f32| {
        let (token, bytes) = state.token_bytes.text(tokenizer, id);
        json!({"token": token, "logprob": logprob, "bytes": bytes})
    };
    tokens
        .iter()
        .zip(logprobs)
        .filter(|(id, _)| !eos.contains(id))
        .map(|(&id, lp)| {
            let mut e = entry(id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect()
}

/// Streams the choices as `chat.completion.chunk` events.
fn stream_chat(state: Arc<AppState>, job: ChatJob) -> Response {
    let (tx, rx) = mpsc::channel(stream::CHUNK_BUFFER);
    let mut events = state.engine.stream(job.requests.clone());
    tokio::spawn(async move {
        let n = job.requests.len();
        let header = &job.header;
        for index in 0..n {
            let first = json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if tx.send(header.chunk(first)).await.is_err() {
                return;
            }
        }
        let mut detok: HashMap<usize, Detokenizer> =
            (0..n).map(|i| (i, Detokenizer::new(&job.stop))).collect();
        let mut sent_tokens = vec![0usize; n];
        let mut completion_tokens = 0;
        while let Some(event) = events.recv().await {
            let delta = match event {
                StreamEvent::Tokens {
                    choice,
                    tokens,
                    token_logprobs,
                } => {
                    sent_tokens[choice] += tokens.len();
                    // With tools offered, the text is sent whole at the end (it may be a call).
                    let content = if job.tools {
                        String::new()
                    } else {
                        detok
                            .get_mut(&choice)
                            .map(|d| d.push(&state.model.tokenizer, &tokens))
                            .unwrap_or_default()
                    };
                    let logprobs = job.logprobs.map(
                        |_| json!({"content": logprob_content(&state, &tokens, &token_logprobs)}),
                    );
                    if content.is_empty()
                        && logprobs
                            .as_ref()
                            .is_none_or(|l| l["content"].as_array().is_none_or(Vec::is_empty))
                    {
                        continue;
                    }
                    json!([{"index": choice, "delta": {"content": content}, "logprobs": logprobs, "finish_reason": null}])
                }
                StreamEvent::Done { choice, result } => {
                    let completion = match result {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx
                                .send(ApiError::internal(format!("generation failed: {e}")).body())
                                .await;
                            return;
                        }
                    };
                    let generation = &completion.generation;
                    completion_tokens += generation.tokens.len();
                    let text = text_of(&state, &completion);
                    let start = sent_tokens[choice].min(generation.tokens.len());
                    let logprobs = job.logprobs.map(|_| {
                        json!({"content": logprob_content(&state, &generation.tokens[start..], generation.token_logprobs.get(start..).unwrap_or_default())})
                    });
                    let (mut delta, has_calls) = if job.tools {
                        let (message, has_calls) = assistant_message(&job, choice, &text);
                        let mut delta = json!({"content": message["content"]});
                        if let Some(calls) = message["tool_calls"].as_array() {
                            let indexed: Vec<Value> = calls
                                .iter()
                                .enumerate()
                                .map(|(i, c)| {
                                    let mut c = c.clone();
                                    c["index"] = i.into();
                                    c
                                })
                                .collect();
                            delta["tool_calls"] = indexed.into();
                        }
                        (delta, has_calls)
                    } else {
                        let rest = detok
                            .get_mut(&choice)
                            .map(|d| d.finish(&text))
                            .unwrap_or_default();
                        (json!({"content": rest}), false)
                    };
                    if delta["content"] == json!("") {
                        delta = json!({});
                    }
                    let finish = finish_reason(generation.finish_reason, has_calls);
                    json!([{"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
                }
            };
            if tx.send(header.chunk(delta)).await.is_err() {
                return;
            }
        }
        if header.include_usage {
            let usage = Usage::new(job.prompt_len, completion_tokens);
            let _ = tx.send(header.usage(usage)).await;
        }
    });
    stream::sse(rx)
}
