//! The learner's scoring pass on kaizen's CPU kernels: a forward pass that keeps what its
//! backward needs, and a hand-written backward pass that produces every parameter's gradient.
//!
//! burn's autodiff records ~40 tensor operations per decoder block and runs each backward step
//! as separate element-wise passes, single-threaded below its size thresholds; on 2 cores that
//! bookkeeping took more time than the matrix products (a profile of the learner's pass had the
//! products at ~45% of its time). Here the whole pass is one program over host buffers:
//!
//! - **Packed tokens, shared prompts.** The rows of a [`ScoreBatch`] are packed without padding.
//!   Rows with the same context before their first scored token (a GRPO group) form a cluster
//!   whose prefix is computed once; each row's suffix attends to its cluster's prefix and to
//!   itself. A row stops at its last scored token's predictor (later tokens cannot change any
//!   scored log-prob).
//! - **Products** go to the packing GEMM (`gemm` crate), parallel over the rayon pool; weight
//!   gradients accumulate straight into their buffers (`dW += dYᵀ·X`). With
//!   [`TrainProducts::bf16`] (bf16 mixed precision) their operands are rounded to bfloat16
//!   and summed in f32 on AMX tiles or with AVX512-BF16 where the CPU has them.
//! - **Attention** (causal, grouped-query) keeps only the log-sum-exp of each query's scores and
//!   recomputes the probabilities in the backward pass (as FlashAttention does, Dao et al. 2022,
//!   <https://arxiv.org/abs/2205.14135>), parallel over clusters.
//! - **Element-wise steps** (RMSNorm, rotary positions, SwiGLU, log-softmax) are fused loops,
//!   parallel over rows.
//!
//! The result equals [`crate::score_with`] plus burn's backward on the same model up to float
//! reassociation; `tests/cpu_train.rs` compares log-probs, entropies and every parameter's
//! gradient on tied and untied models, with and without q/k/v biases, shared prefixes and
//! temperature.
//!
//! The value head (PPO's critic, `V = w · h + b` on the final hidden state) is part of the pass:
//! its estimates come out as an autodiff leaf like the log-probs, and its gradient flows into
//! the shared trunk.
//!
//! Applies to float32 models on the flex device with autodiff, without biases outside q/k/v
//! ([`CpuScorePass::applies`]); the learner falls back to burn's path otherwise.
//!
//! This file holds the pass itself ([`CpuScorePass`]: the forward and backward drivers) and the
//! per-block saved state; its parts live in submodules: `packing` (the [`ScoreBatch`] packing
//! above), `attention` (the attention forward and backward), `ops` (products, RMSNorm, rotary
//! positions, SwiGLU and vector helpers) and `grads` (the parameter views' order and the
//! [`CpuGrads`] buffers).

use burn::module::ParamId;
use burn::tensor::{Gradients, Tensor, TensorData};
use rayon::prelude::*;

use crate::cpu_forward::{HostView, LlamaWeights};
use crate::cpu_kernels;
use crate::llama::Llama;
use crate::score::{ScoreBatch, ScoreOptions, Scores};
use crate::{Error, Result};

mod attention;
mod grads;
mod ops;
mod packing;

use attention::{attention_backward, attention_forward};
pub use grads::CpuGrads;
pub use ops::TrainProducts;
use ops::{
    add_bias, add_in_place, axpy, column_sums_acc, dot, linear, matmul_nn, matmul_nn_acc,
    matmul_tn_acc, norm_apply, rms_norm_backward, rms_norm_rows, rope_rows, swiglu,
    swiglu_backward,
};
use packing::Packing;

/// Host views of every parameter a scoring pass reads (the model's values, not copies) with
/// their ids: the model's one weight structure ([`LlamaWeights`]) with parameter ids.
type ModelParams = LlamaWeights<(HostView, ParamId)>;

