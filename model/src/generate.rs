//! Batched, ragged, seeded generation with a KV cache, behaviour log-probs and shared prefill.

use std::collections::HashMap;
use std::sync::Arc;

use kaizen_core::FinishReason;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::cpu_forward::{self, CpuWeights, QuantizedWeights};
use crate::kv_cache::KvCache;
use crate::llama::{Llama, token_tensor};
use crate::prefix_cache::PrefixCache;
use crate::sampler::{
    Sampled, SamplingParams, TokenLogprobs, allowed_next, sample, sample_among, token_logprobs,
};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One prompt to complete.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// How to sample, including the row's seed.
    pub params: SamplingParams,
    /// The episode (any id the caller keeps per conversation) this request continues, when the
    /// batch keeps keys and values between turns ([`DecodeBatch::enable_prefix_cache`]): the
    /// row's cache is stored when it finishes and the session's next request reuses it.
    pub session: Option<u64>,
}

/// One completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Sampled ids, including the EOS id when one was sampled.
    pub tokens: Vec<u32>,
    /// Behaviour log-prob of each sampled id (see [`crate::Sampled::logprob`]).
    pub logprobs: Vec<f32>,
    /// Entropy (nats) of the tempered distribution at each step; empty unless
    /// [`GenerateOptions::entropy`] is set.
    pub entropies: Vec<f32>,
    /// Mean over the sampled tokens of each step's self-certainty
    /// ([`crate::Sampled::self_certainty`], nats): the completion's score for best-of-N
    /// selection without a verifier. `None` for greedy decoding.
    pub self_certainty: Option<f32>,
    /// Each sampled id's untempered log-prob and its position's most likely alternatives;
    /// empty unless [`SamplingParams::top_logprobs`] is set.
    pub token_logprobs: Vec<TokenLogprobs>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Decoded text (special tokens skipped, cut before the stop string that ended it); `None`
    /// when no tokenizer was given.
    pub text: Option<String>,
}

/// Settings shared by all rows of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Ids that end a completion (e.g. `<|im_end|>`).
    pub eos_token_ids: Vec<u32>,
    /// Prefill each distinct prompt once and fork its KV cache to every request with that
    /// prompt (the G samples of a GRPO group), instead of prefilling every copy.
    pub share_prefill: bool,
    /// Record per-token entropy.
    pub entropy: bool,
    /// Most (padded) prompt tokens prefilled in one forward pass; longer batches are split.
    pub prefill_chunk_tokens: usize,
    /// The weights the projections are read from when decoding on the CPU kernels.
    pub decode_weights: DecodeWeights,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            eos_token_ids: Vec::new(),
            share_prefill: true,
            entropy: false,
            prefill_chunk_tokens: 8192,
            decode_weights: DecodeWeights::F32,
        }
    }
}

/// Which weights a [`DecodeBatch`] multiplies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeWeights {
    /// The model's f32 weights.
    #[default]
    F32,
    /// The projections (attention, MLP, output head) quantised to int8 in blocks of 32 values
    /// of a row, each with an f32 scale (GGUF Q8_0's layout), made once per batch (per weights
    /// version); norms, biases and untied embeddings stay f32 (a tied embedding is the
    /// quantised head). Decoding reads 1.125 bytes per weight instead of 4. The model sampled from is the dequantised one
    /// ([`Llama::with_int8_projections`]), on every path (prefill included), so each behaviour
    /// log-prob is exactly that model's; a learner scoring the f32 weights sees the
    /// quantisation as an off-policy gap its importance ratio corrects. Applies on the CPU
    /// kernels only (elsewhere f32 is used).
    Int8,
    /// The projections (attention, MLP, output head) rounded to bfloat16, and their inputs
    /// rounded to bfloat16 at every product, summed in f32 (a GPU's bf16 matmul); norms,
    /// attention, biases and untied embeddings stay f32. 2 bytes per weight. On CPUs with
    /// Intel AMX (Xeon since Sapphire Rapids) the products run on AMX tiles, on CPUs with
    /// AVX512-BF16 (AMD Zen 4, Intel Cooper Lake) on `VDPBF16PS` (twice an FMA's work, half the
    /// bytes), so batched decode and prefill are no longer bound by the FMA units; elsewhere the
    /// f32 kernels compute the same sums. Behaviour log-probs are exactly this model's; the rounded inputs make it
    /// differ from the f32 weights a learner scores by a gap `kaizen bench generate --bf16`
    /// reports (BENCHMARKS.md), which the importance ratio corrects.
    Bf16,
}

