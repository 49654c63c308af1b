//! AVX-512 versions of the decode products (`x · Wᵀ` in f32, and with int8 weights), selected
//! at run time on CPUs with AVX-512F (Intel Xeon since Skylake-SP, AMD since Zen 4). Twice the
//! lanes of the AVX2 kernels and twice the registers (32), so a block keeps `R × C` = 24
//! accumulators for 10 loads per 24 multiply-adds: batched decode is bound by the FMA units,
//! not by loads.
//!
//! Same sums as the portable kernels up to float reassociation (tests in `tests.rs` compare
//! every variant on this CPU).

use std::arch::x86_64::*;

use super::matmul::avx2::hsum4;
use super::q8::BLOCK;

/// Lanes of one 512-bit register of f32.
const W: usize = 16;
/// Weight rows per block (the `C = 4` sums of an input row reduce into one 128-bit store).
const NR: usize = 4;
/// Input rows per block (6 × 4 accumulators + 4 weights + 1 input = 29 of 32 registers).
const MR: usize = 6;

/// Calls `$f::<R, C>(...)` for the runtime `(r, c)` with `r ≤ MR` and `c ∈ {NR, 1}`.
macro_rules! dispatch {
    ($f:ident, $r:expr, $c:expr, ($($arg:expr),*)) => {
        match ($r, $c == NR) {
            (6, true) => $f::<6, NR>($($arg),*),
            (5, true) => $f::<5, NR>($($arg),*),
            (4, true) => $f::<4, NR>($($arg),*),
            (3, true) => $f::<3, NR>($($arg),*),
            (2, true) => $f::<2, NR>($($arg),*),
            (1, true) => $f::<1, NR>($($arg),*),
            (6, false) => $f::<6, 1>($($arg),*),
            (5, false) => $f::<5, 1>($($arg),*),
            (4, false) => $f::<4, 1>($($arg),*),
            (3, false) => $f::<3, 1>($($arg),*),
            (2, false) => $f::<2, 1>($($arg),*),
            (_, false) => $f::<1, 1>($($arg),*),
            (_, true) => $f::<1, NR>($($arg),*),
        }
    };
}

/// Splits `m` rows into blocks of at most [`MR`] of near-equal size (16 → 6, 5, 5 rather than
/// 6, 6, 4), and `n` weight rows into blocks of [`NR`] with single rows for the remainder;
/// calls `f(i, r, j, c)` for each block, input blocks innermost so a weight block stays in L1.
#[inline(always)]
fn blocks(m: usize, n: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let count = m.div_ceil(MR);
    let mut j = 0;
    while j < n {
        let c = if n - j >= NR { NR } else { 1 };
        let mut i = 0;
        for b in 0..count {
            // Rows of block b: the first (m % count) blocks get one more.
            let r = m / count + usize::from(b < m % count);
            f(i, r, j, c);
            i += r;
        }
        j += c;
    }
}

/// As `matmul::portable::skinny`: `out[i][j] = x_i · w_j` for `x: [m, k]`, `w: [n, k]`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn skinny(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [&mut [f32]]) {
    let n = w.len() / k;
    blocks(m, n, |i, r, j, c| {
        dispatch!(block, r, c, (x, i, j, k, w, out, i == 0))
    });
}

/// `out[i0 + a][j0 + b] = x_{i0+a} · w_{j0+b}` for `a < R`, `b < C`; the first input block of
/// each weight block (`prefetch`) prefetches the next weight block. Not inlined: each `(R, C)`
/// is its own function, so its accumulators get the whole register file.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
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
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // One step of 16 columns at `p` (`mask` selects the columns left on the last step: masked
    // loads read nothing past them).
    let step = |acc: &mut [[__m512; C]; R], p: usize, mask: __mmask16| {
        // The C weights stay in registers while the R inputs stream through one:
        // R·C accumulators + C + 1 ≤ 29 registers.
        let mut wv = [_mm512_setzero_ps(); C];
        for (b, v) in wv.iter_mut().enumerate() {
            // SAFETY: row b < C of `ws` spans [b*k, (b+1)*k); the mask covers only p..k.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, wp.add(b * k + p)) };
        }
        for (a, row) in acc.iter_mut().enumerate() {
            // SAFETY: row a < R of `xs` spans [a*k, (a+1)*k); the mask covers only p..k.
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add(a * k + p)) };
            for (sum, w) in row.iter_mut().zip(&wv) {
                *sum = _mm512_fmadd_ps(xv, *w, *sum);
            }
        }
    };
    let body = k - k % W;
    let mut p = 0;
    while p < body {
        if prefetch {
            for b in 0..C {
                // The same columns of the next block's rows (a hint: never dereferenced, may
                // point past the weights).
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((C + b) * k + p).cast());
            }
        }
        step(&mut acc, p, !0);
        p += W;
    }
    if body < k {
        step(&mut acc, body, (1u16 << (k - body)) - 1);
    }
    store_sums(&acc, i0, j0, out);
}

