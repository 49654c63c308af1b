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
//! Each kernel has an AVX2 + FMA version (selected at run time) and a portable one; both compute
//! the same sums up to float reassociation (tests compare them with burn's results).

use rayon::prelude::*;

/// Products with more rows than this go to the packing GEMM (`gemm` crate): with many rows the
/// packed weight is reused enough to pay for itself.
const SKINNY_MAX_ROWS: usize = 48;

/// Work below this many multiply-adds runs on the calling thread (a rayon fork costs a few µs).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// One weight `[n, k]` (row-major: the Hugging Face / GGUF layout) and the `[m, n]` buffer its
/// product with the shared input is written to.
pub(crate) struct Product<'a> {
    /// `[n, k]`.
    pub weight: &'a [f32],
    /// `[m, n]`, overwritten.
    pub out: &'a mut [f32],
}

/// `out_j = x · W_jᵀ` for every product `j`, all sharing `x: [m, k]` (fused projections: one
/// parallel region for q/k/v or gate/up).
///
/// # Panics
/// If a slice length does not match `m`, `k` and the weight's row count.
pub(crate) fn matmul_transb(x: &[f32], m: usize, k: usize, products: &mut [Product<'_>]) {
    assert_eq!(x.len(), m * k, "matmul_transb: x is not [m, k]");
    let mut total_n = 0;
    for p in products.iter() {
        assert!(
            k > 0 && p.weight.len() % k == 0,
            "matmul_transb: W is not [n, k]"
        );
        let n = p.weight.len() / k;
        assert_eq!(p.out.len(), m * n, "matmul_transb: out is not [m, n]");
        total_n += n;
    }
    if m == 0 || total_n == 0 {
        return;
    }
    if m > SKINNY_MAX_ROWS {
        for p in products.iter_mut() {
            gemm_transb(x, m, k, p.weight, p.out);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * total_n * k >= PARALLEL_MIN_MACS;
    // Column chunks: a few per thread so uneven products still balance.
    let chunk = if parallel {
        total_n.div_ceil(threads * 4).max(16)
    } else {
        total_n
    };
    let mut tasks = Vec::new();
    for p in products.iter_mut() {
        let n = p.weight.len() / k;
        let mut rows: Vec<&mut [f32]> = p.out.chunks_mut(n).collect();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let out: Vec<&mut [f32]> = rows
                .iter_mut()
                .map(|row| {
                    let (head, tail) = std::mem::take(row).split_at_mut(len);
                    *row = tail;
                    head
                })
                .collect();
            tasks.push(ColumnTask {
                weight: &p.weight[start * k..(start + len) * k],
                out,
            });
            start += len;
        }
    }
    if parallel {
        tasks
            .into_par_iter()
            .for_each(|mut task| skinny(x, m, k, task.weight, &mut task.out));
    } else {
        for mut task in tasks {
            skinny(x, m, k, task.weight, &mut task.out);
        }
    }
}

/// A run of weight rows and, for each input row, the slice of its output they produce.
struct ColumnTask<'a> {
    weight: &'a [f32],
    out: Vec<&'a mut [f32]>,
}

/// `out[i][j] = x_i · w_j` for `x: [m, k]`, `w: [n, k]`, `out`: `m` slices of `n`.
fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { avx2::skinny(x, m, k, w, out) };
        return;
    }
    portable::skinny(x, m, k, w, out);
}

/// The packing GEMM for tall products, parallel over the rayon pool: `out = x · Wᵀ` for
/// `x: [m, k]`, `W: [n, k]`.
pub(crate) fn gemm_transb(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    let n = w.len() / k;
    assert!(
        x.len() == m * k && out.len() == m * n,
        "gemm_transb: shapes"
    );
    // SAFETY: `x` is [m, k] row-major (row stride k, column stride 1); the right-hand side is
    // Wᵀ, whose element (p, j) is `w[j * k + p]` (row stride 1, column stride k); `out` is
    // [m, n] row-major and written only.
    unsafe { gemm_raw(m, n, k, out, (n, 1), false, x, (k, 1), w, (1, k)) };
}