/// Work counters of a [`DecodeBatch`], for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Prompt positions run through prefill forward passes, padding included.
    pub prefill_tokens: usize,
    /// Prompt tokens of all requests (what prefilling every request separately would cost,
    /// without padding).
    pub prompt_tokens: usize,
    /// Decode forward passes.
    pub decode_steps: usize,
    /// Row-steps spent on rows that had already finished (waiting for compaction).
    pub dead_row_steps: usize,
    /// Tokens sampled.
    pub generated_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the session's previous turn
    /// instead of prefilled ([`DecodeBatch::enable_prefix_cache`]).
    pub reused_prompt_tokens: usize,
}

/// A request continuing its session: its caller id, the request, the session's kept keys and
/// values and how many prompt tokens they cover.
type Continued = (u64, GenerationRequest, KvCache, usize);

struct Row {
    id: u64,
    /// The session the row's cache is stored for when it finishes, with its prompt ids.
    session: Option<(u64, Vec<u32>)>,
    params: SamplingParams,
    rng: ChaCha8Rng,
    prompt_len: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    entropies: Vec<f32>,
    token_logprobs: Vec<TokenLogprobs>,
    /// Sum of the sampled steps' self-certainty (f64: summed over up to thousands of tokens).
    certainty_sum: f64,
    /// Set when the row stops; the row stays in the cache until compaction.
    finish: Option<FinishReason>,
    /// Whether the finished row was moved to `done`.
    collected: bool,
}

impl Row {
    fn finished(&self) -> bool {
        self.finish.is_some()
    }
}

/// A set of completions decoding in lock-step over one [`KvCache`] (continuous batching).
///
/// [`DecodeBatch::add`] prefills new requests (identical prompts once) and samples their first
/// token; [`DecodeBatch::step`] samples one more token for every unfinished row;
/// [`DecodeBatch::take_finished`] hands out completed rows. Requests can be added between steps,
/// so a caller can keep the batch full while rows finish at different times. Finished rows are
/// dropped from the cache once they are a quarter of the batch.
pub struct DecodeBatch {
    model: Llama,
    /// The model's weights as the CPU kernels read them, when they apply.
    cpu: Option<CpuWeights>,
    /// The projections in int8 or bf16 ([`DecodeWeights`]), when the CPU kernels apply.
    quantized: Option<Arc<QuantizedWeights>>,
    tokenizer: Option<Arc<Tokenizer>>,
    options: GenerateOptions,
    cache: KvCache,
    rows: Vec<Row>,
    done: Vec<(u64, Generation)>,
    stats: GenerationStats,
    /// Keys and values kept between a session's turns, when enabled.
    prefix: Option<PrefixCache>,
}

impl DecodeBatch {
    /// An empty batch decoding with `model` (a cheap handle: burn modules share their
    /// tensors when cloned). Pass a tokenizer to get text and to honour stop strings.
    pub fn new(model: Llama, tokenizer: Option<Arc<Tokenizer>>, options: GenerateOptions) -> Self {
        let cpu = CpuWeights::of(&model);
        let quantized = cpu
            .as_ref()
            .and_then(|w| {
                QuantizedWeights::of(w, model.config().hidden_size, options.decode_weights)
            })
            .map(Arc::new);
        Self {
            cache: model.new_cache(Vec::new()),
            cpu,
            quantized,
            model,
            tokenizer,
            options,
            rows: Vec::new(),
            done: Vec::new(),
            stats: GenerationStats::default(),
            prefix: None,
        }
    }