/// Writes the lane sums of `acc[a][b]` to `out[i0 + a][j0 + b]`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn store_sums<const R: usize, const C: usize>(
    acc: &[[__m512; C]; R],
    i0: usize,
    j0: usize,
    out: &mut [&mut [f32]],
) {
    let zero = _mm256_setzero_ps();
    for (a, row) in acc.iter().enumerate() {
        // Halve each sum to 256 bits, then the AVX2 four-way horizontal add.
        let half = |b: usize| {
            if b < C {
                let v = row[b];
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                _mm256_add_ps(_mm512_castps512_ps256(v), hi)
            } else {
                zero
            }
        };
        let mut sums = [0.0f32; 4];
        // SAFETY: `sums` holds 4 floats.
        unsafe { _mm_storeu_ps(sums.as_mut_ptr(), hsum4(half(0), half(1), half(2), half(3))) };
        out[i0 + a][j0..j0 + C].copy_from_slice(&sums[..C]);
    }
}

/// As `q8::portable::skinny_q8`: `out[i][j] = x_i · dequantize(q_j)` for `x: [m, k]`,
/// `q: [n, k]` int8 with `scales: [n, k / BLOCK]`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, and `k` must be a multiple of [`BLOCK`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn skinny_q8(
    x: &[f32],
    m: usize,
    k: usize,
    q: &[i8],
    scales: &[f32],
    out: &mut [&mut [f32]],
) {
    debug_assert!(k.is_multiple_of(BLOCK));
    let n = q.len() / k;
    if m == 1 {
        let mut j = 0;
        while j < n {
            if n - j >= NR {
                row_block_q8::<NR>(x, j, k, q, scales, out);
                j += NR;
            } else {
                row_block_q8::<1>(x, j, k, q, scales, out);
                j += 1;
            }
        }
        return;
    }
    blocks(m, n, |i, r, j, c| {
        dispatch!(block_q8, r, c, (x, i, j, k, q, scales, out, i == 0))
    });
}

/// 16 int8 weights at `p` as f32.
///
/// # Safety
/// `p + 16` values must be readable.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn load_q16(p: *const i8) -> __m512 {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { _mm_loadu_si128(p.cast()) };
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
}

/// One input row (decoding one sequence, bound by reading the weights): per block the dot
/// product with the int8 values is summed unscaled and scaled once (`acc += s · Σ x·q`).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
fn row_block_q8<const C: usize>(
    x: &[f32],
    j0: usize,
    k: usize,
    q: &[i8],
    scales: &[f32],
    out: &mut [&mut [f32]],
) {
    let xs = &x[..k];
    let qs = &q[j0 * k..(j0 + C) * k];
    let blocks = k / BLOCK;
    let ss = &scales[j0 * blocks..(j0 + C) * blocks];
    let mut acc = [_mm512_setzero_ps(); C];
    for blk in 0..blocks {
        let p = blk * BLOCK;
        for b in 0..C {
            // The same columns of the next block's rows, two cache lines ahead (a hint: never
            // dereferenced, may point past the weights).
            _mm_prefetch::<_MM_HINT_T0>(qs.as_ptr().wrapping_add((C + b) * k + p).cast());
        }
        // SAFETY: p + 32 <= k: `xs` has k values.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(xs.as_ptr().add(p)),
                _mm512_loadu_ps(xs.as_ptr().add(p + W)),
            )
        };
        for b in 0..C {
            // SAFETY: row b < C of `qs` spans [b*k, (b+1)*k) and p + 32 <= k.
            let (w0, w1) = unsafe {
                let row = qs.as_ptr().add(b * k + p);
                (load_q16(row), load_q16(row.add(W)))
            };
            let part = _mm512_fmadd_ps(x1, w1, _mm512_mul_ps(x0, w0));
            acc[b] = _mm512_fmadd_ps(part, _mm512_set1_ps(ss[b * blocks + blk]), acc[b]);
        }
    }
    store_sums(&[acc], 0, j0, out);
}

/// `out[i0 + a][j0 + b] = x_{i0+a} · dequantize(q_{j0+b})` for `a < R`, `b < C`: each 16-value
/// run of a weight row is converted to f32 and scaled once, then multiplied into all `R`
/// inputs. The first input block of each weight block (`prefetch`) prefetches the next one.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn block_q8<const R: usize, const C: usize>(
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
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut p = 0;
    while p < k {
        if prefetch && p % 64 == 0 {
            for b in 0..C {
                // As in `row_block_q8`: a hint, never dereferenced.
                _mm_prefetch::<_MM_HINT_T0>(qs.as_ptr().wrapping_add((C + b) * k + p).cast());
            }
        }
        // The C converted weights stay in registers while the R inputs stream through one.
        let mut wv = [_mm512_setzero_ps(); C];
        for (b, v) in wv.iter_mut().enumerate() {
            let scale = _mm512_set1_ps(ss[b * blocks + p / BLOCK]);
            // SAFETY: row b < C of `qs` spans [b*k, (b+1)*k) and p + 16 <= k (k is a multiple
            // of BLOCK = 32).
            *v = _mm512_mul_ps(unsafe { load_q16(qs.as_ptr().add(b * k + p)) }, scale);
        }
        for (a, row) in acc.iter_mut().enumerate() {
            // SAFETY: row a < R of `xs` spans [a*k, (a+1)*k) and p + 16 <= k.
            let xv = unsafe { _mm512_loadu_ps(xs.as_ptr().add(a * k + p)) };
            for (sum, w) in row.iter_mut().zip(&wv) {
                *sum = _mm512_fmadd_ps(xv, *w, *sum);
            }
        }
        p += W;
    }
    store_sums(&acc, i0, j0, out);
}
