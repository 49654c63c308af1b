//! The Llama-family forward pass on one GPU: NVRTC kernels ([`crate::kernels`]) for the
//! element-wise and row work, cuBLAS SGEMM for the products, f32 throughout, one sequence at a
//! time with a KV cache. It mirrors `kaizen-model`'s CPU path (`Llama::forward_hidden`,
//! `Llama::logits`) operation by operation, so logits agree to float reassociation.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PushKernelArg};
use kaizen_model::{HostTensor, LlamaConfig};

use crate::kernels::{self, BLOCK};
use crate::launch::{Functions, elementwise, grid, int, launch};
use crate::layer_weights::{Layer, LayerStack, Linear, NamedTensors, load_layers};
use crate::{GpuError, Library, require};

/// Longest attention span (cached + new positions) one `attention` block holds in shared
/// memory: 48 KiB of scores less the reduction scratch.
pub const MAX_ATTENTION_LEN: usize = 48 * 1024 / 4 - BLOCK as usize;

/// Keys and values of the positions seen so far, per layer `[kv_heads, capacity, head_dim]`
/// on the device. Owned by the caller, passed as `&mut` to [`GpuLlama::forward`].
pub struct GpuKvCache {
    keys: Vec<CudaSlice<f32>>,
    values: Vec<CudaSlice<f32>>,
    len: usize,
    capacity: usize,
}