    /// Keeps the keys and values of finished rows that belong to a session (up to
    /// `budget_bytes`, oldest evicted first) so that the session's next request prefills only
    /// the tokens its prompt adds. Applies when the model runs on kaizen's CPU kernels (host
    /// caches); elsewhere every request is prefilled in full.
    pub fn enable_prefix_cache(&mut self, budget_bytes: usize) {
        self.prefix = Some(PrefixCache::new(budget_bytes));
    }

    /// The store of kept keys and values, when enabled.
    pub fn prefix_cache(&self) -> Option<&PrefixCache> {
        self.prefix.as_ref()
    }

    /// Takes the store of kept keys and values (to carry it to a batch of newer weights).
    pub fn take_prefix_cache(&mut self) -> Option<PrefixCache> {
        self.prefix.take()
    }

    /// Uses `store` for kept keys and values (from [`DecodeBatch::take_prefix_cache`]).
    pub fn set_prefix_cache(&mut self, store: PrefixCache) {
        self.prefix = Some(store);
    }

    /// Drops what is kept for `session` (its episode ended).
    pub fn forget(&mut self, session: u64) {
        if let Some(p) = &mut self.prefix {
            p.forget(session);
        }
    }

    /// Copies what is kept for session `from` to session `to` ([`PrefixCache::fork`]): a tree
    /// search's branch continues from it without prefilling the shared prefix again. Returns
    /// the tokens copied (0 without a prefix cache or an entry for `from`).
    pub fn fork_session(&mut self, from: u64, to: u64) -> usize {
        match &mut self.prefix {
            Some(p) => p.fork(from, to),
            None => 0,
        }
    }

    /// Rows still generating.
    pub fn active(&self) -> usize {
        self.rows.iter().filter(|r| !r.finished()).count()
    }

    /// The weights this batch decodes with.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Bytes of the int8 projections this batch decodes with (0 when it uses f32).
    pub fn quantized_bytes(&self) -> usize {
        self.quantized.as_ref().map_or(0, |q| q.bytes())
    }

    /// Work counters so far.
    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// The KV cache (for inspection: rows, columns, bytes).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Prefills `requests` (tagged with caller ids) and samples their first tokens.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty prompt, a token id outside the vocabulary or a prompt that
    /// fills the context; [`Error::Sampling`] for invalid parameters or stop strings without a
    /// tokenizer. Nothing is added when an error is returned.
    pub fn add(&mut self, requests: Vec<(u64, GenerationRequest)>) -> Result<()> {
        let max_pos = self.model.config().max_position_embeddings;
        for (id, r) in &requests {
            r.params.validate()?;
            if r.prompt.is_empty() {
                return Err(Error::Input(format!("request {id}: empty prompt")));
            }
            if r.prompt.len() >= max_pos {
                return Err(Error::Input(format!(
                    "request {id}: prompt of {} tokens leaves no room to generate (max_position_embeddings {max_pos})",
                    r.prompt.len()
                )));
            }
            if !r.params.stop.is_empty() && self.tokenizer.is_none() {
                return Err(Error::Sampling(format!(
                    "request {id}: stop strings need a tokenizer"
                )));
            }
        }
        let prompts: Vec<&[u32]> = requests.iter().map(|(_, r)| r.prompt.as_slice()).collect();
        self.model.check_tokens(&prompts)?;
        if requests.is_empty() {
            return Ok(());
        }
        self.compact(true);
        self.stats.prompt_tokens += requests.iter().map(|(_, r)| r.prompt.len()).sum::<usize>();

        // Requests that continue a session with kept keys and values prefill only the rest.
        let host = self.cpu.is_some() && !self.cache.is_tensor();
        let mut fresh = Vec::with_capacity(requests.len());
        let mut continued = Vec::new();
        for (id, r) in requests {
            let kept = match (&mut self.prefix, r.session) {
                (Some(store), Some(session)) if host => store.take(session, &r.prompt),
                _ => None,
            };
            match kept {
                Some((cache, n)) => continued.push((id, r, cache, n)),
                None => fresh.push((id, r)),
            }
        }
        self.add_continued(continued);
        if !fresh.is_empty() {
            self.add_fresh(fresh);
        }
        self.collect_finished();
        Ok(())
    }

