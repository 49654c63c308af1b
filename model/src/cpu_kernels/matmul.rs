//! The matrix products `x · Wᵀ` of the CPU kernels: the unpacked "skinny" kernel for a few
//! rows (AVX2 + FMA and portable versions; attention also uses it), split over the output
//! columns, and the packing GEMM (`gemm` crate) for tall products.

use rayon::prelude::*;

use super::PARALLEL_MIN_MACS;
#[cfg(target_arch = "x86_64")]
use super::{avx2_fma, avx512};

/// Products with more rows than this go to the packing GEMM (`gemm` crate): with many rows the
/// packed weight is reused enough to pay for itself. (With AVX-512 the skinny kernel's blocks
/// are wider and the crossover is later: [`skinny_max_rows`].)
pub(super) const SKINNY_MAX_ROWS: usize = 48;

/// The row count up to which the skinny kernel serves a product: [`SKINNY_MAX_ROWS`], or 128
/// with the AVX-512 kernel (SmolLM2 decoding 64 rows: 350 tokens/s on it against 256 through
/// the GEMM; BENCHMARKS.md).
pub(super) fn skinny_max_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        return 128;
    }
    SKINNY_MAX_ROWS
}

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
    if m > skinny_max_rows() {
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
        for (start, len, out) in super::column_runs(p.out, n, chunk) {
            tasks.push(ColumnTask {
                weight: &p.weight[start * k..(start + len) * k],
                out,
            });
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
pub(super) fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked at run time just above).
        unsafe { super::avx512::skinny(x, m, k, w, out) };
        return;
    }
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

/// The portable kernels (and the reference the SIMD ones are tested against).
pub(super) mod portable {
    use crate::cpu_kernels::LANES;

    /// `out[i][j] = x_i · w_j`, four weight rows at a time, `LANES`-wide partial sums.
    pub(in crate::cpu_kernels) fn skinny(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        out: &mut [&mut [f32]],
    ) {
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
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// Input rows per block.
    const MR: usize = 3;
    /// Weight rows per block (`MR × NR` accumulators + `MR` inputs + 1 weight = 16 registers;
    /// the `NR = 4` sums of an input row reduce into one 128-bit store).
    const NR: usize = 4;

    /// As `portable::skinny`.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu_kernels) fn skinny(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        out: &mut [&mut [f32]],
    ) {
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
    pub(in crate::cpu_kernels) fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
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
