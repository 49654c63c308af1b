//! The decode engine: one thread per actor that batches the generation requests of all the
//! actor's episodes (continuous batching) and answers each when its row finishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kaizen_core::WeightsVersion;
use kaizen_model::{
    DecodeBatch, GenerateOptions, Generation, GenerationRequest, TokenLogprobs, Tokenizer,
};
use tokio::sync::{mpsc, oneshot};

use crate::rows::{DecodeDevice, DecodeRows};
use crate::weights::{Published, WeightSubscriber};

/// A finished generation and the weights version that produced it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Tokens, behaviour log-probs, finish reason, text.
    pub generation: Generation,
    /// The version of the weights every token was sampled with.
    pub version: WeightsVersion,
}

/// The engine's answer to a [`Job`]: the completion, with the episode already marked busy
/// again (before the engine takes its next step), or why the request was rejected.
pub(crate) type Reply = Result<(Completion, BusyGuard), String>;

/// One request to the engine. `key` orders requests admitted together, so the batch
/// composition does not depend on arrival timing.
pub(crate) struct Job {
    pub key: (u64, u32),
    pub request: GenerationRequest,
    pub reply: Sink,
}

/// Where a job's answer goes. A sink whose receiver is gone cancels its row at the next step.
pub(crate) enum Sink {
    /// The whole completion at once (an episode's turn).
    Reply(oneshot::Sender<Reply>),
    /// Tokens as they are sampled, then the completion (a streaming client).
    Stream {
        /// The request's choice index, echoed in every event.
        choice: usize,
        tx: mpsc::UnboundedSender<StreamEvent>,
    },
}

impl Sink {
    fn is_closed(&self) -> bool {
        match self {
            Self::Reply(tx) => tx.is_closed(),
            Self::Stream { tx, .. } => tx.is_closed(),
        }
    }
}

/// What a streaming request hears, in order: zero or more `Tokens`, then one `Done`.
#[derive(Debug)]
pub enum StreamEvent {
    /// Tokens sampled since the last event (the completion's tail may come only with `Done`).
    Tokens {
        /// The request's choice index.
        choice: usize,
        /// The new token ids.
        tokens: Vec<u32>,
        /// Their untempered log-probs, when the request asked for them.
        token_logprobs: Vec<TokenLogprobs>,
    },
    /// The whole completion (all its tokens, also those already sent), or why it was rejected.
    Done {
        /// The request's choice index.
        choice: usize,
        /// The completion, or the engine's reason for rejecting the request.
        result: Result<Completion, String>,
    },
}

/// What an episode (or a server) sends its engine.
pub(crate) enum Msg {
    /// Generate a completion.
    Generate(Job),
    /// Generate several completions admitted together (one prefill for a shared prompt).
    GenerateAll(Vec<Job>),
    /// The episode (session) ended: drop the keys and values kept for its next turn.
    Forget(u64),
    /// A searched episode branches: session `to` starts as a copy of what `from` keeps.
    Fork { from: u64, to: u64 },
}

