//! [`HostOps`]: the training pass's operations in plain Rust on `Vec<f32>`, each the CPU mirror
//! of its CUDA kernel (same indexing, same formula; sums in plain order where the kernel uses
//! a tree), and SGEMM computed literally from cuBLAS's column-major arguments. It exists so
//! that the pass's driver — buffer shapes, strides, the products' transposes — is tested on
//! machines without a GPU (`tests/train_pass.rs`); it is not a fast CPU path (that is
//! `kaizen_model::CpuScorePass`).
// The loops index their buffers as the kernels do (row, column, head offsets), on purpose.
#![allow(clippy::needless_range_loop)]

use super::kernels::WEIGHT_GRAD_ROWS;
use super::ops::{
    AdamWStep, AttentionRows, AttentionSaved, AttentionShape, Buffer, Gemm, TrainOps, Transpose,
    fits,
};
use crate::GpuError;

/// The training pass's operations on the host (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostOps;

impl<T> Buffer for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl TrainOps for HostOps {
    type Buf = Vec<f32>;
    type Index = Vec<u32>;

    fn alloc(&self, len: usize) -> Result<Vec<f32>, GpuError> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, GpuError> {
        Ok(data.to_vec())
    }

    fn upload_index(&self, data: &[u32]) -> Result<Vec<u32>, GpuError> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>, GpuError> {
        Ok(buf.clone())
    }

    fn zero(&self, buf: &mut Vec<f32>) -> Result<(), GpuError> {
        buf.fill(0.0);
        Ok(())
    }

    fn raw_copy(
        &self,
        src: &Vec<f32>,
        src_offset: usize,
        dst: &mut Vec<f32>,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), GpuError> {
        dst[dst_offset..dst_offset + len].copy_from_slice(&src[src_offset..src_offset + len]);
        Ok(())
    }

    /// Host buffers have no device collective: the caller's host path reduces them.
    fn raw_all_reduce_sum(
        &self,
        _buf: &mut Vec<f32>,
        _len: usize,
        _group: &dyn kaizen_learner::Collective,
    ) -> Result<bool, GpuError> {
        Ok(false)
    }

    fn raw_gemm(
        &self,
        g: Gemm,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
    ) -> Result<(), GpuError> {
        // Column-major: element (i, j) of a matrix with leading dimension ld is at i + j·ld;
        // op(A)(i, l) is A(i, l) or A(l, i).
        let op_a = |i: usize, l: usize| match g.transa {
            Transpose::No => a[i + l * g.lda],
            Transpose::Yes => a[l + i * g.lda],
        };
        let op_b = |l: usize, j: usize| match g.transb {
            Transpose::No => b[l + j * g.ldb],
            Transpose::Yes => b[j + l * g.ldb],
        };
        for j in 0..g.n {
            for i in 0..g.m {
                let mut acc = 0.0f32;
                for l in 0..g.k {
                    acc += op_a(i, l) * op_b(l, j);
                }
                let at = i + j * g.ldc;
                // β = 0: C is written, not read (cuBLAS's rule; NaNs in C do not propagate).
                c[at] = if g.beta == 0.0 {
                    g.alpha * acc
                } else {
                    g.alpha * acc + g.beta * c[at]
                };
            }
        }
        Ok(())
    }

