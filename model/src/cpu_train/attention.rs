//! Causal grouped-query attention over a [`Packing`], forward and backward (probabilities
//! recomputed from each query's saved log-sum-exp), parallel over (cluster, key-value head)
//! tasks.
//!
//! Each task works on one cluster's keys of one key-value head, laid out for the vector units:
//! the keys (and, in the backward, the values) transposed to `[d, len]` once per task, so that
//! the scores of up to three query heads of the group against 24 keys are sums of outer
//! products held in registers (no horizontal sums), and the weighted sums of key or value rows
//! run over 24 columns at a time for up to three heads. The query heads that share a key-value
//! head are handled together, so each key is read once per group instead of once per head.

use std::ops::Range;

use rayon::prelude::*;

use super::ops::dot;
use super::packing::Packing;
use super::{Dims, LayerSaved};
use crate::cpu_kernels::{exp, softmax_scaled};

/// Query heads handled together by the register-blocked kernels.
const HEADS_PER_CHUNK: usize = 3;

/// The key ranges each query of a cluster attends to, as local indices.
#[inline]
fn key_ranges(packing: &Packing, base: usize, i: usize) -> [Range<usize>; 2] {
    let (context, own) = &packing.keys[base + i];
    [context.start - base..context.end - base, own - base..i + 1]
}

/// Causal grouped-query attention over the packing (see [`Packing::keys`]), scale `1/√d`;
/// writes the output `[N, heads·d]` and each query's log-sum-exp `[N, heads]`. Parallel over
/// (cluster, key-value head) tasks.
pub(super) fn attention_forward(
    packing: &Packing,
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (heads, kv, d) = (dims.heads, dims.kv_heads, dims.head_dim);
    let group = heads / kv;
    let results: Vec<(Task, Vec<f32>, Vec<f32>)> = tasks(packing, dims)
        .into_par_iter()
        .map(|task| {
            let (o, l) = task.run_forward(q, k, v);
            (task, o, l)
        })
        .collect();
    for (task, o, l) in results {
        for i in 0..task.len {
            let token = task.base + i;
            let heads_at = token * heads + task.kv_head * group;
            out[heads_at * d..(heads_at + group) * d]
                .copy_from_slice(&o[i * group * d..(i + 1) * group * d]);
            lse[heads_at..heads_at + group].copy_from_slice(&l[i * group..(i + 1) * group]);
        }
    }
}

/// Attention backward with the probabilities recomputed from the saved log-sum-exp:
/// `p_j = exp(s_j − lse)`, `D = dO · O`, `ds_j = p_j (dO · v_j − D)`,
/// `dq += scale Σ_j ds_j k_j`, `dk_j += scale ds_j q`, `dv_j += p_j dO`, summed over the
/// query heads of each key-value head. Parallel over (cluster, key-value head) tasks (their
/// outputs are disjoint).
pub(super) fn attention_backward(
    packing: &Packing,
    dims: Dims,
    saved: &LayerSaved,
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (heads, kv, d) = (dims.heads, dims.kv_heads, dims.head_dim);
    let group = heads / kv;
    let results: Vec<(Task, Gradients)> = tasks(packing, dims)
        .into_par_iter()
        .map(|task| {
            let g = task.run_backward(saved, d_out);
            (task, g)
        })
        .collect();
    for (task, g) in results {
        for i in 0..task.len {
            let token = task.base + i;
            let heads_at = token * heads + task.kv_head * group;
            add(
                &mut dq[heads_at * d..(heads_at + group) * d],
                &g.dq[i * group * d..(i + 1) * group * d],
            );
            let kv_at = (token * kv + task.kv_head) * d;
            add(&mut dk[kv_at..kv_at + d], &g.dk[i * d..(i + 1) * d]);
            add(&mut dv[kv_at..kv_at + d], &g.dv[i * d..(i + 1) * d]);
        }
    }
}

/// `y += x`.
fn add(y: &mut [f32], x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// One task per cluster and key-value head.
fn tasks(packing: &Packing, dims: Dims) -> Vec<Task<'_>> {
    packing
        .clusters
        .iter()
        .filter(|range| !range.is_empty()) // `kv_rows` needs a row
        .flat_map(|range| {
            (0..dims.kv_heads).map(move |kv_head| Task {
                packing,
                dims,
                base: range.start,
                len: range.len(),
                kv_head,
            })
        })
        .collect()
}

