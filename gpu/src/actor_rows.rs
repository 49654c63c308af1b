//! The actors' decode engine on a GPU: [`GpuDevice`] is a [`kaizen_actors::DecodeDevice`]
//! whose rows ([`kaizen_actors::DecodeRows`]) sample through [`BatchDecoder`].
//!
//! For each weights version the engine meets, the learner's published host weights
//! (`kaizen_actors::Published::model`) are uploaded once (`Llama::to_named`, then
//! [`BatchDecoder::new`]); the previous version's device buffers are freed first when no rows
//! still use them, and its backend (compiled kernels, cuBLAS handle) is reused. There is no
//! device-to-device or NCCL weight broadcast: weights cross PCIe once per version per actor.
//!
//! A [`DecodeRows::step`] runs every admitted row to its end (one [`BatchDecoder::generate`]
//! per distinct `(temperature, top_p, max_new_tokens)`), so rows admitted while it runs wait
//! for the next step, and a streaming caller gets its tokens with the completion. Nothing is
//! kept between an episode's turns: each turn prefills its whole conversation (rows sharing a
//! prompt prefill it once).
//!
//! The completions keep the CPU engine's contract: the sampled ids as generated (an EOS id
//! included as the last token), each token's behaviour log-prob (0 for greedy rows), at most
//! `max_new_tokens` tokens (fewer when the context fills, as on the CPU), `FinishReason::Eos`
//! or `Length`, and the text decoded without special tokens. What the GPU sampler lacks is
//! refused, naming the option: in a request, `top_k`, `min_p`, `stop` strings and
//! `top_logprobs`; in the engine's options, `decode_weights` other than f32 and entropies.
//! Self-certainty is not computed (`Generation::self_certainty` is `None`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kaizen_actors::{DecodeDevice, DecodeRows, Published};
use kaizen_core::FinishReason;
use kaizen_model::{
    DecodeWeights, GenerateOptions, Generation, GenerationRequest, GenerationStats, TokenLogprobs,
    Tokenizer,
};

use crate::GpuError;
use crate::batch_decode::{BatchDecoder, DecodeOptions, DecodeRequest, Finish};
use crate::decode_ops::DecodeOps;
use crate::sample::SampleParams;

/// A GPU (or its host mirror) as the place an actor's engine samples.
pub struct GpuDevice<D: DecodeOps> {
    state: Mutex<DeviceState<D>>,
    make_ops: Box<dyn Fn() -> Result<D, GpuError> + Send + Sync>,
}

/// The backend not in use, and the newest version's decoder.
struct DeviceState<D: DecodeOps> {
    spare: Option<D>,
    newest: Option<Arc<BatchDecoder<D>>>,
}

impl<D: DecodeOps> std::fmt::Debug for GpuDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice").finish_non_exhaustive()
    }
}

impl<D: DecodeOps + Send + Sync + 'static> GpuDevice<D> {
    /// A device whose backend `make_ops` builds; it is called once now (so a missing driver
    /// or a kernel that does not compile fails here) and again only when a version's rows are
    /// built while an older version's rows are still decoding.
    ///
    /// # Errors
    /// `make_ops`'s error.
    pub fn new(
        make_ops: impl Fn() -> Result<D, GpuError> + Send + Sync + 'static,
    ) -> Result<Self, GpuError> {
        let spare = make_ops()?;
        Ok(Self {
            state: Mutex::new(DeviceState {
                spare: Some(spare),
                newest: None,
            }),
            make_ops: Box::new(make_ops),
        })
    }

    /// The decoder of `weights`, uploaded on a backend that no rows use.
    fn decoder(&self, weights: &Published) -> Result<Arc<BatchDecoder<D>>, GpuError> {
        // The state stays consistent if a holder panicked: it only holds reusable parts.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let reused = match state.newest.take().map(Arc::try_unwrap) {
            // No rows decode with the previous version: free its weights, keep its backend.
            Some(Ok(previous)) => Some(previous.into_ops()),
            _ => state.spare.take(),
        };
        let ops = match reused {
            Some(ops) => ops,
            None => (self.make_ops)()?,
        };
        let model = &weights.model;
        let decoder = Arc::new(BatchDecoder::new(ops, model.config(), &model.to_named())?);
        state.newest = Some(decoder.clone());
        Ok(decoder)
    }
}