    /// Continues sessions from their kept keys and values: one forward pass per distinct
    /// number of new tokens (usually one: a group's episodes hear the same reply), no padding.
    fn add_continued(&mut self, items: Vec<Continued>) {
        let mut by_new: Vec<(usize, Vec<Continued>)> = Vec::new();
        for item in items {
            let new = item.1.prompt.len() - item.3;
            match by_new.iter_mut().find(|(n, _)| *n == new) {
                Some((_, group)) => group.push(item),
                None => by_new.push((new, vec![item])),
            }
        }
        by_new.sort_by_key(|(n, _)| *n);
        let vocab = self.model.config().vocab_size;
        for (new, group) in by_new {
            let mut caches = Vec::with_capacity(group.len());
            let mut feed = Vec::with_capacity(group.len());
            let mut rows = Vec::with_capacity(group.len());
            for (id, request, cache, kept) in group {
                caches.push(cache);
                feed.push(request.prompt[kept..].to_vec());
                self.stats.reused_prompt_tokens += kept;
                rows.push(Self::new_row(id, request, true));
            }
            let Some(mut cache) = KvCache::stack_rows(caches, new) else {
                // Kept caches are one-row host caches by construction; never reached.
                continue;
            };
            self.stats.prefill_tokens += rows.len() * new;
            let logits = last_logits(
                &self.model,
                self.cpu.as_ref(),
                self.quantized.as_deref(),
                &feed,
                &mut cache,
            );
            for (c, row) in rows.iter_mut().enumerate() {
                self.sample_into(row, &logits[c * vocab..(c + 1) * vocab]);
            }
            self.cache.append(cache);
            self.rows.extend(rows);
        }
    }

    /// A row for `request`; it remembers its session and prompt when the batch keeps caches.
    fn new_row(id: u64, request: GenerationRequest, keep: bool) -> Row {
        Row {
            id,
            rng: ChaCha8Rng::seed_from_u64(request.params.seed),
            prompt_len: request.prompt.len(),
            session: request
                .session
                .filter(|_| keep)
                .map(|s| (s, request.prompt)),
            params: request.params,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            entropies: Vec::new(),
            token_logprobs: Vec::new(),
            certainty_sum: 0.0,
            finish: None,
            collected: false,
        }
    }

    /// Prefills requests from scratch (identical prompts once when sharing) and samples their
    /// first tokens.
    fn add_fresh(&mut self, requests: Vec<(u64, GenerationRequest)>) {
        // Distinct prompts, each prefilled once (or every request alone when not sharing).
        let mut unique: Vec<usize> = Vec::new();
        let mut of_request = Vec::with_capacity(requests.len());
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        for (i, (_, r)) in requests.iter().enumerate() {
            let u = if self.options.share_prefill {
                *index.entry(r.prompt.as_slice()).or_insert_with(|| {
                    unique.push(i);
                    unique.len() - 1
                })
            } else {
                unique.push(i);
                unique.len() - 1
            };
            of_request.push(u);
        }

        // Prefill in chunks of similar length, shortest first.
        let mut order: Vec<usize> = (0..unique.len()).collect();
        order.sort_by_key(|&u| requests[unique[u]].1.prompt.len());
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        for u in order {
            let len = requests[unique[u]].1.prompt.len();
            match chunks.last_mut() {
                Some(chunk) if (chunk.len() + 1) * len <= self.options.prefill_chunk_tokens => {
                    chunk.push(u)
                }
                _ => chunks.push(vec![u]),
            }
        }
        let mut rows_of_unique: Vec<Vec<usize>> = vec![Vec::new(); unique.len()];
        for (i, &u) in of_request.iter().enumerate() {
            rows_of_unique[u].push(i);
        }
        let mut requests: Vec<Option<(u64, GenerationRequest)>> =
            requests.into_iter().map(Some).collect();
        for chunk in chunks {
            let prompts: Vec<&[u32]> = chunk
                .iter()
                .map(|&u| {
                    // `unique[u]` indexes a request that is still present: each is taken
                    // below only after its chunk is prefilled.
                    requests[unique[u]]
                        .as_ref()
                        .map(|(_, r)| r.prompt.as_slice())
                        .unwrap_or_default()
                })
                .collect();
            let (mut cache, logits) = self.prefill(&prompts);
            // Fork: one cache row per request of each distinct prompt.
            let mut fork = Vec::new();
            let mut new_rows = Vec::new();
            for (c, &u) in chunk.iter().enumerate() {
                for &i in &rows_of_unique[u] {
                    fork.push(c);
                    let Some((id, request)) = requests[i].take() else {
                        continue;
                    };
                    let mut row = Self::new_row(id, request, self.prefix.is_some());
                    let vocab = self.model.config().vocab_size;
                    self.sample_into(&mut row, &logits[c * vocab..(c + 1) * vocab]);
                    new_rows.push(row);
                }
            }
            cache.select_rows(&fork);
            self.cache.append(cache);
            self.rows.extend(new_rows);
        }
    }

