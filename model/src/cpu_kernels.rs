//! kaizen's own CPU kernels for inference: the products, attention and element-wise steps of a
//! decoder forward pass, on plain row-major `f32` slices.
//!
//! burn's CPU backends run a matrix product through a packing GEMM (`gemm` crate) whatever its
//! shape. Decoding multiplies a few rows of activations by every weight matrix (`x · Wᵀ` with
//! `x: [m, k]`, `m` = rows decoding, often 1–64), where packing the weight costs as much as the
//! product and a single call below burn's parallel threshold runs on one core. The kernels here
//! read `W` in its stored `[n, k]` layout without packing, split the output columns over the
//! rayon pool, and serve several weights that share one input (q/k/v, gate/up) in one parallel
//! region. Attention reads each row's keys and values straight from the KV cache, only over the
//! columns that row can see.
//!
//! Each kernel has an AVX2 + FMA version (selected at run time) and a portable one; the decode
//! products also have AVX-512 versions (`avx512`), and bf16 products run on Intel AMX tiles or
//! AVX512-BF16's `VDPBF16PS` (`bf16`) where the CPU has them. All compute the same sums up to float reassociation (tests
//! compare them with each other, with f64 sums and with burn's results).
//!
//! The matrix products (and the skinny kernel attention shares) are in the `matmul` submodule,
//! re-exported here, with int8 weights in `q8` and bf16 in `bf16`; attention and the
//! element-wise steps are in this file.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx512;
mod bf16;
mod matmul;
mod q8;
#[cfg(target_arch = "x86_64")]
mod vexp;

pub(crate) use bf16::{Bf16Matrix, matmul_bf16, matmul_bf16_tn};

/// Whether the CPU has instructions for bf16 products (AMX tiles usable by this process, or
/// AVX512-BF16), rather than running them on the f32 units.
pub(crate) fn bf16_accelerated() -> bool {
    bf16::Bf16Path::best() != bf16::Bf16Path::F32Units
}
#[cfg(target_arch = "x86_64")]
use matmul::avx2;
use matmul::portable;
pub(crate) use matmul::{Product, gemm_raw, gemm_transb, matmul_transb};
pub(crate) use q8::{Q8Matrix, matmul_q8};

/// A projection stored for decoding in a narrower type than f32 (`DecodeWeights`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PackedMatrix {
    /// int8 in blocks of 32 with f32 scales.
    Int8(Q8Matrix),
    /// bfloat16 in AMX's tile layout (inputs rounded to bf16 too).
    Bf16(Bf16Matrix),
}

impl PackedMatrix {
    /// `out = x · Wᵀ` in this matrix's arithmetic: `x: [m, k]`, `out: [m, rows]`.
    pub(crate) fn matmul(&self, x: &[f32], m: usize, k: usize, out: &mut [f32]) {
        match self {
            Self::Int8(q) => matmul_q8(x, m, k, q, out),
            Self::Bf16(b) => matmul_bf16(x, m, k, b, out, false),
        }
    }

    /// Rows (output columns of a product).
    pub(crate) fn rows(&self) -> usize {
        match self {
            Self::Int8(q) => q.rows(),
            Self::Bf16(b) => b.rows(),
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Int8(q) => q.values.len() + 4 * q.scales.len(),
            Self::Bf16(b) => b.bytes(),
        }
    }

    /// The weights this matrix stands for, `[rows, cols]` f32.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Int8(q) => q.dequantize(),
            Self::Bf16(b) => b.dequantize(),
        }
    }

    /// Row `j` as f32 into `out` (`cols` values).
    pub(crate) fn row_into(&self, j: usize, out: &mut [f32]) {
        match self {
            Self::Int8(q) => q.row_into(j, out),
            Self::Bf16(b) => b.row_into(j, out),
        }
    }
}

