//! The operations the batched decoder needs beyond the training pass's ([`DecodeOps`]), with
//! two backends as in [`crate::train`]: [`HostOps`] (plain Rust, index for index the kernels
//! of `decode_kernels.rs`, for tests without a GPU) and [`CudaDecodeOps`] (those kernels, and
//! [`CudaOps`] for the rest).
//!
//! A layer's cache is `[slots, capacity, width]` row-major, `width = kv_heads · head_dim`.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, PushKernelArg};

use crate::GpuError;
use crate::decode_kernels;
use crate::launch::{Functions, grid, int, launch};
use crate::sample::{SAMPLE_THREADS, SampleParams, TOP_P_BISECTIONS, sample_row};
use crate::train::{Buffer, CudaOps, HostOps, TrainOps, fits};

/// The buffers of a [`DecodeOps`] backend.
pub type Buf<D> = <<D as DecodeOps>::Ops as TrainOps>::Buf;
/// The index buffers of a [`DecodeOps`] backend.
pub type Index<D> = <<D as DecodeOps>::Ops as TrainOps>::Index;

/// Shape of the cached-attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachedAttention {
    /// Query rows (one token each).
    pub rows: usize,
    /// Query heads.
    pub heads: usize,
    /// Key-value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions per cache slot.
    pub capacity: usize,
    /// `1/√head_dim`.
    pub scale: f32,
}

/// The decoder's own operations; the projections, norms, RoPE, SwiGLU and residuals are
/// [`DecodeOps::ops`]'s ([`TrainOps`]).
pub trait DecodeOps {
    /// The training pass's operations on the same device.
    type Ops: TrainOps;

    /// The [`TrainOps`] backend.
    fn ops(&self) -> &Self::Ops;

    /// Waits for every queued operation (for timing); the host backend has none.
    ///
    /// # Errors
    /// A launch that failed asynchronously.
    fn synchronize(&self) -> Result<(), GpuError> {
        Ok(())
    }

    /// `cache[slot[r], pos[r], :] = x[r, :]` for `r < rows` (kernel `kv_write`).
    ///
    /// # Errors
    /// Buffers smaller than the shapes say; launch errors.
    #[allow(clippy::too_many_arguments)]
    fn kv_write(
        &self,
        cache: &mut Buf<Self>,
        x: &Buf<Self>,
        slot: &Index<Self>,
        pos: &Index<Self>,
        rows: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        fits("kv_write", "x", x.len(), rows * width)?;
        fits("kv_write", "slot", slot.len(), rows)?;
        fits("kv_write", "pos", pos.len(), rows)?;
        self.raw_kv_write(cache, x, slot, pos, rows, width, capacity)
    }

    /// [`DecodeOps::kv_write`] after its buffer checks, which each backend implements;
    /// callers use [`DecodeOps::kv_write`].
    ///
    /// # Errors
    /// As [`DecodeOps::kv_write`].
    #[allow(clippy::too_many_arguments)]
    fn raw_kv_write(
        &self,
        cache: &mut Buf<Self>,
        x: &Buf<Self>,
        slot: &Index<Self>,
        pos: &Index<Self>,
        rows: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError>;

    /// Row `r`'s query (`q: [rows, heads·head_dim]`) attends to positions `0..=pos[r]` of slot
    /// `slot[r]`: `out = softmax(scale · q kᵀ) v`, grouped-query (kernel `cached_attention`).
    ///
    /// # Errors
    /// As [`DecodeOps::kv_write`].
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        out: &mut Buf<Self>,
        q: &Buf<Self>,
        keys: &Buf<Self>,
        values: &Buf<Self>,
        slot: &Index<Self>,
        pos: &Index<Self>,
        s: CachedAttention,
    ) -> Result<(), GpuError> {
        fits(
            "cached_attention",
            "q",
            q.len(),
            s.rows * s.heads * s.head_dim,
        )?;
        fits(
            "cached_attention",
            "out",
            out.len(),
            s.rows * s.heads * s.head_dim,
        )?;
        self.raw_cached_attention(out, q, keys, values, slot, pos, s)
    }

    /// [`DecodeOps::cached_attention`] after its buffer checks, which each backend implements;
    /// callers use [`DecodeOps::cached_attention`].
    ///
    /// # Errors
    /// As [`DecodeOps::cached_attention`].
    #[allow(clippy::too_many_arguments)]
    fn raw_cached_attention(
        &self,
        out: &mut Buf<Self>,
        q: &Buf<Self>,
        keys: &Buf<Self>,
        values: &Buf<Self>,
        slot: &Index<Self>,
        pos: &Index<Self>,
        shape: CachedAttention,
    ) -> Result<(), GpuError>;

    /// Copies positions `0..len` of slot `from[p]` to slot `to[p]` for `p < pairs` (kernel
    /// `copy_prefix`): a prompt's cache forked to its group's rows.
    ///
    /// # Errors
    /// As [`DecodeOps::kv_write`].
    #[allow(clippy::too_many_arguments)]
    fn copy_prefix(
        &self,
        cache: &mut Buf<Self>,
        from: &Index<Self>,
        to: &Index<Self>,
        pairs: usize,
        len: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        fits("copy_prefix", "from", from.len(), pairs)?;
        fits("copy_prefix", "to", to.len(), pairs)?;
        self.raw_copy_prefix(cache, from, to, pairs, len, width, capacity)
    }