/// Counts episodes that are busy outside the engine (in environment calls). Before each
/// decode step the engine waits until it is zero — every live episode is then either waiting
/// for a generation or finished — so requests that become ready together are batched together
/// (and deterministically: the same episodes, the same rows, in sync mode).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    busy: Mutex<usize>,
    idle: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // The counter stays consistent even if a holder panicked: it is a plain integer.
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks one more episode busy; the returned guard marks it idle again when dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        *self.lock() += 1;
        BusyGuard(self.clone())
    }

    /// Waits until no episode is busy, or `timeout` passes (`None` = no limit).
    fn wait_idle(&self, timeout: Option<Duration>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut busy = self.lock();
        while *busy > 0 {
            match deadline {
                None => busy = self.idle.wait(busy).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return;
                    }
                    busy = self
                        .idle
                        .wait_timeout(busy, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// Marks an episode busy until dropped (also on panic or fault).
pub(crate) struct BusyGuard(Arc<Gate>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self.0.lock();
        *busy = busy.saturating_sub(1);
        if *busy == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// Live counters of an engine (read by the runtime for metrics).
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Tokens sampled.
    pub generated_tokens: AtomicU64,
    /// Prompt positions run through prefill (padding included).
    pub prefill_tokens: AtomicU64,
    /// Prompt tokens of all requests.
    pub prompt_tokens: AtomicU64,
    /// Microseconds spent in forward passes and sampling.
    pub busy_micros: AtomicU64,
    /// Requests answered.
    pub completions: AtomicU64,
    /// Decode steps taken (each samples one token for every active row of a slot).
    pub decode_steps: AtomicU64,
    /// Prompt tokens whose keys and values were kept from the episode's previous turn instead
    /// of prefilled again.
    pub reused_prompt_tokens: AtomicU64,
    /// Kept turns evicted to stay within `kv_cache_mib` (prefilled again when continued).
    pub kv_evicted: AtomicU64,
    /// Bytes of keys and values kept between turns now (a gauge).
    pub kv_kept_bytes: AtomicU64,
    /// Prompt tokens whose kept keys and values were copied to a searched episode's branch
    /// (`Msg::Fork`) instead of prefilled again for it.
    pub kv_forked_tokens: AtomicU64,
}

/// How the engine batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// EOS ids, prefill sharing, entropy, prefill chunking.
    pub generate: GenerateOptions,
    /// Longest wait for busy episodes before a decode step (`None`: wait until all are ready,
    /// which makes batching deterministic — sync mode).
    pub max_env_wait: Option<Duration>,
    /// Bytes of keys and values kept between an episode's turns (0: every turn prefills its
    /// whole conversation).
    pub kv_cache_bytes: usize,
    /// What kept keys and values become when new weights arrive between turns.
    pub kv_across_versions: KvAcrossVersions,
    /// Where the engine samples: `None` on kaizen's CPU decoding ([`DecodeBatch`], which keeps
    /// keys and values between turns); `Some` on another device (`kaizen_gpu::actor_rows`
    /// for a GPU), which builds the rows of each weights version from the published host
    /// weights and keeps nothing between turns (`kv_cache_bytes` is then unused).
    pub device: Option<Arc<dyn DecodeDevice>>,
}

/// What happens to an episode's kept keys and values when the weights change between its turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvAcrossVersions {
    /// Drop them: the next turn prefills its conversation with the new weights, so every
    /// behaviour log-prob is exactly the new model's (the learner scores what was sampled).
    #[default]
    Recompute,
    /// Keep them: the next turn attends over keys and values the older weights computed (as
    /// PipelineRL's in-flight updates do); its tokens are stamped with the new version, and
    /// their behaviour log-probs are those of that mixed computation. Cheaper, not exact.
    Keep,
}

impl EngineConfig {
    /// The engine of an RL job: stops on `tokenizer`'s EOS ids, shares each group's prompt
    /// prefill, no entropy, the default prefill chunking; `max_env_wait` as above.
    pub fn new(tokenizer: &Tokenizer, max_env_wait: Option<Duration>) -> Self {
        Self {
            generate: GenerateOptions {
                eos_token_ids: tokenizer.eos_token_ids().to_vec(),
                ..GenerateOptions::default()
            },
            max_env_wait,
            kv_cache_bytes: 0,
            kv_across_versions: KvAcrossVersions::Recompute,
            device: None,
        }
    }
}

/// The sending side of an engine, cloned into every episode.
#[derive(Clone)]
pub(crate) struct EngineHandle {
    pub tx: flume::Sender<Msg>,
    pub gate: Arc<Gate>,
}

/// A row's caller: where its answer goes, its session, and how many tokens were streamed.
struct Pending {
    sink: Sink,
    session: Option<u64>,
    sent: usize,
}

struct Slot {
    version: WeightsVersion,
    batch: Box<dyn DecodeRows>,
    /// Each row's caller.
    replies: HashMap<u64, Pending>,
    /// Rows of `replies` that stream their tokens.
    streaming: usize,
    /// Evictions of the batch's kept turns already counted.
    evicted_seen: u64,
}

impl Slot {
    fn deliver(&mut self, gate: &Arc<Gate>, counters: &EngineCounters) {
        for (id, generation) in self.batch.take_finished() {
            counters.completions.fetch_add(1, Ordering::Relaxed);
            let Some(pending) = self.replies.remove(&id) else {
                continue;
            };
            let version = self.version;
            let completion = generation.map(|generation| Completion {
                generation,
                version,
            });
            let delivered = match pending.sink {
                // The episode is busy (back in its environment) from this moment, so the next
                // step waits for its next request. If it is gone (e.g. timed out), the guard
                // comes back with the failed send and is dropped, with what was kept for it.
                Sink::Reply(reply) => reply.send(completion.map(|c| (c, gate.busy()))).is_ok(),
                Sink::Stream { choice, tx } => {
                    self.streaming -= 1;
                    tx.send(StreamEvent::Done {
                        choice,
                        result: completion,
                    })
                    .is_ok()
                }
            };
            if let (false, Some(session)) = (delivered, pending.session) {
                self.batch.forget(session);
            }
        }
    }

    /// Sends streaming rows the tokens sampled since their last event.
    fn stream(&mut self) {
        if self.streaming == 0 {
            return;
        }
        for (&id, pending) in &mut self.replies {
            let Sink::Stream { choice, tx } = &pending.sink else {
                continue;
            };
            let Some((tokens, top)) = self.batch.partial(id) else {
                continue;
            };
            if tokens.len() > pending.sent {
                let _ = tx.send(StreamEvent::Tokens {
                    choice: *choice,
                    tokens: tokens[pending.sent..].to_vec(),
                    token_logprobs: top.get(pending.sent..).unwrap_or_default().to_vec(),
                });
                pending.sent = tokens.len();
            }
        }
    }

    /// Stops the rows whose callers went away (a closed stream, a timed-out episode).
    fn cancel_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .replies
            .iter()
            .filter(|(_, p)| p.sink.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(pending) = self.replies.remove(&id) {
                if matches!(pending.sink, Sink::Stream { .. }) {
                    self.streaming -= 1;
                }
                self.batch.cancel(id);
                if let Some(session) = pending.session {
                    self.batch.forget(session);
                }
            }
        }
    }
}