/// The gradients of a pass's outputs (from the loss's backward), each `[n]` when present.
#[derive(Clone, Copy)]
struct Upstream<'a> {
    logprobs: Option<&'a [f32]>,
    entropy: Option<&'a [f32]>,
    values: Option<&'a [f32]>,
}

/// The gradient buffers of one decoder block.
struct LayerGrads<'a> {
    input_norm: &'a mut [f32],
    q: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    qkv_bias: Option<[&'a mut [f32]; 3]>,
    o: &'a mut [f32],
    post_norm: &'a mut [f32],
    gate: &'a mut [f32],
    up: &'a mut [f32],
    down: &'a mut [f32],
}

/// What the backward pass needs from one decoder block's forward pass.
#[derive(Debug)]
struct LayerSaved {
    /// Block input (residual stream), `[N, hidden]`.
    x: Vec<f32>,
    /// `1/rms` of `x`'s rows, `[N]`.
    inv_rms1: Vec<f32>,
    /// Queries and keys after rotary positions, values: `[N, heads·d]`, `[N, kv·d]`, `[N, kv·d]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output before `o_proj`, `[N, heads·d]`.
    attn: Vec<f32>,
    /// Log-sum-exp of each query's scaled scores, `[N, heads]`.
    lse: Vec<f32>,
    /// Residual stream after attention, `[N, hidden]`.
    h: Vec<f32>,
    /// `1/rms` of `h`'s rows, `[N]`.
    inv_rms2: Vec<f32>,
    /// `gate_proj` and `up_proj` outputs, `[N, intermediate]`.
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Model shapes the kernels use.
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    inter: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    eps: f32,
}

/// A scoring pass on the CPU kernels, holding what its backward needs (see the module docs).
#[derive(Debug)]
pub struct CpuScorePass {
    params: ModelParams,
    dims: Dims,
    cos_sin: (Vec<f32>, Vec<f32>),
    packing: Packing,
    layers: Vec<LayerSaved>,
    /// Final-norm input, `[N, hidden]`, and its rows' `1/rms`.
    last: Vec<f32>,
    inv_rms_last: Vec<f32>,
    /// Final hidden states of the scored tokens' predictors, `[n, hidden]`.
    hs: Vec<f32>,
    /// Scaled logits `z = logits / T` of the scored tokens, `[n, vocab]`, and their
    /// log-sum-exp and entropy.
    z: Vec<f32>,
    lse: Vec<f32>,
    entropy: Vec<f32>,
    temperature: f32,
    /// How the products are computed (f32 or bf16 mixed precision).
    products: TrainProducts,
    /// The autodiff leaves handed out as [`Scores::logprobs`], [`Scores::entropy`] and
    /// [`Scores::values`].
    logprobs_leaf: Option<Tensor<1>>,
    entropy_leaf: Option<Tensor<1>>,
    values_leaf: Option<Tensor<1>>,
}

impl CpuScorePass {
    /// Whether `model` can be trained on this path: float32 weights on the flex device under
    /// autodiff, biases only on q/k/v (and on the value head, which must have one).
    pub fn applies(model: &Llama) -> bool {
        model.device().is_autodiff() && ModelParams::of(model).is_some()
    }

    /// Scores `batch` as [`crate::score_with`] does and keeps the activations for
    /// [`CpuScorePass::backward`]. The returned [`Scores`]' log-probs (and entropy) are autodiff
    /// leaves: build the loss on them, call `loss.backward()`, then hand the gradients to
    /// [`CpuScorePass::backward`]. With a value head, `Scores::values` is a leaf too:
    /// `V(s_t) = w · h_{t−1} + b` on the final-norm hidden state of each scored token's
    /// predictor, as [`crate::score_with`] computes it.
    ///
    /// Returns `Ok(None)` where the path does not apply ([`CpuScorePass::applies`]).
    ///
    /// # Errors
    /// As [`crate::score_with`]: masks that do not match their rows, a scored first token, a
    /// token id outside the vocabulary, a row beyond the context, a temperature that is not
    /// finite and > 0.
    pub fn forward(
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
    ) -> Result<Option<(Scores, Self)>> {
        Self::forward_with(model, batch, options, &TrainProducts::f32())
    }

