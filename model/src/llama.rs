//! The Llama-family decoder.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::attention::Attention;
use crate::config::LlamaConfig;
use crate::cpu_forward::{self, CpuWeights};
use crate::kv_cache::{KvCache, attention_mask, positions};
use crate::linear::Linear;
use crate::mlp::Mlp;
use crate::rms_norm::RmsNorm;
use crate::rope::Rope;
use crate::{Error, Result};

/// One pre-norm decoder block:
///
/// `h = x + Attn(RMSNorm(x))`, `y = h + MLP(RMSNorm(h))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// # Shapes
    /// As [`Attention::forward`]: `x` is `[batch, seq, hidden]`, returns the same shape.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4, burn::tensor::Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, mask, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// A decoder-only transformer of the Llama family (Llama 2/3, SmolLM2, Qwen2 with
/// `attention_bias`): token embedding → `num_hidden_layers` × [`DecoderLayer`] → RMSNorm →
/// output projection (tied to the embedding or not), with an optional scalar value head.
///
/// Backend-independent: the device the weights live on picks the backend (flex, ndarray, CUDA,
/// and autodiff on top of any of them).
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// The decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output projection `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    /// Scalar value head `[1, hidden]` with bias (PPO critic); `None` unless configured.
    pub value_head: Option<Linear>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: Rope,
    /// Whether inference on the flex backend runs on kaizen's CPU kernels.
    #[module(skip)]
    cpu_kernels: bool,
}

/// Host-side random initialisation, so the same seed gives the same weights on every backend.
struct Init {
    rng: ChaCha8Rng,
    normal: Normal<f32>,
}

impl Init {
    fn matrix(&mut self, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| self.normal.sample(&mut self.rng))
            .collect();
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    fn linear(&mut self, out: usize, inp: usize, bias: bool, device: &Device) -> Linear {
        let weight = self.matrix(out, inp, device);
        Linear::new(weight, bias.then(|| Tensor::zeros([out], device)))
    }
}

