//! The checks `scripts/device/check.sh` runs on a GPU machine, as one JSON summary: what the
//! machine is, whether the GPU forward pass agrees with the CPU path, how fast NCCL reduces a
//! SmolLM2-135M-sized gradient and how fast one sequence decodes.
//!
//! Each section either holds its figures or `{"error": "..."}` (a panic inside a section is
//! caught and recorded the same way), so one failure never hides the other results.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kaizen_model::{Llama, LlamaConfig, Policy, smollm2_path};
use serde_json::{Value, json};

use crate::{GpuError, GpuLlama, Library, NcclCollective, cuda_context, kernels};

/// What to check and with which sizes.
#[derive(Debug, Clone)]
pub struct Options {
    /// `auto` (SmolLM2-135M-Instruct from the kaizen cache if present, else `random`),
    /// `random` (SmolLM2-135M's shape, random weights from seed 0), `smollm2`, a `.gguf` file
    /// or a Hugging Face model directory.
    pub model: String,
    /// The GPU to use.
    pub ordinal: usize,
    /// Tokens in the parity sequence.
    pub parity_tokens: usize,
    /// Largest `|logit_gpu - logit_cpu|` accepted.
    pub parity_bound: f32,
    /// Tokens decoded greedily for the tokens/s figure.
    pub decode_tokens: usize,
    /// Floats in the all-reduce buffer (SmolLM2-135M's parameter count by default).
    pub nccl_floats: usize,
    /// Timed repetitions of each all-reduce (after one warm-up).
    pub nccl_repeats: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model: "auto".into(),
            ordinal: 0,
            parity_tokens: 32,
            parity_bound: 1e-3,
            decode_tokens: 128,
            nccl_floats: 134_515_008,
            nccl_repeats: 5,
        }
    }
}

/// Runs every check; `summary["ok"]` is true when every section ran and parity held.
pub fn run(options: &Options) -> Value {
    let environment = section(environment);
    let kernels = section(|| compile_for_device(options.ordinal));
    let model = section(|| parity_and_decode(options));
    let nccl = section(|| nccl_bandwidth(options));
    let parity_ok = model["parity"]["pass"].as_bool().unwrap_or(false);
    let ran = [&environment, &kernels, &model, &nccl]
        .iter()
        .all(|s| s.get("error").is_none());
    json!({
        "ok": ran && parity_ok,
        "environment": environment,
        "kernels": kernels,
        "model": model,
        "nccl": nccl,
        "not_measured": [
            "gradient parity and one GRPO step on the GPU (kaizen has no GPU training pass yet)",
            "generation at batch 16/64 (GpuLlama decodes one sequence)",
            "PyTorch/TRL side by side",
        ],
    })
}

/// Runs one section, turning an error or a panic into `{"error": ...}`.
fn section(f: impl FnOnce() -> Result<Value, GpuError>) -> Value {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({ "error": e.to_string() }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            json!({ "error": format!("panicked: {message}") })
        }
    }
}

/// Libraries found, driver and library versions, the GPU's name, capability and memory.
fn environment() -> Result<Value, GpuError> {
    let present: serde_json::Map<String, Value> = [
        ("driver", Library::Driver),
        ("nvrtc", Library::Nvrtc),
        ("cublas", Library::Cublas),
        ("nccl", Library::Nccl),
    ]
    .into_iter()
    .map(|(k, l)| (k.to_string(), Value::Bool(l.is_present())))
    .collect();
    let mut out = json!({
        "bindings": {"cuda": "13.0 (cudarc cuda-13000)", "nccl": "2.28 (cudarc nccl-02028)"},
        "libraries_found": present,
    });
    // Without a driver the section still lists what was found, with the error beside it.
    if let Err(e) = gpu_facts(&mut out) {
        out["error"] = json!(e.to_string());
    }
    Ok(out)
}

