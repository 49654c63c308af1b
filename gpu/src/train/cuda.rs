//! [`CudaOps`]: the training pass's operations on one GPU — the NVRTC kernels of
//! [`super::kernels`] and cuBLAS SGEMM, every call on one stream.
//!
//! Each method checks that its buffers hold what its sizes say before launching (a kernel
//! would read or write past them otherwise); index buffers' values are checked where they are
//! built (the packing, against the vocabulary and the rotary table).

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use super::kernels::{self, BLOCK, NAMES, WEIGHT_GRAD_ROWS};
use super::ops::{
    AdamWStep, AttentionRows, AttentionSaved, AttentionShape, Gemm, TrainOps, Transpose, fits,
};
use crate::{GpuError, Library, require};

/// Blocks of `sum_squares` (its partial sums come back to the host).
const SUM_BLOCKS: usize = 1024;

/// The training kernels, by name.
struct Kernels {
    functions: Vec<CudaFunction>,
}

impl Kernels {
    fn get(&self, name: &str) -> &CudaFunction {
        let i = NAMES
            .iter()
            .position(|n| *n == name)
            .expect("every kernel launched is listed in kernels::NAMES");
        &self.functions[i]
    }
}

/// The training pass's operations on one GPU (see the module docs).
pub struct CudaOps {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    arch: String,
}

fn int(value: usize, what: &str) -> Result<i32, GpuError> {
    i32::try_from(value).map_err(|_| GpuError::Input(format!("{what} = {value} exceeds i32")))
}

fn launch_error(name: &str, e: impl std::fmt::Display) -> GpuError {
    GpuError::driver(format!("launching `{name}`"), e)
}

