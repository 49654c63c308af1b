//! The operations the training pass is written in ([`TrainOps`]), with the argument types they
//! share. Two backends implement them: [`super::HostOps`] (plain Rust, the CPU mirror of every
//! kernel, for tests) and [`super::CudaOps`] (NVRTC kernels and cuBLAS).
//!
//! Every buffer is row-major f32 (`Buf`) or u32 (`Index`); sizes are passed explicitly, as the
//! CUDA kernels take them. Each operation is a provided method that checks, once for both
//! backends, that the buffers hold what the sizes say (through [`Buffer::len`]), then calls
//! the `raw_*` method the backend implements.

use crate::GpuError;

/// A backend's buffer, as the operations' checks see it: how many values it holds.
pub trait Buffer {
    /// Values held.
    fn len(&self) -> usize;

    /// Whether it holds no value.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a cuBLAS operand is used as stored or transposed (`CUBLAS_OP_N` / `CUBLAS_OP_T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transpose {
    /// `op(X) = X`.
    No,
    /// `op(X) = Xᵀ`.
    Yes,
}

/// The arguments of one `cublasSgemm` call, literally: column-major
/// `C (m × n) = α · op(A) (m × k) · op(B) (k × n) + β · C`, with `A`, `B`, `C` stored
/// column-major with leading dimensions `lda`, `ldb`, `ldc`. With `β = 0`, `C` is not read.
///
/// A row-major `[r, c]` matrix is, to cuBLAS, a column-major `c × r` matrix with leading
/// dimension `c`; the training pass's products are written in those terms (see `pass.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// `op(A)`.
    pub transa: Transpose,
    /// `op(B)`.
    pub transb: Transpose,
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// `α`.
    pub alpha: f32,
    /// Leading dimension of `A` as stored.
    pub lda: usize,
    /// Leading dimension of `B` as stored.
    pub ldb: usize,
    /// `β` (0: overwrite `C`, 1: accumulate into it).
    pub beta: f32,
    /// Leading dimension of `C`.
    pub ldc: usize,
}

impl Gemm {
    /// Checks the call as cuBLAS would (`lda ≥ max(1, rows of A as stored)`, likewise `ldb`,
    /// `ldc ≥ max(1, m)`) and that each buffer holds every element the call touches.
    ///
    /// # Errors
    /// [`GpuError::Input`] naming the argument that does not fit.
    pub fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<(), GpuError> {
        let (a_rows, a_cols) = match self.transa {
            Transpose::No => (self.m, self.k),
            Transpose::Yes => (self.k, self.m),
        };
        let (b_rows, b_cols) = match self.transb {
            Transpose::No => (self.k, self.n),
            Transpose::Yes => (self.n, self.k),
        };
        let extent = |rows: usize, cols: usize, ld: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (cols - 1) * ld + rows
            }
        };
        let bad = |what: String| Err(GpuError::Input(format!("SGEMM {self:?}: {what}")));
        if self.lda < a_rows.max(1) {
            return bad(format!("lda {} < rows of A as stored ({a_rows})", self.lda));
        }
        if self.ldb < b_rows.max(1) {
            return bad(format!("ldb {} < rows of B as stored ({b_rows})", self.ldb));
        }
        if self.ldc < self.m.max(1) {
            return bad(format!("ldc {} < m", self.ldc));
        }
        for (name, need, len) in [
            ("A", extent(a_rows, a_cols, self.lda), a_len),
            ("B", extent(b_rows, b_cols, self.ldb), b_len),
            ("C", extent(self.m, self.n, self.ldc), c_len),
        ] {
            if need > len {
                return bad(format!("{name} needs {need} floats, holds {len}"));
            }
        }
        Ok(())
    }
}

/// Shapes of the attention calls: `tokens` packed tokens, queries `[tokens, heads·head_dim]`,
/// keys and values `[tokens, kv_heads·head_dim]` (grouped-query: query head `h` reads key-value
/// head `h / (heads / kv_heads)`), scores scaled by `scale = 1/√head_dim`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Packed tokens `N`.
    pub tokens: usize,
    /// Query heads.
    pub heads: usize,
    /// Key-value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Score scale, `1/√head_dim`.
    pub scale: f32,
    /// The longest packed row: it bounds every query's keys and every key's queries (the
    /// CUDA kernels size their shared memory by it).
    pub longest_row: usize,
}

impl AttentionShape {
    /// Values of a query-shaped buffer, `[N, heads·head_dim]` (`q`, the output, their
    /// gradients).
    pub fn q_len(&self) -> usize {
        self.tokens * self.heads * self.head_dim
    }