/// Starts an engine thread decoding with the newest weights of `weights`.
pub(crate) fn spawn_engine(
    name: String,
    weights: WeightSubscriber,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    counters: Arc<EngineCounters>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = flume::unbounded();
    let gate = Arc::new(Gate::default());
    let handle = EngineHandle {
        tx,
        gate: gate.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || engine_loop(rx, gate, weights, tokenizer, config, counters))?;
    Ok((handle, thread))
}

fn engine_loop(
    rx: flume::Receiver<Msg>,
    gate: Arc<Gate>,
    mut weights: WeightSubscriber,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    counters: Arc<EngineCounters>,
) {
    let mut current: Arc<Published> = weights.latest();
    let mut slots: Vec<Slot> = Vec::new();
    let mut next_id = 0u64;
    loop {
        let active: usize = slots.iter().map(|s| s.batch.active()).sum();
        let mut messages = Vec::new();
        if active == 0 {
            match rx.recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        gate.wait_idle(config.max_env_wait);
        messages.extend(rx.try_iter());
        let mut jobs = Vec::with_capacity(messages.len());
        for m in messages {
            match m {
                Msg::Generate(job) => jobs.push(job),
                Msg::GenerateAll(all) => jobs.extend(all),
                Msg::Forget(session) => {
                    for slot in &mut slots {
                        slot.batch.forget(session);
                    }
                }
                Msg::Fork { from, to } => {
                    let copied: usize = slots
                        .iter_mut()
                        .map(|s| s.batch.fork_session(from, to))
                        .sum();
                    counters
                        .kv_forked_tokens
                        .fetch_add(copied as u64, Ordering::Relaxed);
                }
            }
        }
        if weights.has_new() {
            current = weights.latest();
        }
        let start = Instant::now();
        if !jobs.is_empty() {
            jobs.sort_by_key(|j| j.key);
            let slot = match slots.iter().position(|s| s.version == current.version) {
                Some(i) => &mut slots[i],
                None => {
                    // The newest older slot's kept turns move on only when told to keep them
                    // across versions; otherwise they go with their slot.
                    let kept = match config.kv_across_versions {
                        KvAcrossVersions::Keep if config.kv_cache_bytes > 0 => {
                            slots.last_mut().and_then(|s| s.batch.take_prefix_cache())
                        }
                        _ => None,
                    };
                    // Older versions' idle slots go before the new one is packed, so that
                    // its buffers reuse their memory instead of faulting in fresh pages
                    // (about 1 s for SmolLM2's bf16 packs on a 2-core VM).
                    slots.retain(|s| s.batch.active() > 0);
                    let batch = match new_rows(&config, &current, &tokenizer, kept) {
                        Ok(batch) => batch,
                        Err(e) => {
                            // The device could not take these weights: every job hears why.
                            for job in jobs {
                                reject(job.reply, e.clone());
                            }
                            continue;
                        }
                    };
                    let evicted_seen = batch.prefix_cache().map_or(0, |p| p.stats().evicted);
                    slots.push(Slot {
                        version: current.version,
                        batch,
                        replies: HashMap::new(),
                        streaming: 0,
                        evicted_seen,
                    });
                    slots.last_mut().expect("just pushed")
                }
            };
            admit(slot, jobs, &mut next_id, &counters);
            slot.deliver(&gate, &counters);
            slot.stream();
        }
        for slot in &mut slots {
            slot.cancel_abandoned();
            if slot.batch.active() > 0 {
                let before = slot.batch.stats().generated_tokens;
                slot.batch.step();
                let after = slot.batch.stats().generated_tokens;
                counters
                    .generated_tokens
                    .fetch_add((after - before) as u64, Ordering::Relaxed);
                counters.decode_steps.fetch_add(1, Ordering::Relaxed);
                slot.deliver(&gate, &counters);
                slot.stream();
            }
        }
        counters
            .busy_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        slots.retain(|s| s.version == current.version || s.batch.active() > 0);
        let mut kept = 0u64;
        for slot in &mut slots {
            if let Some(store) = slot.batch.prefix_cache() {
                kept += store.bytes() as u64;
                let evicted = store.stats().evicted;
                counters
                    .kv_evicted
                    .fetch_add(evicted.saturating_sub(slot.evicted_seen), Ordering::Relaxed);
                slot.evicted_seen = evicted;
            }
        }
        counters.kv_kept_bytes.store(kept, Ordering::Relaxed);
    }
}

/// The rows of the weights `current`: on `config.device` when set, else a CPU
/// [`DecodeBatch`] keeping keys and values between turns (`kept`: those carried over from the
/// previous version).
fn new_rows(
    config: &EngineConfig,
    current: &Published,
    tokenizer: &Arc<Tokenizer>,
    kept: Option<kaizen_model::PrefixCache>,
) -> Result<Box<dyn DecodeRows>, String> {
    if let Some(device) = &config.device {
        return device.rows(current, Some(tokenizer.clone()), &config.generate);
    }
    let mut batch = DecodeBatch::new(
        current.model.clone(),
        Some(tokenizer.clone()),
        config.generate.clone(),
    );
    if config.kv_cache_bytes > 0 {
        match kept {
            Some(store) => batch.set_prefix_cache(store),
            None => batch.enable_prefix_cache(config.kv_cache_bytes),
        }
    }
    Ok(Box::new(batch))
}

/// Answers a job with an error alone.
fn reject(sink: Sink, error: String) {
    match sink {
        Sink::Reply(reply) => {
            let _ = reply.send(Err(error));
        }
        Sink::Stream { choice, tx } => {
            let _ = tx.send(StreamEvent::Done {
                choice,
                result: Err(error),
            });
        }
    }
}

/// Adds jobs to a slot's batch. A request the batch rejects (bad ids, too long) is answered
/// with the error alone; the others proceed.
fn admit(slot: &mut Slot, jobs: Vec<Job>, next_id: &mut u64, counters: &EngineCounters) {
    let stats_before = slot.batch.stats();
    let mut tagged = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        let id = *next_id;
        *next_id += 1;
        let pending = Pending {
            sink: job.reply,
            session: job.request.session,
            sent: 0,
        };
        replies.push((id, pending));
        tagged.push((id, job.request));
    }
    let accept = |slot: &mut Slot, id: u64, pending: Pending| {
        if matches!(pending.sink, Sink::Stream { .. }) {
            slot.streaming += 1;
        }
        slot.replies.insert(id, pending);
    };
    match slot.batch.add(tagged.clone()) {
        Ok(()) => {
            for (id, pending) in replies {
                accept(slot, id, pending);
            }
        }
        Err(_) => {
            // Find the culprits one by one (rare path).
            for ((id, request), (_, pending)) in tagged.into_iter().zip(replies) {
                match slot.batch.add(vec![(id, request)]) {
                    Ok(()) => accept(slot, id, pending),
                    Err(e) => reject(pending.sink, e),
                }
            }
        }
    }
    let after = slot.batch.stats();
    counters.generated_tokens.fetch_add(
        (after.generated_tokens - stats_before.generated_tokens) as u64,
        Ordering::Relaxed,
    );
    counters.prefill_tokens.fetch_add(
        (after.prefill_tokens - stats_before.prefill_tokens) as u64,
        Ordering::Relaxed,
    );
    counters.prompt_tokens.fetch_add(
        (after.prompt_tokens - stats_before.prompt_tokens) as u64,
        Ordering::Relaxed,
    );
    counters.reused_prompt_tokens.fetch_add(
        (after.reused_prompt_tokens - stats_before.reused_prompt_tokens) as u64,
        Ordering::Relaxed,
    );
}
