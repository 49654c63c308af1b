//! [`CudaOps`]: the training pass's operations on one GPU — the NVRTC kernels of
//! [`super::kernels`] and cuBLAS SGEMM, every call on one stream.
//!
//! [`TrainOps`]'s provided methods check that the buffers hold what the sizes say before the
//! `raw_*` methods here launch (a kernel would read or write past them otherwise); index
//! buffers' values are checked where they are built (the packing, against the vocabulary and
//! the rotary table).

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::kernels::{self, BLOCK, NAMES, WEIGHT_GRAD_ROWS};
use super::ops::{
    AdamWStep, AttentionRows, AttentionSaved, AttentionShape, Buffer, Gemm, TrainOps, Transpose,
    fits,
};
use crate::launch::{Functions, elementwise, grid, int, launch};
use crate::{GpuError, Library, NcclCollective, require};

/// Blocks of `sum_squares` (its partial sums come back to the host).
const SUM_BLOCKS: usize = 1024;

/// The training pass's operations on one GPU (see the module docs).
pub struct CudaOps {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Functions,
    arch: String,
}

/// The grid of the column-sum kernels: column blocks × row chunks.
fn column_grid(rows: usize, width: usize) -> LaunchConfig {
    grid(
        width.div_ceil(BLOCK as usize),
        rows.div_ceil(WEIGHT_GRAD_ROWS),
        BLOCK,
        0,
    )
}

fn op(t: Transpose) -> cublasOperation_t {
    match t {
        Transpose::No => cublasOperation_t::CUBLAS_OP_N,
        Transpose::Yes => cublasOperation_t::CUBLAS_OP_T,
    }
}

