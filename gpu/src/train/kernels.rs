//! The training pass's CUDA kernels (forward with saved statistics, backward, AdamW), as CUDA
//! C compiled by NVRTC at run time ([`crate::kernels::compile_source`]). Each kernel's math is
//! stated on its [`super::TrainOps`] method, and [`super::HostOps`] mirrors it on the host.
//!
//! All tensors are row-major f32; `N` packed tokens, `h` hidden width, `d` head width.

/// Threads per block of the row kernels; their shared-memory reductions assume exactly this
/// many (the prelude's `BLOCK`, shared with the forward kernels).
pub const BLOCK: u32 = crate::kernels::BLOCK;

/// Rows summed by one block of the column-sum kernels (`rms_norm_weight_grad`,
/// `column_sums`) before its atomic add.
pub const WEIGHT_GRAD_ROWS: usize = 64;

/// Largest dynamic shared memory of one attention block, in floats (48 KiB less the static
/// reduction scratch).
pub const MAX_SHARED_FLOATS: usize = 48 * 1024 / 4 - BLOCK as usize;

/// The kernels' entry points, in [`SOURCE`]'s order.
pub const NAMES: [&str; 18] = [
    "gather_rows",
    "scatter_add_rows",
    "rms_norm_save",
    "rms_norm_backward",
    "rms_norm_weight_grad",
    "column_sums",
    "bias_add",
    "residual_add",
    "rope_at",
    "attention_train",
    "attention_backward_query",
    "attention_backward_key",
    "swiglu_save",
    "swiglu_backward",
    "log_softmax_gather",
    "log_softmax_backward",
    "sum_squares",
    "adamw",
];

/// The CUDA C source of every training kernel (one translation unit, no `#include`).
pub const SOURCE: &str = concat!(
    crate::kernels::prelude!(),
    r#"
#define WEIGHT_GRAD_ROWS 64

// out[r, :] = src[index[r], :].  grid (rows), block (any).
extern "C" __global__ void gather_rows(float* out, const float* src, const unsigned int* index, int width) {
    const size_t r = blockIdx.x;
    const float* row = src + (size_t)index[r] * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) out[r * width + j] = row[j];
}

// dst[index[r], :] += src[r, :] (indices may repeat: atomic).  grid (rows), block (any).
extern "C" __global__ void scatter_add_rows(float* dst, const float* src, const unsigned int* index, int width) {
    const size_t r = blockIdx.x;
    float* row = dst + (size_t)index[r] * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) atomicAdd(&row[j], src[r * width + j]);
}

// inv_rms[r] = 1/sqrt(mean(x_r^2) + eps), out = x * inv_rms * w.  grid (rows), block (BLOCK).
extern "C" __global__ void rms_norm_save(float* out, float* inv_rms, const float* x, const float* w, int width, float eps) {
    __shared__ float scratch[BLOCK];
    const size_t at = (size_t)blockIdx.x * width;
    float s = 0.0f;
    for (int j = threadIdx.x; j < width; j += BLOCK) s += x[at + j] * x[at + j];
    const float inv = 1.0f / sqrtf(block_sum(s, scratch) / (float)width + eps);
    if (threadIdx.x == 0) inv_rms[blockIdx.x] = inv;
    for (int j = threadIdx.x; j < width; j += BLOCK) out[at + j] = x[at + j] * inv * w[j];
}

// dx += r dy w - x r^3 (sum_j dy_j w_j x_j) / width.  grid (rows), block (BLOCK).
extern "C" __global__ void rms_norm_backward(float* dx, const float* x, const float* inv_rms, const float* w,
                                             const float* dy, int width) {
    __shared__ float scratch[BLOCK];
    const size_t at = (size_t)blockIdx.x * width;
    const float r = inv_rms[blockIdx.x];
    float s = 0.0f;
    for (int j = threadIdx.x; j < width; j += BLOCK) s += dy[at + j] * w[j] * x[at + j];
    const float c = r * r * r * block_sum(s, scratch) / (float)width;
    for (int j = threadIdx.x; j < width; j += BLOCK) dx[at + j] += r * dy[at + j] * w[j] - x[at + j] * c;
}