/// `dst (+)= lhs · rhs` with `lhs: [m, k]`, `rhs: [k, n]`, `dst: [m, n]`, each given by
/// `(row stride, column stride)`.
///
/// # Safety
/// The strides must keep every index inside the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let parallelism = if m * n * k >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether the AVX2 + FMA kernels can run (cached by the standard library).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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
                softmax_scaled_in_place(s, scale);
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
    /// As [`skinny`].
    fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]);
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
        // SAFETY: `Fused` code runs only on CPUs with AVX2 and FMA (see the type's doc).
        unsafe { avx2::skinny(x, m, k, w, out) };
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

/// `s ← softmax(scale · s)` (`scale > 0`).
#[inline(always)]
fn softmax_scaled_in_place(s: &mut [f32], scale: f32) {
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
    silu_mul_portable(gate, up);
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: shapes");
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
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
    exp_weights_portable(x, shift, scale, w, block_sums)
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
        let mut block_total = total.iter().sum::<f32>();
        let mut block_weighted = weighted.iter().sum::<f32>();
        for (xi, wi) in xb[body..].iter().zip(&mut wb[body..]) {
            let s = (xi - shift) * scale;
            *wi = exp(s);
            block_total += *wi;
            block_weighted += if *wi > 0.0 { *wi * s } else { 0.0 };
        }
        block_sums.push(block_total as f64);
        sums.total += block_total as f64;
        sums.weighted += block_weighted as f64;
    }
    sums
}

/// The portable kernels (and the reference the SIMD ones are tested against).
mod portable {
    use super::LANES;

    /// `out[i][j] = x_i · w_j`, four weight rows at a time, `LANES`-wide partial sums.
    pub(super) fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
        let n = w.len() / k;
        let body = k - k % LANES;
        for (j, wj) in w.chunks_exact(k).enumerate().take(n) {
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                let mut acc = [0.0f32; LANES];
                for (a, b) in xi[..body]
                    .chunks_exact(LANES)
                    .zip(wj[..body].chunks_exact(LANES))
                {
                    for l in 0..LANES {
                        acc[l] += a[l] * b[l];
                    }
                }
                let mut s = acc.iter().sum::<f32>();
                for p in body..k {
                    s += xi[p] * wj[p];
                }
                out[i][j] = s;
            }
        }
    }
}

