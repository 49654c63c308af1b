//! AVX2 + FMA versions of the element-wise steps built on `e^x`: the sampler's (and the
//! learner's log-softmax's) weights over the vocabulary ([`exp_weights`](super::exp_weights)),
//! the log-softmax's backward, SiLU ([`silu_mul`](super::silu_mul)) and the sigmoid of its
//! backward, attention's row softmax and the row maximum.
//!
//! The portable loops cannot vectorise: their sums are sequential in f32 and `exp`'s range
//! checks are branches, so the compiler keeps them scalar (one `e^x` per ~6 ns measured under
//! `perf` on SmolLM2's 49,152-token vocabulary). Here eight lanes run the same Cody–Waite
//! reduction and Cephes polynomial as [`super::exp`], with the same lane layout for the sums,
//! so results equal the portable ones up to fused multiply-adds and summation order (tests
//! compare them).
//!
//! Every function is `unsafe` only because it needs AVX2 and FMA: callers check
//! `super::avx2_fma()` first.

use std::arch::x86_64::*;

use super::{EXP_BLOCK, ExpSums, LANES, exp};

/// `e^x` on eight lanes: [`super::exp`]'s reduction and polynomial (≤ 2 ulp), `0` below
/// `-87.3`, `+∞` above `88.7`, NaN kept.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn exp8(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(-87.3);
    let hi = _mm256_set1_ps(88.7);
    let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    let e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
    let e = _mm256_blendv_ps(
        e,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
    );
    _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum8(v: __m256) -> f32 {
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

/// As [`super::exp_weights`].
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp_weights(
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
    let (vshift, vscale) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    for (xb, wb) in x.chunks(EXP_BLOCK).zip(w.chunks_mut(EXP_BLOCK)) {
        let mut total = _mm256_setzero_ps();
        let mut weighted = _mm256_setzero_ps();
        let body = xb.len() - xb.len() % LANES;
        for (xc, wc) in xb[..body]
            .chunks_exact(LANES)
            .zip(wb[..body].chunks_exact_mut(LANES))
        {
            // SAFETY: `xc` and `wc` hold eight f32 each.
            let s = _mm256_mul_ps(
                _mm256_sub_ps(unsafe { _mm256_loadu_ps(xc.as_ptr()) }, vshift),
                vscale,
            );
            let e = exp8(s);
            unsafe { _mm256_storeu_ps(wc.as_mut_ptr(), e) };
            total = _mm256_add_ps(total, e);
            // `e = 0` where `s = -∞` (a masked logit): no contribution, not NaN.
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(e, _mm256_setzero_ps());
            weighted = _mm256_add_ps(weighted, _mm256_and_ps(positive, _mm256_mul_ps(e, s)));
        }
        let lanes = (hsum8(total), hsum8(weighted));
        let (xt, wt) = (&xb[body..], &mut wb[body..]);
        super::finish_exp_block(xt, wt, shift, scale, lanes, block_sums, &mut sums);
    }
    sums
}

/// As [`super::silu_mul`].
#[target_feature(enable = "avx2,fma")]
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let body = gate.len() - gate.len() % LANES;
    let one = _mm256_set1_ps(1.0);
    for (g, u) in gate[..body]
        .chunks_exact_mut(LANES)
        .zip(up[..body].chunks_exact(LANES))
    {
        // SAFETY: `g` and `u` hold eight f32 each.
        let (gv, uv) = unsafe { (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) };
        let sig = _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv)));
        let out = _mm256_mul_ps(_mm256_div_ps(gv, sig), uv);
        unsafe { _mm256_storeu_ps(g.as_mut_ptr(), out) };
    }
    for (g, u) in gate[body..].iter_mut().zip(&up[body..]) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// The largest element (NaNs ignored); `-∞` for an empty slice.
#[target_feature(enable = "avx2,fma")]
pub(super) fn max(x: &[f32]) -> f32 {
    let body = x.len() - x.len() % LANES;
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in x[..body].chunks_exact(LANES) {
        // SAFETY: `c` holds eight f32. `maxps` returns its second operand where the first is
        // NaN, so NaNs in `x` are skipped as `f32::max` skips them.
        acc = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, acc);
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes
        .iter()
        .chain(&x[body..])
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `s ← softmax(scale · s)` (`scale > 0`), as the portable `softmax_scaled_in_place`;
/// returns `logsumexp(scale · s)`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn softmax_scaled(s: &mut [f32], scale: f32) -> f32 {
    let m = max(s);
    let body = s.len() - s.len() % LANES;
    let (vm, vscale) = (_mm256_set1_ps(m), _mm256_set1_ps(scale));
    let mut total = _mm256_setzero_ps();
    for c in s[..body].chunks_exact_mut(LANES) {
        // SAFETY: `c` holds eight f32.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        let e = exp8(_mm256_mul_ps(_mm256_sub_ps(v, vm), vscale));
        total = _mm256_add_ps(total, e);
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), e) };
    }
    let mut sum = hsum8(total);
    for v in &mut s[body..] {
        *v = exp((*v - m) * scale);
        sum += *v;
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    for c in s[..body].chunks_exact_mut(LANES) {
        // SAFETY: `c` holds eight f32.
        unsafe {
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
            )
        };
    }
    for v in &mut s[body..] {
        *v *= 1.0 / sum;
    }
    m * scale + sum.ln()
}

/// As [`super::softmax_backward`].
#[target_feature(enable = "avx2,fma")]
pub(super) fn softmax_backward(
    row: &mut [f32],
    lse: f32,
    entropy: f32,
    g_lp: f32,
    g_ent: f32,
    inv_t: f32,
) {
    let body = row.len() - row.len() % LANES;
    let (vlse, vent) = (_mm256_set1_ps(lse), _mm256_set1_ps(entropy));
    let (vg_lp, vg_ent, vinv_t) = (
        _mm256_set1_ps(g_lp),
        _mm256_set1_ps(g_ent),
        _mm256_set1_ps(inv_t),
    );
    for c in row[..body].chunks_exact_mut(LANES) {
        // SAFETY: `c` holds eight f32.
        let log_p = _mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, vlse);
        let p = exp8(log_p);
        // (−g_lp·p − g_ent·p·(log p + H)) / T
        let ent = _mm256_mul_ps(vg_ent, _mm256_mul_ps(p, _mm256_add_ps(log_p, vent)));
        let d = _mm256_fmadd_ps(
            _mm256_sub_ps(_mm256_setzero_ps(), vg_lp),
            p,
            _mm256_sub_ps(_mm256_setzero_ps(), ent),
        );
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(d, vinv_t)) };
    }
    super::softmax_backward_portable(&mut row[body..], lse, entropy, g_lp, g_ent, inv_t);
}

/// As [`super::sigmoid`].
#[target_feature(enable = "avx2,fma")]
pub(super) fn sigmoid(x: &[f32], out: &mut [f32]) {
    let body = x.len() - x.len() % LANES;
    let one = _mm256_set1_ps(1.0);
    for (c, o) in x[..body]
        .chunks_exact(LANES)
        .zip(out[..body].chunks_exact_mut(LANES))
    {
        // SAFETY: `c` and `o` hold eight f32 each.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        let s = _mm256_div_ps(
            one,
            _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))),
        );
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), s) };
    }
    super::sigmoid_portable(&x[body..], &mut out[body..]);
}
