//! The decode engine for callers that are not episodes: an inference server's requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kaizen_model::{GenerateOptions, GenerationRequest, Llama, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{
    Completion, EngineConfig, EngineCounters, EngineHandle, Job, KvAcrossVersions, Msg, Sink,
    StreamEvent, spawn_engine,
};
use crate::error::Error;
use crate::rows::DecodeDevice;
use crate::weights::{WeightPublisher, weight_broadcast};

/// A decode engine serving independent requests (continuous batching: concurrent requests share
/// decode steps; rows join and leave between steps). Unlike an actor's engine it never waits for
/// callers between steps, and a request whose caller went away (a dropped future, a closed
/// stream) is cancelled at the next step.
///
/// New weights can be published at any time ([`ServingEngine::publish`]); rows already decoding
/// finish with the weights they started with, and every [`Completion`] names its version.
pub struct ServingEngine {
    engine: Option<EngineHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<EngineCounters>,
    weights: WeightPublisher,
    next: AtomicU64,
}

impl ServingEngine {
    /// Starts an engine thread decoding with `model`. `generate` sets the EOS ids, prefill
    /// sharing (the `n` choices of a request prefill their prompt once) and the decode weights.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the thread cannot start.
    pub fn spawn(
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        generate: GenerateOptions,
    ) -> Result<Self, Error> {
        Self::spawn_on(model, tokenizer, generate, None)
    }

    /// As [`ServingEngine::spawn`], sampling on `device` ([`crate::EngineConfig::device`]:
    /// `None` is kaizen's CPU decoding). A device that cannot take the weights answers each
    /// request with its error.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the thread cannot start.
    pub fn spawn_on(
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        generate: GenerateOptions,
        device: Option<Arc<dyn DecodeDevice>>,
    ) -> Result<Self, Error> {
        let (weights, subscriber) = weight_broadcast(model);
        let counters = Arc::new(EngineCounters::default());
        let config = EngineConfig {
            generate,
            // Requests are not episodes: never wait for a caller before a step.
            max_env_wait: Some(Duration::ZERO),
            kv_cache_bytes: 0,
            kv_across_versions: KvAcrossVersions::Recompute,
            device,
        };
        let (engine, thread) = spawn_engine(
            "kaizen-serve-engine".into(),
            subscriber,
            tokenizer,
            config,
            counters.clone(),
        )?;
        Ok(Self {
            engine: Some(engine),
            thread: Some(thread),
            counters,
            weights,
            next: AtomicU64::new(0),
        })
    }

    /// Completes `requests` (the choices of one API request, admitted together) and returns
    /// each one's completion, or why the engine rejected it, in order.
    pub async fn complete(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> Vec<Result<Completion, String>> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut answers = Vec::with_capacity(requests.len());
        let jobs = requests
            .into_iter()
            .enumerate()
            .map(|(choice, request)| {
                let (tx, rx) = oneshot::channel();
                answers.push(rx);
                Job {
                    key: (seq, choice as u32),
                    request,
                    reply: Sink::Reply(tx),
                }
            })
            .collect();
        if !self.send(Msg::GenerateAll(jobs)) {
            return answers.iter().map(|_| Err(stopped())).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            // The engine's busy guard is dropped at once: a server's caller is never "busy".
            out.push(match rx.await {
                Ok(Ok((completion, _busy))) => Ok(completion),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(stopped()),
            });
        }
        out
    }

    /// Starts `requests` (the choices of one API request) and streams their tokens: for each
    /// choice `i`, [`StreamEvent::Tokens`] as they are sampled, then one [`StreamEvent::Done`],
    /// all tagged `choice = i`. Dropping the receiver cancels the rows still decoding.
    pub fn stream(&self, requests: Vec<GenerationRequest>) -> mpsc::UnboundedReceiver<StreamEvent> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let count = requests.len();
        let jobs = requests
            .into_iter()
            .enumerate()
            .map(|(choice, request)| Job {
                key: (seq, choice as u32),
                request,
                reply: Sink::Stream {
                    choice,
                    tx: tx.clone(),
                },
            })
            .collect();
        if !self.send(Msg::GenerateAll(jobs)) {
            for choice in 0..count {
                let _ = tx.send(StreamEvent::Done {
                    choice,
                    result: Err(stopped()),
                });
            }
        }
        rx
    }

    /// Publishes new weights: requests admitted from the next step on decode with them.
    pub fn publish(&self, model: Llama) -> kaizen_core::WeightsVersion {
        self.weights.publish(model)
    }

    /// Live counters: tokens, decode steps, prefill, busy time.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    fn send(&self, msg: Msg) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|engine| engine.tx.send(msg).is_ok())
    }
}

fn stopped() -> String {
    "the decode engine stopped".to_string()
}

impl Drop for ServingEngine {
    /// Closes the request channel; the engine thread finishes the rows in flight and exits.
    fn drop(&mut self) {
        self.engine = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