/// Work below this many multiply-adds runs on the calling thread (a rayon fork costs a few µs).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Splits `out` (`[m, n]`, row-major) into runs of `chunk` consecutive columns (the last may be
/// shorter): for each run, its first column, its width and each row's slice of it (the
/// column tasks the products hand to the rayon pool).
fn column_runs(out: &mut [f32], n: usize, chunk: usize) -> Vec<(usize, usize, Vec<&mut [f32]>)> {
    let mut rows: Vec<&mut [f32]> = out.chunks_mut(n).collect();
    let mut runs = Vec::with_capacity(n.div_ceil(chunk.max(1)));
    let mut start = 0;
    while start < n {
        let len = chunk.max(1).min(n - start);
        let slices = rows
            .iter_mut()
            .map(|row| {
                let (head, tail) = std::mem::take(row).split_at_mut(len);
                *row = tail;
                head
            })
            .collect();
        runs.push((start, len, slices));
        start += len;
    }
    runs
}

/// Whether the AVX2 + FMA kernels can run (cached by the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the AVX-512 products can run (AVX-512F with AVX2 and FMA; cached by the standard
/// library). `KAIZEN_NO_AVX512=1` turns them off (for side-by-side measurements).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && avx2_fma()
            && std::env::var_os("KAIZEN_NO_AVX512").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// Shape of the attention inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Columns allocated per row in the cache.
    pub capacity: usize,
    /// Columns written before this call's queries.
    pub past: usize,
    /// New queries per row.
    pub seq: usize,
}

/// Causal grouped-query attention of `shape.seq` new queries per row over the cached
/// keys/values.
///
/// Query `t` of row `b` sits at column `past + t` and attends to columns
/// `starts[b]..=past + t` (a padding query, `past + t < starts[b]`, only to itself), as
/// `kv_cache::attention_mask` describes; scores are scaled by `1/√head_dim`.
///
/// # Shapes
/// - `q`: `[rows, seq, heads, head_dim]` (rotary positions applied)
/// - `k_cache`, `v_cache`: `[rows, kv_heads, capacity, head_dim]`, columns `..past + seq` written
/// - `out`: `[rows, seq, heads, head_dim]`, overwritten
///
/// # Panics
/// If a length does not match the shape.
pub(crate) fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    starts: &[usize],
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
        capacity,
        past,
        seq,
    } = shape;
    let rows = starts.len();
    let groups = heads / kv_heads;
    assert_eq!(q.len(), rows * seq * heads * d, "attention: q shape");
    assert_eq!(out.len(), q.len(), "attention: out shape");
    assert_eq!(
        k_cache.len(),
        rows * kv_heads * capacity * d,
        "attention: k shape"
    );
    assert_eq!(v_cache.len(), k_cache.len(), "attention: v shape");
    assert!(
        past + seq <= capacity,
        "attention: columns beyond the cache"
    );
    if q.is_empty() {
        return;
    }
    // One task per (row, KV head): the outputs of its query heads at every position.
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..rows * kv_heads)
        .map(|_| Vec::with_capacity(seq))
        .collect();
    for (bt, row) in out.chunks_mut(heads * d).enumerate() {
        let b = bt / seq;
        for (h, group) in row.chunks_mut(groups * d).enumerate() {
            tasks[b * kv_heads + h].push(group);
        }
    }
    let run = |(task, mut outs): (usize, Vec<&mut [f32]>)| {
        let (b, h) = (task / kv_heads, task % kv_heads);
        let block = (b * kv_heads + h) * capacity * d..(b * kv_heads + h + 1) * capacity * d;
        let head = HeadTask {
            q,
            keys: &k_cache[block.clone()],
            values: &v_cache[block],
            q_offset: |t: usize| ((b * seq + t) * heads + h * groups) * d,
            start: starts[b],
            past,
            groups,
            d,
        };
        head.run(&mut outs);
    };
    let work = rows * kv_heads * seq * groups * (past + seq) * d;
    if work >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        tasks.into_par_iter().enumerate().for_each(run);
    } else {
        tasks.into_iter().enumerate().for_each(run);
    }
}