impl CudaOps {
    /// Compiles the training kernels for the device of `context` and opens a cuBLAS handle on
    /// its default stream.
    ///
    /// # Errors
    /// [`GpuError::Library`] when NVRTC or cuBLAS cannot be loaded; driver, compiler and
    /// cuBLAS errors.
    pub fn new(context: &Arc<CudaContext>) -> Result<Self, GpuError> {
        require(Library::Cublas)?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| GpuError::driver("reading the compute capability", e))?;
        // NVRTC takes a `&'static str`; one short string per call.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = kernels::compile(Some(arch))?;
        let kernels = Functions::load(context, ptx, &NAMES, "loading the training kernels")?;
        let stream = context.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| GpuError::blas("creating a handle", e))?;
        Ok(Self {
            stream,
            blas,
            kernels,
            arch: arch.to_string(),
        })
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The virtual architecture the kernels were compiled for (`compute_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Waits for every queued operation (for timing).
    ///
    /// # Errors
    /// A launch that failed asynchronously.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(|e| GpuError::driver("synchronizing the stream", e))
    }
}

impl<T> Buffer for CudaSlice<T> {
    fn len(&self) -> usize {
        CudaSlice::len(self)
    }
}

impl TrainOps for CudaOps {
    type Buf = CudaSlice<f32>;
    type Index = CudaSlice<u32>;

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>, GpuError> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| GpuError::driver(format!("allocating {len} floats"), e))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>, GpuError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| GpuError::driver(format!("uploading {} floats", data.len()), e))
    }

    fn upload_index(&self, data: &[u32]) -> Result<CudaSlice<u32>, GpuError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| GpuError::driver(format!("uploading {} indices", data.len()), e))
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>, GpuError> {
        self.stream
            .clone_dtoh(buf)
            .map_err(|e| GpuError::driver("copying to the host", e))
    }

    fn zero(&self, buf: &mut CudaSlice<f32>) -> Result<(), GpuError> {
        self.stream
            .memset_zeros(buf)
            .map_err(|e| GpuError::driver("zeroing a buffer", e))
    }

    fn raw_copy(
        &self,
        src: &CudaSlice<f32>,
        src_offset: usize,
        dst: &mut CudaSlice<f32>,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), GpuError> {
        if len == 0 {
            return Ok(());
        }
        let from = src.slice(src_offset..src_offset + len);
        let mut to = dst.slice_mut(dst_offset..dst_offset + len);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| GpuError::driver(format!("copying {len} floats on the device"), e))
    }

    /// On an [`NcclCollective`] (found through `Collective::device_collective`) of this GPU:
    /// `ncclAllReduce` in place on `buf[..len]`, ordered after this stream's work by cudarc's
    /// events (both are the GPU's default stream when built for the same ordinal); any other
    /// group: `false`.
    fn raw_all_reduce_sum(
        &self,
        buf: &mut CudaSlice<f32>,
        len: usize,
        group: &dyn kaizen_learner::Collective,
    ) -> Result<bool, GpuError> {
        let Some(nccl) = group
            .device_collective()
            .and_then(|d| d.downcast_ref::<NcclCollective>())
        else {
            return Ok(false);
        };
        let (ours, theirs) = (
            self.stream.context().ordinal(),
            nccl.stream().context().ordinal(),
        );
        if ours != theirs {
            return Err(GpuError::Input(format!(
                "the training pass runs on GPU {ours} but its NCCL communicator on GPU {theirs}: \
                 build both for the rank's local GPU"
            )));
        }
        if len == 0 {
            return Ok(true);
        }
        nccl.all_reduce_sum_device(&mut buf.slice_mut(0..len))?;
        Ok(true)
    }

    fn raw_gemm(
        &self,
        g: Gemm,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let cfg = GemmConfig {
            transa: op(g.transa),
            transb: op(g.transb),
            m: int(g.m, "m")?,
            n: int(g.n, "n")?,
            k: int(g.k, "k")?,
            alpha: g.alpha,
            lda: int(g.lda, "lda")?,
            ldb: int(g.ldb, "ldb")?,
            beta: g.beta,
            ldc: int(g.ldc, "ldc")?,
        };
        // SAFETY: `Gemm::check` verified cuBLAS's leading-dimension rules and that every
        // element the call reads or writes lies inside `a`, `b` and `c`.
        unsafe { self.blas.gemm(cfg, a, b, c) }.map_err(|e| GpuError::blas(format!("{g:?}"), e))
    }

    fn raw_gather_rows(
        &self,
        out: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let w = int(width, "width")?;
        // SAFETY: `out` holds rows·width floats, `index` rows entries, each below src's rows
        // (the packing checks token ids and predictor indices).
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "gather_rows",
                grid(rows, 1, BLOCK, 0),
                [out, src, index, &w]
            )?;
        }
        Ok(())
    }

    fn raw_scatter_add_rows(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let w = int(width, "width")?;
        // SAFETY: as gather_rows, with the roles of the buffers swapped.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "scatter_add_rows",
                grid(rows, 1, BLOCK, 0),
                [dst, src, index, &w]
            )?;
        }
        Ok(())
    }

    fn raw_rms_norm(
        &self,
        out: &mut CudaSlice<f32>,
        inv_rms: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        rows: usize,
        width: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let w = int(width, "width")?;
        // SAFETY: sizes checked above; one block per row.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "rms_norm_save",
                grid(rows, 1, BLOCK, 0),
                [out, inv_rms, x, gamma, &w, &eps]
            )?;
        }
        Ok(())
    }

    fn raw_rms_norm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv_rms: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let w = int(width, "width")?;
        // SAFETY: sizes checked above; one block per row.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "rms_norm_backward",
                grid(rows, 1, BLOCK, 0),
                [dx, x, inv_rms, gamma, dy, &w]
            )?;
        }
        Ok(())
    }

    fn raw_rms_norm_weight_grad(
        &self,
        d_gamma: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv_rms: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; the kernel bounds its column and row indices.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "rms_norm_weight_grad",
                column_grid(rows, width),
                [d_gamma, x, inv_rms, dy, &r, &w]
            )?;
        }
        Ok(())
    }

    fn raw_column_sums(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; the kernel bounds its indices.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "column_sums",
                column_grid(rows, width),
                [out, x, &r, &w]
            )?;
        }
        Ok(())
    }

    fn raw_add_bias(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; grid-stride over rows·width.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "bias_add",
                elementwise(rows * width),
                [x, bias, &r, &w]
            )?;
        }
        Ok(())
    }

    fn raw_add(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        let l = int(len, "len")?;
        // SAFETY: both buffers hold `len` floats.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "residual_add",
                elementwise(len),
                [x, y, &l]
            )?;
        }
        Ok(())
    }

    fn raw_rope(
        &self,
        x: &mut CudaSlice<f32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        positions: &CudaSlice<u32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<(), GpuError> {
        let (h, d) = (int(heads, "heads")?, int(head_dim, "head_dim")?);
        let inv = i32::from(inverse);
        // SAFETY: sizes checked above; positions are below max_position_embeddings (the
        // packing checks row lengths), the tables' row count.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "rope_at",
                grid(rows, heads, 64, 0),
                [x, cos, sin, positions, &h, &d, &inv]
            )?;
        }
        Ok(())
    }

    fn raw_attention(
        &self,
        out: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        key_start: &CudaSlice<u32>,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let AttentionShape {
            tokens: n,
            heads,
            kv_heads: kv,
            head_dim: d,
            scale,
            ..
        } = shape;
        let (h, kvi, di) = (
            int(heads, "heads")?,
            int(kv, "kv heads")?,
            int(d, "head_dim")?,
        );
        let shared = shape.longest_row;
        fits(
            "attention",
            "shared memory",
            kernels::MAX_SHARED_FLOATS,
            shared,
        )?;
        // SAFETY: sizes checked above; key_start[t] <= t, and t - key_start[t] + 1 <= the
        // longest row, the shared memory given.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "attention_train",
                grid(n, heads, BLOCK, shared),
                [out, lse, q, k, v, key_start, &h, &kvi, &di, &scale]
            )?;
        }
        Ok(())
    }

    fn raw_attention_backward(
        &self,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
        dv: &mut CudaSlice<f32>,
        delta: &mut CudaSlice<f32>,
        saved: AttentionSaved<'_, CudaSlice<f32>>,
        d_out: &CudaSlice<f32>,
        rows: AttentionRows<'_, CudaSlice<u32>>,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let AttentionShape {
            tokens: n,
            heads,
            kv_heads: kv,
            head_dim: d,
            scale,
            ..
        } = shape;
        let AttentionSaved { q, k, v, out, lse } = saved;
        let (h, kvi, di) = (
            int(heads, "heads")?,
            int(kv, "kv heads")?,
            int(d, "head_dim")?,
        );
        let group = heads / kv;
        let shared_query = shape.longest_row;
        let shared_key = 2 * shape.longest_row * group;
        fits(
            "attention_backward",
            "shared memory",
            kernels::MAX_SHARED_FLOATS,
            shared_key,
        )?;
        // SAFETY: sizes checked above; every row span is at most the longest row, whose
        // `2 · longest · group` floats fit the shared memory given (checked by the pass).
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "attention_backward_query",
                grid(n, heads, BLOCK, shared_query),
                [
                    &mut *dq,
                    &mut *delta,
                    q,
                    k,
                    v,
                    out,
                    lse,
                    d_out,
                    rows.key_start,
                    &h,
                    &kvi,
                    &di,
                    &scale
                ]
            )?;
            launch!(
                self.stream,
                self.kernels,
                "attention_backward_key",
                grid(n, kv, BLOCK, shared_key),
                [
                    dk,
                    dv,
                    q,
                    k,
                    v,
                    lse,
                    d_out,
                    &*delta,
                    rows.row_end,
                    &h,
                    &kvi,
                    &di,
                    &scale
                ]
            )?;
        }
        Ok(())
    }

    fn raw_swiglu(
        &self,
        act: &mut CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "swiglu_save",
                elementwise(len),
                [act, gate, up, &l]
            )?;
        }
        Ok(())
    }

    fn raw_swiglu_backward(
        &self,
        d_gate: &mut CudaSlice<f32>,
        d_up: &mut CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        d_act: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "swiglu_backward",
                elementwise(len),
                [d_gate, d_up, gate, up, d_act, &l]
            )?;
        }
        Ok(())
    }

    fn raw_log_softmax(
        &self,
        z: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        logp: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        let v = int(vocab, "vocab")?;
        // SAFETY: sizes checked above; targets are below vocab (the packing checks token ids).
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "log_softmax_gather",
                grid(rows, 1, BLOCK, 0),
                [z, lse, logp, targets, &v, &inv_t]
            )?;
        }
        Ok(())
    }

    fn raw_log_softmax_backward(
        &self,
        z: &mut CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        d_logp: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        let v = int(vocab, "vocab")?;
        // SAFETY: as log_softmax.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "log_softmax_backward",
                grid(rows, 1, BLOCK, 0),
                [z, lse, targets, d_logp, &v, &inv_t]
            )?;
        }
        Ok(())
    }

    fn raw_sum_squares(&self, x: &CudaSlice<f32>, len: usize) -> Result<f64, GpuError> {
        let blocks = len.div_ceil(BLOCK as usize).clamp(1, SUM_BLOCKS);
        let mut partials = self.alloc(blocks)?;
        let l = int(len, "len")?;
        // SAFETY: `x` holds `len` floats, `partials` one per block.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "sum_squares",
                grid(blocks, 1, BLOCK, 0),
                [&mut partials, x, &l]
            )?;
        }
        Ok(self
            .download(&partials)?
            .iter()
            .map(|&v| f64::from(v))
            .sum())
    }

    fn raw_adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        len: usize,
        k: AdamWStep,
    ) -> Result<(), GpuError> {
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "adamw",
                elementwise(len),
                [
                    p,
                    g,
                    m,
                    v,
                    &l,
                    &k.clip,
                    &k.beta1,
                    &k.beta2,
                    &k.decay,
                    &k.step_size,
                    &k.inv_sqrt_bias2,
                    &k.eps
                ]
            )?;
        }
        Ok(())
    }
}
