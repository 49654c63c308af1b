//! Weight-only int8 products for decoding: `x · Wᵀ` where `W` is stored as int8 values with one
//! f32 scale per block of [`BLOCK`] consecutive values of a row (GGUF's Q8_0 layout, with f32
//! scales: symmetric, `w ≈ scale · q`, `q ∈ [-127, 127]`). Blocks keep one outlier from
//! coarsening a whole row (BENCHMARKS.md has the log-prob gap to f32 of both on SmolLM2).
//!
//! Decoding a few rows is bound by reading the weights (SmolLM2-135M: 538 MB of f32 per decode
//! step); int8 reads a quarter of that. Each product computes `x · dequantize(W)ᵀ` up to float
//! reassociation, so the model a batch decodes with is the dequantised one
//! ([`Q8Matrix::dequantize`]), on every path: tall products (prefill) multiply the dequantised
//! matrix with the packing GEMM.

use rayon::prelude::*;

use super::PARALLEL_MIN_MACS;
use super::matmul::gemm_transb;
#[cfg(target_arch = "x86_64")]
use super::{avx2_fma, avx512};

/// Products with more rows than this dequantise the matrix and use the packing GEMM. Higher
/// than f32's [`super::matmul::SKINNY_MAX_ROWS`]: below it the dequantisation (a full f32 copy of the matrix
/// per call) costs more than the GEMM saves, which matters when every decode step pays it.
pub(crate) const Q8_SKINNY_MAX_ROWS: usize = 192;

/// Values per scale (GGUF Q8_0's block).
pub(crate) const BLOCK: usize = 32;

/// A `[rows, cols]` matrix quantised to int8 in blocks of [`BLOCK`] values of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Q8Matrix {
    /// `[rows, cols]`, row-major.
    pub values: Vec<i8>,
    /// `[rows, ⌈cols / BLOCK⌉]`: value `p` of row `j` is `scales[j, p / BLOCK] · values[j, p]`.
    pub scales: Vec<f32>,
    pub cols: usize,
}

impl Q8Matrix {
    /// Quantises `w` (`[rows, cols]`, row-major): each block's scale is its largest magnitude
    /// over 127, its values rounded to the nearest step (a zero block has scale 0).
    pub(crate) fn quantize(w: &[f32], cols: usize) -> Self {
        assert!(
            cols > 0 && w.len().is_multiple_of(cols),
            "Q8Matrix: w is not [rows, cols]"
        );
        let rows: Vec<(Vec<i8>, Vec<f32>)> = w
            .par_chunks(cols)
            .map(|row| {
                let mut q = Vec::with_capacity(cols);
                let mut scales = Vec::with_capacity(cols.div_ceil(BLOCK));
                for block in row.chunks(BLOCK) {
                    let max = block.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
                    let scale = max / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    q.extend(
                        block
                            .iter()
                            .map(|&x| (x * inv).round().clamp(-127.0, 127.0) as i8),
                    );
                    scales.push(scale);
                }
                (q, scales)
            })
            .collect();
        let mut values = Vec::with_capacity(w.len());
        let mut scales = Vec::with_capacity(rows.len() * cols.div_ceil(BLOCK));
        for (q, s) in rows {
            values.extend_from_slice(&q);
            scales.extend_from_slice(&s);
        }
        Self {
            values,
            scales,
            cols,
        }
    }

    /// Scales per row.
    pub(crate) fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    /// Rows.
    pub(crate) fn rows(&self) -> usize {
        self.values.len() / self.cols
    }

    /// The matrix this one stands for.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.values.len()];
        for (j, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_into(j, row);
        }
        out
    }

    /// Row `j`, dequantised into `out` (`cols` values).
    pub(crate) fn row_into(&self, j: usize, out: &mut [f32]) {
        let blocks = self.blocks();
        let scales = &self.scales[j * blocks..(j + 1) * blocks];
        let values = &self.values[j * self.cols..(j + 1) * self.cols];
        for ((o, q), &s) in out.chunks_mut(BLOCK).zip(values.chunks(BLOCK)).zip(scales) {
            for (o, &q) in o.iter_mut().zip(q) {
                *o = s * f32::from(q);
            }
        }
    }
}

