//! The forward pass's CUDA kernels, as CUDA C source compiled by NVRTC at run time for the
//! device at hand (no `nvcc` at build time, no fat binary to ship).
//!
//! All tensors are row-major f32 in device memory; `n` is the number of tokens in the call,
//! `h` the hidden width, `hd` the head width. The products (`x · Wᵀ`) are cuBLAS SGEMM calls
//! in [`crate::GpuLlama`], not kernels here. Each kernel mirrors the CPU path's formula (named
//! in its comment) so that logits agree to float reassociation.

use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::{GpuError, Library, require};

/// Threads per block of the row kernels (`rms_norm`, `attention`); their shared-memory
/// reductions assume exactly this many. The `#define BLOCK` of the `prelude!` every CUDA source
/// of the crate starts with.
pub const BLOCK: u32 = 256;

/// The kernels' entry points, in [`SOURCE`]'s order.
pub const NAMES: [&str; 8] = [
    "embed",
    "rms_norm",
    "rope",
    "kv_append",
    "attention",
    "swiglu",
    "add_inplace",
    "add_bias",
];

/// The CUDA C every kernel source starts with: `BLOCK` (threads per block of the row
/// kernels, as [`BLOCK`]), `NEG_INFINITY`, and the block-wide reductions `block_sum` and
/// `block_max` over exactly `BLOCK` threads. Each `SOURCE` is `concat!(prelude!(), ...)`, so
/// it stays one translation unit with no `#include`.
macro_rules! prelude {
    () => {
        r#"
#define BLOCK 256
#define NEG_INFINITY __int_as_float(0xff800000)

// Block-wide sum over BLOCK threads; every thread gets the total.
__device__ float block_sum(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    const float total = scratch[0];
    __syncthreads();
    return total;
}

// Block-wide max over BLOCK threads; every thread gets it.
__device__ float block_max(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
        __syncthreads();
    }
    const float m = scratch[0];
    __syncthreads();
    return m;
}
"#
    };
}
pub(crate) use prelude;

/// The CUDA C source of every kernel (one translation unit, no `#include`: NVRTC needs no
/// headers for it).
pub const SOURCE: &str = concat!(
    prelude!(),
    r#"
// out[t, :] = table[ids[t], :].  grid (n), block (any).
extern "C" __global__ void embed(float* out, const float* table, const unsigned int* ids, int h) {
    const int t = blockIdx.x;
    const float* row = table + (size_t)ids[t] * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[(size_t)t * h + j] = row[j];
}

// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, per row.  grid (n), block (BLOCK).
extern "C" __global__ void rms_norm(float* out, const float* x, const float* w, int h, float eps) {
    __shared__ float scratch[BLOCK];
    const float* row = x + (size_t)blockIdx.x * h;
    float* y = out + (size_t)blockIdx.x * h;
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += BLOCK) s += row[j] * row[j];
    const float inv_rms = 1.0f / sqrtf(block_sum(s, scratch) / (float)h + eps);
    for (int j = threadIdx.x; j < h; j += BLOCK) y[j] = row[j] * inv_rms * w[j];
}

// Rotary embedding, HF "rotate half": for i < hd/2, with c = cos[p], s = sin[p] ([max_pos, hd]
// tables), x[i] <- x[i] c[i] - x[i + hd/2] s[i], x[i + hd/2] <- x[i + hd/2] c[i + hd/2] + x[i] s[i + hd/2],
// at position p = pos0 + t.  x: [n, heads, hd], in place.  grid (n, heads), block (any).
extern "C" __global__ void rope(float* x, const float* cos_table, const float* sin_table, int pos0, int heads, int hd) {
    const int t = blockIdx.x, head = blockIdx.y, half = hd / 2;
    float* v = x + ((size_t)t * heads + head) * hd;
    const float* c = cos_table + (size_t)(pos0 + t) * hd;
    const float* s = sin_table + (size_t)(pos0 + t) * hd;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
    }
}

// Appends keys or values x: [n, kv_heads, hd] to a cache [kv_heads, cap, hd] at positions
// pos0..pos0+n.  grid (n, kv_heads), block (any).
extern "C" __global__ void kv_append(float* cache, const float* x, int pos0, int kv_heads, int hd, int cap) {
    const int t = blockIdx.x, head = blockIdx.y;
    const float* src = x + ((size_t)t * kv_heads + head) * hd;
    float* dst = cache + ((size_t)head * cap + pos0 + t) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) dst[i] = src[i];
}

