//! The training pass's driver, written once over [`TrainOps`]: the parameters ([`Weights`]),
//! the forward that keeps what the backward needs ([`Activations`]), and the hand-written
//! backward — the same sequence of operations as `kaizen_model::CpuScorePass`, on packed rows
//! scored in full ([`RowPacking`]).
//!
//! # Products in cuBLAS's terms
//! Buffers are row-major; cuBLAS is column-major, so a row-major `[r, c]` matrix is a
//! column-major `c × r` one with leading dimension `c`. The three products of a projection
//! `y = x Wᵀ` (`x: [rows, d_in]`, `W: [d_out, d_in]`):
//!
//! | product | column-major form | `transa, transb` | `m, n, k` | `A, lda` | `B, ldb` | `ldc` |
//! |---|---|---|---|---|---|---|
//! | `y = x Wᵀ` | `yᵀ = op_T(W) xᵀ` | T, N | `d_out, rows, d_in` | `W, d_in` | `x, d_in` | `d_out` |
//! | `dx = dy W` | `dxᵀ = Wᵀ dyᵀ` | N, N | `d_in, rows, d_out` | `W, d_in` | `dy, d_out` | `d_in` |
//! | `dW += dyᵀ x` | `dWᵀ += xᵀ op_T(dyᵀ)` | N, T | `d_in, d_out, rows` | `x, d_in` | `dy, d_out` | `d_in` |

use kaizen_model::{HostTensor, LlamaConfig, ScoreBatch};

use super::kernels::MAX_SHARED_FLOATS;
use super::ops::{AttentionRows, AttentionSaved, AttentionShape, Gemm, TrainOps, Transpose};
use super::packing::RowPacking;
use crate::GpuError;
use crate::layer_weights::NamedTensors;

/// One buffer per parameter of a Llama-family model, in the order of
/// `kaizen_model::CpuGrads` (embedding; per layer input norm, q, k, v, [q/k/v biases], o,
/// post-attention norm, gate, up, down; final norm; [untied head]). Holds the weights, their
/// gradients or an optimizer moment.
#[derive(Debug)]
pub struct Weights<B> {
    embed: B,
    layers: Vec<LayerWeights<B>>,
    norm: B,
    lm_head: Option<B>,
}

#[derive(Debug)]
struct LayerWeights<B> {
    input_norm: B,
    q: B,
    k: B,
    v: B,
    qkv_bias: Option<[B; 3]>,
    o: B,
    post_norm: B,
    gate: B,
    up: B,
    down: B,
}

impl<B> Weights<B> {
    /// Builds every buffer in order with `make(hf_name, shape)`.
    pub(super) fn build(
        config: &LlamaConfig,
        mut make: impl FnMut(&str, &[usize]) -> Result<B, GpuError>,
    ) -> Result<Self, GpuError> {
        let layout = layout(config);
        let mut it = layout.iter();
        let mut next = || {
            let (name, shape) = it
                .next()
                .expect("layout() lists every parameter build() takes");
            make(name, shape)
        };
        let embed = next()?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let (input_norm, q, k, v) = (next()?, next()?, next()?, next()?);
            let qkv_bias = if config.attention_bias {
                Some([next()?, next()?, next()?])
            } else {
                None
            };
            layers.push(LayerWeights {
                input_norm,
                q,
                k,
                v,
                qkv_bias,
                o: next()?,
                post_norm: next()?,
                gate: next()?,
                up: next()?,
                down: next()?,
            });
        }
        let norm = next()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(next()?)
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Every buffer, in [`layout`]'s order.
    pub fn tensors(&self) -> Vec<&B> {
        let mut out = vec![&self.embed];
        for l in &self.layers {
            out.extend([&l.input_norm, &l.q, &l.k, &l.v]);
            if let Some(b) = &l.qkv_bias {
                out.extend(b.iter());
            }
            out.extend([&l.o, &l.post_norm, &l.gate, &l.up, &l.down]);
        }
        out.push(&self.norm);
        out.extend(self.lm_head.as_ref());
        out
    }

