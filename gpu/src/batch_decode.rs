//! Batched sampling on one GPU: many rows in flight, each prompt prefilled once and its cache
//! forked to every row that shares it (a GRPO group), then one forward step of all unfinished
//! rows at a time — one SGEMM per weight for the whole batch — and sampling on the device
//! (temperature, top-p; `crate::sample`), each row with its own counter-based random stream.
//! Every sampled token comes with its behaviour log-prob, as `kaizen_model::sample` defines it.
//!
//! The driver is written once over [`DecodeOps`] (and its [`crate::train::TrainOps`]), so it
//! runs on CUDA ([`crate::decode_ops::CudaDecodeOps`]) and, for tests without a GPU, on the host
//! ([`crate::train::HostOps`]) — checked against `kaizen_model::generate` in
//! `tests/batch_decode.rs`.
//!
//! # Row bookkeeping
//! Request `r` owns cache slot `r`: position `p` of its sequence lives at `[r, p]` of every
//! layer's `[slots, capacity, kv_heads·head_dim]` key and value buffers. Prefill runs the
//! distinct prompts packed (each token at its own slot and position; attention reads only
//! positions `≤ p` of its slot, so it is causal without a mask) and writes into the slot of
//! the group's first request; `copy_prefix` then copies it to the group's other slots. A
//! decode step feeds each unfinished row's last token at position `prompt_len + generated − 1`.
//! Finished rows simply leave the step (their slots are not compacted).

use std::collections::HashMap;

use kaizen_model::{HostTensor, LlamaConfig, Rope};

use crate::GpuError;
use crate::decode_ops::{Buf, CachedAttention, DecodeOps, Index};
use crate::layer_weights::{Layer, LayerStack, Linear, load_layers};
use crate::sample::{SampleParams, uniform};
use crate::train::{Gemm, TrainOps, Transpose};

/// One prompt to complete.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeRequest {
    /// Prompt token ids (non-empty). Requests with equal prompts share one prefill.
    pub prompt: Vec<u32>,
    /// Seed of the row's random stream ([`crate::sample::uniform`]).
    pub seed: u64,
}

/// Settings shared by every row of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Temperature and top-p.
    pub sample: SampleParams,
    /// Tokens sampled per row at most.
    pub max_new_tokens: usize,
    /// Ids that end a row (kept as its last token).
    pub eos_token_ids: Vec<u32>,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence id was sampled (it is the last token).
    Eos,
    /// `max_new_tokens` were sampled.
    Length,
}

/// One completed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Sampled ids, the EOS id included.
    pub tokens: Vec<u32>,
    /// Behaviour log-prob of each sampled id (`kaizen_model::Sampled::logprob`).
    pub logprobs: Vec<f32>,
    /// Why the row stopped.
    pub finish: Finish,
}

/// Work counters of one [`BatchDecoder::generate`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Prompt tokens run through prefill (each distinct prompt once).
    pub prefill_tokens: usize,
    /// Decode forward steps after prefill.
    pub decode_steps: usize,
    /// Tokens sampled, over all rows.
    pub sampled_tokens: usize,
}

/// Keys and values of every slot, per layer `[slots, capacity, kv_heads·head_dim]`.
struct Cache<B> {
    keys: Vec<B>,
    values: Vec<B>,
    capacity: usize,
}

/// The activations of one forward call, allocated once per [`BatchDecoder::generate`] for
/// its largest call (`rows` tokens, `out` logits rows) and reused by every step: buffers may
/// be longer than a call needs, every operation takes its sizes explicitly.
struct Scratch<B> {
    x: B,
    normed: B,
    inv_rms: B,
    q: B,
    k: B,
    v: B,
    attended: B,
    projected: B,
    gate: B,
    up: B,
    act: B,
    last: B,
    /// `[out, vocab]`.
    logits: B,
    /// The sampler's `[out, vocab]` weights.
    weights: B,
    /// The sampler's `[out, 2]` (token, log-prob) pairs.
    sampled: B,
}