    /// Values of a key- or value-shaped buffer, `[N, kv_heads·head_dim]`.
    pub fn kv_len(&self) -> usize {
        self.tokens * self.kv_heads * self.head_dim
    }

    /// Values of a per-query-head buffer, `[N, heads]` (`lse`, `delta`).
    pub fn lse_len(&self) -> usize {
        self.tokens * self.heads
    }
}

/// The per-step constants of the fused AdamW update, in f32, as
/// `kaizen_learner::AdamW` computes them (see [`TrainOps::adamw`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Gradient scale from global-norm clipping, `min(1, max_grad_norm / (‖g‖₂ + 1e-6))`.
    pub clip: f32,
    /// `β₁`.
    pub beta1: f32,
    /// `β₂`.
    pub beta2: f32,
    /// `1 − lr·λ` for matrices, 1 for vectors (decoupled weight decay).
    pub decay: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    pub inv_sqrt_bias2: f32,
    /// `ε`.
    pub eps: f32,
}

/// The operations of the training pass. Each names its kernel (`kernels.rs` in this module)
/// and states its math; `HostOps` computes the same index for index on the host.
///
/// Buffers are row-major; `rows`/`width` describe `[rows, width]` matrices. Operations that
/// say "adds" accumulate into their output, the others overwrite it.
pub trait TrainOps {
    /// An f32 buffer.
    type Buf: Buffer;
    /// A u32 buffer (token ids, positions, row bounds).
    type Index: Buffer;

    /// A zeroed buffer of `len` floats.
    ///
    /// # Errors
    /// Out of device memory.
    fn alloc(&self, len: usize) -> Result<Self::Buf, GpuError>;
    /// A buffer holding `data`.
    ///
    /// # Errors
    /// Out of device memory, a failed copy.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf, GpuError>;
    /// An index buffer holding `data`.
    ///
    /// # Errors
    /// As [`TrainOps::upload`].
    fn upload_index(&self, data: &[u32]) -> Result<Self::Index, GpuError>;
    /// The buffer's values on the host.
    ///
    /// # Errors
    /// A failed copy (or an earlier asynchronous launch failure).
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>, GpuError>;
    /// Sets every value to 0.
    ///
    /// # Errors
    /// A failed memset.
    fn zero(&self, buf: &mut Self::Buf) -> Result<(), GpuError>;

    /// `dst[dst_offset..][..len] = src[src_offset..][..len]` (a device-to-device copy, no
    /// kernel): packs gradients into an all-reduce bucket and back out.
    ///
    /// # Errors
    /// Buffers smaller than the offsets and length say; copy errors.
    fn copy(
        &self,
        src: &Self::Buf,
        src_offset: usize,
        dst: &mut Self::Buf,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), GpuError> {
        fits("copy", "src", src.len(), src_offset + len)?;
        fits("copy", "dst", dst.len(), dst_offset + len)?;
        self.raw_copy(src, src_offset, dst, dst_offset, len)
    }

    /// [`TrainOps::copy`] after its buffer checks, which each backend implements; callers use
    /// [`TrainOps::copy`].
    ///
    /// # Errors
    /// As [`TrainOps::copy`].
    fn raw_copy(
        &self,
        src: &Self::Buf,
        src_offset: usize,
        dst: &mut Self::Buf,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), GpuError>;

    /// Sums `buf[..len]` across `group`'s ranks in place in this backend's memory, when
    /// `group` offers a device collective this backend reduces on
    /// ([`kaizen_learner::Collective::device_collective`]: NCCL for `CudaOps`); returns
    /// whether it did. `Ok(false)`: the caller goes through host copies and
    /// [`kaizen_learner::Collective::all_reduce_sum`].
    ///
    /// # Errors
    /// A buffer shorter than `len`; the collective's errors.
    fn all_reduce_sum(
        &self,
        buf: &mut Self::Buf,
        len: usize,
        group: &dyn kaizen_learner::Collective,
    ) -> Result<bool, GpuError> {
        fits("all_reduce_sum", "buf", buf.len(), len)?;
        self.raw_all_reduce_sum(buf, len, group)
    }

    /// [`TrainOps::all_reduce_sum`] after its buffer check, which each backend implements;
    /// callers use [`TrainOps::all_reduce_sum`].
    ///
    /// # Errors
    /// As [`TrainOps::all_reduce_sum`].
    fn raw_all_reduce_sum(
        &self,
        buf: &mut Self::Buf,
        len: usize,
        group: &dyn kaizen_learner::Collective,
    ) -> Result<bool, GpuError>;