    /// [`DecodeOps::copy_prefix`] after its buffer checks, which each backend implements;
    /// callers use [`DecodeOps::copy_prefix`].
    ///
    /// # Errors
    /// As [`DecodeOps::copy_prefix`].
    #[allow(clippy::too_many_arguments)]
    fn raw_copy_prefix(
        &self,
        cache: &mut Buf<Self>,
        from: &Index<Self>,
        to: &Index<Self>,
        pairs: usize,
        len: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError>;

    /// One token per row of `logits` (`[rows, vocab]`) for the uniforms `[rows]`
    /// ([`crate::sample::sample_row`]; kernel `sample_rows`): `out[2r]` the token id (as f32,
    /// exact below 2²⁴), `out[2r + 1]` its behaviour log-prob. `weights` is `[rows, vocab]`
    /// scratch.
    ///
    /// # Errors
    /// As [`DecodeOps::kv_write`].
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        out: &mut Buf<Self>,
        weights: &mut Buf<Self>,
        logits: &Buf<Self>,
        uniforms: &Buf<Self>,
        rows: usize,
        vocab: usize,
        params: SampleParams,
    ) -> Result<(), GpuError> {
        fits("sample", "out", out.len(), 2 * rows)?;
        fits("sample", "weights", weights.len(), rows * vocab)?;
        fits("sample", "logits", logits.len(), rows * vocab)?;
        fits("sample", "uniforms", uniforms.len(), rows)?;
        self.raw_sample(out, weights, logits, uniforms, rows, vocab, params)
    }

    /// [`DecodeOps::sample`] after its buffer checks, which each backend implements;
    /// callers use [`DecodeOps::sample`].
    ///
    /// # Errors
    /// As [`DecodeOps::sample`].
    #[allow(clippy::too_many_arguments)]
    fn raw_sample(
        &self,
        out: &mut Buf<Self>,
        weights: &mut Buf<Self>,
        logits: &Buf<Self>,
        uniforms: &Buf<Self>,
        rows: usize,
        vocab: usize,
        params: SampleParams,
    ) -> Result<(), GpuError>;
}

impl DecodeOps for HostOps {
    type Ops = HostOps;

    fn ops(&self) -> &HostOps {
        self
    }

