//! `POST /v1/completions` (the legacy text-completion API).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kaizen_actors::StreamEvent;
use kaizen_model::{GenerationRequest, TokenLogprobs};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::api::{self, ApiError, CompletionRequest, Prompt, Usage, json_response};
use crate::chat::{finish_reason, text_of};
use crate::text::Detokenizer;
use crate::{AppState, stream};

/// Most alternatives per token of the legacy `logprobs` field (OpenAI's limit).
const MAX_LEGACY_LOGPROBS: usize = 5;

/// A checked completion request: choice `p * n + j` is prompt `p`'s `j`-th choice.
struct CompletionJob {
    /// Id, creation time, model name and `include_usage`, as every chunk repeats them.
    header: stream::ChunkHeader,
    prompt_tokens: usize,
    requests: Vec<GenerationRequest>,
    stop: Vec<String>,
    logprobs: Option<usize>,
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
        return stream_completions(state, job);
    }
    let (completions, completion_tokens) = match state.complete_all(job.requests.clone()).await {
        Ok(done) => done,
        Err(e) => return e.into_response(),
    };
    let mut choices = Vec::with_capacity(completions.len());
    for (index, completion) in completions.iter().enumerate() {
        let generation = &completion.generation;
        let logprobs = job.logprobs.map(|_| {
            legacy_logprobs(
                &state,
                &generation.tokens,
                &generation.token_logprobs,
                &mut 0,
            )
        });
        choices.push(json!({
            "index": index,
            "text": text_of(&state, completion),
            "logprobs": logprobs,
            "finish_reason": finish_reason(generation.finish_reason, false),
        }));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "id": job.header.id,
            "object": "text_completion",
            "created": job.header.created,
            "model": job.header.model,
            "choices": choices,
            "usage": Usage::new(job.prompt_tokens, completion_tokens),
        }),
    )
}

fn prepare(state: &AppState, body: &[u8]) -> Result<CompletionJob, ApiError> {
    let request: CompletionRequest = api::parse(body)?;
    state.check_model(&request.model)?;
    if request.echo == Some(true) {
        return Err(ApiError::invalid("echo", "`echo: true` is not supported"));
    }
    if request.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let n = request.sampling.n.unwrap_or(1);
    if request.best_of.is_some_and(|b| b != n) {
        return Err(ApiError::invalid(
            "best_of",
            format!("only `best_of` equal to `n` ({n}) is supported"),
        ));
    }
    if let Some(k) = request.logprobs
        && k > MAX_LEGACY_LOGPROBS
    {
        return Err(ApiError::invalid(
            "logprobs",
            format!("`logprobs` must be in 0..={MAX_LEGACY_LOGPROBS}, got {k}"),
        ));
    }
    let tokenizer = &state.model.tokenizer;
    let prompts: Vec<Vec<u32>> = match request.prompt {
        Prompt::Text(t) => vec![encode(state, &t)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| encode(state, t))
            .collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(lists) => lists,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    let vocab = tokenizer.vocab_size();
    for (p, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", format!("prompt {p} is empty")));
        }
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt {p} has token id {id}; the vocabulary has {vocab} ids"),
            ));
        }
    }
    let (serial, seed) = state.next_request();
    let max_tokens = Some(request.max_tokens.unwrap_or(16));
    let mut requests = Vec::with_capacity(prompts.len() * n);
    let mut stop = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        // Each prompt's choices get their own seeds: prompts do not share samples.
        let prompt_seed = kaizen_transport::derive_seed(seed, p as u64);
        let mut sampling = request.sampling.clone();
        sampling.seed = sampling
            .seed
            .map(|s| kaizen_transport::derive_seed(s as u64, p as u64) as i64);
        let params = state.choice_params(
            &sampling,
            max_tokens,
            prompt.len(),
            request.logprobs,
            prompt_seed,
        )?;
        stop = params[0].stop.clone();
        requests.extend(params.into_iter().map(|params| GenerationRequest {
            prompt: prompt.clone(),
            params,
            session: None,
        }));
    }
    Ok(CompletionJob {
        header: stream::ChunkHeader {
            id: format!("cmpl-{serial}"),
            object: "text_completion",
            created: api::now_seconds(),
            model: request.model,
            include_usage: request
                .sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        },
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        requests,
        stop,
        logprobs: request.logprobs,
        stream: request.sampling.stream.unwrap_or(false),
    })
}