    /// Samples one more token for every unfinished row. Does nothing when no row is active.
    pub fn step(&mut self) {
        if self.active() == 0 {
            return;
        }
        self.compact(false);
        let feed: Vec<Vec<u32>> = self
            .rows
            .iter()
            .map(|r| vec![r.tokens.last().copied().unwrap_or(0)])
            .collect();
        let n = feed.len();
        let logits = last_logits(
            &self.model,
            self.cpu.as_ref(),
            self.quantized.as_deref(),
            &feed,
            &mut self.cache,
        );
        let vocab = self.model.config().vocab_size;
        self.stats.decode_steps += 1;
        // Rows sample independently (each has its own generator), so a wide batch draws them
        // in parallel: over a 49k vocabulary the softmax is ~0.1 ms a row.
        let eos = &self.options.eos_token_ids;
        let draw =
            |(row, logits): (&mut Row, &[f32])| (!row.finished()).then(|| draw(row, logits, eos));
        let drawn: Vec<Option<Drawn>> = self
            .rows
            .par_iter_mut()
            .zip(logits.par_chunks_exact(vocab))
            .map(draw)
            .collect();
        for (row, s) in self.rows.iter_mut().zip(drawn) {
            let Some(s) = s else {
                self.stats.dead_row_steps += 1;
                continue;
            };
            Self::record(
                row,
                s,
                &self.options,
                self.tokenizer.as_deref(),
                self.model.config().max_position_embeddings,
                &mut self.stats,
            );
        }
        debug_assert_eq!(n, self.rows.len());
        self.collect_finished();
    }

    /// Adds `requests` and steps until no row is active; every completion finished meanwhile
    /// (these requests' and any earlier rows'), sorted by caller id.
    ///
    /// # Errors
    /// As [`DecodeBatch::add`].
    pub fn complete(
        &mut self,
        requests: Vec<(u64, GenerationRequest)>,
    ) -> Result<Vec<(u64, Generation)>> {
        self.add(requests)?;
        let mut out = self.take_finished();
        while self.active() > 0 {
            self.step();
            out.extend(self.take_finished());
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Completed rows since the last call, with their caller ids.
    pub fn take_finished(&mut self) -> Vec<(u64, Generation)> {
        std::mem::take(&mut self.done)
    }

    /// What the unfinished row `id` has sampled so far (for streaming): its tokens and, when
    /// requested, their [`TokenLogprobs`]. `None` once the row finished (its
    /// [`Generation`] comes from [`DecodeBatch::take_finished`]) or for an unknown id.
    pub fn partial(&self, id: u64) -> Option<(&[u32], &[TokenLogprobs])> {
        self.rows
            .iter()
            .find(|r| r.id == id && !r.finished())
            .map(|r| (r.tokens.as_slice(), r.token_logprobs.as_slice()))
    }

    /// Stops the unfinished row `id` without a [`Generation`] (its caller went away); its
    /// cache row is freed at the next compaction and nothing is kept for its session. Returns
    /// whether such a row existed.
    pub fn cancel(&mut self, id: u64) -> bool {
        let Some(row) = self.rows.iter_mut().find(|r| r.id == id && !r.finished()) else {
            return false;
        };
        row.finish = Some(FinishReason::Length);
        row.collected = true;
        row.session = None;
        true
    }

    /// Runs prompts (left-padded to the longest) through the model with a fresh cache; returns
    /// the cache and each prompt's last-position logits (`[prompts, vocab]`, flat).
    fn prefill(&mut self, prompts: &[&[u32]]) -> (KvCache, Vec<f32>) {
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let starts: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let padded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let mut row = vec![0; longest - p.len()];
                row.extend_from_slice(p);
                row
            })
            .collect();
        self.stats.prefill_tokens += prompts.len() * longest;
        let mut cache = self.model.new_cache(starts);
        let logits = last_logits(
            &self.model,
            self.cpu.as_ref(),
            self.quantized.as_deref(),
            &padded,
            &mut cache,
        );
        (cache, logits)
    }