/// `out = x · dequantize(W)ᵀ` for `x: [m, k]`, `W: [n, k]` int8, `out: [m, n]`.
///
/// # Panics
/// If the slice lengths do not match `m`, `k` and `W`.
pub(crate) fn matmul_q8(x: &[f32], m: usize, k: usize, w: &Q8Matrix, out: &mut [f32]) {
    let n = w.rows();
    assert!(
        w.cols == k && x.len() == m * k && out.len() == m * n,
        "matmul_q8: shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if m > Q8_SKINNY_MAX_ROWS {
        // Tall (prefill): the same matrix, dequantised once for the call and multiplied by the
        // packing GEMM.
        gemm_transb(x, m, k, &w.dequantize(), out);
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n * k >= PARALLEL_MIN_MACS;
    let chunk = if parallel {
        n.div_ceil(threads * 4).max(16)
    } else {
        n
    };
    // Column tasks: weight rows `start..start + len` and each input row's output slice.
    let tasks = super::column_runs(out, n, chunk);
    let blocks = w.blocks();
    let run = |(start, len, mut outs): (usize, usize, Vec<&mut [f32]>)| {
        let values = &w.values[start * k..(start + len) * k];
        let scales = &w.scales[start * blocks..(start + len) * blocks];
        skinny_q8(x, m, k, values, scales, &mut outs);
    };
    if parallel {
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
}

/// `out[i][j] = x_i · dequantize(q_j)` for `x: [m, k]`, `q: [n, k]` with `scales: [n, ⌈k /
/// BLOCK⌉]`.
fn skinny_q8(x: &[f32], m: usize, k: usize, q: &[i8], scales: &[f32], out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(BLOCK) && avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked at run time just above), and
        // k is a multiple of BLOCK.
        unsafe { super::avx512::skinny_q8(x, m, k, q, scales, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(BLOCK) && avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { avx2::skinny_q8(x, m, k, q, scales, out) };
        return;
    }
    portable::skinny_q8(x, m, k, q, scales, out);
}

/// The portable kernel (and the reference the SIMD one is tested against).
pub(super) mod portable {
    use super::BLOCK;

    /// As `super::skinny_q8`: per block, the dot product with the int8 values, times the
    /// block's scale.
    pub(in crate::cpu_kernels) fn skinny_q8(
        x: &[f32],
        m: usize,
        k: usize,
        q: &[i8],
        scales: &[f32],
        out: &mut [&mut [f32]],
    ) {
        let blocks = k.div_ceil(BLOCK);
        for (j, qj) in q.chunks_exact(k).enumerate() {
            let sj = &scales[j * blocks..(j + 1) * blocks];
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                let mut sum = 0.0f32;
                for ((xb, qb), &s) in xi.chunks(BLOCK).zip(qj.chunks(BLOCK)).zip(sj) {
                    let dot: f32 = xb.iter().zip(qb).map(|(a, &b)| a * f32::from(b)).sum();
                    sum += s * dot;
                }
                out[i][j] = sum;
            }
        }
    }
}

/// AVX2 + FMA (`k` a multiple of [`BLOCK`]): four weight rows at a time, each 8-value run of a
/// row converted to f32 and scaled once, then multiplied into every input row (up to `MR` rows
/// per pass).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// Input rows per pass (4 × 3 accumulators + 3 inputs + 1 weight ≤ 16 registers).
    const MR: usize = 3;
    /// Weight rows per pass.
    const NR: usize = 4;

    /// As `super::skinny_q8`.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu_kernels) fn skinny_q8(
        x: &[f32],
        m: usize,
        k: usize,
        q: &[i8],
        scales: &[f32],
        out: &mut [&mut [f32]],
    ) {
        let n = q.len() / k;
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(NR);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                match (mr, nr) {
                    (1, 4) => row_block::<4>(x, i, j, k, q, scales, out),
                    (3, 4) => block::<3, 4>(x, i, j, k, q, scales, out, i == 0),
                    (2, 4) => block::<2, 4>(x, i, j, k, q, scales, out, i == 0),
                    (3, _) => block::<3, 1>(x, i, j, k, q, scales, out, i == 0),
                    (2, _) => block::<2, 1>(x, i, j, k, q, scales, out, i == 0),
                    (_, _) => block::<1, 1>(x, i, j, k, q, scales, out, i == 0),
                }
                i += mr;
            }
            // Blocks of one weight row cover the last `nr < NR` rows one at a time.
            j += if nr == NR { NR } else { 1 };
        }
    }

    /// One input row (decoding one sequence): per block, the dot product with the int8 values
    /// is summed unscaled and scaled once (`acc += s · Σ x·q`), saving a multiply per 8 values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn row_block<const C: usize>(
        x: &[f32],
        i0: usize,
        j0: usize,
        k: usize,
        q: &[i8],
        scales: &[f32],
        out: &mut [&mut [f32]],
    ) {
        let xs = &x[i0 * k..(i0 + 1) * k];
        let qs = &q[j0 * k..(j0 + C) * k];
        let blocks = k / BLOCK;
        let ss = &scales[j0 * blocks..(j0 + C) * blocks];
        let mut acc = [_mm256_setzero_ps(); C];
        for blk in 0..blocks {
            if blk % 2 == 0 {
                for b in 0..C {
                    // The same columns of the next block's rows, a cache line ahead (a hint:
                    // never dereferenced, may point past the weights).
                    let ahead = qs.as_ptr().wrapping_add((C + b) * k + blk * BLOCK);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            let mut part = [_mm256_setzero_ps(); C];
            for step in 0..BLOCK / 8 {
                let p = blk * BLOCK + step * 8;
                // SAFETY: p + 8 <= k: `xs` has k values.
                let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(p)) };
                for (b, part) in part.iter_mut().enumerate() {
                    // SAFETY: row b < C of `qs` spans [b*k, (b+1)*k) and p + 8 <= k.
                    let w = unsafe {
                        let bytes = _mm_loadl_epi64(qs.as_ptr().add(b * k + p).cast());
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
                    };
                    *part = _mm256_fmadd_ps(xv, w, *part);
                }
            }
            for b in 0..C {
                let scale = _mm256_set1_ps(ss[b * blocks + blk]);
                acc[b] = _mm256_fmadd_ps(part[b], scale, acc[b]);
            }
        }
        for b in 0..C {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[b]) };
            out[i0][j0 + b] = lanes.iter().sum::<f32>();
        }
    }

    /// `out[i0 + a][j0 + b] = x_{i0+a} · dequantize(q_{j0+b})` for `a < R`, `b < C`.
    /// The first input block of each weight block (`prefetch`) prefetches the next one.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn block<const R: usize, const C: usize>(
        x: &[f32],
        i0: usize,
        j0: usize,
        k: usize,
        q: &[i8],
        scales: &[f32],
        out: &mut [&mut [f32]],
        prefetch: bool,
    ) {
        let xs = &x[i0 * k..(i0 + R) * k];
        let qs = &q[j0 * k..(j0 + C) * k];
        let blocks = k / BLOCK;
        let ss = &scales[j0 * blocks..(j0 + C) * blocks];
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut p = 0;
        while p < k {
            if prefetch && p % 64 == 0 {
                for b in 0..C {
                    // As in `row_block`: a hint, never dereferenced.
                    let ahead = qs.as_ptr().wrapping_add((C + b) * k + p);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            let mut xv = [_mm256_setzero_ps(); R];
            for (a, v) in xv.iter_mut().enumerate() {
                // SAFETY: row a < R of `xs` spans [a*k, (a+1)*k) and p + 8 <= k.
                *v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(a * k + p)) };
            }
            for b in 0..C {
                let scale = _mm256_set1_ps(ss[b * blocks + p / BLOCK]);
                // SAFETY: row b < C of `qs` spans [b*k, (b+1)*k); 8 bytes from p + 8 <= k
                // (k is a multiple of BLOCK, itself a multiple of 8).
                let w = unsafe {
                    let bytes = _mm_loadl_epi64(qs.as_ptr().add(b * k + p).cast());
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale)
                };
                for a in 0..R {
                    acc[a][b] = _mm256_fmadd_ps(xv[a], w, acc[a][b]);
                }
            }
            p += 8;
        }
        for a in 0..R {
            for b in 0..C {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[a][b]) };
                out[i0 + a][j0 + b] = lanes.iter().sum::<f32>();
            }
        }
    }
}