/// The attention of one KV head's query group of one row.
struct HeadTask<'a, F: Fn(usize) -> usize> {
    q: &'a [f32],
    /// `[capacity, d]`.
    keys: &'a [f32],
    /// `[capacity, d]`.
    values: &'a [f32],
    /// Offset in `q` of the group's first query head at position `t`.
    q_offset: F,
    start: usize,
    past: usize,
    groups: usize,
    d: usize,
}

impl<F: Fn(usize) -> usize> HeadTask<'_, F> {
    fn run(&self, outs: &mut [&mut [f32]]) {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            unsafe { self.run_avx2(outs) };
            return;
        }
        self.run_with::<Plain>(outs);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, outs: &mut [&mut [f32]]) {
        self.run_with::<Fused>(outs);
    }

    #[inline(always)]
    fn run_with<A: Isa>(&self, outs: &mut [&mut [f32]]) {
        let (g, d) = (self.groups, self.d);
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = Vec::new();
        for (t, out) in outs.iter_mut().enumerate() {
            let pos = self.past + t;
            let first = if pos < self.start { pos } else { self.start };
            let cols = pos + 1 - first;
            let q = &self.q[(self.q_offset)(t)..][..g * d];
            scores.clear();
            scores.resize(g * cols, 0.0);
            // Scores of the group's query heads against the visible keys: [g, d] · [cols, d]ᵀ.
            let mut rows: Vec<&mut [f32]> = scores.chunks_exact_mut(cols).collect();
            A::skinny(q, g, d, &self.keys[first * d..(pos + 1) * d], &mut rows);
            for s in scores.chunks_exact_mut(cols) {
                A::softmax_scaled(s, scale);
            }
            out.fill(0.0);
            for (c, value) in self.values[first * d..(pos + 1) * d]
                .chunks_exact(d)
                .enumerate()
            {
                for (i, o) in out.chunks_exact_mut(d).enumerate() {
                    axpy::<A>(scores[i * cols + c], value, o);
                }
            }
        }
    }
}

/// The instruction set a kernel is compiled for.
trait Isa {
    /// `a · b + c`, fused where the CPU has FMA.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    /// As [`matmul::skinny`].
    fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]);
    /// `s ← softmax(scale · s)` (`scale > 0`).
    fn softmax_scaled(s: &mut [f32], scale: f32);
}

/// Portable code (no FMA unit assumed).
struct Plain;
impl Isa for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
        portable::skinny(x, m, k, w, out);
    }

    fn softmax_scaled(s: &mut [f32], scale: f32) {
        softmax_scaled_in_place(s, scale);
    }
}

/// AVX2 + FMA. Used only inside `target_feature(enable = "avx2,fma")` functions, which run
/// after [`avx2_fma`] said the CPU has them.
#[cfg(target_arch = "x86_64")]
struct Fused;
#[cfg(target_arch = "x86_64")]
impl Isa for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
        if avx512() {
            // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
            unsafe { avx512::skinny(x, m, k, w, out) };
            return;
        }
        // SAFETY: `Fused` code runs only on CPUs with AVX2 and FMA (see the type's doc).
        unsafe { avx2::skinny(x, m, k, w, out) };
    }

    #[inline(always)]
    fn softmax_scaled(s: &mut [f32], scale: f32) {
        // SAFETY: as `skinny`.
        unsafe { vexp::softmax_scaled(s, scale) };
    }
}

/// Lanes of the portable vector loops (one AVX register of f32).
const LANES: usize = 8;

/// `y += alpha · x`.
#[inline(always)]
fn axpy<A: Isa>(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = A::mul_add(alpha, *xi, *yi);
    }
}

/// `s ← softmax(scale · s)` (`scale > 0`); returns `logsumexp(scale · s)`.
pub(crate) fn softmax_scaled(s: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        return unsafe { vexp::softmax_scaled(s, scale) };
    }
    softmax_scaled_in_place(s, scale)
}

/// As [`softmax_scaled`], in portable code.
#[inline(always)]
fn softmax_scaled_in_place(s: &mut [f32], scale: f32) -> f32 {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = exp((*v - max) * scale);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in s.iter_mut() {
        *v *= inv;
    }
    max * scale + sum.ln()
}