/// Grid-stride element-wise launch over `len` values.
fn elementwise(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(BLOCK as usize).clamp(1, 4096) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A `(x, y)` grid of `threads`-thread blocks.
fn grid(x: usize, y: usize, threads: u32, shared_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    }
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
        let module = context
            .load_module(ptx)
            .map_err(|e| GpuError::driver("loading the training kernels", e))?;
        let functions = NAMES
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(|e| GpuError::driver(format!("finding kernel `{name}`"), e))
            })
            .collect::<Result<_, _>>()?;
        let stream = context.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| GpuError::blas("creating a handle", e))?;
        Ok(Self {
            stream,
            blas,
            kernels: Kernels { functions },
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

    fn gemm(
        &self,
        g: Gemm,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        g.check(a.len(), b.len(), c.len())?;
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

    fn gather_rows(
        &self,
        out: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("gather_rows", "out", out.len(), rows * width)?;
        fits("gather_rows", "index", index.len(), rows)?;
        let w = int(width, "width")?;
        // SAFETY: `out` holds rows·width floats, `index` rows entries, each below src's rows
        // (the packing checks token ids and predictor indices).
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("gather_rows"))
                .arg(out)
                .arg(src)
                .arg(index)
                .arg(&w)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("gather_rows", e))?;
        }
        Ok(())
    }

    fn scatter_add_rows(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("scatter_add_rows", "src", src.len(), rows * width)?;
        fits("scatter_add_rows", "index", index.len(), rows)?;
        let w = int(width, "width")?;
        // SAFETY: as gather_rows, with the roles of the buffers swapped.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("scatter_add_rows"))
                .arg(dst)
                .arg(src)
                .arg(index)
                .arg(&w)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("scatter_add_rows", e))?;
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        out: &mut CudaSlice<f32>,
        inv_rms: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        rows: usize,
        width: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        for (name, len, need) in [
            ("out", out.len(), rows * width),
            ("x", x.len(), rows * width),
            ("inv_rms", inv_rms.len(), rows),
            ("gamma", gamma.len(), width),
        ] {
            fits("rms_norm", name, len, need)?;
        }
        let w = int(width, "width")?;
        // SAFETY: sizes checked above; one block per row.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("rms_norm_save"))
                .arg(out)
                .arg(inv_rms)
                .arg(x)
                .arg(gamma)
                .arg(&w)
                .arg(&eps)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("rms_norm_save", e))?;
        }
        Ok(())
    }

    fn rms_norm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv_rms: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for (name, len, need) in [
            ("dx", dx.len(), rows * width),
            ("x", x.len(), rows * width),
            ("dy", dy.len(), rows * width),
            ("inv_rms", inv_rms.len(), rows),
            ("gamma", gamma.len(), width),
        ] {
            fits("rms_norm_backward", name, len, need)?;
        }
        let w = int(width, "width")?;
        // SAFETY: sizes checked above; one block per row.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("rms_norm_backward"))
                .arg(dx)
                .arg(x)
                .arg(inv_rms)
                .arg(gamma)
                .arg(dy)
                .arg(&w)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("rms_norm_backward", e))?;
        }
        Ok(())
    }

    fn rms_norm_weight_grad(
        &self,
        d_gamma: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv_rms: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        for (name, len, need) in [
            ("d_gamma", d_gamma.len(), width),
            ("x", x.len(), rows * width),
            ("dy", dy.len(), rows * width),
            ("inv_rms", inv_rms.len(), rows),
        ] {
            fits("rms_norm_weight_grad", name, len, need)?;
        }
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; the kernel bounds its column and row indices.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("rms_norm_weight_grad"))
                .arg(d_gamma)
                .arg(x)
                .arg(inv_rms)
                .arg(dy)
                .arg(&r)
                .arg(&w)
                .launch(column_grid(rows, width))
                .map_err(|e| launch_error("rms_norm_weight_grad", e))?;
        }
        Ok(())
    }

    fn column_sums(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("column_sums", "out", out.len(), width)?;
        fits("column_sums", "x", x.len(), rows * width)?;
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; the kernel bounds its indices.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("column_sums"))
                .arg(out)
                .arg(x)
                .arg(&r)
                .arg(&w)
                .launch(column_grid(rows, width))
                .map_err(|e| launch_error("column_sums", e))?;
        }
        Ok(())
    }

    fn add_bias(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("add_bias", "x", x.len(), rows * width)?;
        fits("add_bias", "bias", bias.len(), width)?;
        let (r, w) = (int(rows, "rows")?, int(width, "width")?);
        // SAFETY: sizes checked above; grid-stride over rows·width.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("bias_add"))
                .arg(x)
                .arg(bias)
                .arg(&r)
                .arg(&w)
                .launch(elementwise(rows * width))
                .map_err(|e| launch_error("bias_add", e))?;
        }
        Ok(())
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, len: usize) -> Result<(), GpuError> {
        fits("add", "x", x.len(), len)?;
        fits("add", "y", y.len(), len)?;
        let l = int(len, "len")?;
        // SAFETY: both buffers hold `len` floats.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("residual_add"))
                .arg(x)
                .arg(y)
                .arg(&l)
                .launch(elementwise(len))
                .map_err(|e| launch_error("residual_add", e))?;
        }
        Ok(())
    }

    fn rope(
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
        fits("rope", "x", x.len(), rows * heads * head_dim)?;
        fits("rope", "positions", positions.len(), rows)?;
        let (h, d) = (int(heads, "heads")?, int(head_dim, "head_dim")?);
        let inv = i32::from(inverse);
        // SAFETY: sizes checked above; positions are below max_position_embeddings (the
        // packing checks row lengths), the tables' row count.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("rope_at"))
                .arg(x)
                .arg(cos)
                .arg(sin)
                .arg(positions)
                .arg(&h)
                .arg(&d)
                .arg(&inv)
                .launch(grid(rows, heads, 64, 0))
                .map_err(|e| launch_error("rope_at", e))?;
        }
        Ok(())
    }

    fn attention(
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
        for (name, len, need) in [
            ("out", out.len(), n * heads * d),
            ("q", q.len(), n * heads * d),
            ("k", k.len(), n * kv * d),
            ("v", v.len(), n * kv * d),
            ("lse", lse.len(), n * heads),
        ] {
            fits("attention", name, len, need)?;
        }
        fits("attention", "key_start", key_start.len(), n)?;
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
            self.stream
                .launch_builder(self.kernels.get("attention_train"))
                .arg(out)
                .arg(lse)
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(key_start)
                .arg(&h)
                .arg(&kvi)
                .arg(&di)
                .arg(&scale)
                .launch(grid(n, heads, BLOCK, shared))
                .map_err(|e| launch_error("attention_train", e))?;
        }
        Ok(())
    }

    fn attention_backward(
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
        for (name, len, need) in [
            ("dq", dq.len(), n * heads * d),
            ("dk", dk.len(), n * kv * d),
            ("dv", dv.len(), n * kv * d),
            ("delta", delta.len(), n * heads),
            ("q", q.len(), n * heads * d),
            ("k", k.len(), n * kv * d),
            ("v", v.len(), n * kv * d),
            ("out", out.len(), n * heads * d),
            ("d_out", d_out.len(), n * heads * d),
            ("lse", lse.len(), n * heads),
        ] {
            fits("attention_backward", name, len, need)?;
        }
        fits("attention_backward", "key_start", rows.key_start.len(), n)?;
        fits("attention_backward", "row_end", rows.row_end.len(), n)?;
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
            self.stream
                .launch_builder(self.kernels.get("attention_backward_query"))
                .arg(&mut *dq)
                .arg(&mut *delta)
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(out)
                .arg(lse)
                .arg(d_out)
                .arg(rows.key_start)
                .arg(&h)
                .arg(&kvi)
                .arg(&di)
                .arg(&scale)
                .launch(grid(n, heads, BLOCK, shared_query))
                .map_err(|e| launch_error("attention_backward_query", e))?;
            self.stream
                .launch_builder(self.kernels.get("attention_backward_key"))
                .arg(dk)
                .arg(dv)
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(lse)
                .arg(d_out)
                .arg(&*delta)
                .arg(rows.row_end)
                .arg(&h)
                .arg(&kvi)
                .arg(&di)
                .arg(&scale)
                .launch(grid(n, kv, BLOCK, shared_key))
                .map_err(|e| launch_error("attention_backward_key", e))?;
        }
        Ok(())
    }

    fn swiglu(
        &self,
        act: &mut CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        for (name, l) in [("act", act.len()), ("gate", gate.len()), ("up", up.len())] {
            fits("swiglu", name, l, len)?;
        }
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("swiglu_save"))
                .arg(act)
                .arg(gate)
                .arg(up)
                .arg(&l)
                .launch(elementwise(len))
                .map_err(|e| launch_error("swiglu_save", e))?;
        }
        Ok(())
    }

    fn swiglu_backward(
        &self,
        d_gate: &mut CudaSlice<f32>,
        d_up: &mut CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        d_act: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        for (name, l) in [
            ("d_gate", d_gate.len()),
            ("d_up", d_up.len()),
            ("gate", gate.len()),
            ("up", up.len()),
            ("d_act", d_act.len()),
        ] {
            fits("swiglu_backward", name, l, len)?;
        }
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("swiglu_backward"))
                .arg(d_gate)
                .arg(d_up)
                .arg(gate)
                .arg(up)
                .arg(d_act)
                .arg(&l)
                .launch(elementwise(len))
                .map_err(|e| launch_error("swiglu_backward", e))?;
        }
        Ok(())
    }

    fn log_softmax(
        &self,
        z: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        logp: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        fits("log_softmax", "z", z.len(), rows * vocab)?;
        fits("log_softmax", "lse", lse.len(), rows)?;
        fits("log_softmax", "logp", logp.len(), rows)?;
        fits("log_softmax", "targets", targets.len(), rows)?;
        let v = int(vocab, "vocab")?;
        // SAFETY: sizes checked above; targets are below vocab (the packing checks token ids).
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("log_softmax_gather"))
                .arg(z)
                .arg(lse)
                .arg(logp)
                .arg(targets)
                .arg(&v)
                .arg(&inv_t)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("log_softmax_gather", e))?;
        }
        Ok(())
    }

    fn log_softmax_backward(
        &self,
        z: &mut CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        d_logp: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        fits("log_softmax_backward", "z", z.len(), rows * vocab)?;
        fits("log_softmax_backward", "lse", lse.len(), rows)?;
        fits("log_softmax_backward", "d_logp", d_logp.len(), rows)?;
        fits("log_softmax_backward", "targets", targets.len(), rows)?;
        let v = int(vocab, "vocab")?;
        // SAFETY: as log_softmax.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("log_softmax_backward"))
                .arg(z)
                .arg(lse)
                .arg(targets)
                .arg(d_logp)
                .arg(&v)
                .arg(&inv_t)
                .launch(grid(rows, 1, BLOCK, 0))
                .map_err(|e| launch_error("log_softmax_backward", e))?;
        }
        Ok(())
    }

    fn sum_squares(&self, x: &CudaSlice<f32>, len: usize) -> Result<f64, GpuError> {
        fits("sum_squares", "x", x.len(), len)?;
        let blocks = len.div_ceil(BLOCK as usize).clamp(1, SUM_BLOCKS);
        let mut partials = self.alloc(blocks)?;
        let l = int(len, "len")?;
        // SAFETY: `x` holds `len` floats, `partials` one per block.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("sum_squares"))
                .arg(&mut partials)
                .arg(x)
                .arg(&l)
                .launch(grid(blocks, 1, BLOCK, 0))
                .map_err(|e| launch_error("sum_squares", e))?;
        }
        Ok(self
            .download(&partials)?
            .iter()
            .map(|&v| f64::from(v))
            .sum())
    }

    fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        len: usize,
        k: AdamWStep,
    ) -> Result<(), GpuError> {
        for (name, l) in [
            ("p", p.len()),
            ("g", g.len()),
            ("m", m.len()),
            ("v", v.len()),
        ] {
            fits("adamw", name, l, len)?;
        }
        let l = int(len, "len")?;
        // SAFETY: every buffer holds `len` floats.
        unsafe {
            self.stream
                .launch_builder(self.kernels.get("adamw"))
                .arg(p)
                .arg(g)
                .arg(m)
                .arg(v)
                .arg(&l)
                .arg(&k.clip)
                .arg(&k.beta1)
                .arg(&k.beta2)
                .arg(&k.decay)
                .arg(&k.step_size)
                .arg(&k.inv_sqrt_bias2)
                .arg(&k.eps)
                .launch(elementwise(len))
                .map_err(|e| launch_error("adamw", e))?;
        }
        Ok(())
    }
}