    fn sample_into(&mut self, row: &mut Row, logits: &[f32]) {
        let s = draw(row, logits, &self.options.eos_token_ids);
        Self::record(
            row,
            s,
            &self.options,
            self.tokenizer.as_deref(),
            self.model.config().max_position_embeddings,
            &mut self.stats,
        );
    }

    /// Appends a sampled token to `row` and sets its finish reason if it stopped.
    fn record(
        row: &mut Row,
        (s, top): Drawn,
        options: &GenerateOptions,
        tokenizer: Option<&Tokenizer>,
        max_positions: usize,
        stats: &mut GenerationStats,
    ) {
        row.tokens.push(s.token);
        row.token_logprobs.extend(top);
        row.logprobs.push(s.logprob);
        if options.entropy {
            row.entropies.push(s.entropy);
        }
        row.certainty_sum += f64::from(s.self_certainty);
        stats.generated_tokens += 1;
        let reason = if options.eos_token_ids.contains(&s.token) {
            Some(FinishReason::Eos)
        } else if !row.params.stop.is_empty() && stop_index(row, tokenizer).is_some() {
            Some(FinishReason::Stop)
        } else if !row.params.choices.is_empty()
            && allowed_next(&row.params.choices, &row.tokens, &options.eos_token_ids).is_empty()
        {
            // A whole choice that nothing extends, and no EOS id to end it with.
            Some(FinishReason::Stop)
        } else if row.tokens.len() >= row.params.max_new_tokens
            || row.prompt_len + row.tokens.len() >= max_positions
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        row.finish = reason;
    }

    fn collect_finished(&mut self) {
        for (b, row) in self
            .rows
            .iter_mut()
            .enumerate()
            .filter(|(_, r)| !r.collected)
        {
            let Some(reason) = row.finish else {
                continue;
            };
            row.collected = true;
            // Keep the row's keys and values for its session's next turn: the prompt and every
            // sampled token but the last, which was never fed.
            if let (Some(store), Some((session, mut tokens))) =
                (&mut self.prefix, row.session.take())
            {
                tokens.extend_from_slice(&row.tokens[..row.tokens.len() - 1]);
                if let Some(cache) = self.cache.row_prefix(b, tokens.len()) {
                    store.insert(session, tokens, cache);
                }
            }
            let text = self.tokenizer.as_deref().map(|tok| {
                let text = tok.decode(&row.tokens, true).unwrap_or_default();
                cut_at_stop(text, &row.params.stop)
            });
            let self_certainty = (!row.params.is_greedy() && !row.tokens.is_empty())
                .then(|| (row.certainty_sum / row.tokens.len() as f64) as f32);
            self.done.push((
                row.id,
                Generation {
                    self_certainty,
                    tokens: std::mem::take(&mut row.tokens),
                    logprobs: std::mem::take(&mut row.logprobs),
                    entropies: std::mem::take(&mut row.entropies),
                    token_logprobs: std::mem::take(&mut row.token_logprobs),
                    finish_reason: reason,
                    text,
                },
            ));
        }
    }