/// The driver's CUDA version, the GPU, and the versions of NVRTC and NCCL, into `out`.
fn gpu_facts(out: &mut Value) -> Result<(), GpuError> {
    let context = cuda_context(0)?;
    let mut driver = 0;
    // SAFETY: the driver is loaded (cuda_context checked); it writes one int.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let (major, minor) = context
        .compute_capability()
        .map_err(|e| GpuError::driver("compute capability", e))?;
    out["driver_cuda_version"] = json!(format!("{}.{}", driver / 1000, driver % 1000 / 10));
    out["gpu"] = json!({
        "name": context.name().map_err(|e| GpuError::driver("device name", e))?,
        "compute_capability": format!("{major}.{minor}"),
        "memory_gib": context.total_mem().map_err(|e| GpuError::driver("memory", e))? as f64
            / (1u64 << 30) as f64,
        "count": cudarc::driver::CudaContext::device_count()
            .map_err(|e| GpuError::driver("device count", e))?,
    });
    out["nvrtc_version"] = match kernels::nvrtc_version() {
        Ok((a, b)) => json!(format!("{a}.{b}")),
        Err(e) => json!({ "error": e.to_string() }),
    };
    out["nccl_version"] = match NcclCollective::version() {
        Ok((a, b, c)) => json!(format!("{a}.{b}.{c}")),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Ok(())
}

/// Compiles the kernels for the device's architecture and loads them.
fn compile_for_device(ordinal: usize) -> Result<Value, GpuError> {
    let context = cuda_context(ordinal)?;
    let (major, minor) = context
        .compute_capability()
        .map_err(|e| GpuError::driver("compute capability", e))?;
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let start = Instant::now();
    let ptx = kernels::compile(Some(arch))?;
    let compile_s = start.elapsed().as_secs_f64();
    let module = context
        .load_module(ptx)
        .map_err(|e| GpuError::driver("loading the PTX", e))?;
    for name in kernels::NAMES {
        module
            .load_function(name)
            .map_err(|e| GpuError::driver(format!("kernel `{name}`"), e))?;
    }
    Ok(json!({ "arch": arch, "compile_s": compile_s, "kernels": kernels::NAMES }))
}

/// The CPU model for `spec` and a label saying what it is.
fn load_cpu_model(spec: &str) -> Result<(Llama, String), GpuError> {
    let device = Device::default();
    let random = || {
        Llama::init(&LlamaConfig::smollm2_135m(), &device, 0)
            .map(|m| (m, "SmolLM2-135M shape, random weights (seed 0)".to_string()))
            .map_err(|e| GpuError::Input(format!("random model: {e}")))
    };
    match spec {
        "random" => random(),
        "auto" if !smollm2_path().is_file() => random(),
        "auto" => load_policy("smollm2", &device),
        spec => load_policy(spec, &device),
    }
}

fn load_policy(spec: &str, device: &Device) -> Result<(Llama, String), GpuError> {
    let policy =
        Policy::load(spec, device).map_err(|e| GpuError::Input(format!("model `{spec}`: {e}")))?;
    Ok((policy.model, spec.to_string()))
}

/// Logits of one sequence on the GPU against the CPU path (kaizen's CPU kernels, and burn's
/// plain ops), then greedy decoding tokens/s on the GPU.
fn parity_and_decode(options: &Options) -> Result<Value, GpuError> {
    // The GPU first: without one, fail before spending seconds on the CPU model.
    let context = cuda_context(options.ordinal)?;
    let start = Instant::now();
    let (cpu, label) = load_cpu_model(&options.model)?;
    let load_s = start.elapsed().as_secs_f64();
    let config = cpu.config().clone();
    let vocab = config.vocab_size;
    // A fixed, varied token sequence (no tokenizer needed): ids spread over the vocabulary.
    let tokens: Vec<u32> = (0..options.parity_tokens)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let n = tokens.len();
    let cpu_logits = |model: &Llama| -> Result<Vec<f32>, GpuError> {
        let data: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(data, [1, n]), &model.device());
        model
            .forward(input)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| GpuError::Input(format!("CPU logits: {e:?}")))
    };
    let reference = cpu_logits(&cpu)?;
    let weights = cpu.to_named();
    let burn_ops = cpu.with_cpu_kernels(false);
    let reference_burn = cpu_logits(&burn_ops)?;
    drop(burn_ops);

    let start = Instant::now();
    let gpu = GpuLlama::new(&context, &config, &weights)?;
    drop(weights);
    let upload_s = start.elapsed().as_secs_f64();
    let gpu_logits = gpu.logits(&tokens)?;
    let max_abs_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let diff = max_abs_diff(&gpu_logits, &reference);
    let diff_burn = max_abs_diff(&gpu_logits, &reference_burn);
    let max_logit = reference.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                if v > b.1 { (i, v) } else { b }
            })
            .0
    };
    let same_argmax = (0..n)
        .filter(|&t| {
            argmax(&gpu_logits[t * vocab..(t + 1) * vocab])
                == argmax(&reference[t * vocab..(t + 1) * vocab])
        })
        .count();
    let parity = json!({
        "tokens": n,
        "max_abs_diff": diff,
        "max_abs_diff_vs_burn_ops": diff_burn,
        "max_abs_logit": max_logit,
        "same_argmax_positions": same_argmax,
        "bound": options.parity_bound,
        "pass": diff.is_finite() && diff <= options.parity_bound,
    });

    // Warm-up (kernel JIT, cuBLAS heuristics), then the timed run.
    gpu.generate_greedy(&tokens[..8.min(n)], 4)?;
    let start = Instant::now();
    let generated = gpu.generate_greedy(&tokens, options.decode_tokens)?;
    let decode_s = start.elapsed().as_secs_f64();
    Ok(json!({
        "model": label,
        "cpu_load_s": load_s,
        "gpu_upload_and_compile_s": upload_s,
        "arch": gpu.arch(),
        "parity": parity,
        "decode": {
            "batch": 1,
            "prompt_tokens": n,
            "new_tokens": generated.len(),
            "seconds": decode_s,
            "tokens_per_s": generated.len() as f64 / decode_s,
            "note": "one sequence, greedy, KV cache, f32; the logits row is copied to the host each step",
        },
    }))
}