    fn raw_gather_rows(
        &self,
        out: &mut Vec<f32>,
        src: &Vec<f32>,
        index: &Vec<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let s = index[r] as usize;
            fits("gather_rows", "src", src.len(), (s + 1) * width)?;
            out[r * width..(r + 1) * width].copy_from_slice(&src[s * width..(s + 1) * width]);
        }
        Ok(())
    }

    fn raw_scatter_add_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        index: &Vec<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let d = index[r] as usize;
            fits("scatter_add_rows", "dst", dst.len(), (d + 1) * width)?;
            for j in 0..width {
                dst[d * width + j] += src[r * width + j];
            }
        }
        Ok(())
    }

    fn raw_rms_norm(
        &self,
        out: &mut Vec<f32>,
        inv_rms: &mut Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        rows: usize,
        width: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let s: f32 = row.iter().map(|v| v * v).sum();
            let inv = 1.0 / (s / width as f32 + eps).sqrt();
            inv_rms[r] = inv;
            for j in 0..width {
                out[r * width + j] = row[j] * inv * gamma[j];
            }
        }
        Ok(())
    }

    fn raw_rms_norm_backward(
        &self,
        dx: &mut Vec<f32>,
        x: &Vec<f32>,
        inv_rms: &Vec<f32>,
        gamma: &Vec<f32>,
        dy: &Vec<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let at = r * width;
            let inv = inv_rms[r];
            let mut dot = 0.0f32;
            for j in 0..width {
                dot += dy[at + j] * gamma[j] * x[at + j];
            }
            let c = inv * inv * inv * dot / width as f32;
            for j in 0..width {
                dx[at + j] += inv * dy[at + j] * gamma[j] - x[at + j] * c;
            }
        }
        Ok(())
    }

    fn raw_rms_norm_weight_grad(
        &self,
        d_gamma: &mut Vec<f32>,
        x: &Vec<f32>,
        inv_rms: &Vec<f32>,
        dy: &Vec<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        // One partial sum per chunk of WEIGHT_GRAD_ROWS rows and column, then added (the
        // kernel's blocks and their atomic adds).
        for r0 in (0..rows).step_by(WEIGHT_GRAD_ROWS) {
            for j in 0..width {
                let mut s = 0.0f32;
                for r in r0..(r0 + WEIGHT_GRAD_ROWS).min(rows) {
                    s += dy[r * width + j] * x[r * width + j] * inv_rms[r];
                }
                d_gamma[j] += s;
            }
        }
        Ok(())
    }

    fn raw_column_sums(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for r0 in (0..rows).step_by(WEIGHT_GRAD_ROWS) {
            for j in 0..width {
                let mut s = 0.0f32;
                for r in r0..(r0 + WEIGHT_GRAD_ROWS).min(rows) {
                    s += x[r * width + j];
                }
                out[j] += s;
            }
        }
        Ok(())
    }

    fn raw_add_bias(
        &self,
        x: &mut Vec<f32>,
        bias: &Vec<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for i in 0..rows * width {
            x[i] += bias[i % width];
        }
        Ok(())
    }

    fn raw_add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<(), GpuError> {
        for i in 0..len {
            x[i] += y[i];
        }
        Ok(())
    }

    fn raw_rope(
        &self,
        x: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        positions: &Vec<u32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<(), GpuError> {
        let half = head_dim / 2;
        for t in 0..rows {
            let p = positions[t] as usize;
            fits(
                "rope",
                "cos/sin",
                cos.len().min(sin.len()),
                (p + 1) * head_dim,
            )?;
            let (c, s) = (&cos[p * head_dim..], &sin[p * head_dim..]);
            for head in 0..heads {
                let v = &mut x[(t * heads + head) * head_dim..(t * heads + head + 1) * head_dim];
                for i in 0..half {
                    let (a, b) = (v[i], v[i + half]);
                    if inverse {
                        v[i] = a * c[i] + b * s[i + half];
                        v[i + half] = b * c[i + half] - a * s[i];
                    } else {
                        v[i] = a * c[i] - b * s[i];
                        v[i + half] = b * c[i + half] + a * s[i + half];
                    }
                }
            }
        }
        Ok(())
    }

    fn raw_attention(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        key_start: &Vec<u32>,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let AttentionShape {
            tokens: n,
            heads,
            kv_heads: kv,
            head_dim: d,
            scale,
            longest_row,
        } = shape;
        let group = heads / kv;
        let mut scores = Vec::new();
        // One kernel block per (t, head).
        for t in 0..n {
            let s0 = key_start[t] as usize;
            fits("attention", "longest_row", longest_row, t + 1 - s0)?;
            for head in 0..heads {
                let kvh = head / group;
                let qv = &q[(t * heads + head) * d..(t * heads + head + 1) * d];
                scores.clear();
                let mut m = f32::NEG_INFINITY;
                for j in s0..=t {
                    let key = &k[(j * kv + kvh) * d..(j * kv + kvh + 1) * d];
                    let mut dot = 0.0f32;
                    for i in 0..d {
                        dot += qv[i] * key[i];
                    }
                    let s = dot * scale;
                    scores.push(s);
                    m = m.max(s);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - m).exp();
                    sum += *s;
                }
                lse[t * heads + head] = m + sum.ln();
                let inv_sum = 1.0 / sum;
                for i in 0..d {
                    let mut acc = 0.0f32;
                    for (jj, j) in (s0..=t).enumerate() {
                        acc += scores[jj] * v[(j * kv + kvh) * d + i];
                    }
                    out[(t * heads + head) * d + i] = acc * inv_sum;
                }
            }
        }
        Ok(())
    }

    fn raw_attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        delta: &mut Vec<f32>,
        saved: AttentionSaved<'_, Vec<f32>>,
        d_out: &Vec<f32>,
        rows: AttentionRows<'_, Vec<u32>>,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let AttentionShape {
            tokens: n,
            heads,
            kv_heads: kv,
            head_dim: d,
            scale,
            longest_row,
        } = shape;
        let AttentionSaved { q, k, v, out, lse } = saved;
        let group = heads / kv;
        let dot = |a: &[f32], b: &[f32]| {
            let mut s = 0.0f32;
            for i in 0..d {
                s += a[i] * b[i];
            }
            s
        };
        // Kernel `attention_backward_query`: one block per (t, head).
        let mut ds = Vec::new();
        for t in 0..n {
            let s0 = rows.key_start[t] as usize;
            for head in 0..heads {
                let kvh = head / group;
                let at = (t * heads + head) * d;
                let (qv, dov, ov) = (&q[at..at + d], &d_out[at..at + d], &out[at..at + d]);
                let big_d = dot(dov, ov);
                delta[t * heads + head] = big_d;
                let l = lse[t * heads + head];
                ds.clear();
                for j in s0..=t {
                    let kat = (j * kv + kvh) * d;
                    let p = (dot(qv, &k[kat..kat + d]) * scale - l).exp();
                    let dp = dot(dov, &v[kat..kat + d]);
                    ds.push(p * (dp - big_d) * scale);
                }
                for i in 0..d {
                    let mut acc = 0.0f32;
                    for (jj, j) in (s0..=t).enumerate() {
                        acc += ds[jj] * k[(j * kv + kvh) * d + i];
                    }
                    dq[at + i] = acc;
                }
            }
        }
        // Kernel `attention_backward_key`: one block per (key j, kv head); coefficient `idx`
        // is query `j + idx / group`, head `kvh·group + idx % group`.
        let (mut cp, mut cds) = (Vec::new(), Vec::new());
        for j in 0..n {
            let end = rows.row_end[j] as usize;
            fits("attention_backward", "longest_row", longest_row, end - j)?;
            for kvh in 0..kv {
                let kat = (j * kv + kvh) * d;
                let (key, value) = (&k[kat..kat + d], &v[kat..kat + d]);
                let count = (end - j) * group;
                cp.clear();
                cds.clear();
                for idx in 0..count {
                    let (i, h) = (j + idx / group, kvh * group + idx % group);
                    let qat = (i * heads + h) * d;
                    let p = (dot(&q[qat..qat + d], key) * scale - lse[i * heads + h]).exp();
                    let dp = dot(&d_out[qat..qat + d], value);
                    cp.push(p);
                    cds.push(p * (dp - delta[i * heads + h]) * scale);
                }
                for c in 0..d {
                    let (mut acc_k, mut acc_v) = (0.0f32, 0.0f32);
                    for idx in 0..count {
                        let (i, h) = (j + idx / group, kvh * group + idx % group);
                        let qat = (i * heads + h) * d;
                        acc_k += cds[idx] * q[qat + c];
                        acc_v += cp[idx] * d_out[qat + c];
                    }
                    dk[kat + c] = acc_k;
                    dv[kat + c] = acc_v;
                }
            }
        }
        Ok(())
    }

    fn raw_swiglu(
        &self,
        act: &mut Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        for i in 0..len {
            let g = gate[i];
            act[i] = g / (1.0 + (-g).exp()) * up[i];
        }
        Ok(())
    }

    fn raw_swiglu_backward(
        &self,
        d_gate: &mut Vec<f32>,
        d_up: &mut Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        d_act: &Vec<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        for i in 0..len {
            let (g, u, da) = (gate[i], up[i], d_act[i]);
            let s = 1.0 / (1.0 + (-g).exp());
            d_up[i] = da * g * s;
            d_gate[i] = da * u * s * (1.0 + g * (1.0 - s));
        }
        Ok(())
    }

    fn raw_log_softmax(
        &self,
        z: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        logp: &mut Vec<f32>,
        targets: &Vec<u32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let row = &mut z[r * vocab..(r + 1) * vocab];
            let mut m = f32::NEG_INFINITY;
            for v in row.iter_mut() {
                *v *= inv_t;
                m = m.max(*v);
            }
            let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
            let l = m + sum.ln();
            lse[r] = l;
            logp[r] = row[targets[r] as usize] - l;
        }
        Ok(())
    }

    fn raw_log_softmax_backward(
        &self,
        z: &mut Vec<f32>,
        lse: &Vec<f32>,
        targets: &Vec<u32>,
        d_logp: &Vec<f32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let (g, l, x) = (d_logp[r], lse[r], targets[r] as usize);
            for j in 0..vocab {
                let p = (z[r * vocab + j] - l).exp();
                let dz = if j == x { g - g * p } else { -g * p };
                z[r * vocab + j] = dz * inv_t;
            }
        }
        Ok(())
    }

    fn raw_sum_squares(&self, x: &Vec<f32>, len: usize) -> Result<f64, GpuError> {
        // Summed in f64 throughout (the kernel's per-block partials are f32): the clip factor
        // agrees to ~1e-7, and equals `kaizen_learner::AdamW`'s, which sums in f64.
        Ok(x[..len].iter().map(|&v| f64::from(v) * f64::from(v)).sum())
    }

    fn raw_adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        len: usize,
        k: AdamWStep,
    ) -> Result<(), GpuError> {
        let (one_m_b1, one_m_b2) = (1.0 - k.beta1, 1.0 - k.beta2);
        for i in 0..len {
            let gi = g[i] * k.clip;
            m[i] = k.beta1 * m[i] + one_m_b1 * gi;
            v[i] = k.beta2 * v[i] + one_m_b2 * gi * gi;
            let denom = v[i].sqrt() * k.inv_sqrt_bias2 + k.eps;
            p[i] = p[i] * k.decay - k.step_size * m[i] / denom;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major `[r, c]` matrices of distinct values.
    fn matrix(r: usize, c: usize, seed: f32) -> Vec<f32> {
        (0..r * c)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect()
    }

    /// The three row-major products the pass uses, written in cuBLAS's column-major terms,
    /// against the plain definition: `Y = X Wᵀ`, `dX = dY W`, `dW += dYᵀ X`.
    #[test]
    fn column_major_gemm_gives_the_row_major_products() {
        let (n, d_in, d_out) = (5, 3, 4);
        let x = matrix(n, d_in, 1.0);
        let w = matrix(d_out, d_in, 2.0);
        let dy = matrix(n, d_out, 3.0);
        let at = |m: &[f32], cols: usize, r: usize, c: usize| m[r * cols + c];
        let mut y = vec![f32::NAN; n * d_out];
        let g = Gemm {
            transa: Transpose::Yes,
            transb: Transpose::No,
            m: d_out,
            n,
            k: d_in,
            alpha: 1.0,
            lda: d_in,
            ldb: d_in,
            beta: 0.0,
            ldc: d_out,
        };
        HostOps.gemm(g, &w, &x, &mut y).unwrap();
        for r in 0..n {
            for o in 0..d_out {
                let want: f32 = (0..d_in)
                    .map(|i| at(&x, d_in, r, i) * at(&w, d_in, o, i))
                    .sum();
                assert!((y[r * d_out + o] - want).abs() < 1e-6);
            }
        }
        let mut dx = vec![0.0; n * d_in];
        let g = Gemm {
            transa: Transpose::No,
            transb: Transpose::No,
            m: d_in,
            n,
            k: d_out,
            alpha: 1.0,
            lda: d_in,
            ldb: d_out,
            beta: 0.0,
            ldc: d_in,
        };
        HostOps.gemm(g, &w, &dy, &mut dx).unwrap();
        for r in 0..n {
            for i in 0..d_in {
                let want: f32 = (0..d_out)
                    .map(|o| at(&dy, d_out, r, o) * at(&w, d_in, o, i))
                    .sum();
                assert!((dx[r * d_in + i] - want).abs() < 1e-6);
            }
        }
        let mut dw = vec![1.0; d_out * d_in];
        let g = Gemm {
            transa: Transpose::No,
            transb: Transpose::Yes,
            m: d_in,
            n: d_out,
            k: n,
            alpha: 1.0,
            lda: d_in,
            ldb: d_out,
            beta: 1.0,
            ldc: d_in,
        };
        HostOps.gemm(g, &x, &dy, &mut dw).unwrap();
        for o in 0..d_out {
            for i in 0..d_in {
                let want: f32 = 1.0
                    + (0..n)
                        .map(|r| at(&dy, d_out, r, o) * at(&x, d_in, r, i))
                        .sum::<f32>();
                assert!((dw[o * d_in + i] - want).abs() < 1e-5);
            }
        }
    }

    /// The buffer checks are the trait's, ahead of either backend: a short buffer is an input
    /// error naming the operation and the buffer, before any value is read.
    #[test]
    fn short_buffers_are_input_errors_naming_the_operation_and_buffer() {
        let e = HostOps
            .swiglu(&mut vec![0.0; 4], &vec![0.0; 3], &vec![0.0; 4], 4)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            GpuError::Input("swiglu: `gate` holds 3 values, the call needs 4".into()).to_string()
        );
        let e = HostOps
            .gather_rows(&mut vec![0.0; 6], &vec![0.0; 6], &vec![0], 2, 3)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("gather_rows: `index` holds 1 values, the call needs 2"),
            "{e}"
        );
    }

    /// cuBLAS's argument rules are enforced on the host too: a leading dimension below the
    /// stored rows, or a buffer too short for the call, is an input error naming it.
    #[test]
    fn bad_gemm_arguments_are_input_errors() {
        let a = vec![0.0; 12];
        let mut c = vec![0.0; 12];
        let g = Gemm {
            transa: Transpose::No,
            transb: Transpose::No,
            m: 3,
            n: 4,
            k: 4,
            alpha: 1.0,
            lda: 2,
            ldb: 4,
            beta: 0.0,
            ldc: 3,
        };
        let e = HostOps.gemm(g, &a, &vec![0.0; 16], &mut c).unwrap_err();
        assert!(e.to_string().contains("lda 2"), "{e}");
        let e = HostOps
            .gemm(Gemm { lda: 3, ..g }, &a, &vec![0.0; 15], &mut c)
            .unwrap_err();
        assert!(e.to_string().contains("B needs 16 floats, holds 15"), "{e}");
    }
}