    /// [`CpuScorePass::forward`] with its products (and later its backward's) computed as
    /// `products` says: f32, or bf16 mixed precision sharing `products`' weight packs (valid
    /// while `model`'s weights do not change).
    ///
    /// # Errors
    /// As [`CpuScorePass::forward`].
    pub fn forward_with(
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
        products: &TrainProducts,
    ) -> Result<Option<(Scores, Self)>> {
        crate::score::validate(model, batch, options.temperature)?;
        if !model.device().is_autodiff() {
            return Ok(None);
        }
        let Some(mut pass) = Self::prepare(model, batch, options, products) else {
            return Ok(None);
        };
        // Run on a pool thread so that parallel regions fork from inside the pool.
        let logprobs = rayon::scope(|_| pass.run_forward());
        let n = logprobs.len();
        let device = model.device();
        let leaf =
            |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [n]), &device).require_grad();
        let logprobs = leaf(logprobs);
        pass.logprobs_leaf = Some(logprobs.clone());
        pass.entropy_leaf = options.with_entropy.then(|| leaf(pass.entropy.clone()));
        pass.values_leaf = pass.values().map(leaf);
        let scores = Scores {
            logprobs,
            entropy: pass.entropy_leaf.clone(),
            values: pass.values_leaf.clone(),
            rows: pass.packing.rows.clone(),
        };
        Ok(Some((scores, pass)))
    }

    /// The pass before its forward: parameter views, shapes, packing and rotary tables;
    /// `None` where a parameter is not a float32 flex tensor.
    fn prepare(
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
        products: &TrainProducts,
    ) -> Option<Self> {
        let params = ModelParams::of(model)?;
        let config = model.config();
        let dims = Dims {
            hidden: config.hidden_size,
            inter: config.intermediate_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim(),
            vocab: config.vocab_size,
            eps: config.rms_norm_eps as f32,
        };
        let packing = Packing::new(batch, options.share_prefixes);
        let d = dims.head_dim;
        let mut cos = Vec::with_capacity(packing.positions.len() * d);
        let mut sin = Vec::with_capacity(packing.positions.len() * d);
        for &p in &packing.positions {
            let (c, s) = model.rope().row(p);
            cos.extend_from_slice(c);
            sin.extend_from_slice(s);
        }
        Some(Self {
            params,
            dims,
            cos_sin: (cos, sin),
            packing,
            layers: Vec::new(),
            last: Vec::new(),
            inv_rms_last: Vec::new(),
            hs: Vec::new(),
            z: Vec::new(),
            lse: Vec::new(),
            entropy: Vec::new(),
            temperature: options.temperature,
            products: products.clone(),
            logprobs_leaf: None,
            entropy_leaf: None,
            values_leaf: None,
        })
    }

    /// Scores `batch` as [`crate::score_with`] does, for a model nothing is back-propagated
    /// into (a frozen KL reference, with or without autodiff): the returned tensors are
    /// plain, and nothing is kept. `products` as in [`CpuScorePass::forward_with`].
    ///
    /// Returns `Ok(None)` where a parameter is not a float32 flex tensor.
    ///
    /// # Errors
    /// As [`CpuScorePass::forward`].
    pub fn score_detached(
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
        products: &TrainProducts,
    ) -> Result<Option<Scores>> {
        crate::score::validate(model, batch, options.temperature)?;
        let Some(mut pass) = Self::prepare(model, batch, options, products) else {
            return Ok(None);
        };
        let logprobs = rayon::scope(|_| pass.run_forward());
        let n = logprobs.len();
        let device = model.device();
        let plain = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [n]), &device);
        Ok(Some(Scores {
            logprobs: plain(logprobs),
            entropy: options.with_entropy.then(|| plain(pass.entropy.clone())),
            values: pass.values().map(plain),
            rows: pass.packing.rows.clone(),
        }))
    }

    /// Back-propagates the loss whose gradients are `grads` (from `loss.backward()`, the loss
    /// built on this pass's [`Scores`]) through the model and adds every parameter's gradient
    /// to `into`.
    ///
    /// # Errors
    /// [`Error::Input`] when `into` was made for another model (its sizes differ).
    pub fn backward(self, grads: &Gradients, into: &mut CpuGrads) -> Result<()> {
        let host = |t: Option<Tensor<1>>| -> Option<Vec<f32>> {
            t.and_then(|t| t.into_data().try_into_vec::<f32>().ok())
        };
        let d_logprobs = host(self.logprobs_leaf.as_ref().and_then(|l| l.grad(grads)));
        let d_entropy = host(self.entropy_leaf.as_ref().and_then(|e| e.grad(grads)));
        let d_values = host(self.values_leaf.as_ref().and_then(|v| v.grad(grads)));
        if d_logprobs.is_none() && d_entropy.is_none() && d_values.is_none() {
            return Ok(());
        }
        let expected: Vec<usize> = self.params.ids().iter().map(|(_, n, _)| *n).collect();
        let got: Vec<usize> = into.grads.iter().map(|(_, _, v)| v.len()).collect();
        if expected != got {
            return Err(Error::Input(
                "CpuScorePass::backward: the gradient buffers belong to another model".into(),
            ));
        }
        let d = Upstream {
            logprobs: d_logprobs.as_deref(),
            entropy: d_entropy.as_deref(),
            values: d_values.as_deref(),
        };
        rayon::scope(|_| self.run_backward(d, into));
        Ok(())
    }

    /// The value head's estimates `w · hs_i + b` of the scored tokens' predictors, `[n]`;
    /// `None` without a value head.
    fn values(&self) -> Option<Vec<f32>> {
        let (weight, bias) = self.params.value_head.as_ref()?;
        let (w, b) = (weight.0.data(), bias.0.data()[0]);
        Some(
            self.hs
                .chunks_exact(self.dims.hidden)
                .map(|h| dot(h, w) + b)
                .collect(),
        )
    }

    fn run_forward(&mut self) -> Vec<f32> {
        let Dims {
            hidden,
            inter,
            heads,
            kv_heads,
            head_dim: d,
            vocab,
            eps,
        } = self.dims;
        let n_tok = self.packing.tokens.len();
        let embed = self.params.embed.0.data();
        let mut x = vec![0.0f32; n_tok * hidden];
        for (row, &t) in x.chunks_exact_mut(hidden).zip(&self.packing.tokens) {
            let t = t as usize;
            row.copy_from_slice(&embed[t * hidden..(t + 1) * hidden]);
        }
        let (cos, sin) = (&self.cos_sin.0, &self.cos_sin.1);
        for layer in &self.params.layers {
            let (xn1, inv_rms1) = rms_norm_rows(&x, layer.input_norm.0.data(), eps);
            let mut q = linear(&xn1, hidden, layer.q.0.data(), &self.products);
            let mut k = linear(&xn1, hidden, layer.k.0.data(), &self.products);
            let mut v = linear(&xn1, hidden, layer.v.0.data(), &self.products);
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                add_bias(&mut q, bq.0.data());
                add_bias(&mut k, bk.0.data());
                add_bias(&mut v, bv.0.data());
            }
            rope_rows(&mut q, heads, d, cos, sin, false);
            rope_rows(&mut k, kv_heads, d, cos, sin, false);
            let mut attn = vec![0.0f32; n_tok * heads * d];
            let mut lse = vec![0.0f32; n_tok * heads];
            attention_forward(&self.packing, self.dims, &q, &k, &v, &mut attn, &mut lse);
            let mut h = linear(&attn, heads * d, layer.o.0.data(), &self.products);
            add_in_place(&mut h, &x);
            let (xn2, inv_rms2) = rms_norm_rows(&h, layer.post_norm.0.data(), eps);
            let gate = linear(&xn2, hidden, layer.gate.0.data(), &self.products);
            let up = linear(&xn2, hidden, layer.up.0.data(), &self.products);
            let act = swiglu(&gate, &up);
            let mut next = linear(&act, inter, layer.down.0.data(), &self.products);
            add_in_place(&mut next, &h);
            self.layers.push(LayerSaved {
                x: std::mem::replace(&mut x, next),
                inv_rms1,
                q,
                k,
                v,
                attn,
                lse,
                h,
                inv_rms2,
                gate,
                up,
            });
        }
        let (xf, inv_rms_last) = rms_norm_rows(&x, self.params.norm.0.data(), eps);
        self.last = x;
        self.inv_rms_last = inv_rms_last;
        let n = self.packing.predictors.len();
        let mut hs = vec![0.0f32; n * hidden];
        for (row, &p) in hs.chunks_exact_mut(hidden).zip(&self.packing.predictors) {
            row.copy_from_slice(&xf[p * hidden..(p + 1) * hidden]);
        }
        let head = self.params.lm_head.as_ref().unwrap_or(&self.params.embed);
        let mut z = linear(&hs, hidden, head.0.data(), &self.products);
        self.hs = hs;
        let inv_t = 1.0 / self.temperature;
        let mut lse = vec![0.0f32; n];
        let mut entropy = vec![0.0f32; n];
        let mut logprobs = vec![0.0f32; n];
        z.par_chunks_mut(vocab)
            .zip(lse.par_iter_mut())
            .zip(entropy.par_iter_mut())
            .zip(logprobs.par_iter_mut())
            .zip(self.packing.targets.par_iter())
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(weights, blocks), ((((row, lse), entropy), logprob), &target)| {
                    // z = logits / T; w_j = e^{z_j − max z}; lse = max z + ln Σw;
                    // H = −Σ p log p = ln Σw − Σ w (z − max z) / Σw.
                    let max = cpu_kernels::max(row);
                    weights.resize(row.len(), 0.0);
                    blocks.clear();
                    let sums = cpu_kernels::exp_weights(row, max, inv_t, weights, blocks);
                    for v in row.iter_mut() {
                        *v *= inv_t;
                    }
                    let l = max * inv_t + (sums.total as f32).ln();
                    *lse = l;
                    *entropy = (sums.total.ln() - sums.weighted / sums.total) as f32;
                    *logprob = row[target as usize] - l;
                },
            );
        self.z = z;
        self.lse = lse;
        self.entropy = entropy;
        logprobs
    }

    fn run_backward(&self, upstream: Upstream<'_>, into: &mut CpuGrads) {
        let Upstream {
            logprobs: d_lp,
            entropy: d_ent,
            values: d_values,
        } = upstream;
        let Dims {
            hidden,
            inter,
            heads,
            kv_heads,
            head_dim: d,
            vocab,
            eps: _,
        } = self.dims;
        let n = self.packing.predictors.len();
        let n_tok = self.packing.tokens.len();
        let tied = self.params.lm_head.is_none();
        let mut buffers: Vec<&mut [f32]> = into.buffers().collect();
        // Same order as `ModelParams::ids`: embed, per layer (in_norm, q, k, v, [bq, bk, bv],
        // o, post_norm, gate, up, down), norm, [lm_head], [value head weight, bias].
        let value_head_grad = match self.params.value_head {
            Some(_) => {
                let bias = buffers.pop().unwrap_or_default();
                let weight = buffers.pop().unwrap_or_default();
                Some((weight, bias))
            }
            None => None,
        };
        let lm_head_grad = if tied { None } else { buffers.pop() };
        let norm_grad = buffers.pop().unwrap_or_default();
        let mut it = buffers.into_iter();
        let embed_grad = it.next().unwrap_or_default();
        let mut layer_grads = Vec::new();
        for layer in &self.params.layers {
            let mut next = || it.next().unwrap_or_default();
            let (input_norm, q, k, v) = (next(), next(), next(), next());
            let qkv_bias = layer.qkv_bias.as_ref().map(|_| [next(), next(), next()]);
            layer_grads.push(LayerGrads {
                input_norm,
                q,
                k,
                v,
                qkv_bias,
                o: next(),
                post_norm: next(),
                gate: next(),
                up: next(),
                down: next(),
            });
        }

        // Log-softmax and entropy: with p = softmax(z), z = logits / T,
        //   ∂ log p_x / ∂z_j = 1[j = x] − p_j,   ∂H / ∂z_j = −p_j (log p_j + H),
        // and ∂/∂logits = (∂/∂z) / T.
        let inv_t = 1.0 / self.temperature;
        let mut dz = self.z.clone();
        dz.par_chunks_mut(vocab).enumerate().for_each(|(i, row)| {
            let g_lp = d_lp.map_or(0.0, |g| g[i]);
            let g_ent = d_ent.map_or(0.0, |g| g[i]);
            cpu_kernels::softmax_backward(row, self.lse[i], self.entropy[i], g_lp, g_ent, inv_t);
            row[self.packing.targets[i] as usize] += g_lp * inv_t;
        });
        let head = self.params.lm_head.as_ref().unwrap_or(&self.params.embed);
        // d hs = dlogits · W_head;  dW_head += dlogitsᵀ · hs.
        let mut d_hs = matmul_nn(&dz, n, vocab, head.0.data(), hidden, &self.products);
        // Value head: V_i = w · hs_i + b, so d hs_i += dV_i · w, dw += Σ_i dV_i · hs_i,
        // db += Σ_i dV_i.
        if let (Some(dv), Some((weight, _)), Some((dw, db))) =
            (d_values, &self.params.value_head, value_head_grad)
        {
            let w = weight.0.data();
            for ((row, h), &g) in d_hs
                .chunks_exact_mut(hidden)
                .zip(self.hs.chunks_exact(hidden))
                .zip(dv)
            {
                axpy(g, w, row);
                axpy(g, h, dw);
                db[0] += g;
            }
        }
        match lm_head_grad {
            Some(g) => matmul_tn_acc(&dz, vocab, &self.hs, hidden, n, g, &self.products),
            None => matmul_tn_acc(&dz, vocab, &self.hs, hidden, n, embed_grad, &self.products),
        }
        drop(dz);
        let mut dxf = vec![0.0f32; n_tok * hidden];
        for (row, &p) in d_hs.chunks_exact(hidden).zip(&self.packing.predictors) {
            add_in_place(&mut dxf[p * hidden..(p + 1) * hidden], row);
        }
        let mut dx = vec![0.0f32; n_tok * hidden];
        rms_norm_backward(
            &self.last,
            &self.inv_rms_last,
            self.params.norm.0.data(),
            &dxf,
            &mut dx,
            norm_grad,
        );
        drop(dxf);

        let (cos, sin) = (&self.cos_sin.0, &self.cos_sin.1);
        for ((layer, saved), grads) in self
            .params
            .layers
            .iter()
            .zip(&self.layers)
            .zip(layer_grads)
            .rev()
        {
            // next = h + down(act), act = SiLU(gate) ⊙ up.
            let act = swiglu(&saved.gate, &saved.up);
            matmul_tn_acc(&dx, hidden, &act, inter, n_tok, grads.down, &self.products);
            drop(act);
            let d_act = matmul_nn(
                &dx,
                n_tok,
                hidden,
                layer.down.0.data(),
                inter,
                &self.products,
            );
            let (d_gate, d_up) = swiglu_backward(&saved.gate, &saved.up, &d_act);
            drop(d_act);
            let xn2 = norm_apply(&saved.h, &saved.inv_rms2, layer.post_norm.0.data());
            matmul_tn_acc(
                &d_gate,
                inter,
                &xn2,
                hidden,
                n_tok,
                grads.gate,
                &self.products,
            );
            matmul_tn_acc(&d_up, inter, &xn2, hidden, n_tok, grads.up, &self.products);
            drop(xn2);
            let mut d_xn2 = matmul_nn(
                &d_gate,
                n_tok,
                inter,
                layer.gate.0.data(),
                hidden,
                &self.products,
            );
            matmul_nn_acc(
                &d_up,
                n_tok,
                inter,
                layer.up.0.data(),
                hidden,
                &mut d_xn2,
                &self.products,
            );
            drop((d_gate, d_up));
            // dh = dx (residual) + RMSNorm backward of d_xn2.
            let mut dh = dx;
            rms_norm_backward(
                &saved.h,
                &saved.inv_rms2,
                layer.post_norm.0.data(),
                &d_xn2,
                &mut dh,
                grads.post_norm,
            );
            drop(d_xn2);
            // h = x + o(attn).
            matmul_tn_acc(
                &dh,
                hidden,
                &saved.attn,
                heads * d,
                n_tok,
                grads.o,
                &self.products,
            );
            let d_attn = matmul_nn(
                &dh,
                n_tok,
                hidden,
                layer.o.0.data(),
                heads * d,
                &self.products,
            );
            let mut dq = vec![0.0f32; n_tok * heads * d];
            let mut dk = vec![0.0f32; n_tok * kv_heads * d];
            let mut dv = vec![0.0f32; n_tok * kv_heads * d];
            attention_backward(
                &self.packing,
                self.dims,
                saved,
                &d_attn,
                &mut dq,
                &mut dk,
                &mut dv,
            );
            drop(d_attn);
            rope_rows(&mut dq, heads, d, cos, sin, true);
            rope_rows(&mut dk, kv_heads, d, cos, sin, true);
            if let Some([bq, bk, bv]) = grads.qkv_bias {
                column_sums_acc(&dq, bq);
                column_sums_acc(&dk, bk);
                column_sums_acc(&dv, bv);
            }
            let xn1 = norm_apply(&saved.x, &saved.inv_rms1, layer.input_norm.0.data());
            matmul_tn_acc(&dq, heads * d, &xn1, hidden, n_tok, grads.q, &self.products);
            matmul_tn_acc(
                &dk,
                kv_heads * d,
                &xn1,
                hidden,
                n_tok,
                grads.k,
                &self.products,
            );
            matmul_tn_acc(
                &dv,
                kv_heads * d,
                &xn1,
                hidden,
                n_tok,
                grads.v,
                &self.products,
            );
            drop(xn1);
            let mut d_xn1 = matmul_nn(
                &dq,
                n_tok,
                heads * d,
                layer.q.0.data(),
                hidden,
                &self.products,
            );
            matmul_nn_acc(
                &dk,
                n_tok,
                kv_heads * d,
                layer.k.0.data(),
                hidden,
                &mut d_xn1,
                &self.products,
            );
            matmul_nn_acc(
                &dv,
                n_tok,
                kv_heads * d,
                layer.v.0.data(),
                hidden,
                &mut d_xn1,
                &self.products,
            );
            drop((dq, dk, dv));
            rms_norm_backward(
                &saved.x,
                &saved.inv_rms1,
                layer.input_norm.0.data(),
                &d_xn1,
                &mut dh,
                grads.input_norm,
            );
            dx = dh;
        }
        // Embedding: dE[token] += dx0[token's row] (a tied head's part is already in).
        for (row, &t) in dx.chunks_exact(hidden).zip(&self.packing.tokens) {
            let t = t as usize;
            add_in_place(&mut embed_grad[t * hidden..(t + 1) * hidden], row);
        }
    }
}