/// `e^x` in f32, branch-free so loops over it vectorize: Cody–Waite range reduction to
/// `r ∈ [-ln2/2, ln2/2]` and the Cephes `expf` polynomial (≤ 2 ulp on the whole range);
/// `0` below `-87.3` (where `e^x` leaves the normal floats), `+∞` above `88.7`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.7);
    // Round to nearest by adding and subtracting 1.5·2²³ (exact for |v| < 2²²): no call to
    // `floorf` where the SSE4.1 rounding instruction is not enabled.
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let e = y * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else {
        e
    }
}

/// `y_r = x_r / √(mean(x_r²) + ε) · γ` for every row `x_r` of width `γ.len()`.
pub(crate) fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, y: &mut [f32]) {
    let width = gamma.len();
    assert_eq!(x.len(), y.len(), "rms_norm: shapes");
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        let mut acc = [0.0f32; LANES];
        let (body, tail) = xr.split_at(width - width % LANES);
        for c in body.chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += c[l] * c[l];
            }
        }
        let ss = acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
        let inv_rms = 1.0 / (ss / width as f32 + eps).sqrt();
        for ((o, v), g) in yr.iter_mut().zip(xr).zip(gamma) {
            *o = v * inv_rms * g;
        }
    }
}

/// Rotates every head of every token in place ("rotate half" convention, see
/// [`crate::Rope`]): `x' = x · cos + rotate_half(x) · sin`.
///
/// # Shapes
/// - `x`: `[tokens, heads, head_dim]`; `cos`, `sin`: `[tokens, head_dim]`.
pub(crate) fn rope(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    assert_eq!(x.len() / (heads * d), cos.len() / d, "rope: shapes");
    for (token, (c, s)) in x
        .chunks_exact_mut(heads * d)
        .zip(cos.chunks_exact(d).zip(sin.chunks_exact(d)))
    {
        for head in token.chunks_exact_mut(d) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] + (-b) * s[i];
                x2[i] = b * c[half + i] + a * s[half + i];
            }
        }
    }
}

/// `gate ← SiLU(gate) ⊙ up`, `SiLU(g) = g · σ(g) = g / (1 + e^{-g})`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { silu_mul_avx2(gate, up) };
        return;
    }
    silu_mul_portable(gate, up);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: shapes");
    vexp::silu_mul(gate, up);
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: shapes");
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// The largest element of `x` (NaNs ignored); `-∞` when `x` is empty.
pub(crate) fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        return unsafe { vexp::max(x) };
    }
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The gradient of `g_lp · log p_x + g_ent · H` with respect to the logits of one row, up to
/// the target's `+g_lp / T` (added by the caller), written over the row's tempered logits `z`:
/// with `p = softmax(z)`, `log p_j = z_j − lse`,
///
/// `∂/∂logits_j = (−g_lp · p_j − g_ent · p_j (log p_j + H)) / T`
///
/// (`∂ log p_x / ∂z_j = 1[j = x] − p_j`, `∂H / ∂z_j = −p_j (log p_j + H)`, `z = logits / T`).
pub(crate) fn softmax_backward(
    z: &mut [f32],
    lse: f32,
    entropy: f32,
    g_lp: f32,
    g_ent: f32,
    inv_t: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { vexp::softmax_backward(z, lse, entropy, g_lp, g_ent, inv_t) };
        return;
    }
    softmax_backward_portable(z, lse, entropy, g_lp, g_ent, inv_t);
}

#[inline(always)]
fn softmax_backward_portable(
    z: &mut [f32],
    lse: f32,
    entropy: f32,
    g_lp: f32,
    g_ent: f32,
    inv_t: f32,
) {
    for v in z.iter_mut() {
        let log_p = *v - lse;
        let p = exp(log_p);
        *v = (-g_lp * p - g_ent * p * (log_p + entropy)) * inv_t;
    }
}