    fn raw_kv_write(
        &self,
        cache: &mut Vec<f32>,
        x: &Vec<f32>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        rows: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let dst = (slot[r] as usize * capacity + pos[r] as usize) * width;
            fits("kv_write", "cache", cache.len(), dst + width)?;
            cache[dst..dst + width].copy_from_slice(&x[r * width..(r + 1) * width]);
        }
        Ok(())
    }

    fn raw_cached_attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        keys: &Vec<f32>,
        values: &Vec<f32>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        s: CachedAttention,
    ) -> Result<(), GpuError> {
        let (hd, width) = (s.head_dim, s.kv_heads * s.head_dim);
        let group = s.heads / s.kv_heads;
        for r in 0..s.rows {
            let len = pos[r] as usize + 1;
            let base = slot[r] as usize * s.capacity * width;
            fits("cached_attention", "keys", keys.len(), base + len * width)?;
            fits(
                "cached_attention",
                "values",
                values.len(),
                base + len * width,
            )?;
            for head in 0..s.heads {
                let kv = head / group;
                let qv = &q[(r * s.heads + head) * hd..][..hd];
                let mut scores: Vec<f32> = (0..len)
                    .map(|j| {
                        let k = &keys[base + j * width + kv * hd..][..hd];
                        let mut dot = 0.0f32;
                        for i in 0..hd {
                            dot += qv[i] * k[i];
                        }
                        dot * s.scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for v in &mut scores {
                    *v = (*v - m).exp();
                    sum += *v;
                }
                let inv_sum = 1.0 / sum;
                for i in 0..hd {
                    let mut acc = 0.0f32;
                    for (j, &p) in scores.iter().enumerate() {
                        acc += p * values[base + j * width + kv * hd + i];
                    }
                    out[(r * s.heads + head) * hd + i] = acc * inv_sum;
                }
            }
        }
        Ok(())
    }

    fn raw_copy_prefix(
        &self,
        cache: &mut Vec<f32>,
        from: &Vec<u32>,
        to: &Vec<u32>,
        pairs: usize,
        len: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        for p in 0..pairs {
            let (src, dst) = (
                from[p] as usize * capacity * width,
                to[p] as usize * capacity * width,
            );
            fits(
                "copy_prefix",
                "cache",
                cache.len(),
                src.max(dst) + len * width,
            )?;
            cache.copy_within(src..src + len * width, dst);
        }
        Ok(())
    }

    fn raw_sample(
        &self,
        out: &mut Vec<f32>,
        weights: &mut Vec<f32>,
        logits: &Vec<f32>,
        uniforms: &Vec<f32>,
        rows: usize,
        vocab: usize,
        params: SampleParams,
    ) -> Result<(), GpuError> {
        for r in 0..rows {
            let (token, logprob) = sample_row(
                &logits[r * vocab..(r + 1) * vocab],
                &mut weights[r * vocab..(r + 1) * vocab],
                uniforms[r],
                params,
            );
            out[2 * r] = token as f32;
            out[2 * r + 1] = logprob;
        }
        Ok(())
    }
}

/// [`DecodeOps`] on CUDA: the kernels of `decode_kernels.rs` on [`CudaOps`]'s stream.
pub struct CudaDecodeOps {
    ops: CudaOps,
    kernels: Functions,
}

impl CudaDecodeOps {
    /// Compiles the training and decoding kernels for the device of `context`.
    ///
    /// # Errors
    /// As [`CudaOps::new`].
    pub fn new(context: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let ops = CudaOps::new(context)?;
        // NVRTC takes a `&'static str`; one short string per call.
        let arch: &'static str = Box::leak(ops.arch().to_string().into_boxed_str());
        let kernels = Functions::load(
            context,
            decode_kernels::compile(Some(arch))?,
            &decode_kernels::NAMES,
            "loading the decoding kernels",
        )?;
        Ok(Self { ops, kernels })
    }
}

impl DecodeOps for CudaDecodeOps {
    type Ops = CudaOps;

    fn ops(&self) -> &CudaOps {
        &self.ops
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.ops.synchronize()
    }

    fn raw_kv_write(
        &self,
        cache: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        slot: &CudaSlice<u32>,
        pos: &CudaSlice<u32>,
        rows: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        let (w, cap) = (int(width, "width")?, int(capacity, "capacity")?);
        // SAFETY: `x` holds rows·width floats, `slot`/`pos` rows entries; the decoder keeps
        // every slot below the cache's slots and every position below its capacity.
        unsafe {
            launch!(
                self.ops.stream(),
                self.kernels,
                "kv_write",
                grid(rows, 1, 64, 0),
                [cache, x, slot, pos, &w, &cap]
            )?;
        }
        Ok(())
    }

    fn raw_cached_attention(
        &self,
        out: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        keys: &CudaSlice<f32>,
        values: &CudaSlice<f32>,
        slot: &CudaSlice<u32>,
        pos: &CudaSlice<u32>,
        s: CachedAttention,
    ) -> Result<(), GpuError> {
        if s.capacity > crate::llama::MAX_ATTENTION_LEN {
            return Err(GpuError::Input(format!(
                "cached_attention: capacity {} exceeds {}",
                s.capacity,
                crate::llama::MAX_ATTENTION_LEN
            )));
        }
        let (heads, kv) = (int(s.heads, "heads")?, int(s.kv_heads, "kv heads")?);
        let (hd, cap) = (int(s.head_dim, "head_dim")?, int(s.capacity, "capacity")?);
        // SAFETY: `q`/`out` hold rows·heads·head_dim floats; `slot`/`pos` rows entries within
        // the cache (the decoder's bookkeeping); shared memory holds `capacity` scores.
        unsafe {
            launch!(
                self.ops.stream(),
                self.kernels,
                "cached_attention",
                grid(s.rows, s.heads, 256, s.capacity),
                [
                    out, q, keys, values, slot, pos, &heads, &kv, &hd, &cap, &s.scale
                ]
            )?;
        }
        Ok(())
    }

    fn raw_copy_prefix(
        &self,
        cache: &mut CudaSlice<f32>,
        from: &CudaSlice<u32>,
        to: &CudaSlice<u32>,
        pairs: usize,
        len: usize,
        width: usize,
        capacity: usize,
    ) -> Result<(), GpuError> {
        if pairs == 0 || len == 0 {
            return Ok(());
        }
        let (w, cap) = (int(width, "width")?, int(capacity, "capacity")?);
        // SAFETY: `from`/`to` hold `pairs` slots of the cache, `len` <= capacity.
        unsafe {
            launch!(
                self.ops.stream(),
                self.kernels,
                "copy_prefix",
                grid(pairs, len, 64, 0),
                [cache, from, to, &w, &cap]
            )?;
        }
        Ok(())
    }

    fn raw_sample(
        &self,
        out: &mut CudaSlice<f32>,
        weights: &mut CudaSlice<f32>,
        logits: &CudaSlice<f32>,
        uniforms: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        params: SampleParams,
    ) -> Result<(), GpuError> {
        let v = int(vocab, "vocab")?;
        let bisections = int(TOP_P_BISECTIONS, "bisections")?;
        // SAFETY: buffers sized above; one block of SAMPLE_THREADS (the kernel's BLOCK) a row.
        unsafe {
            launch!(
                self.ops.stream(),
                self.kernels,
                "sample_rows",
                grid(rows, 1, SAMPLE_THREADS as u32, 0),
                [
                    out,
                    weights,
                    logits,
                    uniforms,
                    &v,
                    &params.temperature,
                    &params.top_p,
                    &bisections
                ]
            )?;
        }
        Ok(())
    }
}
