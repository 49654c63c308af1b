//! Causal grouped-query attention over a [`Packing`], forward and backward (probabilities
//! recomputed from each query's saved log-sum-exp), parallel over clusters.

use std::ops::Range;

use rayon::prelude::*;

use super::ops::{axpy, dot};
use super::packing::Packing;
use super::{Dims, LayerSaved};
use crate::cpu_kernels::{exp, softmax_scaled};

/// The token ranges each query of a cluster attends to, as local indices.
#[inline]
fn key_ranges(packing: &Packing, base: usize, i: usize) -> [Range<usize>; 2] {
    let (context, own) = &packing.keys[base + i];
    [context.start - base..context.end - base, own - base..i + 1]
}

/// Causal grouped-query attention over the packing (see [`Packing::keys`]), scale `1/√d`;
/// writes the output `[N, heads·d]` and each query's log-sum-exp `[N, heads]`. Parallel over
/// clusters.
pub(super) fn attention_forward(
    packing: &Packing,
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (heads, d) = (dims.heads, dims.head_dim);
    let out_parts = split_by_clusters(out, &packing.clusters, heads * d);
    let lse_parts = split_by_clusters(lse, &packing.clusters, heads);
    packing
        .clusters
        .par_iter()
        .zip(out_parts)
        .zip(lse_parts)
        .for_each(|((range, out), lse)| {
            let cluster = Cluster {
                packing,
                dims,
                base: range.start,
                len: range.len(),
            };
            #[cfg(target_arch = "x86_64")]
            if crate::cpu_kernels::avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
                unsafe { cluster.forward_avx2(q, k, v, out, lse) };
                return;
            }
            cluster.forward(q, k, v, out, lse);
        });
}

/// Attention backward with the probabilities recomputed from the saved log-sum-exp:
/// `p_j = exp(s_j − lse)`, `D = dO · O`, `ds_j = p_j (dO · v_j − D)`,
/// `dq += scale Σ_j ds_j k_j`, `dk_j += scale ds_j q`, `dv_j += p_j dO`.
/// Parallel over clusters (their keys are disjoint).
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
    let dq_parts = split_by_clusters(dq, &packing.clusters, heads * d);
    let dk_parts = split_by_clusters(dk, &packing.clusters, kv * d);
    let dv_parts = split_by_clusters(dv, &packing.clusters, kv * d);
    packing
        .clusters
        .par_iter()
        .zip(dq_parts)
        .zip(dk_parts)
        .zip(dv_parts)
        .for_each(|(((range, dq), dk), dv)| {
            let cluster = Cluster {
                packing,
                dims,
                base: range.start,
                len: range.len(),
            };
            #[cfg(target_arch = "x86_64")]
            if crate::cpu_kernels::avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
                unsafe { cluster.backward_avx2(saved, d_out, dq, dk, dv) };
                return;
            }
            cluster.backward(saved, d_out, dq, dk, dv);
        });
}

/// One cluster of the packing: tokens `base..base + len`, whose queries attend only to keys
/// inside it. Its loops are compiled twice, portable and for AVX2 + FMA (the dot products and
/// `y += αx` then run in 256-bit lanes, and `e^x` over a row of scores vectorizes).
struct Cluster<'a> {
    packing: &'a Packing,
    dims: Dims,
    base: usize,
    len: usize,
}