// dw[j] += sum_r dy[r, j] x[r, j] inv_rms[r], WEIGHT_GRAD_ROWS rows per block.
// grid (ceil(width / BLOCK), ceil(rows / WEIGHT_GRAD_ROWS)), block (BLOCK).
extern "C" __global__ void rms_norm_weight_grad(float* dw, const float* x, const float* inv_rms, const float* dy,
                                                int rows, int width) {
    const int j = blockIdx.x * BLOCK + threadIdx.x;
    if (j >= width) return;
    const int r0 = blockIdx.y * WEIGHT_GRAD_ROWS;
    const int r1 = min(r0 + WEIGHT_GRAD_ROWS, rows);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += dy[(size_t)r * width + j] * x[(size_t)r * width + j] * inv_rms[r];
    atomicAdd(&dw[j], s);
}

// out[j] += sum_r x[r, j], as rms_norm_weight_grad.
extern "C" __global__ void column_sums(float* out, const float* x, int rows, int width) {
    const int j = blockIdx.x * BLOCK + threadIdx.x;
    if (j >= width) return;
    const int r0 = blockIdx.y * WEIGHT_GRAD_ROWS;
    const int r1 = min(r0 + WEIGHT_GRAD_ROWS, rows);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += x[(size_t)r * width + j];
    atomicAdd(&out[j], s);
}

// x[r, c] += b[c].  grid-stride over rows * width.
extern "C" __global__ void bias_add(float* x, const float* b, int rows, int width) {
    const size_t len = (size_t)rows * width;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (size_t)gridDim.x * blockDim.x)
        x[i] += b[i % width];
}

// x += y.  grid-stride over len.
extern "C" __global__ void residual_add(float* x, const float* y, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) x[i] += y[i];
}

// Rotary positions ("rotate half") at position positions[t] of the [max_pos, hd] tables;
// inverse != 0: the adjoint rotation (the backward).  grid (rows, heads), block (any).
extern "C" __global__ void rope_at(float* x, const float* cos_table, const float* sin_table,
                                   const unsigned int* positions, int heads, int hd, int inverse) {
    const int t = blockIdx.x, head = blockIdx.y, half = hd / 2;
    float* v = x + ((size_t)t * heads + head) * hd;
    const float* c = cos_table + (size_t)positions[t] * hd;
    const float* s = sin_table + (size_t)positions[t] * hd;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float a = v[i], b = v[i + half];
        if (inverse) {
            v[i] = a * c[i] + b * s[i + half];
            v[i + half] = b * c[i + half] - a * s[i];
        } else {
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i + half] + a * s[i + half];
        }
    }
}

// Causal GQA attention over packed rows: query t attends to keys key_start[t]..=t.
// Writes out [N, heads*hd] and lse [N, heads].
// grid (N, heads), block (BLOCK), dynamic shared memory (t - key_start[t] + 1) floats (at most
// the longest row).
extern "C" __global__ void attention_train(float* out, float* lse, const float* q, const float* k, const float* v,
                                           const unsigned int* key_start, int heads, int kv_heads, int hd, float scale) {
    extern __shared__ float scores[];
    __shared__ float scratch[BLOCK];
    const int t = blockIdx.x, head = blockIdx.y;
    const int kvh = head / (heads / kv_heads);
    const int s0 = key_start[t];
    const int len = t - s0 + 1;
    const float* qv = q + ((size_t)t * heads + head) * hd;
    float m = NEG_INFINITY;
    for (int jj = threadIdx.x; jj < len; jj += BLOCK) {
        const float* key = k + ((size_t)(s0 + jj) * kv_heads + kvh) * hd;
        float dot = 0.0f;
        for (int i = 0; i < hd; ++i) dot += qv[i] * key[i];
        scores[jj] = dot * scale;
        m = fmaxf(m, scores[jj]);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int jj = threadIdx.x; jj < len; jj += BLOCK) {
        const float e = expf(scores[jj] - m);
        scores[jj] = e;
        sum += e;
    }
    // block_sum's barriers also make every thread's scores visible to the others.
    const float total = block_sum(sum, scratch);
    if (threadIdx.x == 0) lse[(size_t)t * heads + head] = m + logf(total);
    const float inv_sum = 1.0f / total;
    for (int i = threadIdx.x; i < hd; i += BLOCK) {
        float acc = 0.0f;
        for (int jj = 0; jj < len; ++jj) acc += scores[jj] * v[((size_t)(s0 + jj) * kv_heads + kvh) * hd + i];
        out[((size_t)t * heads + head) * hd + i] = acc * inv_sum;
    }
}

