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
    let (heads, kv, d) = (dims.heads, dims.kv_heads, dims.head_dim);
    let group = heads / kv;
    let scale = 1.0 / (d as f32).sqrt();
    let out_parts = split_by_clusters(out, &packing.clusters, heads * d);
    let lse_parts = split_by_clusters(lse, &packing.clusters, heads);
    packing
        .clusters
        .par_iter()
        .zip(out_parts)
        .zip(lse_parts)
        .for_each(|((range, out), lse)| {
            let base = range.start;
            let len = range.len();
            let q = &q[base * heads * d..(base + len) * heads * d];
            let k = &k[base * kv * d..(base + len) * kv * d];
            let v = &v[base * kv * d..(base + len) * kv * d];
            let mut scores = Vec::new();
            for i in 0..len {
                let ranges = key_ranges(packing, base, i);
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
    let group = heads / kv;
    let scale = 1.0 / (d as f32).sqrt();
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
            let base = range.start;
            let len = range.len();
            fn rows(x: &[f32], base: usize, len: usize, w: usize) -> &[f32] {
                &x[base * w..(base + len) * w]
            }
            let slice = |x, w| rows(x, base, len, w);
            let q = slice(&saved.q, heads * d);
            let k = slice(&saved.k, kv * d);
            let v = slice(&saved.v, kv * d);
            let o = slice(&saved.attn, heads * d);
            let d_o = slice(d_out, heads * d);
            let lse = &saved.lse[base * heads..(base + len) * heads];
            let mut ds = Vec::new();
            for i in 0..len {
                let ranges = key_ranges(packing, base, i);
                for h in 0..heads {
                    let kh = h / group;
                    let at = (i * heads + h) * d;
                    let qi = &q[at..at + d];
                    let doi = &d_o[at..at + d];
                    let big_d = dot(doi, &o[at..at + d]);
                    let l = lse[i * heads + h];
                    ds.clear();
                    for j in ranges.iter().cloned().flatten() {
                        let kj = &k[(j * kv + kh) * d..(j * kv + kh + 1) * d];
                        let p = exp(dot(qi, kj) * scale - l);
                        let vj = &v[(j * kv + kh) * d..(j * kv + kh + 1) * d];
                        ds.push((p, p * (dot(doi, vj) - big_d)));
                    }
                    let dqi = &mut dq[at..at + d];
                    for (&(_, s), j) in ds.iter().zip(ranges.iter().cloned().flatten()) {
                        axpy(s * scale, &k[(j * kv + kh) * d..(j * kv + kh + 1) * d], dqi);
                    }
                    for (&(p, s), j) in ds.iter().zip(ranges.iter().cloned().flatten()) {
                        let at_k = (j * kv + kh) * d;
                        axpy(s * scale, qi, &mut dk[at_k..at_k + d]);
                        axpy(p, doi, &mut dv[at_k..at_k + d]);
                    }
                }
            }
        });
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