/// The CUDA device `ordinal` as an actor engine's [`DecodeDevice`] (`actors.device =
/// "cuda"`): a context on that GPU and the decoding kernels, compiled once.
///
/// # Errors
/// [`GpuError::Library`] without the NVIDIA driver or NVRTC (naming what was tried);
/// [`GpuError::Driver`] for a GPU that cannot be opened; kernel compilation errors.
pub fn cuda_device(ordinal: usize) -> Result<Arc<dyn DecodeDevice>, GpuError> {
    let context = crate::cuda_context(ordinal)?;
    let device = GpuDevice::new(move || crate::decode_ops::CudaDecodeOps::new(&context))?;
    Ok(Arc::new(device))
}

impl<D> DecodeDevice for GpuDevice<D>
where
    D: DecodeOps + Send + Sync + 'static,
    BatchDecoder<D>: Send + Sync,
{
    fn rows(
        &self,
        weights: &Published,
        tokenizer: Option<Arc<Tokenizer>>,
        options: &GenerateOptions,
    ) -> Result<Box<dyn DecodeRows>, String> {
        let refuse = |what: &str| Err(format!("{what}: the GPU sampler cannot (docs/gpu.md)"));
        match options.decode_weights {
            DecodeWeights::F32 => {}
            DecodeWeights::Int8 => return refuse("`actors.decode_weights = \"int8\"`"),
            DecodeWeights::Bf16 => return refuse("`actors.decode_weights = \"bf16\"`"),
        }
        if options.entropy {
            return refuse("per-token entropies");
        }
        let decoder = self.decoder(weights).map_err(|e| {
            format!(
                "uploading weights version {} to the GPU: {e}",
                weights.version.0
            )
        })?;
        Ok(Box::new(GpuRows {
            decoder,
            tokenizer,
            eos_token_ids: options.eos_token_ids.clone(),
            queued: Vec::new(),
            done: Vec::new(),
            stats: GenerationStats::default(),
        }))
    }
}

/// Queued rows that share their sampling settings: one [`BatchDecoder::generate`].
struct Batch {
    sample: SampleParams,
    max_new_tokens: usize,
    rows: Vec<(u64, GenerationRequest)>,
}

/// The rows of one weights version on a [`GpuDevice`].
struct GpuRows<D: DecodeOps> {
    decoder: Arc<BatchDecoder<D>>,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_token_ids: Vec<u32>,
    /// Admitted rows not yet decoded, in admission order.
    queued: Vec<(u64, GenerationRequest)>,
    done: Vec<(u64, Result<Generation, String>)>,
    stats: GenerationStats,
}

impl<D: DecodeOps> GpuRows<D> {
    /// Longest sequence (prompt and completion) a row may reach: the model's context, or the
    /// GPU attention kernel's span if shorter.
    fn context(&self) -> usize {
        let max_pos = self.decoder.config().max_position_embeddings;
        max_pos.min(crate::llama::MAX_ATTENTION_LEN)
    }