impl GpuKvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A Llama-family decoder (Llama, SmolLM2, Qwen2's attention bias) on one GPU.
pub struct GpuLlama {
    config: LlamaConfig,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Functions,
    /// `[vocab, hidden]`; also the output projection when embeddings are tied.
    embed_tokens: CudaSlice<f32>,
    layers: Vec<Layer<CudaSlice<f32>>>,
    norm: CudaSlice<f32>,
    lm_head: Option<Linear<CudaSlice<f32>>>,
    /// RoPE tables `[max_position_embeddings, head_dim]`, computed as `kaizen_model::Rope`.
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    arch: String,
}

impl GpuLlama {
    /// Uploads a model's weights, named as in Hugging Face `LlamaForCausalLM`
    /// (`kaizen_model::Llama::to_named` gives them), and compiles the kernels for the device's
    /// architecture. Value heads are ignored.
    ///
    /// # Errors
    /// [`GpuError::Input`] for an invalid config or a missing or misshaped tensor (named);
    /// [`GpuError::Library`] when NVRTC or cuBLAS cannot be loaded; driver, compiler and cuBLAS
    /// errors.
    pub fn new(
        context: &Arc<CudaContext>,
        config: &LlamaConfig,
        weights: &[(String, HostTensor)],
    ) -> Result<Self, GpuError> {
        config
            .validate()
            .map_err(|e| GpuError::Input(format!("model config: {e}")))?;
        require(Library::Cublas)?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| GpuError::driver("reading the compute capability", e))?;
        // NVRTC takes a `&'static str`; one short string per model load.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = kernels::compile(Some(arch))?;
        let kernels = Functions::load(
            context,
            ptx,
            &kernels::NAMES,
            "loading the compiled kernels",
        )?;
        let stream = context.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| GpuError::blas("creating a handle", e))?;

        let named = NamedTensors::new(weights);
        let upload = |name: &str, shape: &[usize]| -> Result<CudaSlice<f32>, GpuError> {
            stream
                .clone_htod(named.get(name, shape)?)
                .map_err(|e| GpuError::driver(format!("uploading `{name}`"), e))
        };
        let LayerStack { layers, lm_head } = load_layers(config, upload)?;
        let (h, hd) = (config.hidden_size, config.head_dim());
        // The CPU path's tables, so both rotate by the same f32 angles.
        let rope = kaizen_model::Rope::new(hd, config.max_position_embeddings, config.rope_theta);
        let (cos, sin) = rope.host_tables();
        Ok(Self {
            embed_tokens: upload("model.embed_tokens.weight", &[config.vocab_size, h])?,
            norm: upload("model.norm.weight", &[h])?,
            layers,
            lm_head,
            cos: stream
                .clone_htod(cos)
                .map_err(|e| GpuError::driver("uploading the RoPE table", e))?,
            sin: stream
                .clone_htod(sin)
                .map_err(|e| GpuError::driver("uploading the RoPE table", e))?,
            config: config.clone(),
            stream,
            blas,
            kernels,
            arch: arch.to_string(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The virtual architecture the kernels were compiled for (`compute_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// An empty cache for `capacity` positions.
    ///
    /// # Errors
    /// [`GpuError::Input`] when `capacity` exceeds `max_position_embeddings` or
    /// [`MAX_ATTENTION_LEN`]; [`GpuError::Driver`] when the device is out of memory.
    pub fn new_cache(&self, capacity: usize) -> Result<GpuKvCache, GpuError> {
        let limit = self.config.max_position_embeddings.min(MAX_ATTENTION_LEN);
        if capacity == 0 || capacity > limit {
            return Err(GpuError::Input(format!(
                "a KV cache of {capacity} positions: expected 1..={limit} \
                 (max_position_embeddings {}, attention span {MAX_ATTENTION_LEN})",
                self.config.max_position_embeddings
            )));
        }
        let size = self.config.num_key_value_heads * capacity * self.config.head_dim();
        let alloc = || {
            self.stream
                .alloc_zeros::<f32>(size)
                .map_err(|e| GpuError::driver(format!("allocating a KV cache of {size} floats"), e))
        };
        let layers = self.config.num_hidden_layers;
        Ok(GpuKvCache {
            keys: (0..layers).map(|_| alloc()).collect::<Result<_, _>>()?,
            values: (0..layers).map(|_| alloc()).collect::<Result<_, _>>()?,
            len: 0,
            capacity,
        })
    }

    /// Runs `tokens` (the next positions after the cached ones) through the model, extends the
    /// cache, and returns the logits of every new position, on the device.
    ///
    /// # Shapes
    /// - `tokens`: `[n]` → returns `[n, vocab]` (row-major).
    ///
    /// # Errors
    /// [`GpuError::Input`] for an empty call, a token outside the vocabulary or a cache too
    /// small; driver and cuBLAS errors.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut GpuKvCache,
    ) -> Result<CudaSlice<f32>, GpuError> {
        let c = &self.config;
        let n = tokens.len();
        let vocab = c.vocab_size;
        if n == 0 {
            return Err(GpuError::Input("forward: no tokens".into()));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(GpuError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size {vocab})"
            )));
        }
        if cache.len + n > cache.capacity || cache.keys.len() != c.num_hidden_layers {
            return Err(GpuError::Input(format!(
                "{n} new tokens after {} cached do not fit a cache of {} positions and {} layers",
                cache.len,
                cache.capacity,
                cache.keys.len()
            )));
        }
        let (h, hd, inter) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let alloc = |len: usize| {
            self.stream
                .alloc_zeros::<f32>(len)
                .map_err(|e| GpuError::driver(format!("allocating {len} floats"), e))
        };
        let ids = self
            .stream
            .clone_htod(tokens)
            .map_err(|e| GpuError::driver("uploading token ids", e))?;
        let mut x = alloc(n * h)?;
        let mut normed = alloc(n * h)?;
        let mut q = alloc(n * heads * hd)?;
        let mut k = alloc(n * kv_heads * hd)?;
        let mut v = alloc(n * kv_heads * hd)?;
        let mut attended = alloc(n * heads * hd)?;
        let mut projected = alloc(n * h)?;
        let mut gate = alloc(n * inter)?;
        let mut up = alloc(n * inter)?;

        let (h_i, hd_i) = (int(h, "hidden_size")?, int(hd, "head_dim")?);
        let (heads_i, kv_i) = (int(heads, "heads")?, int(kv_heads, "kv heads")?);
        let pos0 = int(cache.len, "cache length")?;
        let cap = int(cache.capacity, "cache capacity")?;
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0f32 / (hd as f32).sqrt();
        let span = int(cache.len + n, "attention span")? as usize;

        // SAFETY (every launch below): the argument lists match the kernels' signatures in
        // `kernels::SOURCE`, and every buffer is at least as long as the grid indexes:
        // `x`/`normed`/`projected` n·h, `q`/`attended` n·heads·hd, `k`/`v` n·kv_heads·hd,
        // caches kv_heads·capacity·hd with pos0 + n <= capacity (checked above), token ids
        // below vocab (checked above), RoPE tables max_position_embeddings·hd >= capacity·hd.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "embed",
                grid(n, 1, BLOCK, 0),
                [&mut x, &self.embed_tokens, &ids, &h_i]
            )?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            self.rms_norm(&mut normed, &x, &layer.input_layernorm, n, eps)?;
            self.linear(&layer.q_proj, &normed, &mut q, n)?;
            self.linear(&layer.k_proj, &normed, &mut k, n)?;
            self.linear(&layer.v_proj, &normed, &mut v, n)?;
            unsafe {
                launch!(
                    self.stream,
                    self.kernels,
                    "rope",
                    grid(n, heads, 64, 0),
                    [&mut q, &self.cos, &self.sin, &pos0, &heads_i, &hd_i]
                )?;
                launch!(
                    self.stream,
                    self.kernels,
                    "rope",
                    grid(n, kv_heads, 64, 0),
                    [&mut k, &self.cos, &self.sin, &pos0, &kv_i, &hd_i]
                )?;
                launch!(
                    self.stream,
                    self.kernels,
                    "kv_append",
                    grid(n, kv_heads, 64, 0),
                    [&mut cache.keys[l], &k, &pos0, &kv_i, &hd_i, &cap]
                )?;
                launch!(
                    self.stream,
                    self.kernels,
                    "kv_append",
                    grid(n, kv_heads, 64, 0),
                    [&mut cache.values[l], &v, &pos0, &kv_i, &hd_i, &cap]
                )?;
                launch!(
                    self.stream,
                    self.kernels,
                    "attention",
                    grid(n, heads, BLOCK, span),
                    [
                        &mut attended,
                        &q,
                        &cache.keys[l],
                        &cache.values[l],
                        &pos0,
                        &heads_i,
                        &kv_i,
                        &hd_i,
                        &cap,
                        &scale
                    ]
                )?;
            }
            self.linear(&layer.o_proj, &attended, &mut projected, n)?;
            self.add_inplace(&mut x, &projected, n * h)?;
            self.rms_norm(&mut normed, &x, &layer.post_attention_layernorm, n, eps)?;
            self.linear(&layer.gate_proj, &normed, &mut gate, n)?;
            self.linear(&layer.up_proj, &normed, &mut up, n)?;
            let len = int(n * inter, "MLP width")?;
            unsafe {
                launch!(
                    self.stream,
                    self.kernels,
                    "swiglu",
                    elementwise(n * inter),
                    [&mut gate, &up, &len]
                )?;
            }
            self.linear(&layer.down_proj, &gate, &mut projected, n)?;
            self.add_inplace(&mut x, &projected, n * h)?;
        }
        cache.len += n;
        self.rms_norm(&mut normed, &x, &self.norm, n, eps)?;
        let mut logits = alloc(n * vocab)?;
        match &self.lm_head {
            Some(head) => self.linear(head, &normed, &mut logits, n)?,
            // Tied embeddings: the output projection is the embedding matrix `[vocab, h]`.
            None => self.matmul_t(&self.embed_tokens, &normed, &mut logits, n, vocab, h)?,
        }
        Ok(logits)
    }

    /// Logits of a whole sequence, on the host (a fresh cache of `tokens.len()` positions).
    ///
    /// # Shapes
    /// - `tokens`: `[n]` → returns `[n · vocab]`, row-major `[n, vocab]`.
    ///
    /// # Errors
    /// As [`GpuLlama::forward`].
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, GpuError> {
        let mut cache = self.new_cache(tokens.len().max(1))?;
        let logits = self.forward(tokens, &mut cache)?;
        self.stream
            .clone_dtoh(&logits)
            .map_err(|e| GpuError::driver("copying logits to the host", e))
    }

    /// Greedy decoding of one sequence: `prompt` then `new_tokens` arg-max tokens (each step
    /// runs one position through the model and copies its logits row to the host).
    ///
    /// # Errors
    /// As [`GpuLlama::forward`].
    pub fn generate_greedy(&self, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>, GpuError> {
        let vocab = self.config.vocab_size;
        let mut cache = self.new_cache(prompt.len() + new_tokens)?;
        let mut out = Vec::with_capacity(new_tokens);
        let mut next = prompt.to_vec();
        for _ in 0..new_tokens {
            let logits = self.forward(&next, &mut cache)?;
            let last = logits.slice((next.len() - 1) * vocab..next.len() * vocab);
            let row = self
                .stream
                .clone_dtoh(&last)
                .map_err(|e| GpuError::driver("copying logits to the host", e))?;
            let token = row
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0 as u32;
            out.push(token);
            next = vec![token];
        }
        Ok(out)
    }

    fn rms_norm(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        n: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let h = int(self.config.hidden_size, "hidden_size")?;
        // SAFETY: `x` and `out` hold n·h floats, `weight` h; one block of BLOCK threads a row.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "rms_norm",
                grid(n, 1, BLOCK, 0),
                [out, x, weight, &h, &eps]
            )?;
        }
        Ok(())
    }

    fn add_inplace(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), GpuError> {
        let len_i = int(len, "residual length")?;
        // SAFETY: both buffers hold at least `len` floats.
        unsafe {
            launch!(
                self.stream,
                self.kernels,
                "add_inplace",
                elementwise(len),
                [x, y, &len_i]
            )?;
        }
        Ok(())
    }

    /// `y = x Wᵀ (+ b)` for `n` rows.
    fn linear(
        &self,
        layer: &Linear<CudaSlice<f32>>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), GpuError> {
        self.matmul_t(&layer.weight, x, y, n, layer.d_output, layer.d_input)?;
        if let Some(bias) = &layer.bias {
            let (rows, cols) = (int(n, "rows")?, int(layer.d_output, "d_output")?);
            // SAFETY: `y` holds n·d_output floats, `bias` d_output.
            unsafe {
                launch!(
                    self.stream,
                    self.kernels,
                    "add_bias",
                    elementwise(n * layer.d_output),
                    [y, bias, &rows, &cols]
                )?;
            }
        }
        Ok(())
    }

    /// `y[n, d_out] = x[n, d_in] · w[d_out, d_in]ᵀ`, all row-major. In cuBLAS's column-major
    /// terms that is `yᵀ (d_out × n) = op_T(w as d_in × d_out) · (x as d_in × n)`.
    fn matmul_t(
        &self,
        w: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
        d_out: usize,
        d_in: usize,
    ) -> Result<(), GpuError> {
        let (m_i, n_i, k_i) = (
            int(d_out, "d_output")?,
            int(n, "rows")?,
            int(d_in, "d_input")?,
        );
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: m_i,
            n: n_i,
            k: k_i,
            alpha: 1.0f32,
            lda: k_i,
            ldb: k_i,
            beta: 0.0f32,
            ldc: m_i,
        };
        // SAFETY: `w` holds d_out·d_in floats, `x` at least n·d_in and `y` at least n·d_out,
        // matching the leading dimensions above.
        unsafe { self.blas.gemm(cfg, w, x, y) }
            .map_err(|e| GpuError::blas(format!("SGEMM {n}×{d_in} · ({d_out}×{d_in})ᵀ"), e))
    }
}