/// NCCL all-reduce of `nccl_floats` floats: on the device (algorithm bandwidth, single rank)
/// and through the host-buffer [`kaizen_learner::Collective`] path; then whether NCCL accepts
/// two ranks on one GPU.
fn nccl_bandwidth(options: &Options) -> Result<Value, GpuError> {
    use kaizen_learner::Collective;

    let floats = options.nccl_floats;
    let bytes = floats * 4;
    let group = NcclCollective::single(options.ordinal, crate::DEFAULT_BUCKET_ELEMS)?;
    let mut device = group
        .stream()
        .alloc_zeros::<f32>(floats)
        .map_err(|e| GpuError::driver(format!("allocating {floats} floats"), e))?;
    let time = |f: &mut dyn FnMut() -> Result<(), GpuError>| -> Result<Vec<f64>, GpuError> {
        f()?;
        (0..options.nccl_repeats.max(1))
            .map(|_| {
                let start = Instant::now();
                f().map(|()| start.elapsed().as_secs_f64())
            })
            .collect()
    };
    let device_s = time(&mut || group.all_reduce_sum_device(&mut device))?;
    drop(device);
    let mut host = vec![1.0f32; floats];
    let host_s = time(&mut || {
        group.all_reduce_sum(&mut host).map_err(|e| GpuError::Nccl {
            during: "host-buffer all-reduce".into(),
            message: e.to_string(),
        })
    })?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (device_s, host_s) = (median(device_s), median(host_s));
    Ok(json!({
        "ranks": 1,
        "floats": floats,
        "bytes": bytes,
        "device_all_reduce_s": device_s,
        "device_algbw_gb_s": bytes as f64 / device_s / 1e9,
        "host_path_all_reduce_s": host_s,
        "host_path_gb_s": bytes as f64 / host_s / 1e9,
        "bucket_floats": crate::DEFAULT_BUCKET_ELEMS,
        "two_ranks_one_gpu": two_ranks_on_one_gpu(options.ordinal),
        "note": "one rank: NCCL copies within the device; the ring figure needs two GPUs",
    }))
}

/// Whether NCCL builds a two-rank communicator on a single GPU (`ncclCommInitAll` with the
/// device listed twice): NCCL usually refuses duplicate devices. Run on a thread and given 60 s,
/// so a hang is reported instead of stalling the check.
fn two_ranks_on_one_gpu(ordinal: usize) -> Value {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = (|| -> Result<String, GpuError> {
            let context = cuda_context(ordinal)?;
            let streams = vec![
                context.default_stream(),
                context
                    .new_stream()
                    .map_err(|e| GpuError::driver("a second stream", e))?,
            ];
            let comms = cudarc::nccl::Comm::from_devices(streams)
                .map_err(|e| GpuError::nccl("ncclCommInitAll over one GPU twice", e))?;
            Ok(format!("accepted: {} ranks", comms.len()))
        })();
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Ok(s)) => json!({ "result": s }),
        Ok(Err(e)) => json!({ "refused": e }),
        Err(_) => json!({ "refused": "no answer within 60 s (NCCL hung)" }),
    }
}