/// The Llama-family policy's weights on a [`DecodeOps`] device, and the batched sampler.
pub struct BatchDecoder<D: DecodeOps> {
    ops: D,
    config: LlamaConfig,
    embed_tokens: Buf<D>,
    layers: Vec<Layer<Buf<D>>>,
    norm: Buf<D>,
    /// `None`: tied to `embed_tokens`.
    lm_head: Option<Linear<Buf<D>>>,
    cos: Buf<D>,
    sin: Buf<D>,
}

/// Groups requests by prompt: for each distinct prompt (in order of first appearance), the
/// indices of its requests, the first one owning the prefill.
pub fn prompt_groups(requests: &[DecodeRequest]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (r, request) in requests.iter().enumerate() {
        let g = *by_prompt
            .entry(request.prompt.as_slice())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(r);
    }
    groups
}

impl<D: DecodeOps> BatchDecoder<D> {
    /// Uploads a model's weights, named as in Hugging Face `LlamaForCausalLM`
    /// (`kaizen_model::Llama::to_named`). Value heads are ignored.
    ///
    /// # Errors
    /// [`GpuError::Input`] for an invalid config or a missing or misshaped tensor (named);
    /// device errors.
    pub fn new(
        ops: D,
        config: &LlamaConfig,
        weights: &[(String, HostTensor)],
    ) -> Result<Self, GpuError> {
        config
            .validate()
            .map_err(|e| GpuError::Input(format!("model config: {e}")))?;
        if config.vocab_size >= 1 << 24 {
            return Err(GpuError::Input(format!(
                "vocab_size {} >= 2^24: sampled ids travel as f32",
                config.vocab_size
            )));
        }
        let by_name: HashMap<&str, &HostTensor> =
            weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let o = ops.ops();
        let upload = |name: &str, shape: &[usize]| -> Result<Buf<D>, GpuError> {
            let t = by_name
                .get(name)
                .ok_or_else(|| GpuError::Input(format!("weight `{name}` is missing")))?;
            if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(GpuError::Input(format!(
                    "weight `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                )));
            }
            o.upload(&t.data)
        };
        let LayerStack { layers, lm_head } = load_layers(config, upload)?;
        let (h, hd) = (config.hidden_size, config.head_dim());
        // The CPU path's own tables, so both rotate by the same f32 angles.
        let rope = Rope::new(hd, config.max_position_embeddings, config.rope_theta);
        let (cos, sin) = rope.host_tables();
        let (cos, sin) = (o.upload(cos)?, o.upload(sin)?);
        Ok(Self {
            embed_tokens: upload("model.embed_tokens.weight", &[config.vocab_size, h])?,
            norm: upload("model.norm.weight", &[h])?,
            layers,
            lm_head,
            cos,
            sin,
            config: config.clone(),
            ops,
        })
    }

    /// The backend.
    pub fn ops(&self) -> &D {
        &self.ops
    }

    /// The backend, the weights freed (to upload a newer version on it).
    pub fn into_ops(self) -> D {
        self.ops
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Completes every request; completions come back in request order.
    ///
    /// # Errors
    /// [`GpuError::Input`] for no requests, an empty prompt, a token outside the vocabulary,
    /// an invalid temperature or top-p, or a prompt plus `max_new_tokens` longer than the
    /// context; device errors.
    pub fn generate(
        &self,
        requests: &[DecodeRequest],
        options: &DecodeOptions,
    ) -> Result<(Vec<Completion>, DecodeStats), GpuError> {
        let c = &self.config;
        let o = self.ops.ops();
        let vocab = c.vocab_size;
        let s = options.sample;
        if requests.is_empty() || options.max_new_tokens == 0 {
            return Err(GpuError::Input(format!(
                "generate: {} requests, max_new_tokens {}: both must be positive",
                requests.len(),
                options.max_new_tokens
            )));
        }
        let valid_t = s.temperature.is_finite() && s.temperature >= 0.0;
        if !(valid_t && s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(GpuError::Input(format!(
                "temperature {} must be finite and >= 0, top_p {} in (0, 1]",
                s.temperature, s.top_p
            )));
        }
        for (r, request) in requests.iter().enumerate() {
            if request.prompt.is_empty() {
                return Err(GpuError::Input(format!("request {r}: empty prompt")));
            }
            if let Some(bad) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(GpuError::Input(format!(
                    "request {r}: token id {bad} is outside the vocabulary ({vocab})"
                )));
            }
        }
        let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let capacity = longest + options.max_new_tokens;
        if capacity > c.max_position_embeddings || capacity > crate::llama::MAX_ATTENTION_LEN {
            return Err(GpuError::Input(format!(
                "a {longest}-token prompt plus {} new tokens exceeds the context ({} positions, \
                 attention span {})",
                options.max_new_tokens,
                c.max_position_embeddings,
                crate::llama::MAX_ATTENTION_LEN
            )));
        }
        let width = c.num_key_value_heads * c.head_dim();
        let slots = requests.len();
        let mut cache = Cache {
            keys: (0..c.num_hidden_layers)
                .map(|_| o.alloc(slots * capacity * width))
                .collect::<Result<_, _>>()?,
            values: (0..c.num_hidden_layers)
                .map(|_| o.alloc(slots * capacity * width))
                .collect::<Result<_, _>>()?,
            capacity,
        };
        let mut stats = DecodeStats::default();
        let prefill_tokens: usize = prompt_groups(requests)
            .iter()
            .map(|g| requests[g[0]].prompt.len())
            .sum();
        let mut scratch = self.scratch(prefill_tokens.max(slots), slots)?;

        // Prefill: every distinct prompt once, packed, into its first request's slot.
        let groups = prompt_groups(requests);
        let (mut tokens, mut slot, mut pos) = (Vec::new(), Vec::new(), Vec::new());
        let mut last_of_group = Vec::with_capacity(groups.len());
        for group in &groups {
            let owner = group[0];
            let prompt = &requests[owner].prompt;
            for (p, &t) in prompt.iter().enumerate() {
                tokens.push(t);
                slot.push(owner as u32);
                pos.push(p as u32);
            }
            last_of_group.push(tokens.len() as u32 - 1);
        }
        stats.prefill_tokens = tokens.len();
        let mut out_rows = vec![0u32; slots];
        for (g, group) in groups.iter().enumerate() {
            for &r in group {
                out_rows[r] = last_of_group[g];
            }
        }
        self.forward(&mut cache, &mut scratch, &tokens, &slot, &pos, &out_rows)?;
        let (from, to): (Vec<u32>, Vec<u32>) = groups
            .iter()
            .flat_map(|g| g[1..].iter().map(move |&r| (g[0] as u32, r as u32)))
            .unzip();
        if !from.is_empty() {
            let (from, to) = (o.upload_index(&from)?, o.upload_index(&to)?);
            for l in 0..c.num_hidden_layers {
                for buf in [&mut cache.keys[l], &mut cache.values[l]] {
                    self.ops.copy_prefix(
                        buf,
                        &from,
                        &to,
                        slots - groups.len(),
                        longest,
                        width,
                        capacity,
                    )?;
                }
            }
        }

        let mut rows: Vec<Completion> = (0..slots)
            .map(|_| Completion {
                tokens: Vec::with_capacity(options.max_new_tokens),
                logprobs: Vec::with_capacity(options.max_new_tokens),
                finish: Finish::Length,
            })
            .collect();
        let mut active: Vec<usize> = (0..slots).collect();
        loop {
            // Sample one token for every active row from its logits row.
            let m = active.len();
            let uniforms: Vec<f32> = active
                .iter()
                .map(|&r| uniform(requests[r].seed, rows[r].tokens.len() as u64))
                .collect();
            let uniforms = o.upload(&uniforms)?;
            let sc = &mut scratch;
            self.ops.sample(
                &mut sc.sampled,
                &mut sc.weights,
                &sc.logits,
                &uniforms,
                m,
                vocab,
                s,
            )?;
            let out = o.download(&sc.sampled)?;
            stats.sampled_tokens += m;
            let mut still = Vec::with_capacity(m);
            for (i, &r) in active.iter().enumerate() {
                let token = out[2 * i] as u32;
                // A kernel fault must not become an out-of-range gather on the next step.
                if token as usize >= vocab || out[2 * i].fract() != 0.0 {
                    return Err(GpuError::Input(format!(
                        "the sampler returned id {} for row {r} (vocab_size {vocab})",
                        out[2 * i]
                    )));
                }
                let row = &mut rows[r];
                row.tokens.push(token);
                row.logprobs.push(out[2 * i + 1]);
                if options.eos_token_ids.contains(&token) {
                    row.finish = Finish::Eos;
                } else if row.tokens.len() < options.max_new_tokens {
                    still.push(r);
                }
            }
            active = still;
            if active.is_empty() {
                break;
            }
            // One step of every unfinished row: its last token at its next position.
            let tokens: Vec<u32> = active
                .iter()
                .map(|&r| *rows[r].tokens.last().unwrap_or(&0))
                .collect();
            let slot: Vec<u32> = active.iter().map(|&r| r as u32).collect();
            let pos: Vec<u32> = active
                .iter()
                .map(|&r| (requests[r].prompt.len() + rows[r].tokens.len() - 1) as u32)
                .collect();
            let out_rows: Vec<u32> = (0..active.len() as u32).collect();
            self.forward(&mut cache, &mut scratch, &tokens, &slot, &pos, &out_rows)?;
            stats.decode_steps += 1;
        }
        Ok((rows, stats))
    }

    /// Buffers for forward calls of up to `rows` tokens and `out` logits rows.
    fn scratch(&self, rows: usize, out: usize) -> Result<Scratch<Buf<D>>, GpuError> {
        let c = &self.config;
        let o = self.ops.ops();
        let (h, hd, inter) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        Ok(Scratch {
            x: o.alloc(rows * h)?,
            normed: o.alloc(rows * h)?,
            inv_rms: o.alloc(rows)?,
            q: o.alloc(rows * q)?,
            k: o.alloc(rows * kv)?,
            v: o.alloc(rows * kv)?,
            attended: o.alloc(rows * q)?,
            projected: o.alloc(rows * h)?,
            gate: o.alloc(rows * inter)?,
            up: o.alloc(rows * inter)?,
            act: o.alloc(rows * inter)?,
            last: o.alloc(out * h)?,
            logits: o.alloc(out * c.vocab_size)?,
            weights: o.alloc(out * c.vocab_size)?,
            sampled: o.alloc(out * 2)?,
        })
    }

    /// Runs `tokens` (token `t` of slot `slot[t]` at position `pos[t]`) through the model,
    /// writing their keys and values into the cache, and leaves in `sc.logits` the logits of
    /// the rows `out_rows` (indices into `tokens`, repeats allowed).
    ///
    /// # Shapes
    /// - `tokens`, `slot`, `pos`: `[n]`; `out_rows`: `[m]` → `sc.logits[..m · vocab]`.
    fn forward(
        &self,
        cache: &mut Cache<Buf<D>>,
        sc: &mut Scratch<Buf<D>>,
        tokens: &[u32],
        slot: &[u32],
        pos: &[u32],
        out_rows: &[u32],
    ) -> Result<(), GpuError> {
        let c = &self.config;
        let o = self.ops.ops();
        let n = tokens.len();
        let (h, hd, inter) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let width = kv_heads * hd;
        let eps = c.rms_norm_eps as f32;
        let ids: Index<D> = o.upload_index(tokens)?;
        let slot: Index<D> = o.upload_index(slot)?;
        let pos: Index<D> = o.upload_index(pos)?;
        let shape = CachedAttention {
            rows: n,
            heads,
            kv_heads,
            head_dim: hd,
            capacity: cache.capacity,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        o.gather_rows(&mut sc.x, &self.embed_tokens, &ids, n, h)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let gamma = &layer.input_layernorm;
            o.rms_norm(&mut sc.normed, &mut sc.inv_rms, &sc.x, gamma, n, h, eps)?;
            self.linear(&layer.q_proj, &sc.normed, n, &mut sc.q)?;
            self.linear(&layer.k_proj, &sc.normed, n, &mut sc.k)?;
            self.linear(&layer.v_proj, &sc.normed, n, &mut sc.v)?;
            o.rope(&mut sc.q, &self.cos, &self.sin, &pos, n, heads, hd, false)?;
            o.rope(
                &mut sc.k, &self.cos, &self.sin, &pos, n, kv_heads, hd, false,
            )?;
            let cap = cache.capacity;
            self.ops
                .kv_write(&mut cache.keys[l], &sc.k, &slot, &pos, n, width, cap)?;
            self.ops
                .kv_write(&mut cache.values[l], &sc.v, &slot, &pos, n, width, cap)?;
            self.ops.cached_attention(
                &mut sc.attended,
                &sc.q,
                &cache.keys[l],
                &cache.values[l],
                &slot,
                &pos,
                shape,
            )?;
            self.linear(&layer.o_proj, &sc.attended, n, &mut sc.projected)?;
            o.add(&mut sc.x, &sc.projected, n * h)?;
            let gamma = &layer.post_attention_layernorm;
            o.rms_norm(&mut sc.normed, &mut sc.inv_rms, &sc.x, gamma, n, h, eps)?;
            self.linear(&layer.gate_proj, &sc.normed, n, &mut sc.gate)?;
            self.linear(&layer.up_proj, &sc.normed, n, &mut sc.up)?;
            o.swiglu(&mut sc.act, &sc.gate, &sc.up, n * inter)?;
            self.linear(&layer.down_proj, &sc.act, n, &mut sc.projected)?;
            o.add(&mut sc.x, &sc.projected, n * h)?;
        }
        // RMSNorm is per row: gathering the rows first gives the same values.
        let m = out_rows.len();
        let picked: Index<D> = o.upload_index(out_rows)?;
        o.gather_rows(&mut sc.last, &sc.x, &picked, m, h)?;
        o.rms_norm(
            &mut sc.normed,
            &mut sc.inv_rms,
            &sc.last,
            &self.norm,
            m,
            h,
            eps,
        )?;
        match &self.lm_head {
            Some(head) => self.linear(head, &sc.normed, m, &mut sc.logits),
            // Tied embeddings: the output projection is the embedding matrix `[vocab, h]`.
            None => o.gemm(
                product(c.vocab_size, m, h),
                &self.embed_tokens,
                &sc.normed,
                &mut sc.logits,
            ),
        }
    }

    /// `y[rows, d_output] = x[rows, d_input] · Wᵀ (+ b)`.
    fn linear(
        &self,
        layer: &Linear<Buf<D>>,
        x: &Buf<D>,
        rows: usize,
        y: &mut Buf<D>,
    ) -> Result<(), GpuError> {
        let o = self.ops.ops();
        o.gemm(
            product(layer.d_output, rows, layer.d_input),
            &layer.weight,
            x,
            y,
        )?;
        if let Some(bias) = &layer.bias {
            o.add_bias(y, bias, rows, layer.d_output)?;
        }
        Ok(())
    }
}

/// `y[rows, d_out] = x[rows, d_in] · W[d_out, d_in]ᵀ` in cuBLAS's column-major terms:
/// `yᵀ (d_out × rows) = op_T(W as d_in × d_out) · (x as d_in × rows)`.
fn product(d_out: usize, rows: usize, d_in: usize) -> Gemm {
    Gemm {
        transa: Transpose::Yes,
        transb: Transpose::No,
        m: d_out,
        n: rows,
        k: d_in,
        alpha: 1.0,
        lda: d_in,
        ldb: d_in,
        beta: 0.0,
        ldc: d_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &[u32]) -> DecodeRequest {
        DecodeRequest {
            prompt: prompt.to_vec(),
            seed: 0,
        }
    }

    #[test]
    fn equal_prompts_share_a_group_owned_by_their_first_request() {
        let requests = [
            request(&[1, 2]),
            request(&[3]),
            request(&[1, 2]),
            request(&[1, 2, 3]),
            request(&[3]),
        ];
        assert_eq!(
            prompt_groups(&requests),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
    }

    #[test]
    fn the_product_is_a_valid_cublas_call_for_row_major_linear_layers() {
        let g = product(6, 3, 4);
        g.check(6 * 4, 3 * 4, 3 * 6).unwrap();
        assert!(g.check(6 * 4, 3 * 4, 3 * 6 - 1).is_err());
    }
}