    /// `cublasSgemm` with `g`'s arguments (see [`Gemm`]).
    ///
    /// # Errors
    /// [`GpuError::Input`] when [`Gemm::check`] fails; cuBLAS errors.
    fn gemm(
        &self,
        g: Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
    ) -> Result<(), GpuError> {
        g.check(a.len(), b.len(), c.len())?;
        self.raw_gemm(g, a, b, c)
    }

    /// [`TrainOps::gemm`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::gemm`].
    ///
    /// # Errors
    /// As [`TrainOps::gemm`].
    fn raw_gemm(
        &self,
        g: Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
    ) -> Result<(), GpuError>;

    /// `out[r, :] = src[index[r], :]` for `r < rows` (kernel `gather_rows`).
    ///
    /// # Errors
    /// Buffers smaller than the shapes say; launch errors.
    fn gather_rows(
        &self,
        out: &mut Self::Buf,
        src: &Self::Buf,
        index: &Self::Index,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("gather_rows", "out", out.len(), rows * width)?;
        fits("gather_rows", "index", index.len(), rows)?;
        self.raw_gather_rows(out, src, index, rows, width)
    }

    /// [`TrainOps::gather_rows`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::gather_rows`].
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn raw_gather_rows(
        &self,
        out: &mut Self::Buf,
        src: &Self::Buf,
        index: &Self::Index,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// Adds `src[r, :]` to `dst[index[r], :]` for `r < rows`; indices may repeat (kernel
    /// `scatter_add_rows`, atomic adds). The backward of [`TrainOps::gather_rows`].
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn scatter_add_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        index: &Self::Index,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("scatter_add_rows", "src", src.len(), rows * width)?;
        fits("scatter_add_rows", "index", index.len(), rows)?;
        self.raw_scatter_add_rows(dst, src, index, rows, width)
    }

