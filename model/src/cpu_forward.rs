//! The decoder forward pass on kaizen's CPU kernels ([`crate::cpu_kernels`]), for inference on
//! burn's flex backend.
//!
//! [`CpuWeights`] borrows the weights of a [`Llama`] straight from burn's flex storage (no copy:
//! the tensors' shared buffers are kept alive while the view exists). [`forward_hidden`] then
//! runs embedding → `num_hidden_layers` × (RMSNorm, fused q/k/v product, rotary positions, KV
//! cache write, attention, output product, RMSNorm, fused gate/up product, SwiGLU, down
//! product) → final RMSNorm on host buffers, with the KV cache in host storage
//! ([`KvCache::reserve_host`]). It computes what [`Llama::forward_hidden`] computes with burn
//! ops (same formulas, same order of the steps; sums may be reassociated), which the tests
//! check against the burn path on the same weights.
//!
//! Used only where it applies: float32 weights on the flex device, not under autodiff (the
//! learner's differentiable passes stay on burn).

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use crate::cpu_kernels::{self, AttentionShape, Bf16Matrix, PackedMatrix, Product, Q8Matrix};
use crate::kv_cache::{KvCache, positions};
use crate::llama::Llama;

/// A tensor's values, borrowed from a flex tensor (which stays alive with the view).
#[derive(Debug, Clone)]
pub(crate) struct HostView {
    #[cfg(feature = "flex")]
    tensor: burn::backend::flex::FlexTensor,
    #[cfg(feature = "flex")]
    range: std::ops::Range<usize>,
    /// Without the flex backend there is nothing to view.
    #[cfg(not(feature = "flex"))]
    _none: std::convert::Infallible,
}

impl HostView {
    /// The view of a parameter; see [`HostView::of_tensor`].
    fn of<const D: usize>(param: &Param<Tensor<D>>) -> Option<Self> {
        Self::of_tensor(param.val())
    }

    /// The view of a float32, contiguous tensor on the flex device that autodiff does not
    /// track; `None` for any other.
    #[cfg(feature = "flex")]
    pub(crate) fn of_tensor<const D: usize>(tensor: Tensor<D>) -> Option<Self> {
        let tensor = tensor.try_into_primitive::<burn::backend::Flex>().ok()?;
        let layout = tensor.layout();
        if tensor.dtype() != burn::tensor::DType::F32 || !layout.is_contiguous() {
            return None;
        }
        let start = layout.start_offset();
        let range = start..start + layout.num_elements();
        Some(Self { tensor, range })
    }

    #[cfg(not(feature = "flex"))]
    pub(crate) fn of_tensor<const D: usize>(_tensor: Tensor<D>) -> Option<Self> {
        None
    }

    #[cfg(feature = "flex")]
    pub(crate) fn data(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[self.range.clone()]
    }

    #[cfg(not(feature = "flex"))]
    pub(crate) fn data(&self) -> &[f32] {
        match self._none {}
    }
}

/// Calls `f` with the values of `tensor` (a float32, contiguous tensor on the flex device, its
/// autodiff wrapper stripped by the caller), borrowed without a copy even when the buffer is
/// shared; `None` (and `f` is not called) for any other tensor. The learner's optimizer reads
/// the old parameters through this while writing the new ones.
pub fn with_host_values<const D: usize, R>(
    tensor: &Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    HostView::of_tensor(tensor.clone()).map(|view| f(view.data()))
}

/// A parameter as the CPU passes see it: its values ([`HostView`]), and for the training pass
/// also its id ([`burn::module::ParamId`], to hand gradients back to burn's optimizer).
pub(crate) trait WeightView: Sized {
    /// The view of `param`; `None` when it is not a float32, contiguous flex tensor outside
    /// autodiff.
    fn of<const D: usize>(param: &Param<Tensor<D>>) -> Option<Self>;
}