// Causal attention of the n new queries q: [n, heads, hd] (token t at position pos0 + t) over
// the cached keys/values [kv_heads, cap, hd] (grouped-query: head -> kv head head / (heads /
// kv_heads)): out = softmax(q k^T * scale) v over positions 0..=pos0+t.
// grid (n, heads), block (BLOCK), dynamic shared memory (pos0 + n) floats.
extern "C" __global__ void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
                                     int pos0, int heads, int kv_heads, int hd, int cap, float scale) {
    extern __shared__ float scores[];
    __shared__ float scratch[BLOCK];
    const int t = blockIdx.x, head = blockIdx.y;
    const int kv = head / (heads / kv_heads);
    const int len = pos0 + t + 1;
    const float* qv = q + ((size_t)t * heads + head) * hd;
    const float* keys = k_cache + (size_t)kv * cap * hd;
    const float* values = v_cache + (size_t)kv * cap * hd;
    float m = NEG_INFINITY;
    for (int j = threadIdx.x; j < len; j += BLOCK) {
        float dot = 0.0f;
        for (int i = 0; i < hd; ++i) dot += qv[i] * keys[(size_t)j * hd + i];
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
    // block_sum's barriers also make every thread's scores visible to the others.
    const float inv_sum = 1.0f / block_sum(sum, scratch);
    for (int i = threadIdx.x; i < hd; i += BLOCK) {
        float acc = 0.0f;
        for (int j = 0; j < len; ++j) acc += scores[j] * values[(size_t)j * hd + i];
        out[((size_t)t * heads + head) * hd + i] = acc * inv_sum;
    }
}

// SwiGLU: gate <- silu(gate) * up, silu(g) = g / (1 + exp(-g)).  grid-stride over len.
extern "C" __global__ void swiglu(float* gate, const float* up, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// Residual: x <- x + y.  grid-stride over len.
extern "C" __global__ void add_inplace(float* x, const float* y, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) x[i] += y[i];
}

// Bias: x[r, c] <- x[r, c] + b[c] for x: [rows, cols].  grid-stride over rows * cols.
extern "C" __global__ void add_bias(float* x, const float* b, int rows, int cols) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * cols; i += gridDim.x * blockDim.x) x[i] += b[i % cols];
}
"#
);

/// Compiles [`SOURCE`] to PTX for `arch` (`"sm_90"` for H100/H200; `None`: NVRTC's default).
///
/// Precise division and square root, no flush-to-zero, no fast math: the kernels are meant to
/// match the CPU path's f32 results, not to save the last cycle.
///
/// # Errors
/// [`GpuError::Library`] when NVRTC cannot be loaded; [`GpuError::Compile`] with NVRTC's log.
pub fn compile(arch: Option<&'static str>) -> Result<Ptx, GpuError> {
    compile_source(SOURCE, arch)
}

/// Compiles any CUDA C `source` as [`compile`] does [`SOURCE`].
///
/// # Errors
/// As [`compile`].
pub fn compile_source(source: &str, arch: Option<&'static str>) -> Result<Ptx, GpuError> {
    require(Library::Nvrtc)?;
    let options = CompileOptions {
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        use_fast_math: Some(false),
        arch,
        name: Some("kaizen_forward.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, options).map_err(|e| GpuError::Compile {
        arch: arch.unwrap_or("NVRTC's default architecture").into(),
        message: match e {
            cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
                format!("{nvrtc}: {}", log.to_string_lossy())
            }
            other => other.to_string(),
        },
    })
}

/// The `(major, minor)` version of the NVRTC that was loaded.
///
/// # Errors
/// [`GpuError::Library`] when NVRTC cannot be loaded; [`GpuError::Compile`] if it fails to answer.
pub fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    require(Library::Nvrtc)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for the call; NVRTC writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(GpuError::Compile {
            arch: "-".into(),
            message: format!("nvrtcVersion: {status:?}"),
        });
    }
    Ok((major, minor))
}