    /// [`TrainOps::scatter_add_rows`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::scatter_add_rows`].
    ///
    /// # Errors
    /// As [`TrainOps::scatter_add_rows`].
    fn raw_scatter_add_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        index: &Self::Index,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// RMSNorm keeping its statistics: `r = 1/√(mean(x²) + ε)` per row into `inv_rms`
    /// (`[rows]`), `out = x · r · γ` (kernel `rms_norm_save`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        inv_rms: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
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
        self.raw_rms_norm(out, inv_rms, x, gamma, rows, width, eps)
    }

    /// [`TrainOps::rms_norm`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::rms_norm`].
    ///
    /// # Errors
    /// As [`TrainOps::rms_norm`].
    #[allow(clippy::too_many_arguments)]
    fn raw_rms_norm(
        &self,
        out: &mut Self::Buf,
        inv_rms: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        rows: usize,
        width: usize,
        eps: f32,
    ) -> Result<(), GpuError>;

    /// RMSNorm's input gradient, added to `dx`: with `g = dy ⊙ γ`,
    /// `dx += r · g − x · r³ · (g · x) / width` (kernel `rms_norm_backward`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        dx: &mut Self::Buf,
        x: &Self::Buf,
        inv_rms: &Self::Buf,
        gamma: &Self::Buf,
        dy: &Self::Buf,
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
        self.raw_rms_norm_backward(dx, x, inv_rms, gamma, dy, rows, width)
    }

    /// [`TrainOps::rms_norm_backward`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::rms_norm_backward`].
    ///
    /// # Errors
    /// As [`TrainOps::rms_norm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn raw_rms_norm_backward(
        &self,
        dx: &mut Self::Buf,
        x: &Self::Buf,
        inv_rms: &Self::Buf,
        gamma: &Self::Buf,
        dy: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// RMSNorm's weight gradient, added to `d_gamma` (`[width]`): `dγ += Σ_rows dy ⊙ x · r`
    /// (kernel `rms_norm_weight_grad`: column sums over chunks of rows, atomic adds).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn rms_norm_weight_grad(
        &self,
        d_gamma: &mut Self::Buf,
        x: &Self::Buf,
        inv_rms: &Self::Buf,
        dy: &Self::Buf,
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
        self.raw_rms_norm_weight_grad(d_gamma, x, inv_rms, dy, rows, width)
    }

    /// [`TrainOps::rms_norm_weight_grad`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::rms_norm_weight_grad`].
    ///
    /// # Errors
    /// As [`TrainOps::rms_norm_weight_grad`].
    fn raw_rms_norm_weight_grad(
        &self,
        d_gamma: &mut Self::Buf,
        x: &Self::Buf,
        inv_rms: &Self::Buf,
        dy: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// `out += Σ_rows x` for `x: [rows, width]` (a bias gradient; kernel `column_sums`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn column_sums(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("column_sums", "out", out.len(), width)?;
        fits("column_sums", "x", x.len(), rows * width)?;
        self.raw_column_sums(out, x, rows, width)
    }

    /// [`TrainOps::column_sums`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::column_sums`].
    ///
    /// # Errors
    /// As [`TrainOps::column_sums`].
    fn raw_column_sums(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// `x[r, :] += bias` (kernel `bias_add`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn add_bias(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError> {
        fits("add_bias", "x", x.len(), rows * width)?;
        fits("add_bias", "bias", bias.len(), width)?;
        self.raw_add_bias(x, bias, rows, width)
    }

    /// [`TrainOps::add_bias`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::add_bias`].
    ///
    /// # Errors
    /// As [`TrainOps::add_bias`].
    fn raw_add_bias(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), GpuError>;

    /// `x[..len] += y[..len]` (kernel `residual_add`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<(), GpuError> {
        fits("add", "x", x.len(), len)?;
        fits("add", "y", y.len(), len)?;
        self.raw_add(x, y, len)
    }

    /// [`TrainOps::add`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::add`].
    ///
    /// # Errors
    /// As [`TrainOps::add`].
    fn raw_add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<(), GpuError>;

    /// Rotary positions, HF "rotate half", on every head of every row of `x`
    /// (`[rows, heads·head_dim]`), row `r` at position `positions[r]` of the tables
    /// (`[max_positions, head_dim]`): `x' = [x₁ c₁ − x₂ s₁, x₂ c₂ + x₁ s₂]`. With `inverse`,
    /// its adjoint (the backward; the rotation's transpose): `dx = [a c₁ + b s₂, b c₂ − a s₁]`
    /// for `dx' = [a, b]` (kernel `rope_at`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        positions: &Self::Index,
        rows: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<(), GpuError> {
        fits("rope", "x", x.len(), rows * heads * head_dim)?;
        fits("rope", "positions", positions.len(), rows)?;
        self.raw_rope(x, cos, sin, positions, rows, heads, head_dim, inverse)
    }

    /// [`TrainOps::rope`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::rope`].
    ///
    /// # Errors
    /// As [`TrainOps::rope`].
    #[allow(clippy::too_many_arguments)]
    fn raw_rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        positions: &Self::Index,
        rows: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<(), GpuError>;

    /// Causal grouped-query attention over packed rows: query `t` attends to keys
    /// `key_start[t]..=t` (its own row). `s_j = scale · q·k_j`, `lse = log Σ_j e^{s_j}`,
    /// `out = Σ_j e^{s_j − lse} v_j`; writes `out` (`[N, heads·d]`) and `lse` (`[N, heads]`)
    /// (kernel `attention_train`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        key_start: &Self::Index,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let (n, queries, kv, per_head) =
            (shape.tokens, shape.q_len(), shape.kv_len(), shape.lse_len());
        for (name, len, need) in [
            ("out", out.len(), queries),
            ("q", q.len(), queries),
            ("k", k.len(), kv),
            ("v", v.len(), kv),
            ("lse", lse.len(), per_head),
        ] {
            fits("attention", name, len, need)?;
        }
        fits("attention", "key_start", key_start.len(), n)?;
        self.raw_attention(out, lse, q, k, v, key_start, shape)
    }

    /// [`TrainOps::attention`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::attention`].
    ///
    /// # Errors
    /// As [`TrainOps::attention`].
    #[allow(clippy::too_many_arguments)]
    fn raw_attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        key_start: &Self::Index,
        shape: AttentionShape,
    ) -> Result<(), GpuError>;

    /// Attention backward, probabilities recomputed from the saved `lse`:
    /// `p_ij = e^{s_ij − lse_i}`, `D_i = dO_i · O_i`, `ds_ij = p_ij (dO_i · v_j − D_i)`,
    /// `dq_i = scale Σ_j ds_ij k_j`, `dk_j = scale Σ_i ds_ij q_i`, `dv_j = Σ_i p_ij dO_i`
    /// (sums over `i` run over the queries of `j`'s row at or after `j`, `key .. row_end[j]`,
    /// and over the query heads of `j`'s key-value head). Writes (does not add) `dq`, `dk`,
    /// `dv`, and `D` into `delta` (`[N, heads]`). Kernels `attention_backward_query` (per
    /// query: `D`, `dq`) then `attention_backward_key` (per key: `dk`, `dv`): no atomics.
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        delta: &mut Self::Buf,
        saved: AttentionSaved<'_, Self::Buf>,
        d_out: &Self::Buf,
        rows: AttentionRows<'_, Self::Index>,
        shape: AttentionShape,
    ) -> Result<(), GpuError> {
        let (n, queries, kv, per_head) =
            (shape.tokens, shape.q_len(), shape.kv_len(), shape.lse_len());
        let AttentionSaved { q, k, v, out, lse } = saved;
        for (name, len, need) in [
            ("dq", dq.len(), queries),
            ("dk", dk.len(), kv),
            ("dv", dv.len(), kv),
            ("delta", delta.len(), per_head),
            ("q", q.len(), queries),
            ("k", k.len(), kv),
            ("v", v.len(), kv),
            ("out", out.len(), queries),
            ("d_out", d_out.len(), queries),
            ("lse", lse.len(), per_head),
        ] {
            fits("attention_backward", name, len, need)?;
        }
        fits("attention_backward", "key_start", rows.key_start.len(), n)?;
        fits("attention_backward", "row_end", rows.row_end.len(), n)?;
        self.raw_attention_backward(dq, dk, dv, delta, saved, d_out, rows, shape)
    }

    /// [`TrainOps::attention_backward`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::attention_backward`].
    ///
    /// # Errors
    /// As [`TrainOps::attention_backward`].
    #[allow(clippy::too_many_arguments)]
    fn raw_attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        delta: &mut Self::Buf,
        saved: AttentionSaved<'_, Self::Buf>,
        d_out: &Self::Buf,
        rows: AttentionRows<'_, Self::Index>,
        shape: AttentionShape,
    ) -> Result<(), GpuError>;

    /// SwiGLU keeping its inputs: `act = SiLU(gate) ⊙ up`, `SiLU(g) = g σ(g)` (kernel
    /// `swiglu_save`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn swiglu(
        &self,
        act: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<(), GpuError> {
        for (name, l) in [("act", act.len()), ("gate", gate.len()), ("up", up.len())] {
            fits("swiglu", name, l, len)?;
        }
        self.raw_swiglu(act, gate, up, len)
    }

    /// [`TrainOps::swiglu`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::swiglu`].
    ///
    /// # Errors
    /// As [`TrainOps::swiglu`].
    fn raw_swiglu(
        &self,
        act: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<(), GpuError>;

    /// SwiGLU backward: for `a = g σ(g) u`, `d_gate = da · u σ(g) (1 + g (1 − σ(g)))`,
    /// `d_up = da · g σ(g)` (kernel `swiglu_backward`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn swiglu_backward(
        &self,
        d_gate: &mut Self::Buf,
        d_up: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        d_act: &Self::Buf,
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
        self.raw_swiglu_backward(d_gate, d_up, gate, up, d_act, len)
    }

    /// [`TrainOps::swiglu_backward`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::swiglu_backward`].
    ///
    /// # Errors
    /// As [`TrainOps::swiglu_backward`].
    #[allow(clippy::too_many_arguments)]
    fn raw_swiglu_backward(
        &self,
        d_gate: &mut Self::Buf,
        d_up: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        d_act: &Self::Buf,
        len: usize,
    ) -> Result<(), GpuError>;

    /// Log-softmax at temperature `T` and the target's log-prob, per row of `z`
    /// (`[rows, vocab]`, the logits on entry): `z ← logits / T` in place,
    /// `lse = log Σ_j e^{z_j}`, `logp = z[target] − lse` (kernel `log_softmax_gather`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn log_softmax(
        &self,
        z: &mut Self::Buf,
        lse: &mut Self::Buf,
        logp: &mut Self::Buf,
        targets: &Self::Index,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        fits("log_softmax", "z", z.len(), rows * vocab)?;
        fits("log_softmax", "lse", lse.len(), rows)?;
        fits("log_softmax", "logp", logp.len(), rows)?;
        fits("log_softmax", "targets", targets.len(), rows)?;
        self.raw_log_softmax(z, lse, logp, targets, rows, vocab, inv_t)
    }

    /// [`TrainOps::log_softmax`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::log_softmax`].
    ///
    /// # Errors
    /// As [`TrainOps::log_softmax`].
    #[allow(clippy::too_many_arguments)]
    fn raw_log_softmax(
        &self,
        z: &mut Self::Buf,
        lse: &mut Self::Buf,
        logp: &mut Self::Buf,
        targets: &Self::Index,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError>;

    /// Log-softmax backward, in place: `z` (the scaled logits) becomes `d logits`:
    /// `∂ logp / ∂z_j = 1[j = x] − p_j`, `p_j = e^{z_j − lse}`, and `∂/∂logits = (∂/∂z) / T`,
    /// each row times its upstream gradient `d_logp[r]` (kernel `log_softmax_backward`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn log_softmax_backward(
        &self,
        z: &mut Self::Buf,
        lse: &Self::Buf,
        targets: &Self::Index,
        d_logp: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError> {
        fits("log_softmax_backward", "z", z.len(), rows * vocab)?;
        fits("log_softmax_backward", "lse", lse.len(), rows)?;
        fits("log_softmax_backward", "d_logp", d_logp.len(), rows)?;
        fits("log_softmax_backward", "targets", targets.len(), rows)?;
        self.raw_log_softmax_backward(z, lse, targets, d_logp, rows, vocab, inv_t)
    }

    /// [`TrainOps::log_softmax_backward`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::log_softmax_backward`].
    ///
    /// # Errors
    /// As [`TrainOps::log_softmax_backward`].
    #[allow(clippy::too_many_arguments)]
    fn raw_log_softmax_backward(
        &self,
        z: &mut Self::Buf,
        lse: &Self::Buf,
        targets: &Self::Index,
        d_logp: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_t: f32,
    ) -> Result<(), GpuError>;

    /// `Σ x²` over the first `len` values (kernel `sum_squares`: f32 partial sums per block,
    /// added in f64 on the host).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    fn sum_squares(&self, x: &Self::Buf, len: usize) -> Result<f64, GpuError> {
        fits("sum_squares", "x", x.len(), len)?;
        self.raw_sum_squares(x, len)
    }

    /// [`TrainOps::sum_squares`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::sum_squares`].
    ///
    /// # Errors
    /// As [`TrainOps::sum_squares`].
    fn raw_sum_squares(&self, x: &Self::Buf, len: usize) -> Result<f64, GpuError>;

    /// The fused AdamW update of `kaizen_learner::AdamW`, element-wise over `len` values:
    /// `g ← g · clip`, `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
    /// `p ← p · decay − step_size · m / (√v · inv_sqrt_bias2 + ε)` (kernel `adamw`).
    ///
    /// # Errors
    /// As [`TrainOps::gather_rows`].
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
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
        self.raw_adamw(p, g, m, v, len, k)
    }

    /// [`TrainOps::adamw`] after its buffer checks, which each backend implements;
    /// callers use [`TrainOps::adamw`].
    ///
    /// # Errors
    /// As [`TrainOps::adamw`].
    #[allow(clippy::too_many_arguments)]
    fn raw_adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        len: usize,
        k: AdamWStep,
    ) -> Result<(), GpuError>;
}

