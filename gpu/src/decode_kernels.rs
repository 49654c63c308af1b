//! The batched decoder's CUDA kernels (beyond the training pass's, which it reuses): writing
//! keys and values into per-row cache slots, attention of each row's query over its own
//! slot, forking a prompt's cache to its group's slots, and the sampler. CUDA C compiled by
//! NVRTC at run time, like [`crate::kernels`].
//!
//! A layer's cache is `[slots, capacity, width]` row-major (`width = kv_heads · head_dim`):
//! position `p` of slot `s` starts at `(s · capacity + p) · width`.

use cudarc::nvrtc::Ptx;

use crate::GpuError;

/// The kernels' entry points, in [`SOURCE`]'s order.
pub const NAMES: [&str; 4] = ["kv_write", "cached_attention", "copy_prefix", "sample_rows"];

/// The CUDA C source of every kernel.
pub const SOURCE: &str = concat!(
    crate::kernels::prelude!(),
    r#"
// cache[(slot[r] * cap + pos[r]) * width + i] = x[r * width + i].  grid (rows), block (any).
extern "C" __global__ void kv_write(float* cache, const float* x, const unsigned int* slot,
                                    const unsigned int* pos, int width, int cap) {
    const int r = blockIdx.x;
    float* dst = cache + ((size_t)slot[r] * cap + pos[r]) * width;
    const float* src = x + (size_t)r * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

__device__ double block_sum_d(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    const double s = scratch[0];
    __syncthreads();
    return s;
}

// Query row r (q: [rows, heads, hd]) at position pos[r] attends to positions 0..=pos[r] of
// its slot: out = softmax(scale q k^T) v, grouped-query (head -> kv head head / (heads /
// kv_heads)).  grid (rows, heads), block (BLOCK), dynamic shared memory cap floats.
extern "C" __global__ void cached_attention(float* out, const float* q, const float* k_cache,
                                            const float* v_cache, const unsigned int* slot,
                                            const unsigned int* pos, int heads, int kv_heads,
                                            int hd, int cap, float scale) {
    extern __shared__ float scores[];
    __shared__ float scratch[BLOCK];
    const int r = blockIdx.x, head = blockIdx.y;
    const int kv = head / (heads / kv_heads);
    const int width = kv_heads * hd;
    const int len = pos[r] + 1;
    const float* qv = q + ((size_t)r * heads + head) * hd;
    const float* keys = k_cache + (size_t)slot[r] * cap * width + (size_t)kv * hd;
    const float* values = v_cache + (size_t)slot[r] * cap * width + (size_t)kv * hd;
    float m = NEG_INFINITY;
    for (int j = threadIdx.x; j < len; j += BLOCK) {
        float dot = 0.0f;
        for (int i = 0; i < hd; ++i) dot += qv[i] * keys[(size_t)j * width + i];
        scores[j] = dot * scale;
        m = fmaxf(m, scores[j]);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += BLOCK) {
        const float e = expf(scores[j] - m);
        scores[j] = e;
        sum += e;
    }
    const float inv_sum = 1.0f / block_sum(sum, scratch);
    for (int i = threadIdx.x; i < hd; i += BLOCK) {
        float acc = 0.0f;
        for (int j = 0; j < len; ++j) acc += scores[j] * values[(size_t)j * width + i];
        out[((size_t)r * heads + head) * hd + i] = acc * inv_sum;
    }
}

// Copies positions 0..len of slot from[p] to slot to[p].  grid (pairs, len), block (any).
extern "C" __global__ void copy_prefix(float* cache, const unsigned int* from, const unsigned int* to,
                                       int width, int cap) {
    const int p = blockIdx.x, j = blockIdx.y;
    const float* src = cache + ((size_t)from[p] * cap + j) * width;
    float* dst = cache + ((size_t)to[p] * cap + j) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// One token per row of logits [rows, vocab] (crate::sample's math, step for step):
// w = exp((l - max) / T) into weights, top-p threshold by bisection, the draw over per-thread
// contiguous chunks in id order; out[2r] = token (as float), out[2r + 1] = its log-prob.
// temperature 0: arg-max (lowest id on ties), log-prob 0.  grid (rows), block (BLOCK).
extern "C" __global__ void sample_rows(float* out, float* weights, const float* logits,
                                       const float* uniforms, int vocab, float temperature,
                                       float top_p, int bisections) {
    __shared__ float fscratch[BLOCK];
    __shared__ double dscratch[BLOCK];
    __shared__ int iscratch[BLOCK];
    const int r = blockIdx.x, t = threadIdx.x;
    const float* l = logits + (size_t)r * vocab;
    float* w = weights + (size_t)r * vocab;
    if (temperature == 0.0f) {
        int best = -1;
        float bv = NEG_INFINITY;
        for (int i = t; i < vocab; i += BLOCK) {
            if (best < 0 || l[i] > bv) { bv = l[i]; best = i; }
        }
        fscratch[t] = bv;
        iscratch[t] = best;
        __syncthreads();
        for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
            if (t < stride) {
                const float ov = fscratch[t + stride];
                const int oi = iscratch[t + stride];
                if (oi >= 0 && (iscratch[t] < 0 || ov > fscratch[t] || (ov == fscratch[t] && oi < iscratch[t]))) {
                    fscratch[t] = ov;
                    iscratch[t] = oi;
                }
            }
            __syncthreads();
        }
        if (t == 0) {
            out[2 * r] = (float)iscratch[0];
            out[2 * r + 1] = 0.0f;
        }
        return;
    }
    const float inv_t = 1.0f / temperature;
    float m = NEG_INFINITY;
    for (int i = t; i < vocab; i += BLOCK) m = fmaxf(m, l[i]);
    m = block_max(m, fscratch);
    double total = 0.0;
    for (int i = t; i < vocab; i += BLOCK) {
        const float e = expf((l[i] - m) * inv_t);
        w[i] = e;
        total += (double)e;
    }
    total = block_sum_d(total, dscratch);
    float tau = 0.0f;
    if (top_p < 1.0f) {
        const double target = (double)top_p * total;
        float lo = 0.0f, hi = 1.0f;
        double mass = 0.0;
        for (int i = t; i < vocab; i += BLOCK) if (w[i] >= hi) mass += (double)w[i];
        if (block_sum_d(mass, dscratch) >= target) {
            lo = hi;
        } else {
            for (int b = 0; b < bisections; ++b) {
                const float mid = 0.5f * (lo + hi);
                mass = 0.0;
                for (int i = t; i < vocab; i += BLOCK) if (w[i] >= mid) mass += (double)w[i];
                if (block_sum_d(mass, dscratch) >= target) lo = mid; else hi = mid;
            }
        }
        tau = lo;
    }
    const int chunk = (vocab + BLOCK - 1) / BLOCK;
    const int begin = t * chunk;
    const int end = min(vocab, begin + chunk);
    double sum = 0.0;
    for (int i = begin; i < end; ++i) if (w[i] > 0.0f && w[i] >= tau) sum += (double)w[i];
    dscratch[t] = sum;
    __syncthreads();
    if (t == 0) {
        double kept_mass = 0.0;
        for (int c = 0; c < BLOCK; ++c) kept_mass += dscratch[c];
        const double target = (double)uniforms[r] * kept_mass;
        double acc = 0.0;
        int token = -1, last = 0;
        for (int c = 0; c < BLOCK && token < 0; ++c) {
            if (acc + dscratch[c] <= target) { acc += dscratch[c]; continue; }
            const int stop = min(vocab, (c + 1) * chunk);
            for (int i = c * chunk; i < stop; ++i) {
                if (w[i] > 0.0f && w[i] >= tau) {
                    acc += (double)w[i];
                    last = i;
                    if (acc > target) { token = i; break; }
                }
            }
        }
        if (token < 0) {
            token = last;
            for (int i = vocab - 1; i >= 0; --i) if (w[i] > 0.0f && w[i] >= tau) { token = i; break; }
        }
        const double score = (double)((l[token] - m) * inv_t);
        out[2 * r] = (float)token;
        out[2 * r + 1] = (float)(score - log(kept_mass));
    }
}
"#
);

/// Compiles [`SOURCE`] to PTX for `arch` (options as [`crate::kernels::compile`]).
///
/// # Errors
/// [`GpuError::Library`] when NVRTC cannot be loaded; [`GpuError::Compile`] with NVRTC's log.
pub fn compile(arch: Option<&'static str>) -> Result<Ptx, GpuError> {
    crate::kernels::compile_source(SOURCE, arch)
}