impl WeightView for HostView {
    fn of<const D: usize>(param: &Param<Tensor<D>>) -> Option<Self> {
        HostView::of(param)
    }
}

impl WeightView for (HostView, burn::module::ParamId) {
    fn of<const D: usize>(param: &Param<Tensor<D>>) -> Option<Self> {
        Some((HostView::of_tensor(param.val().inner())?, param.id))
    }
}

/// One decoder block's weights.
#[derive(Debug, Clone)]
pub(crate) struct LayerWeights<W> {
    pub(crate) input_norm: W,
    pub(crate) q: W,
    pub(crate) k: W,
    pub(crate) v: W,
    /// q/k/v biases (Qwen2), all or none.
    pub(crate) qkv_bias: Option<[W; 3]>,
    pub(crate) o: W,
    pub(crate) post_norm: W,
    pub(crate) gate: W,
    pub(crate) up: W,
    pub(crate) down: W,
}

/// Every weight of a [`Llama`] that the CPU passes read, as `W`: the one structure of the model's
/// weights that inference ([`CpuWeights`]) and training (`cpu_train`, with parameter ids) share.
#[derive(Debug, Clone)]
pub(crate) struct LlamaWeights<W> {
    pub(crate) embed: W,
    pub(crate) layers: Vec<LayerWeights<W>>,
    pub(crate) norm: W,
    /// `None` when the output projection is tied to `embed`.
    pub(crate) lm_head: Option<W>,
    /// The scalar value head's weight `[1, hidden]` and bias `[1]` (PPO's critic); `None`
    /// without one. Inference ignores it; the training pass computes and trains it.
    pub(crate) value_head: Option<(W, W)>,
}