/// `out ← σ(x) = 1 / (1 + e^{-x})` element-wise.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn sigmoid(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "sigmoid: shapes");
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { vexp::sigmoid(x, out) };
        return;
    }
    sigmoid_portable(x, out);
}

#[inline(always)]
fn sigmoid_portable(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 1.0 / (1.0 + exp(-v));
    }
}

/// Elements per block of [`exp_weights`]' sums.
pub(crate) const EXP_BLOCK: usize = 512;

/// The sums [`exp_weights`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ExpSums {
    /// `Σ w_i`.
    pub total: f64,
    /// `Σ w_i s_i`.
    pub weighted: f64,
}

/// `w_i = e^{s_i}` with `s_i = (x_i − shift) · scale` (the unnormalised softmax of a row of
/// logits at temperature `1/scale`), written to `w`. Each block of [`EXP_BLOCK`] elements is
/// summed in f32 lanes and its sum pushed onto `block_sums` (f64); the returned totals add the
/// blocks in f64, so they stay accurate over a 50k-token vocabulary.
///
/// # Panics
/// If `w.len() != x.len()`.
pub(crate) fn exp_weights(
    x: &[f32],
    shift: f32,
    scale: f32,
    w: &mut [f32],
    block_sums: &mut Vec<f64>,
) -> ExpSums {
    assert_eq!(x.len(), w.len(), "exp_weights: shapes");
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        return unsafe { exp_weights_avx2(x, shift, scale, w, block_sums) };
    }
    exp_weights_portable(x, shift, scale, w, block_sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_weights_avx2(
    x: &[f32],
    shift: f32,
    scale: f32,
    w: &mut [f32],
    block_sums: &mut Vec<f64>,
) -> ExpSums {
    vexp::exp_weights(x, shift, scale, w, block_sums)
}

#[inline(always)]
fn exp_weights_portable(
    x: &[f32],
    shift: f32,
    scale: f32,
    w: &mut [f32],
    block_sums: &mut Vec<f64>,
) -> ExpSums {
    let mut sums = ExpSums {
        total: 0.0,
        weighted: 0.0,
    };
    for (xb, wb) in x.chunks(EXP_BLOCK).zip(w.chunks_mut(EXP_BLOCK)) {
        let mut total = [0.0f32; LANES];
        let mut weighted = [0.0f32; LANES];
        let body = xb.len() - xb.len() % LANES;
        for (xc, wc) in xb[..body]
            .chunks_exact(LANES)
            .zip(wb[..body].chunks_exact_mut(LANES))
        {
            for l in 0..LANES {
                let s = (xc[l] - shift) * scale;
                let e = exp(s);
                wc[l] = e;
                total[l] += e;
                // `e = 0` where `s = -∞` (a masked logit): no contribution, not NaN.
                weighted[l] += if e > 0.0 { e * s } else { 0.0 };
            }
        }
        let lanes = (total.iter().sum::<f32>(), weighted.iter().sum::<f32>());
        let (xt, wt) = (&xb[body..], &mut wb[body..]);
        finish_exp_block(xt, wt, shift, scale, lanes, block_sums, &mut sums);
    }
    sums
}

/// The end of one block of [`exp_weights`]: the weights of its scalar tail (`x`, `w`) added
/// to its lanes' sums `(Σ w, Σ w s)`, the block's total pushed onto `block_sums` and both
/// added to `sums` in f64.
#[inline(always)]
fn finish_exp_block(
    x: &[f32],
    w: &mut [f32],
    shift: f32,
    scale: f32,
    (mut total, mut weighted): (f32, f32),
    block_sums: &mut Vec<f64>,
    sums: &mut ExpSums,
) {
    for (xi, wi) in x.iter().zip(w) {
        let s = (xi - shift) * scale;
        *wi = exp(s);
        total += *wi;
        weighted += if *wi > 0.0 { *wi * s } else { 0.0 };
    }
    block_sums.push(total as f64);
    sums.total += total as f64;
    sums.weighted += weighted as f64;
}

#[cfg(test)]
mod tests;
