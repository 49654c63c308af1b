//! The element-wise and matrix kernels of the CPU training pass: products on the packing
//! GEMM, RMSNorm, rotary positions and SwiGLU with their backward passes, and small vector
//! helpers. Parallel over rows on the rayon pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::cpu_kernels::{
    Bf16Matrix, gemm_raw, gemm_transb, matmul_bf16, matmul_bf16_tn, sigmoid, silu_mul,
};

/// Rows per parallel task of the element-wise loops.
const ROWS_PER_TASK: usize = 16;

/// How the training pass multiplies by weight matrices and forms weight gradients.
///
/// - **f32** (the default): every product on the packing GEMM (`gemm` crate) in f32.
/// - **bf16 mixed precision** ([`TrainProducts::bf16`]), the arithmetic of
///   `torch.autocast(dtype=torch.bfloat16)` (Kalamkar et al. 2019, "A Study of BFLOAT16 for
///   Deep Learning Training", <https://arxiv.org/abs/1905.12322>): the operands of the products
///   `x·Wᵀ`, `dY·W` and `dYᵀ·X` are rounded to bfloat16 (nearest even) and summed in f32, on
///   AMX tiles where the CPU has them (`TDPBF16PS`), else on the f32 units. Everything else —
///   the weights themselves and the optimizer, norms, attention, softmax, the log-probs and
///   the gradient buffers — stays f32. Each weight is rounded and packed once per pass set
///   (once for `x·Wᵀ`, once transposed for `dY·W`) and the packs are shared by every
///   micro-batch holding the same handle: make a new handle whenever the weights change.
#[derive(Debug, Clone, Default)]
pub struct TrainProducts {
    bf16: Option<Arc<Bf16Packs>>,
}

impl TrainProducts {
    /// Products in f32.
    pub fn f32() -> Self {
        Self::default()
    }

    /// Products in bf16 mixed precision, with an empty pack cache (valid while the weights it
    /// is used with do not change).
    pub fn bf16() -> Self {
        Self {
            bf16: Some(Arc::default()),
        }
    }

    /// Whether products round their operands to bf16.
    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// Whether this CPU has instructions for bf16 products (AMX tiles or AVX512-BF16's
    /// `VDPBF16PS`); without them they run on the f32 units, slower than f32 products.
    pub fn bf16_accelerated() -> bool {
        crate::cpu_kernels::bf16_accelerated()
    }
}

/// bf16 packs of weight matrices, keyed by the weights' address, length and orientation.
#[derive(Debug, Default)]
pub(super) struct Bf16Packs {
    packs: Mutex<HashMap<(usize, usize, bool), Arc<Bf16Matrix>>>,
}

impl Bf16Packs {
    /// `w` (`[rows, cols]`) packed as itself, or as `wᵀ` (`[cols, rows]`) when `transposed`.
    fn get(&self, w: &[f32], cols: usize, transposed: bool) -> Arc<Bf16Matrix> {
        let key = (w.as_ptr() as usize, w.len(), transposed);
        let lock = || self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pack) = lock().get(&key) {
            return Arc::clone(pack);
        }
        let pack = Arc::new(if transposed {
            Bf16Matrix::quantize_transposed(w, cols)
        } else {
            Bf16Matrix::quantize(w, cols)
        });
        lock().insert(key, Arc::clone(&pack));
        pack
    }
}

/// `y = x · Wᵀ` for `x: [m, k]` and `W: [n, k]` (row-major).
pub(super) fn linear(x: &[f32], k: usize, w: &[f32], products: &TrainProducts) -> Vec<f32> {
    let m = x.len() / k;
    let mut out = vec![0.0f32; m * (w.len() / k)];
    match &products.bf16 {
        Some(packs) => matmul_bf16(x, m, k, &packs.get(w, k, false), &mut out, false),
        None => gemm_transb(x, m, k, w, &mut out),
    }
    out
}

/// `x · W` for `x: [m, n]` and `W: [n, k]` (row-major): returns `[m, k]`.
pub(super) fn matmul_nn(
    x: &[f32],
    m: usize,
    n: usize,
    w: &[f32],
    k: usize,
    products: &TrainProducts,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * k];
    matmul_nn_acc(x, m, n, w, k, &mut out, products);
    out
}