impl<W: WeightView> LlamaWeights<W> {
    /// The views of `model`'s weights, or `None` when one cannot be viewed or the model has a
    /// bias the CPU passes do not implement (only q/k/v may carry one, as in Qwen2).
    pub(crate) fn collect(model: &Llama) -> Option<Self> {
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let attn = &layer.self_attn;
                let mlp = &layer.mlp;
                if [&attn.o_proj, &mlp.gate_proj, &mlp.up_proj, &mlp.down_proj]
                    .iter()
                    .any(|l| l.bias.is_some())
                {
                    return None;
                }
                let qkv_bias = match (&attn.q_proj.bias, &attn.k_proj.bias, &attn.v_proj.bias) {
                    (None, None, None) => None,
                    (Some(q), Some(k), Some(v)) => Some([W::of(q)?, W::of(k)?, W::of(v)?]),
                    _ => return None,
                };
                Some(LayerWeights {
                    input_norm: W::of(&layer.input_layernorm.weight)?,
                    q: W::of(&attn.q_proj.weight)?,
                    k: W::of(&attn.k_proj.weight)?,
                    v: W::of(&attn.v_proj.weight)?,
                    qkv_bias,
                    o: W::of(&attn.o_proj.weight)?,
                    post_norm: W::of(&layer.post_attention_layernorm.weight)?,
                    gate: W::of(&mlp.gate_proj.weight)?,
                    up: W::of(&mlp.up_proj.weight)?,
                    down: W::of(&mlp.down_proj.weight)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let lm_head = match &model.lm_head {
            Some(head) if head.bias.is_some() => return None,
            Some(head) => Some(W::of(&head.weight)?),
            None => None,
        };
        let value_head = match &model.value_head {
            Some(head) => Some((W::of(&head.weight)?, W::of(head.bias.as_ref()?)?)),
            None => None,
        };
        Some(Self {
            embed: W::of(&model.embed_tokens)?,
            layers,
            norm: W::of(&model.norm.weight)?,
            lm_head,
            value_head,
        })
    }
}

/// Zero-copy host views of every weight of a [`Llama`] that the forward pass and the output
/// projection read.
pub(crate) type CpuWeights = LlamaWeights<HostView>;

impl CpuWeights {
    /// The views of `model`'s weights, or `None` when the CPU kernels do not apply (another
    /// device, autodiff, a dtype other than f32, strided weights, or turned off with
    /// [`Llama::with_cpu_kernels`]).
    pub(crate) fn of(model: &Llama) -> Option<Self> {
        if !model.uses_cpu_kernels() {
            return None;
        }
        Self::collect(model)
    }

    /// Logits of hidden states: `[n, hidden]` → `[n, vocab]`.
    pub(crate) fn logits(&self, hidden: &[f32], hidden_size: usize) -> Vec<f32> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        linear(hidden, hidden_size, head.data())
    }
}

/// The projections of a [`CpuWeights`] (q/k/v/o, gate/up/down and the output head) stored for
/// decoding in a narrower type ([`crate::DecodeWeights`]): int8 in blocks of 32 values of a row
/// (1.125 bytes per weight instead of 4), or bfloat16 with the inputs rounded too (2 bytes; AMX
/// tiles where the CPU has them). Norms, biases and an untied embedding stay f32; a tied
/// embedding is the packed head.
#[derive(Debug, Clone)]
pub(crate) struct QuantizedWeights {
    /// Per layer: q, k, v, o, gate, up, down.
    layers: Vec<[PackedMatrix; 7]>,
    head: PackedMatrix,
    /// Whether the head is the embedding (tied): token lookups then read its packed rows, so
    /// that one matrix stands for both, as in the model.
    tied: bool,
}

impl QuantizedWeights {
    /// Packs `weights`' projections (`hidden`: the model's width, the head's columns) as
    /// `kind` says; `None` for [`crate::DecodeWeights::F32`].
    pub(crate) fn of(
        weights: &CpuWeights,
        hidden: usize,
        kind: crate::DecodeWeights,
    ) -> Option<Self> {
        let pack = |w: &HostView, cols: usize| match kind {
            crate::DecodeWeights::Int8 => {
                Some(PackedMatrix::Int8(Q8Matrix::quantize(w.data(), cols)))
            }
            crate::DecodeWeights::Bf16 => {
                Some(PackedMatrix::Bf16(Bf16Matrix::quantize(w.data(), cols)))
            }
            crate::DecodeWeights::F32 => None,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let inter = l.down.data().len() / hidden;
            let attn = l.o.data().len() / hidden;
            layers.push([
                pack(&l.q, hidden)?,
                pack(&l.k, hidden)?,
                pack(&l.v, hidden)?,
                pack(&l.o, attn)?,
                pack(&l.gate, hidden)?,
                pack(&l.up, hidden)?,
                pack(&l.down, inter)?,
            ]);
        }
        let head = weights.lm_head.as_ref().unwrap_or(&weights.embed);
        Some(Self {
            layers,
            head: pack(head, hidden)?,
            tied: weights.lm_head.is_none(),
        })
    }

    /// Bytes of packed values (and scales).
    pub(crate) fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(PackedMatrix::bytes)
            .sum::<usize>()
            + self.head.bytes()
    }

    /// Logits of hidden states: `[n, hidden]` → `[n, vocab]`, with the packed head.
    pub(crate) fn logits(&self, hidden: &[f32], hidden_size: usize) -> Vec<f32> {
        let n = hidden.len() / hidden_size;
        let mut out = vec![0.0; n * self.head.rows()];
        self.head.matmul(hidden, n, hidden_size, &mut out);
        out
    }

    /// Every projection replaced by its dequantised matrix, by Hugging Face name (what the
    /// int8 decode computes with; [`crate::Llama::with_int8_projections`]).
    pub(crate) fn dequantized(&self, tied: bool) -> Vec<(String, Vec<f32>)> {
        let names = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ];
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, m) in names.iter().zip(layer) {
                out.push((format!("model.layers.{i}.{name}.weight"), m.dequantize()));
            }
        }
        let head = if tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        out.push((head.to_string(), self.head.dequantize()));
        out
    }
}