// Attention backward, per query: D = dO . O into delta, ds_j = p_j (dO . v_j - D) scale,
// dq = sum_j ds_j k_j (written).  grid (N, heads), block (BLOCK), dynamic shared memory as
// attention_train.
extern "C" __global__ void attention_backward_query(float* dq, float* delta, const float* q, const float* k,
                                                    const float* v, const float* out, const float* lse,
                                                    const float* d_out, const unsigned int* key_start,
                                                    int heads, int kv_heads, int hd, float scale) {
    extern __shared__ float ds[];
    __shared__ float scratch[BLOCK];
    const int t = blockIdx.x, head = blockIdx.y;
    const int kvh = head / (heads / kv_heads);
    const int s0 = key_start[t];
    const int len = t - s0 + 1;
    const size_t at = ((size_t)t * heads + head) * hd;
    float partial = 0.0f;
    for (int i = threadIdx.x; i < hd; i += BLOCK) partial += d_out[at + i] * out[at + i];
    const float big_d = block_sum(partial, scratch);
    if (threadIdx.x == 0) delta[(size_t)t * heads + head] = big_d;
    const float l = lse[(size_t)t * heads + head];
    for (int jj = threadIdx.x; jj < len; jj += BLOCK) {
        const size_t kat = ((size_t)(s0 + jj) * kv_heads + kvh) * hd;
        float s = 0.0f, dp = 0.0f;
        for (int i = 0; i < hd; ++i) s += q[at + i] * k[kat + i];
        for (int i = 0; i < hd; ++i) dp += d_out[at + i] * v[kat + i];
        const float p = expf(s * scale - l);
        ds[jj] = p * (dp - big_d) * scale;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hd; i += BLOCK) {
        float acc = 0.0f;
        for (int jj = 0; jj < len; ++jj) acc += ds[jj] * k[((size_t)(s0 + jj) * kv_heads + kvh) * hd + i];
        dq[at + i] = acc;
    }
}

// Attention backward, per key j and kv head: over the queries i in j..row_end[j] and the query
// heads of the group (coefficient idx: query j + idx / group, head kvh * group + idx % group),
// p = exp(scale q.k_j - lse), ds = p (dO . v_j - delta) scale; dk_j = sum ds q, dv_j = sum p dO
// (written).  grid (N, kv_heads), block (BLOCK), dynamic shared memory
// 2 * (row_end[j] - j) * group floats.
extern "C" __global__ void attention_backward_key(float* dk, float* dv, const float* q, const float* k,
                                                  const float* v, const float* lse, const float* d_out,
                                                  const float* delta, const unsigned int* row_end,
                                                  int heads, int kv_heads, int hd, float scale) {
    extern __shared__ float coef[];
    const int j = blockIdx.x, kvh = blockIdx.y;
    const int group = heads / kv_heads;
    const int count = ((int)row_end[j] - j) * group;
    float* cp = coef;
    float* cds = coef + count;
    const size_t kat = ((size_t)j * kv_heads + kvh) * hd;
    for (int idx = threadIdx.x; idx < count; idx += BLOCK) {
        const int i = j + idx / group, h = kvh * group + idx % group;
        const size_t qat = ((size_t)i * heads + h) * hd;
        float s = 0.0f, dp = 0.0f;
        for (int c = 0; c < hd; ++c) s += q[qat + c] * k[kat + c];
        for (int c = 0; c < hd; ++c) dp += d_out[qat + c] * v[kat + c];
        const float p = expf(s * scale - lse[(size_t)i * heads + h]);
        cp[idx] = p;
        cds[idx] = p * (dp - delta[(size_t)i * heads + h]) * scale;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < hd; c += BLOCK) {
        float acc_k = 0.0f, acc_v = 0.0f;
        for (int idx = 0; idx < count; ++idx) {
            const int i = j + idx / group, h = kvh * group + idx % group;
            const size_t qat = ((size_t)i * heads + h) * hd;
            acc_k += cds[idx] * q[qat + c];
            acc_v += cp[idx] * d_out[qat + c];
        }
        dk[kat + c] = acc_k;
        dv[kat + c] = acc_v;
    }
}