/// `out += x · W` for `x: [m, n]` and `W: [n, k]`.
pub(super) fn matmul_nn_acc(
    x: &[f32],
    m: usize,
    n: usize,
    w: &[f32],
    k: usize,
    out: &mut [f32],
    products: &TrainProducts,
) {
    assert!(
        x.len() == m * n && w.len() == n * k && out.len() == m * k,
        "matmul_nn: shapes"
    );
    if let Some(packs) = &products.bf16 {
        // x · W = x · (Wᵀ)ᵀ: the product with W's transpose packed as the weight matrix.
        matmul_bf16(x, m, n, &packs.get(w, k, true), out, true);
        return;
    }
    // SAFETY: x is [m, n] (rs n, cs 1); W is [n, k] (rs k, cs 1); out is [m, k] (rs k, cs 1).
    unsafe {
        gemm_raw(m, k, n, out, (k, 1), true, x, (n, 1), w, (k, 1));
    }
}

/// `out += aᵀ · b` for `a: [rows, p]` and `b: [rows, q]` (a weight gradient `dYᵀ·X`): `out`
/// is `[p, q]`.
pub(super) fn matmul_tn_acc(
    a: &[f32],
    p: usize,
    b: &[f32],
    q: usize,
    rows: usize,
    out: &mut [f32],
    products: &TrainProducts,
) {
    assert!(
        a.len() == rows * p && b.len() == rows * q && out.len() == p * q,
        "matmul_tn: shapes"
    );
    if products.is_bf16() {
        // aᵀ · b = aᵀ · (bᵀ)ᵀ: aᵀ as the inputs, bᵀ packed as the weight matrix.
        matmul_bf16_tn(
            a,
            rows,
            p,
            &Bf16Matrix::quantize_transposed(b, q),
            out,
            true,
        );
        return;
    }
    // SAFETY: aᵀ has element (i, r) at a[r p + i] (rs 1, cs p); b is [rows, q] (rs q, cs 1);
    // out is [p, q] (rs q, cs 1), read and written.
    unsafe {
        gemm_raw(p, q, rows, out, (q, 1), true, a, (1, p), b, (q, 1));
    }
}

/// `y = x · r · γ` row by row with `r = 1/√(mean(x²) + ε)`; returns `y` and the `r`s.
pub(super) fn rms_norm_rows(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let rows = x.len() / width;
    let mut y = vec![0.0f32; x.len()];
    let mut inv = vec![0.0f32; rows];
    y.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(inv.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|((y, inv), x)| {
            for ((yr, r), xr) in y
                .chunks_exact_mut(width)
                .zip(inv.iter_mut())
                .zip(x.chunks_exact(width))
            {
                *r = 1.0 / (sum_squares(xr) / width as f32 + eps).sqrt();
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
                    *o = v * *r * g;
                }
            }
        });
    (y, inv)
}

/// `x · r · γ` with saved `r`s (the normalised input, recomputed for a weight gradient).
pub(super) fn norm_apply(x: &[f32], inv_rms: &[f32], gamma: &[f32]) -> Vec<f32> {
    let width = gamma.len();
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .zip(inv_rms.par_chunks(ROWS_PER_TASK))
        .for_each(|((y, x), inv)| {
            for ((yr, xr), &r) in y
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(inv)
            {
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
                    *o = v * r * g;
                }
            }
        });
    y
}