/// A task's gradients: `dq` `[len, group·d]` (its query heads), `dk` and `dv` `[len, d]`.
struct Gradients {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// One cluster (tokens `base..base + len`, whose queries attend only to keys inside it) and
/// one key-value head with its group of query heads.
struct Task<'a> {
    packing: &'a Packing,
    dims: Dims,
    base: usize,
    len: usize,
    kv_head: usize,
}

impl Task<'_> {
    /// Whether the vector kernels apply: AVX2 + FMA on this CPU and `d` a multiple of 8.
    fn vector(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.dims.head_dim.is_multiple_of(8) && crate::cpu_kernels::avx2_fma();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// [`Self::forward`], compiled for AVX2 + FMA where [`Self::vector`].
    fn run_forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.vector() {
            // SAFETY: the CPU supports AVX2 and FMA (checked by `vector`).
            return unsafe { self.forward_avx2(q, k, v) };
        }
        self.forward(q, k, v)
    }

    /// [`Self::backward`], compiled for AVX2 + FMA where [`Self::vector`].
    fn run_backward(&self, saved: &LayerSaved, d_out: &[f32]) -> Gradients {
        #[cfg(target_arch = "x86_64")]
        if self.vector() {
            // SAFETY: the CPU supports AVX2 and FMA (checked by `vector`).
            return unsafe { self.backward_avx2(saved, d_out) };
        }
        self.backward(saved, d_out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn forward_avx2(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        self.forward(q, k, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn backward_avx2(&self, saved: &LayerSaved, d_out: &[f32]) -> Gradients {
        self.backward(saved, d_out)
    }

    /// The kernels for this task: the vector ones where [`Self::vector`].
    #[inline(always)]
    fn kernels(&self) -> Kernels {
        Kernels {
            d: self.dims.head_dim,
            #[cfg(target_arch = "x86_64")]
            vector: self.vector(),
        }
    }

    /// Rows `[len, d]` of this task's head in `x` (`[N, kv·d]`): the first row's offset and the
    /// row stride.
    fn kv_rows<'x>(&self, x: &'x [f32]) -> (&'x [f32], usize) {
        let (kv, d) = (self.dims.kv_heads, self.dims.head_dim);
        let stride = kv * d;
        let start = self.base * stride + self.kv_head * d;
        let end = (self.base + self.len - 1) * stride + self.kv_head * d + d;
        (&x[start..end], stride)
    }

    /// The forward over this task: the output `[len, group·d]` and log-sum-exp `[len, group]`.
    #[inline(always)]
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (heads, kv, d) = (self.dims.heads, self.dims.kv_heads, self.dims.head_dim);
        let group = heads / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let kernels = self.kernels();
        let (k_rows, stride) = self.kv_rows(k);
        let keys_t = Transposed::new(k_rows, stride, self.len, d);
        let (v_rows, _) = self.kv_rows(v);
        let mut out = vec![0.0f32; self.len * group * d];
        let mut lse = vec![0.0f32; self.len * group];
        let mut scores = vec![0.0f32; HEADS_PER_CHUNK * self.len];
        for i in 0..self.len {
            let ranges = key_ranges(self.packing, self.base, i);
            let n_keys = ranges[0].len() + ranges[1].len();
            for h0 in (0..group).step_by(HEADS_PER_CHUNK) {
                let chunk = HEADS_PER_CHUNK.min(group - h0);
                let head = (self.base + i) * heads + self.kv_head * group + h0;
                let qs = &q[head * d..(head + chunk) * d];
                kernels.scores(chunk, qs, &keys_t, &ranges, &mut scores, self.len);
                let o = &mut out[(i * group + h0) * d..(i * group + h0 + chunk) * d];
                for c in 0..chunk {
                    let row = &mut scores[c * self.len..c * self.len + n_keys];
                    lse[i * group + h0 + c] = softmax_scaled(row, scale);
                }
                kernels.weighted_rows(chunk, &scores, self.len, v_rows, stride, &ranges, o);
            }
        }
        (out, lse)
    }

    /// The backward over this task (see [`attention_backward`]).
    #[inline(always)]
    fn backward(&self, saved: &LayerSaved, d_out: &[f32]) -> Gradients {
        let (heads, kv, d) = (self.dims.heads, self.dims.kv_heads, self.dims.head_dim);
        let group = heads / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let kernels = self.kernels();
        let (k_rows, stride) = self.kv_rows(&saved.k);
        let (v_rows, _) = self.kv_rows(&saved.v);
        let keys_t = Transposed::new(k_rows, stride, self.len, d);
        let values_t = Transposed::new(v_rows, stride, self.len, d);
        let mut grads = Gradients {
            dq: vec![0.0f32; self.len * group * d],
            dk: vec![0.0f32; self.len * d],
            dv: vec![0.0f32; self.len * d],
        };
        let width = self.len;
        let mut p = vec![0.0f32; HEADS_PER_CHUNK * width];
        let mut ds = vec![0.0f32; HEADS_PER_CHUNK * width];
        for i in 0..self.len {
            let ranges = key_ranges(self.packing, self.base, i);
            let n_keys = ranges[0].len() + ranges[1].len();
            for h0 in (0..group).step_by(HEADS_PER_CHUNK) {
                let chunk = HEADS_PER_CHUNK.min(group - h0);
                let head = (self.base + i) * heads + self.kv_head * group + h0;
                let at = head * d..(head + chunk) * d;
                let (qs, d_os, os) = (&saved.q[at.clone()], &d_out[at.clone()], &saved.attn[at]);
                // p_j = exp(scale · q·k_j − lse), and dO · v_j into `ds`.
                kernels.scores(chunk, qs, &keys_t, &ranges, &mut p, width);
                kernels.scores(chunk, d_os, &values_t, &ranges, &mut ds, width);
                for c in 0..chunk {
                    let l = saved.lse[head + c];
                    let big_d = dot(&d_os[c * d..(c + 1) * d], &os[c * d..(c + 1) * d]);
                    let p_row = &mut p[c * width..c * width + n_keys];
                    for s in p_row.iter_mut() {
                        *s = exp(*s * scale - l);
                    }
                    // scale · ds_j = scale · p_j (dO · v_j − D).
                    for (s, &pj) in ds[c * width..c * width + n_keys].iter_mut().zip(&*p_row) {
                        *s = pj * (*s - big_d) * scale;
                    }
                }
                let dq = &mut grads.dq[(i * group + h0) * d..(i * group + h0 + chunk) * d];
                kernels.weighted_rows(chunk, &ds, width, k_rows, stride, &ranges, dq);
                kernels.outer_add(chunk, &ds, width, qs, &ranges, &mut grads.dk);
                kernels.outer_add(chunk, &p, width, d_os, &ranges, &mut grads.dv);
            }
        }
        grads
    }
}

/// One head's keys or values of a cluster transposed to `[d, stride]` (`t[c·stride + j]` is
/// component `c` of local row `j`), zero-padded so that a block of 24 columns may start at any
/// row.
struct Transposed {
    t: Vec<f32>,
    stride: usize,
}

impl Transposed {
    /// Pads each row of the transpose by this many columns past the cluster's last row.
    const PAD: usize = 24;

    /// The transpose of `len` rows of `d` values, row `j` at `rows[j·row_stride..]`.
    fn new(rows: &[f32], row_stride: usize, len: usize, d: usize) -> Self {
        let stride = len + Self::PAD;
        let mut t = vec![0.0f32; d * stride];
        for j in 0..len {
            let row = &rows[j * row_stride..j * row_stride + d];
            for (c, &x) in row.iter().enumerate() {
                t[c * stride + j] = x;
            }
        }
        Self { t, stride }
    }
}

/// The three products of a task, on AVX2 + FMA (`vector`) or in portable code. Head chunks
/// hold `1..=3` query heads, consecutive in their inputs (stride `d`) and their score rows
/// (stride `width`); the score rows hold the keys of `ranges[0]` then those of `ranges[1]`.
#[derive(Clone, Copy)]
struct Kernels {
    d: usize,
    #[cfg(target_arch = "x86_64")]
    vector: bool,
}

impl Kernels {
    /// `s[h·width + n] = a_h · key_j` for each head `h < chunk` and the `n`-th key `j` of the
    /// ranges, with `a_h = a[h·d..(h+1)·d]` and the keys in `keys_t`.
    #[inline(always)]
    fn scores(
        self,
        chunk: usize,
        a: &[f32],
        keys_t: &Transposed,
        ranges: &[Range<usize>; 2],
        s: &mut [f32],
        width: usize,
    ) {
        let d = self.d;
        assert!(a.len() >= chunk * d && s.len() >= chunk * width);
        let mut at = 0;
        for range in ranges {
            assert!(range.end + Transposed::PAD <= keys_t.stride);
            assert!(at + range.len() <= width);
            #[cfg(target_arch = "x86_64")]
            if self.vector {
                // SAFETY: AVX2 + FMA are present (`vector`); the bounds are asserted above:
                // every block of 24 columns from `range.start` stays inside a padded row.
                unsafe { vector::scores(chunk, a, d, keys_t, range.clone(), s, width, at) };
                at += range.len();
                continue;
            }
            for h in 0..chunk {
                let a_h = &a[h * d..(h + 1) * d];
                for (n, j) in range.clone().enumerate() {
                    let mut sum = 0.0;
                    for (c, &x) in a_h.iter().enumerate() {
                        sum += x * keys_t.t[c * keys_t.stride + j];
                    }
                    s[h * width + at + n] = sum;
                }
            }
            at += range.len();
        }
    }

    /// `out[h·d..(h+1)·d] += Σ_n w[h·width + n] · row_j` over the `n`-th key `j` of the
    /// ranges, row `j` at `rows[j·row_stride..]`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn weighted_rows(
        self,
        chunk: usize,
        w: &[f32],
        width: usize,
        rows: &[f32],
        row_stride: usize,
        ranges: &[Range<usize>; 2],
        out: &mut [f32],
    ) {
        let d = self.d;
        assert!(out.len() >= chunk * d && w.len() >= chunk * width);
        let mut at = 0;
        for range in ranges {
            if range.is_empty() {
                continue;
            }
            assert!((range.end - 1) * row_stride + d <= rows.len() && at + range.len() <= width);
            #[cfg(target_arch = "x86_64")]
            if self.vector {
                // SAFETY: AVX2 + FMA are present (`vector`); bounds asserted above.
                unsafe {
                    vector::weighted_rows(chunk, w, width, at, rows, row_stride, range, out, d)
                };
                at += range.len();
                continue;
            }
            for h in 0..chunk {
                let o = &mut out[h * d..(h + 1) * d];
                for (n, j) in range.clone().enumerate() {
                    let wj = w[h * width + at + n];
                    for (o, &x) in o.iter_mut().zip(&rows[j * row_stride..j * row_stride + d]) {
                        *o += wj * x;
                    }
                }
            }
            at += range.len();
        }
    }

    /// `rows[j·d..(j+1)·d] += Σ_h coef[h·width + n] · x[h·d..(h+1)·d]` for the `n`-th key
    /// `j` of the ranges (`rows`: `[len, d]`).
    #[inline(always)]
    fn outer_add(
        self,
        chunk: usize,
        coef: &[f32],
        width: usize,
        x: &[f32],
        ranges: &[Range<usize>; 2],
        rows: &mut [f32],
    ) {
        let d = self.d;
        assert!(x.len() >= chunk * d && coef.len() >= chunk * width);
        let mut at = 0;
        for range in ranges {
            assert!(range.end * d <= rows.len() && at + range.len() <= width);
            #[cfg(target_arch = "x86_64")]
            if self.vector {
                // SAFETY: AVX2 + FMA are present (`vector`); bounds asserted above.
                unsafe { vector::outer_add(chunk, coef, width, at, x, range.clone(), rows, d) };
                at += range.len();
                continue;
            }
            for (n, j) in range.clone().enumerate() {
                let row = &mut rows[j * d..(j + 1) * d];
                for h in 0..chunk {
                    let cj = coef[h * width + at + n];
                    for (r, &xv) in row.iter_mut().zip(&x[h * d..(h + 1) * d]) {
                        *r += cj * xv;
                    }
                }
            }
            at += range.len();
        }
    }
}