    /// Drops finished rows from the cache when they are at least a quarter of the batch (or
    /// any, when `force`).
    fn compact(&mut self, force: bool) {
        let dead = self.rows.iter().filter(|r| r.finished()).count();
        if dead == 0 || (!force && dead * 4 < self.rows.len()) {
            return;
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !self.rows[i].finished())
            .collect();
        self.cache.select_rows(&keep);
        self.rows.retain(|r| !r.finished());
    }
}

/// A sampled token and, when the row asks for them, its untempered log-probs.
type Drawn = (Sampled, Option<TokenLogprobs>);

/// Samples the row's next token from `logits` (`[vocab]`): among the ids that continue one of
/// its [`SamplingParams::choices`] (an `eos` id once a choice is whole) when it has any.
fn draw(row: &mut Row, logits: &[f32], eos: &[u32]) -> Drawn {
    let s = if row.params.choices.is_empty() {
        sample(logits, &row.params, &mut row.rng)
    } else {
        let allowed = allowed_next(&row.params.choices, &row.tokens, eos);
        sample_among(logits, &allowed, &row.params, &mut row.rng)
    };
    let top = row
        .params
        .top_logprobs
        .map(|k| token_logprobs(logits, s.token, k));
    (s, top)
}

/// Runs the next columns `tokens` (`[rows, seq]`) through `model`, extending `cache`, and returns
/// the last column's logits of each row on the host (`[rows, vocab]`, flat). Uses the CPU
/// kernels when `cpu` holds the model's weights, burn's ops otherwise.
fn last_logits(
    model: &Llama,
    cpu: Option<&CpuWeights>,
    quantized: Option<&QuantizedWeights>,
    tokens: &[Vec<u32>],
    cache: &mut KvCache,
) -> Vec<f32> {
    let (rows, seq) = (tokens.len(), tokens.first().map_or(0, Vec::len));
    let h = model.config().hidden_size;
    if let Some(weights) = cpu.filter(|_| !cache.is_tensor()) {
        let hidden =
            cpu_forward::forward_hidden(model, weights, quantized, &tokens.concat(), seq, cache);
        let last: Vec<f32> = hidden
            .chunks_exact(seq * h)
            .flat_map(|row| &row[(seq - 1) * h..])
            .copied()
            .collect();
        return match quantized {
            Some(q) => q.logits(&last, h),
            None => weights.logits(&last, h),
        };
    }
    let device = model.device();
    let hidden = model.forward_hidden(token_tensor(tokens, &device), &[], Some(cache));
    let last = hidden
        .slice([0..rows, seq - 1..seq, 0..h])
        .reshape([rows, h]);
    // f32 logits always convert to Vec<f32>.
    model
        .logits(last)
        .into_data()
        .try_into_vec()
        .expect("logits are f32")
}

/// Byte offset of the earliest stop string in the row's decoded completion.
fn stop_index(row: &Row, tokenizer: Option<&Tokenizer>) -> Option<usize> {
    let text = tokenizer?.decode(&row.tokens, true).ok()?;
    row.params
        .stop
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

fn cut_at_stop(mut text: String, stop: &[String]) -> String {
    if let Some(i) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(i);
    }
    text
}

/// Completes every request and returns the completions in request order.
///
/// Rows run as one batch ([`DecodeBatch`]): ragged prompts are left-padded (padding is masked
/// out of attention), each row stops on its own (EOS ids, stop strings, `max_new_tokens`, the
/// context length), and each row draws from its own seeded stream, so a row's tokens do not
/// depend on the rest of the batch.
///
/// # Errors
/// As [`DecodeBatch::add`].
pub fn generate(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    requests: &[GenerationRequest],
    options: &GenerateOptions,
) -> Result<Vec<Generation>> {
    let tokenizer = tokenizer.map(|t| Arc::new(t.clone()));
    let mut batch = DecodeBatch::new(model.clone(), tokenizer, options.clone());
    let done = batch.complete(
        requests
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect(),
    )?;
    let mut out: Vec<Option<Generation>> = vec![None; requests.len()];
    for (id, g) in done {
        out[id as usize] = Some(g);
    }
    Ok(out.into_iter().flatten().collect())
}