    /// Every buffer, mutably, in [`layout`]'s order.
    pub fn tensors_mut(&mut self) -> Vec<&mut B> {
        let mut out = vec![&mut self.embed];
        for l in &mut self.layers {
            out.extend([&mut l.input_norm, &mut l.q, &mut l.k, &mut l.v]);
            if let Some(b) = &mut l.qkv_bias {
                out.extend(b.iter_mut());
            }
            out.extend([
                &mut l.o,
                &mut l.post_norm,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        out.push(&mut self.norm);
        out.extend(self.lm_head.as_mut());
        out
    }
}

/// Every parameter's Hugging Face name and shape, in [`Weights`]' order.
pub fn layout(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, hd, inter) = (
        config.hidden_size,
        config.head_dim(),
        config.intermediate_size,
    );
    let (heads, kv) = (config.num_attention_heads, config.num_key_value_heads);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    )];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![heads * hd, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, h]));
        if config.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![heads * hd]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv * hd]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv * hd]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, heads * hd]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, inter]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    }
    out
}

/// What one decoder block's forward keeps for the backward (all `[N, ·]` row-major).
#[derive(Debug)]
struct LayerActivations<B> {
    /// Block input (residual stream), `[N, h]`, and its rows' `1/rms`, `[N]`.
    x: B,
    inv_rms1: B,
    /// `RMSNorm(x)`, `[N, h]`.
    xn1: B,
    /// Queries and keys after rotary positions, values: `[N, heads·d]`, `[N, kv·d]`, `[N, kv·d]`.
    q: B,
    k: B,
    v: B,
    /// Attention output before `o_proj`, `[N, heads·d]`, and its log-sum-exp, `[N, heads]`.
    attn: B,
    lse: B,
    /// Residual stream after attention, `[N, h]`, its rows' `1/rms` and its norm.
    h: B,
    inv_rms2: B,
    xn2: B,
    /// `gate_proj`, `up_proj` outputs and `SiLU(gate) ⊙ up`, `[N, intermediate]`.
    gate: B,
    up: B,
    act: B,
}

/// What a forward pass keeps for [`TrainModel::backward`]: the packed batch's index buffers,
/// every block's activations, and the head's (`[n, ·]` over the `n` scored tokens).
pub struct Activations<O: TrainOps> {
    tokens: O::Index,
    positions: O::Index,
    key_start: O::Index,
    row_end: O::Index,
    predictors: O::Index,
    targets: O::Index,
    /// Packed tokens `N` and scored tokens `n`.
    n_tok: usize,
    n: usize,
    /// The longest packed row.
    longest: usize,
    layers: Vec<LayerActivations<O::Buf>>,
    /// Final-norm input `[N, h]` and its rows' `1/rms`.
    last: O::Buf,
    inv_rms_last: O::Buf,
    /// Final hidden states of the scored tokens' predictors, `[n, h]`.
    hs: O::Buf,
    /// Scaled logits `z = logits / T`, `[n, vocab]`, and their log-sum-exp, `[n]`.
    z: O::Buf,
    lse: O::Buf,
    inv_t: f32,
}

impl<O: TrainOps> Activations<O> {
    /// Scored tokens (the length of the log-probs and of their gradient).
    pub fn scored_tokens(&self) -> usize {
        self.n
    }

    /// Packed tokens the pass ran over.
    pub fn packed_tokens(&self) -> usize {
        self.n_tok
    }
}

/// Model shapes the driver uses.
#[derive(Debug, Clone, Copy)]
struct Dims {
    h: usize,
    inter: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    vocab: usize,
    eps: f32,
}