/// Products of the decoder with f32 or packed projections.
fn project<const N: usize>(
    x: &[f32],
    n: usize,
    k: usize,
    pairs: [(&HostView, Option<&PackedMatrix>, &mut Vec<f32>); N],
) {
    if pairs.iter().all(|(_, q, _)| q.is_some()) {
        for (_, q, out) in pairs {
            if let Some(q) = q {
                q.matmul(x, n, k, out);
            }
        }
        return;
    }
    // On the stack: this runs for every product of every layer of every decode step.
    let mut products = pairs.map(|(w, _, out)| Product {
        weight: w.data(),
        out: out.as_mut_slice(),
    });
    cpu_kernels::matmul_transb(x, n, k, &mut products);
}

/// [`Llama::logits`] on the CPU kernels, or `None` where they do not apply (the model or
/// `hidden` not on the flex device, autodiff, kernels turned off).
pub(crate) fn logits(model: &Llama, hidden: &Tensor<2>) -> Option<Tensor<2>> {
    if !model.uses_cpu_kernels() {
        return None;
    }
    let head = match &model.lm_head {
        Some(head) if head.bias.is_some() => return None,
        Some(head) => HostView::of(&head.weight)?,
        None => HostView::of(&model.embed_tokens)?,
    };
    let input = HostView::of_tensor(hidden.clone())?;
    let [n, width] = hidden.dims();
    let vocab = head.data().len() / width;
    let out = linear(input.data(), width, head.data());
    Some(Tensor::from_data(
        TensorData::new(out, [n, vocab]),
        &hidden.device(),
    ))
}

/// Final hidden states (after the last norm) of `tokens` (`[rows, seq]`, row-major), the next
/// `seq` columns after those in `cache`, which is extended (host storage). As
/// [`Llama::forward_hidden`] with a cache.
///
/// # Shapes
/// Returns `[rows × seq, hidden]`.
///
/// # Panics
/// If `tokens.len() != cache.rows() × seq`, a token id is outside the vocabulary or a position
/// beyond the RoPE table (callers validate input), or the cache holds tensors.
pub(crate) fn forward_hidden(
    model: &Llama,
    weights: &CpuWeights,
    quantized: Option<&QuantizedWeights>,
    tokens: &[u32],
    seq: usize,
    cache: &mut KvCache,
) -> Vec<f32> {
    // Run on a pool thread: the kernels' parallel regions then fork from inside the pool (work
    // stealing) instead of waking the pool from outside at every product.
    rayon::scope(|_| run_layers(model, weights, quantized, tokens, seq, cache))
}