fn encode(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    state
        .model
        .tokenizer
        .encode(text, false)
        .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))
}

/// The legacy `logprobs` object: `tokens`, `token_logprobs`, `top_logprobs` (one
/// `{token: logprob}` map per token) and `text_offset` (each token's byte offset in the
/// completion, counted from `offset`, which is advanced). EOS tokens are left out.
fn legacy_logprobs(
    state: &AppState,
    tokens: &[u32],
    logprobs: &[TokenLogprobs],
    offset: &mut usize,
) -> Value {
    let tokenizer = &state.model.tokenizer;
    let eos = tokenizer.eos_token_ids();
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (&id, lp) in tokens.iter().zip(logprobs) {
        if eos.contains(&id) {
            continue;
        }
        let (text, bytes) = state.token_bytes.text(tokenizer, id);
        offsets.push(*offset);
        *offset += bytes.len();
        texts.push(text);
        lps.push(lp.logprob);
        let top: Map<String, Value> = lp
            .top
            .iter()
            .map(|&(t, l)| (state.token_bytes.text(tokenizer, t).0, json!(l)))
            .collect();
        tops.push(top);
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Streams the choices as `text_completion` chunks.
fn stream_completions(state: Arc<AppState>, job: CompletionJob) -> Response {
    let (tx, rx) = mpsc::channel(stream::CHUNK_BUFFER);
    let mut events = state.engine.stream(job.requests.clone());
    tokio::spawn(async move {
        let n = job.requests.len();
        let header = &job.header;
        let mut detok: Vec<Detokenizer> = (0..n).map(|_| Detokenizer::new(&job.stop)).collect();
        let mut sent_tokens = vec![0usize; n];
        let mut offsets = vec![0usize; n];
        let mut completion_tokens = 0;
        while let Some(event) = events.recv().await {
            let choice = match event {
                StreamEvent::Tokens {
                    choice,
                    tokens,
                    token_logprobs,
                } => {
                    sent_tokens[choice] += tokens.len();
                    let text = detok[choice].push(&state.model.tokenizer, &tokens);
                    let logprobs = job.logprobs.map(|_| {
                        legacy_logprobs(&state, &tokens, &token_logprobs, &mut offsets[choice])
                    });
                    if text.is_empty() && logprobs.is_none() {
                        continue;
                    }
                    json!({"index": choice, "text": text, "logprobs": logprobs, "finish_reason": null})
                }
                StreamEvent::Done { choice, result } => {
                    let completion = match result {
                        Ok(c) => c,
                        Err(e) => {
                            let error = ApiError::internal(format!("generation failed: {e}"));
                            let _ = tx.send(error.body()).await;
                            return;
                        }
                    };
                    let generation = &completion.generation;
                    completion_tokens += generation.tokens.len();
                    let start = sent_tokens[choice].min(generation.tokens.len());
                    let logprobs = job.logprobs.map(|_| {
                        legacy_logprobs(
                            &state,
                            &generation.tokens[start..],
                            generation.token_logprobs.get(start..).unwrap_or_default(),
                            &mut offsets[choice],
                        )
                    });
                    let text = detok[choice].finish(&text_of(&state, &completion));
                    let finish = finish_reason(generation.finish_reason, false);
                    json!({"index": choice, "text": text, "logprobs": logprobs, "finish_reason": finish})
                }
            };
            if tx.send(header.chunk(json!([choice]))).await.is_err() {
                return;
            }
        }
        if header.include_usage {
            let usage = Usage::new(job.prompt_tokens, completion_tokens);
            let _ = tx.send(header.usage(usage)).await;
        }
    });
    stream::sse(rx)
}