impl Cluster<'_> {
    /// The cluster's rows of `x` (`[N, width]`).
    fn rows<'x>(&self, x: &'x [f32], width: usize) -> &'x [f32] {
        &x[self.base * width..(self.base + self.len) * width]
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn forward_avx2(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
        self.forward(q, k, v, out, lse);
    }

    /// The forward of [`attention_forward`] over this cluster; `out` and `lse` are its rows.
    #[inline(always)]
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
        let (heads, kv, d) = (self.dims.heads, self.dims.kv_heads, self.dims.head_dim);
        let group = heads / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let q = self.rows(q, heads * d);
        let k = self.rows(k, kv * d);
        let v = self.rows(v, kv * d);
        let mut scores = Vec::new();
        for i in 0..self.len {
            let ranges = key_ranges(self.packing, self.base, i);
            for h in 0..heads {
                let kh = h / group;
                let qi = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                scores.clear();
                for j in ranges.iter().cloned().flatten() {
                    scores.push(dot(qi, &k[(j * kv + kh) * d..(j * kv + kh + 1) * d]) * scale);
                }
                lse[i * heads + h] = softmax_scaled(&mut scores, 1.0);
                let o = &mut out[(i * heads + h) * d..(i * heads + h + 1) * d];
                for (&p, j) in scores.iter().zip(ranges.iter().cloned().flatten()) {
                    axpy(p, &v[(j * kv + kh) * d..(j * kv + kh + 1) * d], o);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn backward_avx2(
        &self,
        saved: &LayerSaved,
        d_out: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        self.backward(saved, d_out, dq, dk, dv);
    }

    /// The backward of [`attention_backward`] over this cluster; `dq`, `dk`, `dv` are its
    /// rows. Per query and head: the scores of all its keys, then their `p_j` in one loop
    /// over the row (vectorised `e^x`), then `dO · v_j`, then the three updates.
    #[inline(always)]
    fn backward(
        &self,
        saved: &LayerSaved,
        d_out: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let (heads, kv, d) = (self.dims.heads, self.dims.kv_heads, self.dims.head_dim);
        let group = heads / kv;
        let scale = 1.0 / (d as f32).sqrt();
        let q = self.rows(&saved.q, heads * d);
        let k = self.rows(&saved.k, kv * d);
        let v = self.rows(&saved.v, kv * d);
        let o = self.rows(&saved.attn, heads * d);
        let d_o = self.rows(d_out, heads * d);
        let lse = self.rows(&saved.lse, heads);
        // p_j, then scale · ds_j = scale · p_j (dO · v_j − D).
        let mut p = Vec::new();
        let mut ds = Vec::new();
        for i in 0..self.len {
            let ranges = key_ranges(self.packing, self.base, i);
            for h in 0..heads {
                let kh = h / group;
                let at = (i * heads + h) * d;
                let qi = &q[at..at + d];
                let doi = &d_o[at..at + d];
                let big_d = dot(doi, &o[at..at + d]);
                let l = lse[i * heads + h];
                let key = |j: usize| (j * kv + kh) * d..(j * kv + kh + 1) * d;
                p.clear();
                for j in ranges.iter().cloned().flatten() {
                    p.push(dot(qi, &k[key(j)]));
                }
                for s in p.iter_mut() {
                    *s = exp(*s * scale - l);
                }
                ds.clear();
                for j in ranges.iter().cloned().flatten() {
                    ds.push(dot(doi, &v[key(j)]));
                }
                for (s, &pj) in ds.iter_mut().zip(&p) {
                    *s = pj * (*s - big_d) * scale;
                }
                let dqi = &mut dq[at..at + d];
                for (&s, j) in ds.iter().zip(ranges.iter().cloned().flatten()) {
                    axpy(s, &k[key(j)], dqi);
                }
                for ((&pj, &s), j) in p.iter().zip(&ds).zip(ranges.iter().cloned().flatten()) {
                    axpy(s, qi, &mut dk[key(j)]);
                    axpy(pj, doi, &mut dv[key(j)]);
                }
            }
        }
    }
}

/// Splits `x` (`[N, width]`) into the consecutive cluster ranges (which tile `0..N`).
fn split_by_clusters<'a>(
    mut x: &'a mut [f32],
    clusters: &[Range<usize>],
    width: usize,
) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(clusters.len());
    for range in clusters {
        let (head, tail) = std::mem::take(&mut x).split_at_mut(range.len() * width);
        parts.push(head);
        x = tail;
    }
    parts
}