/// RMSNorm backward, `y = x · r · γ`, `r = (mean(x²) + ε)^{-1/2}`, `g = dy ⊙ γ`:
///
/// `dx = r · g − x · r³ · (g · x) / width`  (added to `dx`),  `dγ = Σ_rows dy ⊙ x · r`  (added).
pub(super) fn rms_norm_backward(
    x: &[f32],
    inv_rms: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    d_gamma: &mut [f32],
) {
    let width = gamma.len();
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .zip(dy.par_chunks(width * ROWS_PER_TASK))
        .zip(inv_rms.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, x), dy), inv)| {
            let mut dg = vec![0.0f32; width];
            for (((dxr, xr), dyr), &r) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(dy.chunks_exact(width))
                .zip(inv)
            {
                let mut dot = 0.0f32;
                for ((&dyv, &xv), &g) in dyr.iter().zip(xr).zip(gamma) {
                    dot += dyv * g * xv;
                }
                let c = r * r * r * dot / width as f32;
                for ((((o, &dyv), &xv), &g), dgv) in dxr
                    .iter_mut()
                    .zip(dyr)
                    .zip(xr)
                    .zip(gamma)
                    .zip(dg.iter_mut())
                {
                    *o += r * dyv * g - xv * c;
                    *dgv += dyv * xv * r;
                }
            }
            dg
        })
        .collect();
    for partial in partials {
        add_in_place(d_gamma, &partial);
    }
}

/// Rotary positions on every head of every token (`x: [tokens, heads·d]`, tables
/// `[tokens, d]`), "rotate half": `x' = [x₁ c₁ − x₂ s₁, x₂ c₂ + x₁ s₂]`; with `transpose`,
/// its adjoint (the backward): `dx = [a c₁ + b s₂, b c₂ − a s₁]` for `dx' = [a, b]`.
pub(super) fn rope_rows(
    x: &mut [f32],
    heads: usize,
    d: usize,
    cos: &[f32],
    sin: &[f32],
    transpose: bool,
) {
    let half = d / 2;
    let width = heads * d;
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(cos.par_chunks(d * ROWS_PER_TASK))
        .zip(sin.par_chunks(d * ROWS_PER_TASK))
        .for_each(|((x, cos), sin)| {
            for ((token, c), s) in x
                .chunks_exact_mut(width)
                .zip(cos.chunks_exact(d))
                .zip(sin.chunks_exact(d))
            {
                for head in token.chunks_exact_mut(d) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (x1[i], x2[i]);
                        if transpose {
                            x1[i] = a * c[i] + b * s[half + i];
                            x2[i] = b * c[half + i] - a * s[i];
                        } else {
                            x1[i] = a * c[i] - b * s[i];
                            x2[i] = b * c[half + i] + a * s[half + i];
                        }
                    }
                }
            }
        });
}

/// `SiLU(gate) ⊙ up`, `SiLU(g) = g σ(g)`.
pub(super) fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; gate.len()];
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096))
        .zip(up.par_chunks(4096))
        .for_each(|((o, g), u)| {
            o.copy_from_slice(g);
            silu_mul(o, u);
        });
    out
}

/// SwiGLU backward: for `a = g σ(g) u`,
/// `∂a/∂g = u σ(g) (1 + g (1 − σ(g)))`, `∂a/∂u = g σ(g)`.
pub(super) fn swiglu_backward(gate: &[f32], up: &[f32], d_act: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut d_gate = vec![0.0f32; gate.len()];
    let mut d_up = vec![0.0f32; gate.len()];
    d_gate
        .par_chunks_mut(4096)
        .zip(d_up.par_chunks_mut(4096))
        .zip(gate.par_chunks(4096))
        .zip(up.par_chunks(4096))
        .zip(d_act.par_chunks(4096))
        .for_each(|((((dg, du), g), u), da)| {
            sigmoid(g, dg);
            for ((((dg, du), &g), &u), &da) in
                dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(da)
            {
                let s = *dg;
                *du = da * g * s;
                *dg = da * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (d_gate, d_up)
}

pub(super) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub(super) fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `out += Σ_rows x` for `x: [rows, out.len()]`.
pub(super) fn column_sums_acc(x: &[f32], out: &mut [f32]) {
    for row in x.chunks_exact(out.len()) {
        add_in_place(out, row);
    }
}

/// `Σ x²` with eight partial sums (vectorises).
#[inline]
fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
}

/// `a · b` with eight partial sums. Always inlined, so a caller compiled for AVX2 gets it in
/// 256-bit lanes.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>()
        + ca.remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum::<f32>()
}

/// `y += α x`. Always inlined (as [`dot`]).
#[inline(always)]
pub(super) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}