/// What the attention backward reads from the forward: `q` (after rotary positions),
/// `k`, `v`, the output `out` and each query's `lse`.
#[derive(Debug)]
pub struct AttentionSaved<'a, B> {
    /// Queries `[N, heads·d]`.
    pub q: &'a B,
    /// Keys `[N, kv·d]`.
    pub k: &'a B,
    /// Values `[N, kv·d]`.
    pub v: &'a B,
    /// Output `[N, heads·d]`.
    pub out: &'a B,
    /// Log-sum-exp of each query's scaled scores, `[N, heads]`.
    pub lse: &'a B,
}

impl<B> Clone for AttentionSaved<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for AttentionSaved<'_, B> {}

/// Row bounds of the packed tokens: token `t`'s row is `key_start[t]..row_end[t]`.
#[derive(Debug)]
pub struct AttentionRows<'a, I> {
    /// First packed token of each token's row, `[N]`.
    pub key_start: &'a I,
    /// One past the last packed token of each token's row, `[N]`.
    pub row_end: &'a I,
}

impl<I> Clone for AttentionRows<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for AttentionRows<'_, I> {}

/// `Ok` when a buffer of `len` values holds the `need` a call reads or writes.
///
/// # Errors
/// [`GpuError::Input`] naming the operation and the buffer.
pub(crate) fn fits(op: &str, buffer: &str, len: usize, need: usize) -> Result<(), GpuError> {
    if len < need {
        return Err(GpuError::Input(format!(
            "{op}: `{buffer}` holds {len} values, the call needs {need}"
        )));
    }
    Ok(())
}