/// A Llama-family policy's training pass over the operations `O`: its parameters live in
/// `O`'s buffers; [`TrainModel::forward`] scores a batch, [`TrainModel::backward`] adds every
/// parameter's gradient, [`TrainModel::adamw_step`] updates the parameters.
///
/// The loss is built on the host from the log-probs; its gradient with respect to them is what
/// the backward takes. Value heads and entropies are not part of this pass (GRPO needs
/// neither); rows are scored in full (no shared-prompt prefixes: on a GPU the prompt's
/// recomputation is cheaper than the bookkeeping).
pub struct TrainModel<O: TrainOps> {
    pub(super) ops: O,
    config: LlamaConfig,
    dims: Dims,
    pub(super) layout: Vec<(String, Vec<usize>)>,
    pub(super) weights: Weights<O::Buf>,
    /// RoPE tables `[max_position_embeddings, head_dim]`, `kaizen_model::Rope`'s own.
    cos: O::Buf,
    sin: O::Buf,
}

impl<O: TrainOps> TrainModel<O> {
    /// Uploads a model's weights, named as in Hugging Face `LlamaForCausalLM`
    /// (`kaizen_model::Llama::to_named` gives them).
    ///
    /// # Errors
    /// [`GpuError::Input`] for an invalid config, a value head, or a missing or misshaped
    /// tensor (named); the backend's allocation and copy errors.
    pub fn new(
        ops: O,
        config: &LlamaConfig,
        weights: &[(String, HostTensor)],
    ) -> Result<Self, GpuError> {
        config
            .validate()
            .map_err(|e| GpuError::Input(format!("model config: {e}")))?;
        if config.value_head {
            return Err(GpuError::Input(
                "the GPU training pass has no value head (PPO's critic): train it on the CPU \
                 pass"
                    .into(),
            ));
        }
        let named = NamedTensors::new(weights);
        let weights = Weights::build(config, |name, shape| ops.upload(named.get(name, shape)?))?;
        let hd = config.head_dim();
        let rope = kaizen_model::Rope::new(hd, config.max_position_embeddings, config.rope_theta);
        let (cos, sin) = rope.host_tables();
        Ok(Self {
            cos: ops.upload(cos)?,
            sin: ops.upload(sin)?,
            dims: Dims {
                h: config.hidden_size,
                inter: config.intermediate_size,
                heads: config.num_attention_heads,
                kv: config.num_key_value_heads,
                hd,
                vocab: config.vocab_size,
                eps: config.rms_norm_eps as f32,
            },
            layout: layout(config),
            config: config.clone(),
            weights,
            ops,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The operations the pass runs on.
    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// Zero gradients for every parameter (pass them to [`TrainModel::backward`], which adds).
    ///
    /// # Errors
    /// The backend's allocation errors.
    pub fn zero_grads(&self) -> Result<Weights<O::Buf>, GpuError> {
        Weights::build(&self.config, |_, shape| {
            self.ops.alloc(shape.iter().product())
        })
    }

    /// The parameters' current values on the host, by Hugging Face name, in [`layout`]'s
    /// order.
    ///
    /// # Errors
    /// Copy errors.
    pub fn download_weights(&self) -> Result<Vec<(String, Vec<f32>)>, GpuError> {
        self.download(&self.weights)
    }

    /// Any per-parameter buffers (gradients, moments) on the host, by name, in [`layout`]'s
    /// order.
    ///
    /// # Errors
    /// Copy errors.
    pub fn download(&self, w: &Weights<O::Buf>) -> Result<Vec<(String, Vec<f32>)>, GpuError> {
        self.layout
            .iter()
            .zip(w.tensors())
            .map(|((name, _), b)| Ok((name.clone(), self.ops.download(b)?)))
            .collect()
    }

    /// Scores `batch` at temperature `T`: returns the log-prob of every scored token
    /// (`log softmax(logits / T)[x_t]`, row-major as [`ScoreBatch::scored_positions`]) and
    /// the activations [`TrainModel::backward`] needs.
    ///
    /// # Shapes
    /// - returns `[n]` log-probs, `n` = scored tokens.
    ///
    /// # Errors
    /// [`GpuError::Input`] for a batch [`RowPacking`] rejects, no scored token, a temperature
    /// that is not finite and > 0, a row too long for the attention kernels' shared memory;
    /// the backend's errors.
    pub fn forward(
        &self,
        batch: &ScoreBatch,
        temperature: f32,
    ) -> Result<(Vec<f32>, Activations<O>), GpuError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(GpuError::Input(format!(
                "scoring temperature must be finite and > 0, got {temperature}"
            )));
        }
        let Dims {
            h,
            inter,
            heads,
            kv,
            hd,
            vocab,
            eps,
        } = self.dims;
        let packing = RowPacking::new(batch, &self.config)?;
        let group = heads / kv;
        if 2 * packing.longest * group > MAX_SHARED_FLOATS {
            return Err(GpuError::Input(format!(
                "a row of {} tokens is longer than the attention kernels hold ({} with {group} \
                 query heads per key-value head)",
                packing.longest,
                MAX_SHARED_FLOATS / (2 * group)
            )));
        }
        let (n_tok, n) = (packing.tokens.len(), packing.targets.len());
        if n == 0 {
            return Err(GpuError::Input("the batch has no scored token".into()));
        }
        let ops = &self.ops;
        let index = |v: &[u32]| ops.upload_index(v);
        let tokens = index(&packing.tokens)?;
        let positions = index(&packing.positions)?;
        let key_start = index(&packing.key_start)?;
        let row_end = index(&packing.row_end)?;
        let predictors = index(&packing.predictors)?;
        let targets = index(&packing.targets)?;
        let shape = self.attention_shape(n_tok, packing.longest);

        let w = &self.weights;
        let mut x = ops.alloc(n_tok * h)?;
        ops.gather_rows(&mut x, &w.embed, &tokens, n_tok, h)?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for lw in &w.layers {
            // xn1 = RMSNorm(x); q, k, v = xn1 Wᵀ (+ b), rotated.
            let mut xn1 = ops.alloc(n_tok * h)?;
            let mut inv_rms1 = ops.alloc(n_tok)?;
            ops.rms_norm(&mut xn1, &mut inv_rms1, &x, &lw.input_norm, n_tok, h, eps)?;
            let mut q = ops.alloc(n_tok * heads * hd)?;
            let mut k = ops.alloc(n_tok * kv * hd)?;
            let mut v = ops.alloc(n_tok * kv * hd)?;
            self.linear(&lw.q, &xn1, &mut q, n_tok, heads * hd, h, 0.0)?;
            self.linear(&lw.k, &xn1, &mut k, n_tok, kv * hd, h, 0.0)?;
            self.linear(&lw.v, &xn1, &mut v, n_tok, kv * hd, h, 0.0)?;
            if let Some([bq, bk, bv]) = &lw.qkv_bias {
                ops.add_bias(&mut q, bq, n_tok, heads * hd)?;
                ops.add_bias(&mut k, bk, n_tok, kv * hd)?;
                ops.add_bias(&mut v, bv, n_tok, kv * hd)?;
            }
            ops.rope(
                &mut q, &self.cos, &self.sin, &positions, n_tok, heads, hd, false,
            )?;
            ops.rope(
                &mut k, &self.cos, &self.sin, &positions, n_tok, kv, hd, false,
            )?;
            // attn = softmax(q kᵀ / √d) v per row; h = x + attn W_oᵀ.
            let mut attn = ops.alloc(n_tok * heads * hd)?;
            let mut lse = ops.alloc(n_tok * heads)?;
            ops.attention(&mut attn, &mut lse, &q, &k, &v, &key_start, shape)?;
            let mut hb = ops.alloc(n_tok * h)?;
            self.linear(&lw.o, &attn, &mut hb, n_tok, h, heads * hd, 0.0)?;
            ops.add(&mut hb, &x, n_tok * h)?;
            // next = h + down(SiLU(gate(xn2)) ⊙ up(xn2)), xn2 = RMSNorm(h).
            let mut xn2 = ops.alloc(n_tok * h)?;
            let mut inv_rms2 = ops.alloc(n_tok)?;
            ops.rms_norm(&mut xn2, &mut inv_rms2, &hb, &lw.post_norm, n_tok, h, eps)?;
            let mut gate = ops.alloc(n_tok * inter)?;
            let mut up = ops.alloc(n_tok * inter)?;
            self.linear(&lw.gate, &xn2, &mut gate, n_tok, inter, h, 0.0)?;
            self.linear(&lw.up, &xn2, &mut up, n_tok, inter, h, 0.0)?;
            let mut act = ops.alloc(n_tok * inter)?;
            ops.swiglu(&mut act, &gate, &up, n_tok * inter)?;
            let mut next = ops.alloc(n_tok * h)?;
            self.linear(&lw.down, &act, &mut next, n_tok, h, inter, 0.0)?;
            ops.add(&mut next, &hb, n_tok * h)?;
            layers.push(LayerActivations {
                x: std::mem::replace(&mut x, next),
                inv_rms1,
                xn1,
                q,
                k,
                v,
                attn,
                lse,
                h: hb,
                inv_rms2,
                xn2,
                gate,
                up,
                act,
            });
        }
        // Final norm, the scored tokens' predictors, z = hs W_headᵀ / T, log-softmax.
        let mut xf = ops.alloc(n_tok * h)?;
        let mut inv_rms_last = ops.alloc(n_tok)?;
        ops.rms_norm(&mut xf, &mut inv_rms_last, &x, &w.norm, n_tok, h, eps)?;
        let mut hs = ops.alloc(n * h)?;
        ops.gather_rows(&mut hs, &xf, &predictors, n, h)?;
        drop(xf);
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let mut z = ops.alloc(n * vocab)?;
        self.linear(head, &hs, &mut z, n, vocab, h, 0.0)?;
        let mut lse = ops.alloc(n)?;
        let mut logp = ops.alloc(n)?;
        let inv_t = 1.0 / temperature;
        ops.log_softmax(&mut z, &mut lse, &mut logp, &targets, n, vocab, inv_t)?;
        let logprobs = ops.download(&logp)?;
        Ok((
            logprobs,
            Activations {
                tokens,
                positions,
                key_start,
                row_end,
                predictors,
                targets,
                n_tok,
                n,
                longest: packing.longest,
                layers,
                last: x,
                inv_rms_last,
                hs,
                z,
                lse,
                inv_t,
            },
        ))
    }

    /// Back-propagates `d_logprobs` (`∂loss/∂logp`, `[n]`, as [`TrainModel::forward`]
    /// returned them) through the model and adds every parameter's gradient to `grads`.
    ///
    /// # Errors
    /// [`GpuError::Input`] when `d_logprobs` has another length; the backend's errors.
    pub fn backward(
        &self,
        act: Activations<O>,
        d_logprobs: &[f32],
        grads: &mut Weights<O::Buf>,
    ) -> Result<(), GpuError> {
        let Dims {
            h,
            inter,
            heads,
            kv,
            hd,
            vocab,
            eps: _,
        } = self.dims;
        let (n_tok, n) = (act.n_tok, act.n);
        if d_logprobs.len() != n {
            return Err(GpuError::Input(format!(
                "backward: {} log-prob gradients for {n} scored tokens",
                d_logprobs.len()
            )));
        }
        let ops = &self.ops;
        let w = &self.weights;
        let shape = self.attention_shape(n_tok, act.longest);
        let Activations {
            tokens,
            positions,
            key_start,
            row_end,
            predictors,
            targets,
            layers,
            last,
            inv_rms_last,
            hs,
            mut z,
            lse,
            inv_t,
            ..
        } = act;

        // z becomes d logits: (1[j = x] − p_j) · dlogp / T.
        let d_lp = ops.upload(d_logprobs)?;
        ops.log_softmax_backward(&mut z, &lse, &targets, &d_lp, n, vocab, inv_t)?;
        // d hs = dlogits · W_head;  dW_head += dlogitsᵀ · hs (into the embedding when tied).
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let mut d_hs = ops.alloc(n * h)?;
        self.linear_backward_input(head, &z, &mut d_hs, n, vocab, h, 0.0)?;
        let d_head = match &mut grads.lm_head {
            Some(g) => g,
            None => &mut grads.embed,
        };
        self.linear_backward_weight(&z, &hs, d_head, n, vocab, h)?;
        drop(z);
        // The predictors' rows of the final norm's output, then the norm.
        let mut dxf = ops.alloc(n_tok * h)?;
        ops.scatter_add_rows(&mut dxf, &d_hs, &predictors, n, h)?;
        let mut dx = ops.alloc(n_tok * h)?;
        ops.rms_norm_backward(&mut dx, &last, &inv_rms_last, &w.norm, &dxf, n_tok, h)?;
        ops.rms_norm_weight_grad(&mut grads.norm, &last, &inv_rms_last, &dxf, n_tok, h)?;
        drop(dxf);

        for ((lw, s), g) in w
            .layers
            .iter()
            .zip(&layers)
            .zip(grads.layers.iter_mut())
            .rev()
        {
            // next = h + act W_downᵀ: dW_down += dxᵀ act, d act = dx W_down.
            self.linear_backward_weight(&dx, &s.act, &mut g.down, n_tok, h, inter)?;
            let mut d_act = ops.alloc(n_tok * inter)?;
            self.linear_backward_input(&lw.down, &dx, &mut d_act, n_tok, h, inter, 0.0)?;
            let mut d_gate = ops.alloc(n_tok * inter)?;
            let mut d_up = ops.alloc(n_tok * inter)?;
            ops.swiglu_backward(
                &mut d_gate,
                &mut d_up,
                &s.gate,
                &s.up,
                &d_act,
                n_tok * inter,
            )?;
            drop(d_act);
            // gate = xn2 W_gateᵀ, up = xn2 W_upᵀ: weight gradients, then d xn2 summed.
            self.linear_backward_weight(&d_gate, &s.xn2, &mut g.gate, n_tok, inter, h)?;
            self.linear_backward_weight(&d_up, &s.xn2, &mut g.up, n_tok, inter, h)?;
            let mut d_xn2 = ops.alloc(n_tok * h)?;
            self.linear_backward_input(&lw.gate, &d_gate, &mut d_xn2, n_tok, inter, h, 0.0)?;
            self.linear_backward_input(&lw.up, &d_up, &mut d_xn2, n_tok, inter, h, 1.0)?;
            drop((d_gate, d_up));
            // dh = dx (residual) + RMSNorm backward of d xn2: accumulated into dx in place.
            ops.rms_norm_backward(&mut dx, &s.h, &s.inv_rms2, &lw.post_norm, &d_xn2, n_tok, h)?;
            ops.rms_norm_weight_grad(&mut g.post_norm, &s.h, &s.inv_rms2, &d_xn2, n_tok, h)?;
            drop(d_xn2);
            // h = x + attn W_oᵀ.
            self.linear_backward_weight(&dx, &s.attn, &mut g.o, n_tok, h, heads * hd)?;
            let mut d_attn = ops.alloc(n_tok * heads * hd)?;
            self.linear_backward_input(&lw.o, &dx, &mut d_attn, n_tok, h, heads * hd, 0.0)?;
            let mut dq = ops.alloc(n_tok * heads * hd)?;
            let mut dk = ops.alloc(n_tok * kv * hd)?;
            let mut dv = ops.alloc(n_tok * kv * hd)?;
            let mut delta = ops.alloc(n_tok * heads)?;
            let saved = AttentionSaved {
                q: &s.q,
                k: &s.k,
                v: &s.v,
                out: &s.attn,
                lse: &s.lse,
            };
            let rows = AttentionRows {
                key_start: &key_start,
                row_end: &row_end,
            };
            ops.attention_backward(
                &mut dq, &mut dk, &mut dv, &mut delta, saved, &d_attn, rows, shape,
            )?;
            drop((d_attn, delta));
            // Back through the rotation (its transpose), then the biases and projections.
            ops.rope(
                &mut dq, &self.cos, &self.sin, &positions, n_tok, heads, hd, true,
            )?;
            ops.rope(
                &mut dk, &self.cos, &self.sin, &positions, n_tok, kv, hd, true,
            )?;
            if let Some([bq, bk, bv]) = &mut g.qkv_bias {
                ops.column_sums(bq, &dq, n_tok, heads * hd)?;
                ops.column_sums(bk, &dk, n_tok, kv * hd)?;
                ops.column_sums(bv, &dv, n_tok, kv * hd)?;
            }
            self.linear_backward_weight(&dq, &s.xn1, &mut g.q, n_tok, heads * hd, h)?;
            self.linear_backward_weight(&dk, &s.xn1, &mut g.k, n_tok, kv * hd, h)?;
            self.linear_backward_weight(&dv, &s.xn1, &mut g.v, n_tok, kv * hd, h)?;
            let mut d_xn1 = ops.alloc(n_tok * h)?;
            self.linear_backward_input(&lw.q, &dq, &mut d_xn1, n_tok, heads * hd, h, 0.0)?;
            self.linear_backward_input(&lw.k, &dk, &mut d_xn1, n_tok, kv * hd, h, 1.0)?;
            self.linear_backward_input(&lw.v, &dv, &mut d_xn1, n_tok, kv * hd, h, 1.0)?;
            drop((dq, dk, dv));
            // dx = dh + RMSNorm backward of d xn1 (in place), the block input's gradient.
            ops.rms_norm_backward(&mut dx, &s.x, &s.inv_rms1, &lw.input_norm, &d_xn1, n_tok, h)?;
            ops.rms_norm_weight_grad(&mut g.input_norm, &s.x, &s.inv_rms1, &d_xn1, n_tok, h)?;
        }
        // Embedding: dE[token] += dx[token's row] (a tied head's part is already in).
        ops.scatter_add_rows(&mut grads.embed, &dx, &tokens, n_tok, h)?;
        Ok(())
    }

    fn attention_shape(&self, tokens: usize, longest_row: usize) -> AttentionShape {
        AttentionShape {
            longest_row,
            tokens,
            heads: self.dims.heads,
            kv_heads: self.dims.kv,
            head_dim: self.dims.hd,
            scale: 1.0 / (self.dims.hd as f32).sqrt(),
        }
    }

    /// `y[rows, d_out] = x[rows, d_in] · W[d_out, d_in]ᵀ (+ β y)`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        w: &O::Buf,
        x: &O::Buf,
        y: &mut O::Buf,
        rows: usize,
        d_out: usize,
        d_in: usize,
        beta: f32,
    ) -> Result<(), GpuError> {
        let g = Gemm {
            transa: Transpose::Yes,
            transb: Transpose::No,
            m: d_out,
            n: rows,
            k: d_in,
            alpha: 1.0,
            lda: d_in,
            ldb: d_in,
            beta,
            ldc: d_out,
        };
        self.ops.gemm(g, w, x, y)
    }

