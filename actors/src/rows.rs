//! The seam between an actor's decode engine and the hardware it samples on: the engine
//! admits requests, steps and collects completions through [`DecodeRows`]; a
//! [`DecodeDevice`] builds the rows of each weights version. kaizen's CPU decoding
//! ([`kaizen_model::DecodeBatch`]) is the default; `kaizen_gpu::actor_rows` provides the GPU's.

use std::sync::Arc;

use kaizen_model::{
    DecodeBatch, GenerateOptions, Generation, GenerationRequest, GenerationStats, PrefixCache,
    TokenLogprobs, Tokenizer,
};

use crate::weights::Published;

/// The rows one weights version decodes, as the engine drives them (continuous batching):
/// requests join with [`DecodeRows::add`], [`DecodeRows::step`] advances every unfinished row
/// by at least one token, [`DecodeRows::take_finished`] hands back the completed ones.
///
/// Every completion keeps the actors' trajectory contract: its tokens exactly as sampled (an
/// EOS id included as the last token), one behaviour log-prob per token (the log-prob of the
/// token under the tempered, truncated distribution it was drawn from; 0 for greedy rows), at
/// most `max_new_tokens` tokens, and its [`kaizen_core::FinishReason`].
pub trait DecodeRows {
    /// Admits `requests`, each tagged with the caller's id.
    ///
    /// # Errors
    /// A message naming the bad input (empty prompt, id outside the vocabulary, a prompt that
    /// fills the context, invalid sampling parameters or ones this device cannot honour);
    /// nothing is added when an error is returned.
    fn add(&mut self, requests: Vec<(u64, GenerationRequest)>) -> Result<(), String>;

    /// Advances every unfinished row (one token on the CPU; a device may run its rows to the
    /// end in one step).
    fn step(&mut self);

    /// Rows completed since the last call, with their caller ids; a row whose decoding failed
    /// on the device comes back as the error's message.
    fn take_finished(&mut self) -> Vec<(u64, Result<Generation, String>)>;

    /// What the unfinished row `id` has sampled so far, for streaming (`None` where a device
    /// only reports whole completions: the tokens then come with the completion).
    fn partial(&self, id: u64) -> Option<(&[u32], &[TokenLogprobs])>;

    /// Stops the unfinished row `id` without a completion; whether such a row existed.
    fn cancel(&mut self, id: u64) -> bool;

    /// Drops what is kept for `session` (its episode ended).
    fn forget(&mut self, session: u64);

    /// Copies what is kept for session `from` to session `to`; the tokens copied (0 when
    /// nothing is kept between turns).
    fn fork_session(&mut self, from: u64, to: u64) -> usize;

    /// Rows still to decode.
    fn active(&self) -> usize;

    /// Work counters so far.
    fn stats(&self) -> GenerationStats;

    /// The keys and values kept between turns, when this device keeps them.
    fn prefix_cache(&self) -> Option<&PrefixCache> {
        None
    }

    /// Takes the kept keys and values (to carry them to the rows of newer weights).
    fn take_prefix_cache(&mut self) -> Option<PrefixCache> {
        None
    }
}

/// Where an engine samples: builds the [`DecodeRows`] of each weights version the engine
/// meets (once per version, on the engine's thread). `None` in
/// [`crate::EngineConfig::device`] is kaizen's CPU decoding.
pub trait DecodeDevice: Send + Sync + std::fmt::Debug {
    /// The rows decoding with `weights` (the learner's host copy: a device uploads it here),
    /// stopping on `options.eos_token_ids` and decoding text with `tokenizer`.
    ///
    /// # Errors
    /// A message naming the option the device cannot honour (e.g. `actors.decode_weights`),
    /// or the device's failure to take the weights.
    fn rows(
        &self,
        weights: &Published,
        tokenizer: Option<Arc<Tokenizer>>,
        options: &GenerateOptions,
    ) -> Result<Box<dyn DecodeRows>, String>;
}

impl DecodeRows for DecodeBatch {
    fn add(&mut self, requests: Vec<(u64, GenerationRequest)>) -> Result<(), String> {
        DecodeBatch::add(self, requests).map_err(|e| e.to_string())
    }

    fn step(&mut self) {
        DecodeBatch::step(self);
    }

    fn take_finished(&mut self) -> Vec<(u64, Result<Generation, String>)> {
        DecodeBatch::take_finished(self)
            .into_iter()
            .map(|(id, g)| (id, Ok(g)))
            .collect()
    }

    fn partial(&self, id: u64) -> Option<(&[u32], &[TokenLogprobs])> {
        DecodeBatch::partial(self, id)
    }

    fn cancel(&mut self, id: u64) -> bool {
        DecodeBatch::cancel(self, id)
    }

    fn forget(&mut self, session: u64) {
        DecodeBatch::forget(self, session);
    }

    fn fork_session(&mut self, from: u64, to: u64) -> usize {
        DecodeBatch::fork_session(self, from, to)
    }

    fn active(&self) -> usize {
        DecodeBatch::active(self)
    }

    fn stats(&self) -> GenerationStats {
        DecodeBatch::stats(self)
    }

    fn prefix_cache(&self) -> Option<&PrefixCache> {
        DecodeBatch::prefix_cache(self)
    }

    fn take_prefix_cache(&mut self) -> Option<PrefixCache> {
        DecodeBatch::take_prefix_cache(self)
    }
}