fn run_layers(
    model: &Llama,
    weights: &CpuWeights,
    quantized: Option<&QuantizedWeights>,
    tokens: &[u32],
    seq: usize,
    cache: &mut KvCache,
) -> Vec<f32> {
    let config = model.config();
    let hidden = config.hidden_size;
    let (heads, kv_heads, d) = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim(),
    );
    let inter = config.intermediate_size;
    let eps = config.rms_norm_eps as f32;
    let rows = cache.rows();
    let n = rows * seq;
    assert_eq!(
        tokens.len(),
        n,
        "forward_hidden: one token per row and column"
    );

    cache.reserve_host(seq);
    let (past, capacity) = (cache.len(), cache.capacity());
    let starts = cache.starts().to_vec();
    let mut cos = Vec::with_capacity(n * d);
    let mut sin = Vec::with_capacity(n * d);
    for p in positions(&starts, past, seq) {
        let (c, s) = model.rope().row(p);
        cos.extend_from_slice(c);
        sin.extend_from_slice(s);
    }

    let embed = weights.embed.data();
    let mut h = Vec::with_capacity(n * hidden);
    match quantized.filter(|q| q.tied) {
        Some(q) => {
            h.resize(n * hidden, 0.0);
            for (row, &t) in h.chunks_exact_mut(hidden).zip(tokens) {
                q.head.row_into(t as usize, row);
            }
        }
        None => {
            for &t in tokens {
                h.extend_from_slice(&embed[t as usize * hidden..(t as usize + 1) * hidden]);
            }
        }
    }
    let mut x = vec![0.0; n * hidden];
    let mut q = vec![0.0; n * heads * d];
    let mut k = vec![0.0; n * kv_heads * d];
    let mut v = vec![0.0; n * kv_heads * d];
    let mut attn = vec![0.0; n * heads * d];
    let mut proj = vec![0.0; n * hidden];
    let mut gate = vec![0.0; n * inter];
    let mut up = vec![0.0; n * inter];
    let shape = AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
        capacity,
        past,
        seq,
    };

    for (l, w) in weights.layers.iter().enumerate() {
        // h = h + Attn(RMSNorm(h))
        let ql = quantized.map(|qw| &qw.layers[l]);
        let q8 = |i: usize| ql.map(|m| &m[i]);
        cpu_kernels::rms_norm(&h, w.input_norm.data(), eps, &mut x);
        project(
            &x,
            n,
            hidden,
            [
                (&w.q, q8(0), &mut q),
                (&w.k, q8(1), &mut k),
                (&w.v, q8(2), &mut v),
            ],
        );
        if let Some([bq, bk, bv]) = &w.qkv_bias {
            add_bias(&mut q, bq.data());
            add_bias(&mut k, bk.data());
            add_bias(&mut v, bv.data());
        }
        cpu_kernels::rope(&mut q, heads, d, &cos, &sin);
        cpu_kernels::rope(&mut k, kv_heads, d, &cos, &sin);
        let (k_cache, v_cache) = cache.host_layer_mut(l);
        write_columns(&k, k_cache, rows, shape);
        write_columns(&v, v_cache, rows, shape);
        cpu_kernels::attention(&q, k_cache, v_cache, &starts, shape, &mut attn);
        project(&attn, n, heads * d, [(&w.o, q8(3), &mut proj)]);
        add_in_place(&mut h, &proj);

        // h = h + MLP(RMSNorm(h))
        cpu_kernels::rms_norm(&h, w.post_norm.data(), eps, &mut x);
        project(
            &x,
            n,
            hidden,
            [(&w.gate, q8(4), &mut gate), (&w.up, q8(5), &mut up)],
        );
        cpu_kernels::silu_mul(&mut gate, &up);
        project(&gate, n, inter, [(&w.down, q8(6), &mut proj)]);
        add_in_place(&mut h, &proj);
    }
    cache.advance(seq);
    cpu_kernels::rms_norm(&h, weights.norm.data(), eps, &mut x);
    x
}

/// Copies the new keys (or values) `[rows, seq, kv_heads, d]` into cache columns
/// `past..past + seq` of `[rows, kv_heads, capacity, d]`.
fn write_columns(new: &[f32], cache: &mut [f32], rows: usize, shape: AttentionShape) {
    let (heads, d, capacity) = (shape.kv_heads, shape.head_dim, shape.capacity);
    let (past, seq) = (shape.past, shape.seq);
    for b in 0..rows {
        for t in 0..seq {
            for h in 0..heads {
                let src = ((b * seq + t) * heads + h) * d;
                let dst = ((b * heads + h) * capacity + past + t) * d;
                cache[dst..dst + d].copy_from_slice(&new[src..src + d]);
            }
        }
    }
}

/// `x · Wᵀ` into a new buffer: `x: [n, k]`, `W: [out, k]` → `[n, out]`.
fn linear(x: &[f32], k: usize, weight: &[f32]) -> Vec<f32> {
    let n = x.len() / k;
    let mut out = vec![0.0; n * (weight.len() / k)];
    cpu_kernels::matmul_transb(
        x,
        n,
        k,
        &mut [Product {
            weight,
            out: &mut out,
        }],
    );
    out
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