/// The AVX2 + FMA kernels of [`Kernels`] (`d` a multiple of 8), for 1 to 3 heads at once.
#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::Transposed;

    /// Columns per block: three vectors of 8.
    const BLOCK: usize = 24;

    /// See [`super::Kernels::scores`]; one range, written from column `at` of each row.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` holds `chunk·d` values, `s` `chunk` rows of `width ≥ at + range.len()`,
    /// and `range.end + 24 ≤ keys_t.stride` (the blocks read stay inside the padded rows).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores(
        chunk: usize,
        a: &[f32],
        d: usize,
        keys_t: &Transposed,
        range: Range<usize>,
        s: &mut [f32],
        width: usize,
        at: usize,
    ) {
        // SAFETY: the caller keeps this function's contract (above).
        unsafe {
            match chunk {
                1 => scores_h::<1>(a, d, keys_t, range, s, width, at),
                2 => scores_h::<2>(a, d, keys_t, range, s, width, at),
                _ => scores_h::<3>(a, d, keys_t, range, s, width, at),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_h<const H: usize>(
        a: &[f32],
        d: usize,
        keys_t: &Transposed,
        range: Range<usize>,
        s: &mut [f32],
        width: usize,
        at: usize,
    ) {
        // SAFETY: the caller keeps this function's contract (above).
        unsafe {
            let (t, stride) = (keys_t.t.as_ptr(), keys_t.stride);
            let a = a.as_ptr();
            let mut j0 = range.start;
            while j0 < range.end {
                let mut acc = [[_mm256_setzero_ps(); 3]; H];
                for c in 0..d {
                    let col = t.add(c * stride + j0);
                    let k0 = _mm256_loadu_ps(col);
                    let k1 = _mm256_loadu_ps(col.add(8));
                    let k2 = _mm256_loadu_ps(col.add(16));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_broadcast_ss(&*a.add(h * d + c));
                        acc[0] = _mm256_fmadd_ps(x, k0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(x, k1, acc[1]);
                        acc[2] = _mm256_fmadd_ps(x, k2, acc[2]);
                    }
                }
                let n = BLOCK.min(range.end - j0);
                for (h, acc) in acc.iter().enumerate() {
                    let mut block = [0.0f32; BLOCK];
                    for (b, v) in acc.iter().enumerate() {
                        _mm256_storeu_ps(block.as_mut_ptr().add(8 * b), *v);
                    }
                    let row = h * width + at + (j0 - range.start);
                    s[row..row + n].copy_from_slice(&block[..n]);
                }
                j0 += BLOCK;
            }
        }
    }

    /// See [`super::Kernels::weighted_rows`]; one non-empty range, weights from column `at`.
    ///
    /// # Safety
    /// AVX2 + FMA; `d` a multiple of 8; every row `j` of the range inside `rows`; `w` holds
    /// `chunk` rows of `width ≥ at + range.len()`; `out` holds `chunk·d` values.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weighted_rows(
        chunk: usize,
        w: &[f32],
        width: usize,
        at: usize,
        rows: &[f32],
        row_stride: usize,
        range: &Range<usize>,
        out: &mut [f32],
        d: usize,
    ) {
        // SAFETY: the caller keeps this function's contract (above).
        unsafe {
            match chunk {
                1 => weighted_rows_h::<1>(w, width, at, rows, row_stride, range, out, d),
                2 => weighted_rows_h::<2>(w, width, at, rows, row_stride, range, out, d),
                _ => weighted_rows_h::<3>(w, width, at, rows, row_stride, range, out, d),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weighted_rows_h<const H: usize>(
        w: &[f32],
        width: usize,
        at: usize,
        rows: &[f32],
        row_stride: usize,
        range: &Range<usize>,
        out: &mut [f32],
        d: usize,
    ) {
        // SAFETY: the caller keeps this function's contract (above).
        unsafe {
            let (w, rows, out) = (w.as_ptr(), rows.as_ptr(), out.as_mut_ptr());
            let mut c0 = 0;
            while c0 < d {
                let blocks = ((d - c0) / 8).min(3);
                // Start from `out`: the sums then run in key order across the ranges, as one
                // range would (sharing a prompt leaves the result bit for bit unchanged).
                let mut acc = [[_mm256_setzero_ps(); 3]; H];
                for (h, acc) in acc.iter_mut().enumerate() {
                    for (b, acc) in acc.iter_mut().enumerate().take(blocks) {
                        *acc = _mm256_loadu_ps(out.add(h * d + c0 + 8 * b));
                    }
                }
                for (n, j) in range.clone().enumerate() {
                    let row = rows.add(j * row_stride + c0);
                    let mut r = [_mm256_setzero_ps(); 3];
                    for (b, r) in r.iter_mut().enumerate().take(blocks) {
                        *r = _mm256_loadu_ps(row.add(8 * b));
                    }
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_broadcast_ss(&*w.add(h * width + at + n));
                        for (b, acc) in acc.iter_mut().enumerate().take(blocks) {
                            *acc = _mm256_fmadd_ps(x, r[b], *acc);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (b, acc) in acc.iter().enumerate().take(blocks) {
                        _mm256_storeu_ps(out.add(h * d + c0 + 8 * b), *acc);
                    }
                }
                c0 += 8 * blocks;
            }
        }
    }

    /// See [`super::Kernels::outer_add`]; one range, coefficients from column `at`.
    ///
    /// # Safety
    /// AVX2 + FMA; `d` a multiple of 8; `rows` holds `range.end` rows of `d`; `coef` holds
    /// `chunk` rows of `width ≥ at + range.len()`; `x` holds `chunk·d` values.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn outer_add(
        chunk: usize,
        coef: &[f32],
        width: usize,
        at: usize,
        x: &[f32],
        range: Range<usize>,
        rows: &mut [f32],
        d: usize,
    ) {
        // SAFETY: the caller keeps this function's contract (above).
        unsafe {
            let (coef, x, rows) = (coef.as_ptr(), x.as_ptr(), rows.as_mut_ptr());
            for (n, j) in range.enumerate() {
                let row = rows.add(j * d);
                let mut cs = [_mm256_setzero_ps(); 3];
                for (h, c) in cs.iter_mut().enumerate().take(chunk) {
                    *c = _mm256_broadcast_ss(&*coef.add(h * width + at + n));
                }
                for c0 in (0..d).step_by(8) {
                    let mut r = _mm256_loadu_ps(row.add(c0));
                    for (h, c) in cs.iter().enumerate().take(chunk) {
                        r = _mm256_fmadd_ps(*c, _mm256_loadu_ps(x.add(h * d + c0)), r);
                    }
                    _mm256_storeu_ps(row.add(c0), r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packing of clusters, each a prefix of `prefix` tokens and rows of the given lengths.
    fn packing(clusters: &[(usize, &[usize])]) -> Packing {
        let mut keys = Vec::new();
        let mut ranges = Vec::new();
        for &(prefix, rows) in clusters {
            let base = keys.len();
            keys.extend((0..prefix).map(|_| (base..base, base)));
            let mut start = base + prefix;
            for &len in rows {
                keys.extend((0..len).map(|_| (base..base + prefix, start)));
                start += len;
            }
            ranges.push(base..start);
        }
        let n = keys.len();
        Packing {
            tokens: vec![0; n],
            positions: vec![0; n],
            keys,
            clusters: ranges,
            predictors: Vec::new(),
            targets: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// The plain definition: per query and head, softmax of the scaled scores over its keys.
    fn reference(packing: &Packing, dims: Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (heads, kv, d) = (dims.heads, dims.kv_heads, dims.head_dim);
        let n = packing.tokens.len();
        let mut out = vec![0.0; n * heads * d];
        for i in 0..n {
            let (context, own) = &packing.keys[i];
            let keys: Vec<usize> = context.clone().chain(*own..i + 1).collect();
            for h in 0..heads {
                let kh = h / (heads / kv);
                let qi = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kj = &k[(j * kv + kh) * d..(j * kv + kh + 1) * d];
                        qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for (&j, x) in keys.iter().zip(&s) {
                    let p = ((x - max).exp() / z) as f32;
                    for c in 0..d {
                        out[(i * heads + h) * d + c] += p * v[(j * kv + kh) * d + c];
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.377).sin()).collect()
    }

    fn dims(heads: usize, kv_heads: usize, head_dim: usize) -> Dims {
        Dims {
            hidden: heads * head_dim,
            inter: 0,
            heads,
            kv_heads,
            head_dim,
            vocab: 0,
            eps: 0.0,
        }
    }

    /// The vector kernels (d a multiple of 8) and the portable ones (d = 12), for groups of
    /// 1, 3 and 5 query heads (chunks of 3 and 2), over prefixes and rows longer and shorter
    /// than a block of 24 keys.
    #[test]
    fn forward_matches_the_definition() {
        for (heads, kv, d) in [(9, 3, 64), (5, 1, 16), (2, 2, 8), (6, 2, 12)] {
            let dims = dims(heads, kv, d);
            let packing = packing(&[(30, &[1, 7, 40]), (5, &[3, 26])]);
            let n = packing.tokens.len();
            let (q, k, v) = (
                values(n * heads * d, 1.0),
                values(n * kv * d, 2.0),
                values(n * kv * d, 3.0),
            );
            let mut out = vec![0.0; n * heads * d];
            let mut lse = vec![0.0; n * heads];
            attention_forward(&packing, dims, &q, &k, &v, &mut out, &mut lse);
            let want = reference(&packing, dims, &q, &k, &v);
            let gap = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(gap < 1e-5, "heads {heads}, kv {kv}, d {d}: gap {gap}");
        }
    }

    /// The plain backward: per query and head, `ds_j = p_j (dO·v_j − Σ p dO·v)`, then
    /// `dq += scale Σ ds_j k_j`, `dk_j += scale ds_j q`, `dv_j += p_j dO` (f64 sums).
    fn reference_backward(
        packing: &Packing,
        dims: Dims,
        saved: &LayerSaved,
        d_out: &[f32],
    ) -> [Vec<f32>; 3] {
        let (heads, kv, d) = (dims.heads, dims.kv_heads, dims.head_dim);
        let n = packing.tokens.len();
        let scale = 1.0 / (d as f64).sqrt();
        let (q, k, v) = (&saved.q, &saved.k, &saved.v);
        let mut grads = [
            vec![0.0f64; n * heads * d],
            vec![0.0; n * kv * d],
            vec![0.0; n * kv * d],
        ];
        let row = |x: &[f32], at: usize| -> Vec<f64> {
            x[at * d..(at + 1) * d].iter().map(|&v| v as f64).collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for i in 0..n {
            let (context, own) = &packing.keys[i];
            let keys: Vec<usize> = context.clone().chain(*own..i + 1).collect();
            for h in 0..heads {
                let kh = h / (heads / kv);
                let (qi, doi) = (row(q, i * heads + h), row(d_out, i * heads + h));
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| dot(&qi, &row(k, j * kv + kh)) * scale)
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - max).exp() / z).collect();
                let dp: Vec<f64> = keys
                    .iter()
                    .map(|&j| dot(&doi, &row(v, j * kv + kh)))
                    .collect();
                let big_d: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for ((&j, &pj), &dpj) in keys.iter().zip(&p).zip(&dp) {
                    let ds = pj * (dpj - big_d) * scale;
                    let (kj, at) = (row(k, j * kv + kh), (j * kv + kh) * d);
                    for c in 0..d {
                        grads[0][(i * heads + h) * d + c] += ds * kj[c];
                        grads[1][at + c] += ds * qi[c];
                        grads[2][at + c] += pj * doi[c];
                    }
                }
            }
        }
        grads.map(|g| g.into_iter().map(|v| v as f32).collect())
    }

    /// The backward of the vector and portable kernels against the plain definition, with
    /// the forward's saved output and log-sum-exp.
    #[test]
    fn backward_matches_the_definition() {
        for (heads, kv, d) in [(9, 3, 64), (5, 1, 16), (6, 2, 12)] {
            let dims = dims(heads, kv, d);
            let packing = packing(&[(30, &[1, 7, 40]), (5, &[3, 26])]);
            let n = packing.tokens.len();
            let (q, k, v) = (
                values(n * heads * d, 1.0),
                values(n * kv * d, 2.0),
                values(n * kv * d, 3.0),
            );
            let mut attn = vec![0.0; n * heads * d];
            let mut lse = vec![0.0; n * heads];
            attention_forward(&packing, dims, &q, &k, &v, &mut attn, &mut lse);
            let saved = LayerSaved {
                x: Vec::new(),
                inv_rms1: Vec::new(),
                q,
                k,
                v,
                attn,
                lse,
                h: Vec::new(),
                inv_rms2: Vec::new(),
                gate: Vec::new(),
                up: Vec::new(),
            };
            let d_out = values(n * heads * d, 4.0);
            let mut got = [
                vec![0.0; n * heads * d],
                vec![0.0; n * kv * d],
                vec![0.0; n * kv * d],
            ];
            let [dq, dk, dv] = &mut got;
            attention_backward(&packing, dims, &saved, &d_out, dq, dk, dv);
            let want = reference_backward(&packing, dims, &saved, &d_out);
            for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let gap = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    gap < 1e-4,
                    "heads {heads}, kv {kv}, d {d}: {name} gap {gap}"
                );
            }
        }
    }
}