impl Llama {
    /// A randomly initialised model: weights `~ N(0, initializer_range²)`, norms 1, biases 0,
    /// drawn on the host from ChaCha8 seeded with `seed` (same seed, same weights, any backend).
    ///
    /// # Errors
    /// [`Error::Config`] when the config does not validate.
    pub fn init(config: &LlamaConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let std = config.initializer_range as f32;
        let normal = Normal::new(0.0, std)
            .map_err(|e| Error::Config(format!("`initializer_range` {std}: {e}")))?;
        let mut init = Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            normal,
        };
        let (h, hd) = (config.hidden_size, config.head_dim());
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let ones = |n: usize| Tensor::<1>::ones([n], device);
        let embed_tokens = Param::from_tensor(init.matrix(config.vocab_size, h, device));
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: RmsNorm::new(ones(h), config.rms_norm_eps),
                self_attn: Attention {
                    q_proj: init.linear(heads * hd, h, config.attention_bias, device),
                    k_proj: init.linear(kv_heads * hd, h, config.attention_bias, device),
                    v_proj: init.linear(kv_heads * hd, h, config.attention_bias, device),
                    o_proj: init.linear(h, heads * hd, false, device),
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::new(ones(h), config.rms_norm_eps),
                mlp: Mlp {
                    gate_proj: init.linear(config.intermediate_size, h, false, device),
                    up_proj: init.linear(config.intermediate_size, h, false, device),
                    down_proj: init.linear(h, config.intermediate_size, false, device),
                },
            })
            .collect();
        let lm_head =
            (!config.tie_word_embeddings).then(|| init.linear(config.vocab_size, h, false, device));
        let value_head = config.value_head.then(|| init.linear(1, h, true, device));
        Ok(Self::assemble(
            config.clone(),
            embed_tokens,
            layers,
            RmsNorm::new(ones(h), config.rms_norm_eps),
            lm_head,
            value_head,
        ))
    }

    /// This model with a fresh scalar value head (PPO's critic on the shared trunk) when it has
    /// none: weight `[1, hidden]` drawn `~ N(0, initializer_range²)` on the host from ChaCha8
    /// seeded with `seed`, bias 0, on the model's device, and `config.value_head` set (so
    /// checkpoints save and load it as `v_head.summary.*`). A model that has one keeps it.
    ///
    /// # Errors
    /// [`Error::Config`] when `initializer_range` is not a valid standard deviation.
    pub fn with_value_head(mut self, seed: u64) -> Result<Self> {
        if self.value_head.is_some() {
            return Ok(self);
        }
        let std = self.config.initializer_range as f32;
        let normal = Normal::new(0.0, std)
            .map_err(|e| Error::Config(format!("`initializer_range` {std}: {e}")))?;
        let mut init = Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            normal,
        };
        let device = self.device();
        self.value_head = Some(init.linear(1, self.config.hidden_size, true, &device));
        self.config.value_head = true;
        Ok(self)
    }

    /// Builds a model from its parts (used by loaders).
    pub(crate) fn assemble(
        config: LlamaConfig,
        embed_tokens: Param<Tensor<2>>,
        layers: Vec<DecoderLayer>,
        norm: RmsNorm,
        lm_head: Option<Linear>,
        value_head: Option<Linear>,
    ) -> Self {
        let rope = Rope::new(
            config.head_dim(),
            config.max_position_embeddings,
            config.rope_theta,
        );
        Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            value_head,
            config,
            rope,
            cpu_kernels: true,
        }
    }

    /// Turns kaizen's CPU kernels ([`crate::cpu_kernels`]) on or off for this model (on by
    /// default). They serve inference on burn's flex device — forward passes without autodiff,
    /// KV-cache decoding, [`crate::generate`], [`Llama::logits`] — and compute the same values
    /// as burn's ops (up to float reassociation) several times faster for decode-shaped
    /// products. Autodiff devices and other backends always use burn's ops.
    pub fn with_cpu_kernels(mut self, on: bool) -> Self {
        self.cpu_kernels = on;
        self
    }

    /// Whether kaizen's CPU kernels are enabled (see [`Llama::with_cpu_kernels`]); they run only
    /// where they apply (flex device, no autodiff, f32 weights).
    pub fn uses_cpu_kernels(&self) -> bool {
        self.cpu_kernels
    }

    /// The rotary tables.
    pub(crate) fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// An empty KV cache for a batch whose row `b` is left-padded by `starts[b]` columns.
    pub fn new_cache(&self, starts: Vec<usize>) -> KvCache {
        KvCache::new(
            self.layers.len(),
            starts,
            self.config.num_key_value_heads,
            self.config.head_dim(),
        )
    }

    /// Final hidden states (after the last norm) of every position.
    ///
    /// Without a cache, `tokens` is the whole sequence and row `b` is left-padded by
    /// `starts[b]` tokens (all zeros for right-padded batches: padding at the end is never
    /// attended to by earlier positions). With a cache, `tokens` are the next columns after the
    /// cached ones, `starts` is ignored (the cache has its own) and the cache is extended.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` → returns `[batch, seq, hidden]`
    ///
    /// # Panics
    /// If a position exceeds `max_position_embeddings` or a token id is outside the vocabulary
    /// (callers validate user input first: [`crate::generate`], [`crate::score`]).
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        starts: &[usize],
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let cpu = match cache.as_deref() {
            Some(cache) if cache.is_tensor() => None,
            _ => CpuWeights::of(self),
        };
        if let Some(weights) = cpu {
            let ids: Vec<u32> = tokens
                .into_data()
                .iter::<i64>()
                .map(|t| u32::try_from(t).unwrap_or(u32::MAX))
                .collect();
            let hidden = match cache {
                Some(cache) => cpu_forward::forward_hidden(self, &weights, None, &ids, seq, cache),
                None => {
                    assert_eq!(starts.len(), batch, "forward_hidden: one start per row");
                    let mut cache = self.new_cache(starts.to_vec());
                    cpu_forward::forward_hidden(self, &weights, None, &ids, seq, &mut cache)
                }
            };
            let shape = [batch, seq, self.config.hidden_size];
            return Tensor::from_data(TensorData::new(hidden, shape), &device);
        }
        let (past, columns, starts) = match cache.as_deref_mut() {
            Some(cache) => {
                cache.reserve(seq, &device);
                (cache.len(), cache.capacity(), cache.starts().to_vec())
            }
            None => (0, seq, starts.to_vec()),
        };
        assert_eq!(starts.len(), batch, "forward_hidden: one start per row");
        let positions = positions(&starts, past, seq);
        let (cos, sin) = self.rope.tables(&positions, batch, seq, &device);
        let groups = self.config.num_key_value_groups();
        let mask = attention_mask(&starts, past, seq, columns, groups, &device);

        let mut x = self.embed(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(x, &cos, &sin, &mask, layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(seq);
        }
        self.norm.forward(x)
    }

    /// Token embeddings. `[batch, seq]` → `[batch, seq, hidden]`.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let hidden = self.config.hidden_size;
        self.embed_tokens
            .val()
            .select(0, tokens.reshape([batch * seq]))
            .reshape([batch, seq, hidden])
    }

    /// Output logits of hidden states. `[n, hidden]` → `[n, vocab]`.
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        if let Some(logits) = cpu_forward::logits(self, &hidden) {
            return logits;
        }
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.embed_tokens.val().transpose()),
        }
    }

    /// Value-head estimates of hidden states, `[n, hidden]` → `[n]`; `None` without a value head.
    pub fn values(&self, hidden: Tensor<2>) -> Option<Tensor<1>> {
        let [n, _] = hidden.dims();
        self.value_head
            .as_ref()
            .map(|head| head.forward(hidden).reshape([n]))
    }

    /// Logits at every position of right-padded (or unpadded) sequences.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` → `[batch, seq, vocab]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let hidden = self.forward_hidden(tokens, &vec![0; batch], None);
        let h = self.config.hidden_size;
        self.logits(hidden.reshape([batch * seq, h]))
            .reshape([batch, seq, self.config.vocab_size])
    }

    /// Checks token ids and lengths a forward pass would panic on.
    ///
    /// # Errors
    /// [`Error::Input`] naming the row, the offending id or the length.
    pub fn check_tokens(&self, rows: &[&[u32]]) -> Result<()> {
        let vocab = self.config.vocab_size;
        let max = self.config.max_position_embeddings;
        for (i, row) in rows.iter().enumerate() {
            if let Some(&bad) = row.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Input(format!(
                    "row {i}: token id {bad} is outside the vocabulary (vocab_size {vocab})"
                )));
            }
            if row.len() > max {
                return Err(Error::Input(format!(
                    "row {i}: {} tokens exceed max_position_embeddings {max}",
                    row.len()
                )));
            }
        }
        Ok(())
    }
}

/// `[batch, seq]` int tensor from token rows of equal length.
pub(crate) fn token_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let seq = rows.first().map_or(0, Vec::len);
    let data: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), seq]), device)
}