// act = silu(gate) * up.  grid-stride over len.
extern "C" __global__ void swiglu_save(float* act, const float* gate, const float* up, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        act[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// d_up = da g s, d_gate = da u s (1 + g (1 - s)), s = sigmoid(g).  grid-stride over len.
extern "C" __global__ void swiglu_backward(float* d_gate, float* d_up, const float* gate, const float* up,
                                           const float* d_act, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float g = gate[i], u = up[i], da = d_act[i];
        const float s = 1.0f / (1.0f + expf(-g));
        d_up[i] = da * g * s;
        d_gate[i] = da * u * s * (1.0f + g * (1.0f - s));
    }
}

// z <- logits * inv_t in place, lse = log sum exp z, logp = z[target] - lse.
// grid (rows), block (BLOCK).
extern "C" __global__ void log_softmax_gather(float* z, float* lse, float* logp, const unsigned int* targets,
                                              int vocab, float inv_t) {
    __shared__ float scratch[BLOCK];
    float* row = z + (size_t)blockIdx.x * vocab;
    float m = NEG_INFINITY;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        row[j] *= inv_t;
        m = fmaxf(m, row[j]);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) sum += expf(row[j] - m);
    const float l = m + logf(block_sum(sum, scratch));
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = l;
        logp[blockIdx.x] = row[targets[blockIdx.x]] - l;
    }
}

// z (scaled logits) <- d logits = g (1[j = target] - exp(z_j - lse)) inv_t.
// grid (rows), block (BLOCK).
extern "C" __global__ void log_softmax_backward(float* z, const float* lse, const unsigned int* targets,
                                                const float* d_logp, int vocab, float inv_t) {
    float* row = z + (size_t)blockIdx.x * vocab;
    const float g = d_logp[blockIdx.x], l = lse[blockIdx.x];
    const int x = targets[blockIdx.x];
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        const float p = expf(row[j] - l);
        const float dz = j == x ? g - g * p : -g * p;
        row[j] = dz * inv_t;
    }
}

// partials[block] = sum of x^2 over the block's grid-stride share.  grid (any), block (BLOCK).
extern "C" __global__ void sum_squares(float* partials, const float* x, int len) {
    __shared__ float scratch[BLOCK];
    float s = 0.0f;
    for (int i = blockIdx.x * BLOCK + threadIdx.x; i < len; i += gridDim.x * BLOCK) s += x[i] * x[i];
    const float total = block_sum(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Fused AdamW (kaizen_learner::AdamW).  grid-stride over len.
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, int len, float clip, float beta1,
                                 float beta2, float decay, float step_size, float inv_sqrt_bias2, float eps) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float gi = g[i] * clip;
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        const float denom = sqrtf(v[i]) * inv_sqrt_bias2 + eps;
        p[i] = p[i] * decay - step_size * m[i] / denom;
    }
}
"#
);

/// Compiles [`SOURCE`] to PTX for `arch` (`"compute_90"`; `None`: NVRTC's default), with the
/// options of [`crate::kernels::compile`].
///
/// # Errors
/// [`crate::GpuError::Library`] when NVRTC cannot be loaded; [`crate::GpuError::Compile`] with
/// NVRTC's log.
pub fn compile(arch: Option<&'static str>) -> Result<cudarc::nvrtc::Ptx, crate::GpuError> {
    crate::kernels::compile_source(SOURCE, arch)
}