/// AVX2 + FMA register-blocked kernel: a block of `MR` input rows × `NR` weight rows keeps
/// `MR × NR` accumulators in registers while streaming `k` (the weight rows stay in L1 while
/// every input row passes, and the next weight rows are prefetched meanwhile).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Input rows per block.
    const MR: usize = 3;
    /// Weight rows per block (`MR × NR` accumulators + `MR` inputs + 1 weight = 16 registers;
    /// the `NR = 4` sums of an input row reduce into one 128-bit store).
    const NR: usize = 4;

    /// As `portable::skinny`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
        let n = w.len() / k;
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(NR);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                // The first input block of each weight block prefetches the next weight block.
                let prefetch = i == 0;
                match (mr, nr) {
                    (3, 4) => block::<3, 4>(x, i, j, k, w, out, prefetch),
                    (3, 3) => block::<3, 3>(x, i, j, k, w, out, prefetch),
                    (3, 2) => block::<3, 2>(x, i, j, k, w, out, prefetch),
                    (3, _) => block::<3, 1>(x, i, j, k, w, out, prefetch),
                    (2, 4) => block::<2, 4>(x, i, j, k, w, out, prefetch),
                    (2, 3) => block::<2, 3>(x, i, j, k, w, out, prefetch),
                    (2, 2) => block::<2, 2>(x, i, j, k, w, out, prefetch),
                    (2, _) => block::<2, 1>(x, i, j, k, w, out, prefetch),
                    (_, 4) => block::<1, 4>(x, i, j, k, w, out, prefetch),
                    (_, 3) => block::<1, 3>(x, i, j, k, w, out, prefetch),
                    (_, 2) => block::<1, 2>(x, i, j, k, w, out, prefetch),
                    (_, _) => block::<1, 1>(x, i, j, k, w, out, prefetch),
                }
                i += mr;
            }
            j += nr;
        }
    }

    /// `out[i0 + a][j0 + b] = x_{i0+a} · w_{j0+b}` for `a < R`, `b < C`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn block<const R: usize, const C: usize>(
        x: &[f32],
        i0: usize,
        j0: usize,
        k: usize,
        w: &[f32],
        out: &mut [&mut [f32]],
        prefetch: bool,
    ) {
        let xs = &x[i0 * k..(i0 + R) * k];
        let ws = &w[j0 * k..(j0 + C) * k];
        let (xp, wp) = (xs.as_ptr(), ws.as_ptr());
        let body = k - k % 8;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut p = 0;
        while p < body {
            if prefetch && p % 16 == 0 {
                for b in 0..C {
                    // The same columns of the next block's rows (a hint: never dereferenced,
                    // may point past the weights).
                    let ahead = wp.wrapping_add((C + b) * k + p);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            // R inputs stay in registers while the C weights stream through one register:
            // R·C accumulators + R + 1 ≤ 16 registers.
            let mut xv = [_mm256_setzero_ps(); R];
            for (a, v) in xv.iter_mut().enumerate() {
                // SAFETY: row a < R of `xs` spans [a*k, (a+1)*k) and p + 8 <= body <= k.
                *v = unsafe { _mm256_loadu_ps(xp.add(a * k + p)) };
            }
            for b in 0..C {
                // SAFETY: row b < C of `ws` spans [b*k, (b+1)*k) and p + 8 <= k.
                let wv = unsafe { _mm256_loadu_ps(wp.add(b * k + p)) };
                for (row, x) in acc.iter_mut().zip(&xv) {
                    row[b] = _mm256_fmadd_ps(*x, wv, row[b]);
                }
            }
            p += 8;
        }
        let zero = _mm256_setzero_ps();
        for (a, row) in acc.iter().enumerate() {
            let lane = |b: usize| if b < C { row[b] } else { zero };
            let mut sums = [0.0f32; 4];
            // SAFETY: `sums` holds 4 floats.
            unsafe { _mm_storeu_ps(sums.as_mut_ptr(), hsum4(lane(0), lane(1), lane(2), lane(3))) };
            for (b, s) in sums.iter_mut().take(C).enumerate() {
                for q in body..k {
                    *s = xs[a * k + q].mul_add(ws[b * k + q], *s);
                }
            }
            out[i0 + a][j0..j0 + C].copy_from_slice(&sums[..C]);
        }
    }

    /// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        // Pairwise adds within 128-bit halves, then the two halves.
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(
            _mm256_castps256_ps128(abcd),
            _mm256_extractf128_ps::<1>(abcd),
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    fn tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Device::default())
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// `|a - b| <= tol · max(1, |b|)` element-wise.
    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{what}: element {i}: {a} vs {b}"
            );
        }
    }

    /// `x · Wᵀ` in f64.
    fn reference_matmul_transb(x: &[f32], m: usize, k: usize, w: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        for xi in x.chunks(k).take(m) {
            for wj in w.chunks(k) {
                out.push(
                    xi.iter()
                        .zip(wj)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32,
                );
            }
        }
        out
    }

    /// Products agree with burn's within `1e-5 · ‖x_i‖ ‖w_j‖` (the scale of a dot product's
    /// rounding error: a sum with cancellation is not accurate relative to its own value in
    /// either implementation).
    fn assert_close_scaled(got: &[f32], burn: &[f32], x: &[f32], w: &[f32], k: usize, what: &str) {
        let norms = |v: &[f32]| -> Vec<f32> {
            v.chunks(k)
                .map(|r| r.iter().map(|a| a * a).sum::<f32>().sqrt())
                .collect()
        };
        let (nx, nw) = (norms(x), norms(w));
        for (idx, (a, b)) in got.iter().zip(burn).enumerate() {
            let (i, j) = (idx / nw.len(), idx % nw.len());
            let tol = 1e-5 * (nx[i] * nw[j]).max(1.0);
            assert!((a - b).abs() <= tol, "{what}: ({i}, {j}): {a} vs burn {b}");
        }
    }

    /// burn's `x · Wᵀ`.
    fn burn_matmul_transb(x: &[f32], m: usize, k: usize, w: &[f32]) -> Vec<f32> {
        let n = w.len() / k;
        values(tensor(x, [m, k]).matmul(tensor(w, [n, k]).transpose()))
    }

    #[test]
    fn skinny_and_tall_products_match_burn_matmul() {
        // Rows around the register block (4) and the skinny/GEMM switch; widths with and
        // without a SIMD tail; weight row counts around the 3-row block.
        for (seed, &(m, k)) in [
            (1, 1),
            (2, 7),
            (3, 8),
            (4, 9),
            (5, 64),
            (7, 67),
            (16, 576),
            (SKINNY_MAX_ROWS, 33),
            (SKINNY_MAX_ROWS + 1, 40),
            (130, 96),
        ]
        .iter()
        .enumerate()
        {
            for n in [1, 2, 3, 5, 64, 301] {
                let x = random(m * k, seed as u64);
                let w = random(n * k, 100 + seed as u64);
                let mut out = vec![f32::NAN; m * n];
                matmul_transb(
                    &x,
                    m,
                    k,
                    &mut [Product {
                        weight: &w,
                        out: &mut out,
                    }],
                );
                let what = format!("m={m} k={k} n={n}");
                assert_close(&out, &reference_matmul_transb(&x, m, k, &w), 1e-5, &what);
                assert_close_scaled(&out, &burn_matmul_transb(&x, m, k, &w), &x, &w, k, &what);
            }
        }
    }

    #[test]
    fn fused_products_equal_separate_ones() {
        let (m, k) = (5, 64);
        let x = random(m * k, 1);
        let (wq, wk, wv) = (random(96 * k, 2), random(32 * k, 3), random(32 * k, 4));
        let (mut q, mut kk, mut v) = (vec![0.0; m * 96], vec![0.0; m * 32], vec![0.0; m * 32]);
        matmul_transb(
            &x,
            m,
            k,
            &mut [
                Product {
                    weight: &wq,
                    out: &mut q,
                },
                Product {
                    weight: &wk,
                    out: &mut kk,
                },
                Product {
                    weight: &wv,
                    out: &mut v,
                },
            ],
        );
        assert_close(&q, &reference_matmul_transb(&x, m, k, &wq), 1e-5, "q");
        assert_close(&kk, &reference_matmul_transb(&x, m, k, &wk), 1e-5, "k");
        assert_close(&v, &reference_matmul_transb(&x, m, k, &wv), 1e-5, "v");
    }

    #[test]
    fn simd_and_portable_kernels_agree() {
        let (m, k, n) = (7, 131, 11);
        let x = random(m * k, 5);
        let w = random(n * k, 6);
        let run = |f: &dyn Fn(&mut [&mut [f32]])| {
            let mut out = vec![0.0; m * n];
            let mut rows: Vec<&mut [f32]> = out.chunks_mut(n).collect();
            f(&mut rows);
            out
        };
        let portable = run(&|rows| portable::skinny(&x, m, k, &w, rows));
        let dispatched = run(&|rows| skinny(&x, m, k, &w, rows));
        assert_close(&dispatched, &portable, 1e-5, "skinny");
    }

    /// Attention by the definition, in f64.
    fn reference_attention(
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        starts: &[usize],
        s: AttentionShape,
    ) -> Vec<f32> {
        let (h, kvh, d, cap) = (s.heads, s.kv_heads, s.head_dim, s.capacity);
        let (past, seq) = (s.past, s.seq);
        let g = h / kvh;
        let mut out = vec![0.0; q.len()];
        for (b, &start) in starts.iter().enumerate() {
            for t in 0..seq {
                let pos = past + t;
                let cols: Vec<usize> = if pos < start {
                    vec![pos]
                } else {
                    (start..=pos).collect()
                };
                for head in 0..h {
                    let kv = head / g;
                    let qv = &q[((b * seq + t) * h + head) * d..][..d];
                    let at = |c: usize| ((b * kvh + kv) * cap + c) * d;
                    let scores: Vec<f64> = cols
                        .iter()
                        .map(|&c| {
                            (0..d)
                                .map(|i| qv[i] as f64 * kc[at(c) + i] as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..d {
                        let o: f64 = cols
                            .iter()
                            .zip(&e)
                            .map(|(&c, p)| p / z * vc[at(c) + i] as f64)
                            .sum();
                        out[((b * seq + t) * h + head) * d + i] = o as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition_with_padding_and_groups() {
        let shape = AttentionShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 12,
            capacity: 24,
            past: 0,
            seq: 0,
        };
        // Prefill (past 0, 9 columns, left padding 0/3/8) and a decode step after 17 columns.
        for (past, seq) in [(0, 9), (17, 1)] {
            let shape = AttentionShape { past, seq, ..shape };
            let starts = [0, 3, 8];
            let rows = starts.len();
            let (h, d) = (shape.heads, shape.head_dim);
            let q = random(rows * seq * h * d, 7);
            let kc = random(rows * shape.kv_heads * shape.capacity * d, 8);
            let vc = random(kc.len(), 9);
            let mut out = vec![f32::NAN; q.len()];
            attention(&q, &kc, &vc, &starts, shape, &mut out);
            let want = reference_attention(&q, &kc, &vc, &starts, shape);
            assert_close(&out, &want, 1e-5, &format!("past={past} seq={seq}"));
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "exp({x}) = {got}, std {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_weights_sums_match_f64() {
        let x: Vec<f32> = random(50_000, 10).iter().map(|v| v * 8.0).collect();
        let (shift, scale) = (8.0, 1.0 / 0.7);
        let mut w = vec![0.0; x.len()];
        let mut blocks = Vec::new();
        let sums = exp_weights(&x, shift, scale, &mut w, &mut blocks);
        let s: Vec<f64> = x.iter().map(|&v| ((v - shift) * scale) as f64).collect();
        let total: f64 = s.iter().map(|v| v.exp()).sum();
        let weighted: f64 = s.iter().map(|v| v.exp() * v).sum();
        assert!(
            (sums.total - total).abs() < 1e-6 * total,
            "{sums:?} vs {total}"
        );
        assert!((sums.weighted - weighted).abs() < 1e-6 * weighted.abs());
        assert_eq!(blocks.len(), x.len().div_ceil(EXP_BLOCK));
        assert!((blocks.iter().sum::<f64>() - total).abs() < 1e-6 * total);
    }

    #[test]
    fn rms_norm_rope_and_silu_match_burn() {
        let (tokens, heads, d) = (5, 3, 8);
        let width = heads * d;
        let x = random(tokens * width, 11);
        let gamma = random(width, 12);
        let mut y = vec![0.0; x.len()];
        rms_norm(&x, &gamma, 1e-5, &mut y);
        let norm = crate::RmsNorm::new(tensor(&gamma, [width]), 1e-5);
        assert_close(
            &y,
            &values(norm.forward(tensor(&x, [tokens, width]))),
            1e-6,
            "rms",
        );

        let rope_tables = crate::Rope::new(d, 64, 10_000.0);
        let positions = [0, 3, 7, 12, 63];
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in &positions {
            let (c, s) = rope_tables.row(p);
            cos.extend_from_slice(c);
            sin.extend_from_slice(s);
        }
        let mut rotated = x.clone();
        rope(&mut rotated, heads, d, &cos, &sin);
        // burn: [batch 1, heads, seq, d] with tables [1, 1, seq, d].
        let xt = tensor(&x, [1, tokens, heads, d]).swap_dims(1, 2);
        let (ct, st) = rope_tables.tables(&positions, 1, tokens, &Device::default());
        let want = values(crate::Rope::apply(xt, &ct, &st).swap_dims(1, 2));
        assert_close(&rotated, &want, 1e-6, "rope");

        let mut gate: Vec<f32> = x.iter().map(|v| v * 6.0).collect();
        let up = random(gate.len(), 13);
        let want = values(silu(tensor(&gate, [gate.len()])) * tensor(&up, [up.len()]));
        silu_mul(&mut gate, &up);
        assert_close(&gate, &want, 1e-6, "silu");
    }
}