    /// Why the GPU engine cannot take `request` (tagged `id`), naming the field.
    fn check(&self, id: u64, request: &GenerationRequest) -> Result<(), String> {
        let p = &request.params;
        p.validate().map_err(|e| format!("request {id}: {e}"))?;
        let unsupported = [
            (p.top_k != 0, "`top_k`"),
            (p.min_p != 0.0, "`min_p`"),
            (!p.stop.is_empty(), "`stop` strings"),
            (p.top_logprobs.is_some(), "`top_logprobs`"),
            (!p.choices.is_empty(), "`choices`"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!(
                "request {id}: {what} is not supported by the GPU sampler (`actors.device = \
                 \"cuda\"` samples with temperature and top_p only; docs/gpu.md)"
            ));
        }
        if request.prompt.is_empty() {
            return Err(format!("request {id}: empty prompt"));
        }
        let vocab = self.decoder.config().vocab_size;
        if let Some(bad) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!(
                "request {id}: token id {bad} is outside the vocabulary ({vocab})"
            ));
        }
        let context = self.context();
        if request.prompt.len() >= context {
            return Err(format!(
                "request {id}: prompt of {} tokens leaves no room to generate (context {context} \
                 on the GPU)",
                request.prompt.len()
            ));
        }
        Ok(())
    }

    /// The tokens `request` may sample: its `max_new_tokens`, or fewer when the context
    /// fills first (the CPU engine then stops the row with `Length` too).
    fn budget(&self, request: &GenerationRequest) -> usize {
        let room = self.context() - request.prompt.len();
        request.params.max_new_tokens.min(room)
    }

    fn generation(&self, completion: crate::batch_decode::Completion) -> Generation {
        let text = self
            .tokenizer
            .as_deref()
            .map(|tok| tok.decode(&completion.tokens, true).unwrap_or_default());
        Generation {
            tokens: completion.tokens,
            logprobs: completion.logprobs,
            entropies: Vec::new(),
            self_certainty: None,
            token_logprobs: Vec::new(),
            finish_reason: match completion.finish {
                Finish::Eos => FinishReason::Eos,
                Finish::Length => FinishReason::Length,
            },
            text,
        }
    }
}

impl<D: DecodeOps> DecodeRows for GpuRows<D> {
    fn add(&mut self, requests: Vec<(u64, GenerationRequest)>) -> Result<(), String> {
        for (id, request) in &requests {
            self.check(*id, request)?;
        }
        for (_, request) in &requests {
            self.stats.prompt_tokens += request.prompt.len();
        }
        self.queued.extend(requests);
        Ok(())
    }

    fn step(&mut self) {
        // One `generate` per distinct sampling setting, in order of first admission.
        let mut batches: Vec<Batch> = Vec::new();
        let mut index: HashMap<(u32, u32, usize), usize> = HashMap::new();
        for (id, request) in std::mem::take(&mut self.queued) {
            let sample = SampleParams {
                temperature: request.params.temperature,
                top_p: request.params.top_p,
            };
            let budget = self.budget(&request);
            let key = (sample.temperature.to_bits(), sample.top_p.to_bits(), budget);
            let b = *index.entry(key).or_insert_with(|| {
                batches.push(Batch {
                    sample,
                    max_new_tokens: budget,
                    rows: Vec::new(),
                });
                batches.len() - 1
            });
            batches[b].rows.push((id, request));
        }
        for Batch {
            sample,
            max_new_tokens,
            rows,
        } in batches
        {
            let requests: Vec<DecodeRequest> = rows
                .iter()
                .map(|(_, r)| DecodeRequest {
                    prompt: r.prompt.clone(),
                    seed: r.params.seed,
                })
                .collect();
            let options = DecodeOptions {
                sample,
                max_new_tokens,
                eos_token_ids: self.eos_token_ids.clone(),
            };
            match self.decoder.generate(&requests, &options) {
                Ok((completions, stats)) => {
                    self.stats.prefill_tokens += stats.prefill_tokens;
                    self.stats.decode_steps += stats.decode_steps;
                    self.stats.generated_tokens += stats.sampled_tokens;
                    for ((id, _), completion) in rows.iter().zip(completions) {
                        let generation = self.generation(completion);
                        self.done.push((*id, Ok(generation)));
                    }
                }
                Err(e) => {
                    let message = format!("decoding on the GPU failed: {e}");
                    for (id, _) in rows {
                        self.done.push((id, Err(message.clone())));
                    }
                }
            }
        }
    }

    fn take_finished(&mut self) -> Vec<(u64, Result<Generation, String>)> {
        std::mem::take(&mut self.done)
    }

    fn partial(&self, _id: u64) -> Option<(&[u32], &[TokenLogprobs])> {
        None
    }

    fn cancel(&mut self, id: u64) -> bool {
        let before = self.queued.len();
        self.queued.retain(|(queued, _)| *queued != id);
        self.queued.len() < before
    }

    fn forget(&mut self, _session: u64) {}

    fn fork_session(&mut self, _from: u64, _to: u64) -> usize {
        0
    }

    fn active(&self) -> usize {
        self.queued.len()
    }

    fn stats(&self) -> GenerationStats {
        self.stats
    }
}