    /// `dx[rows, d_in] = dy[rows, d_out] · W[d_out, d_in] (+ β dx)`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_input(
        &self,
        w: &O::Buf,
        dy: &O::Buf,
        dx: &mut O::Buf,
        rows: usize,
        d_out: usize,
        d_in: usize,
        beta: f32,
    ) -> Result<(), GpuError> {
        let g = Gemm {
            transa: Transpose::No,
            transb: Transpose::No,
            m: d_in,
            n: rows,
            k: d_out,
            alpha: 1.0,
            lda: d_in,
            ldb: d_out,
            beta,
            ldc: d_in,
        };
        self.ops.gemm(g, w, dy, dx)
    }

    /// `dW[d_out, d_in] += dy[rows, d_out]ᵀ · x[rows, d_in]`.
    fn linear_backward_weight(
        &self,
        dy: &O::Buf,
        x: &O::Buf,
        dw: &mut O::Buf,
        rows: usize,
        d_out: usize,
        d_in: usize,
    ) -> Result<(), GpuError> {
        let g = Gemm {
            transa: Transpose::No,
            transb: Transpose::Yes,
            m: d_in,
            n: d_out,
            k: rows,
            alpha: 1.0,
            lda: d_in,
            ldb: d_out,
            beta: 1.0,
            ldc: d_in,
        };
        self.ops.gemm(g, x, dy, dw)
    }
}
