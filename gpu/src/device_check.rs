//! The checks `scripts/device/check.sh` runs on a GPU machine, as one JSON summary: what the
//! machine is, whether the GPU forward pass agrees with the CPU path, whether the GPU training
//! pass's log-probs and gradients agree with the CPU training pass, how long a GRPO-shaped
//! learner step takes on the GPU, how fast NCCL reduces a SmolLM2-135M-sized gradient and how
//! fast one sequence decodes, how fast batches of 1, 16 and 64 rows sample (with the
//! behaviour log-probs against the CPU path's), and the actors' decode engine on the GPU on a
//! multi-turn GRPO-shaped workload (greedy completions against the CPU engine's, behaviour
//! log-probs against the CPU model's, tokens/s and episodes/s).
//!
//! Each section either holds its figures or `{"error": "..."}` (a panic inside a section is
//! caught and recorded the same way), so one failure never hides the other results.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kaizen_actors::{DecodeDevice, ServingEngine};
use kaizen_core::Message;
use kaizen_learner::AdamWConfig;
use kaizen_model::{
    ChatTemplate, ChatThread, CpuGrads, CpuScorePass, GenerateOptions, Generation,
    GenerationRequest, Llama, LlamaConfig, Policy, SamplingParams, ScoreBatch, ScoreOptions,
    Tokenizer, generate, smollm2_path, token_logprobs,
};
use serde_json::{Value, json};

use crate::batch_decode::{BatchDecoder, DecodeOptions, DecodeRequest};
use crate::decode_ops::{CudaDecodeOps, DecodeOps};
use crate::sample::SampleParams;
use crate::train::{
    AdamWStep, AttentionRows, AttentionSaved, AttentionShape, CudaOps, DEFAULT_BUCKET_BYTES, Gemm,
    GradBuckets, HostOps, TrainModel, TrainOps, Transpose, layout,
};
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
    /// Largest `|logp_gpu − logp_cpu|` and largest per-parameter `‖g_gpu − g_cpu‖ / ‖g_cpu‖`
    /// accepted by the training-pass parity check.
    pub train_parity_bound: f32,
    /// The GRPO-shaped step: prompts, generations per prompt, prompt and completion tokens.
    pub grpo_prompts: usize,
    /// Generations per prompt.
    pub grpo_generations: usize,
    /// Tokens per prompt.
    pub grpo_prompt_tokens: usize,
    /// Tokens per completion (all scored).
    pub grpo_completion_tokens: usize,
    /// Timed GRPO steps (after one warm-up).
    pub grpo_steps: usize,
    /// Batched generation: `(prompts, generations per prompt)` of each timed batch (rows =
    /// their product); prompts of `grpo_prompt_tokens`, `grpo_completion_tokens` new tokens.
    pub generation_batches: Vec<(usize, usize)>,
    /// Rows of each generation batch the CPU path scores for the log-prob gap.
    pub generation_scored_rows: usize,
    /// Largest `|logp_gpu − logp_cpu|` of a sampled token accepted.
    pub generation_logprob_bound: f32,
    /// The actors section's workload: distinct prompts (questions)...
    pub actors_prompts: usize,
    /// ...each sampled by this many episodes (a GRPO group)...
    pub actors_generations: usize,
    /// ...for this many turns (each next prompt: the conversation, the completion as sampled
    /// and a correction request)...
    pub actors_turns: usize,
    /// ...of at most this many tokens each.
    pub actors_new_tokens: usize,
    /// Groups of the workload decoded greedily on the CPU engine too, for the token-for-token
    /// comparison.
    pub actors_parity_prompts: usize,
    /// Episodes of the sampled workload whose behaviour log-probs the CPU model scores.
    pub actors_scored_rows: usize,
    /// Largest `|logp_device − logp_cpu|` of an actor's sampled token accepted.
    pub actors_logprob_bound: f32,
    /// Longest the actors section may take (estimated at ~30 s on an H100 with SmolLM2-135M);
    /// past it the section is an error and the check goes on.
    pub actors_limit: Duration,
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
            train_parity_bound: 1e-3,
            grpo_prompts: 8,
            grpo_generations: 8,
            grpo_prompt_tokens: 49,
            grpo_completion_tokens: 64,
            grpo_steps: 3,
            generation_batches: vec![(1, 1), (2, 8), (8, 8)],
            generation_scored_rows: 3,
            generation_logprob_bound: 2e-3,
            actors_prompts: 8,
            actors_generations: 8,
            actors_turns: 2,
            actors_new_tokens: 64,
            actors_parity_prompts: 2,
            actors_scored_rows: 4,
            actors_logprob_bound: 1e-3,
            actors_limit: Duration::from_secs(150),
        }
    }
}

/// Runs every check; `summary["ok"]` is true when every section ran and parity held.
pub fn run(options: &Options) -> Value {
    let environment = section(environment);
    let kernels = section(|| compile_for_device(options.ordinal));
    let model = section(|| parity_and_decode(options));
    let training = section(|| training(options));
    let generation = section(|| generation(options));
    let actors = {
        let options = options.clone();
        section_within(options.actors_limit, move || actors(&options))
    };
    let nccl = section(|| nccl_bandwidth(options));
    let parity_ok = model["parity"]["pass"].as_bool().unwrap_or(false)
        && training["parity"]["pass"].as_bool().unwrap_or(false)
        && generation["pass"].as_bool().unwrap_or(false)
        && actors["parity_ok"].as_bool().unwrap_or(false)
        && nccl["bucketed"]["pass"].as_bool().unwrap_or(false);
    let ran = [
        &environment,
        &kernels,
        &model,
        &training,
        &generation,
        &actors,
        &nccl,
    ]
    .iter()
    .all(|s| s.get("error").is_none());
    json!({
        "ok": ran && parity_ok,
        "environment": environment,
        "kernels": kernels,
        "model": model,
        "training": training,
        "generation": generation,
        "actors": actors,
        "nccl": nccl,
        "not_measured": [
            "PyTorch/TRL side by side: scripts/device/reference.py, merged by check.sh",
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

/// [`section`] on its own thread, given `limit`: a section that hangs is recorded as an error
/// instead of stalling the check until `check.sh`'s timeout, which would lose every section's
/// results. The thread of a section past its limit is left running.
fn section_within(
    limit: Duration,
    f: impl FnOnce() -> Result<Value, GpuError> + Send + 'static,
) -> Value {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(section(f));
    });
    rx.recv_timeout(limit).unwrap_or_else(
        |_| json!({ "error": format!("no answer within {} s", limit.as_secs_f64()) }),
    )
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
    let train_ptx = crate::train::kernels::compile(Some(arch))?;
    let compile_s = start.elapsed().as_secs_f64();
    for (ptx, names) in [
        (ptx, &kernels::NAMES[..]),
        (train_ptx, &crate::train::kernels::NAMES[..]),
    ] {
        let module = context
            .load_module(ptx)
            .map_err(|e| GpuError::driver("loading the PTX", e))?;
        for name in names {
            module
                .load_function(name)
                .map_err(|e| GpuError::driver(format!("kernel `{name}`"), e))?;
        }
    }
    Ok(json!({
        "arch": arch,
        "compile_s": compile_s,
        "kernels": kernels::NAMES,
        "training_kernels": crate::train::kernels::NAMES,
    }))
}

/// The CPU model for `spec` on `device` and a label saying what it is.
fn load_cpu_model(spec: &str, device: &Device) -> Result<(Llama, String), GpuError> {
    let random = || {
        Llama::init(&LlamaConfig::smollm2_135m(), device, 0)
            .map(|m| (m, "SmolLM2-135M shape, random weights (seed 0)".to_string()))
            .map_err(|e| GpuError::Input(format!("random model: {e}")))
    };
    match spec {
        "random" => random(),
        "auto" if !smollm2_path().is_file() => random(),
        "auto" => load_policy("smollm2", device),
        spec => load_policy(spec, device),
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
    let (cpu, label) = load_cpu_model(&options.model, &Device::default())?;
    let load_s = start.elapsed().as_secs_f64();
    let config = cpu.config().clone();
    let vocab = config.vocab_size;
    // A fixed, varied token sequence (no tokenizer needed): ids spread over the vocabulary.
    let tokens: Vec<u32> = (0..options.parity_tokens)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let n = tokens.len();
    let reference = cpu_logits(&cpu, &tokens)?;
    let weights = cpu.to_named();
    let burn_ops = cpu.with_cpu_kernels(false);
    let reference_burn = cpu_logits(&burn_ops, &tokens)?;
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

/// `prompts` GRPO groups of `generations` rows each: a prompt of `prompt_tokens` shared by
/// its group, then `completion_tokens` scored tokens, ids spread over the vocabulary (no
/// tokenizer needed).
fn grpo_batch(
    vocab: usize,
    prompts: usize,
    generations: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
) -> ScoreBatch {
    let token = |i: usize| ((i * 7919 + 13) % vocab) as u32;
    let mut batch = ScoreBatch {
        sequences: Vec::new(),
        loss_masks: Vec::new(),
    };
    for p in 0..prompts {
        for g in 0..generations {
            let mut seq: Vec<u32> = (0..prompt_tokens).map(|i| token(p * 1000 + i)).collect();
            seq.extend((0..completion_tokens).map(|i| token(p * 1000 + g * 100 + i + 500)));
            let mut mask = vec![false; prompt_tokens];
            mask.extend(std::iter::repeat_n(true, completion_tokens));
            batch.sequences.push(seq);
            batch.loss_masks.push(mask);
        }
    }
    batch
}

/// The GPU training pass (`crate::train`, CUDA) against the CPU training pass
/// (`kaizen_model::CpuScorePass`) on SmolLM2 — log-probs and every parameter's gradient of
/// `loss = Σ a_i logp_i` on a small GRPO batch — then one GRPO-shaped learner step on the GPU
/// (forward, backward, AdamW), timed.
///
/// Estimated at under a minute on an H100: kernel compilation ~2 s, SmolLM2's CPU model (random
/// weights, autodiff) ~5–10 s, the CPU pass on the small batch a few seconds, the GRPO step's
/// ~6 TFLOP of f32 SGEMM well under a second per step, 4 steps.
fn training(options: &Options) -> Result<Value, GpuError> {
    // The GPU first: without one, fail before spending seconds on the CPU model.
    let context = cuda_context(options.ordinal)?;
    let start = Instant::now();
    let ops = CudaOps::new(&context)?;
    let compile_s = start.elapsed().as_secs_f64();
    let kernels_vs_host = compare_kernels(&ops)?;
    let device = Device::default().autodiff();
    let start = Instant::now();
    let (cpu, label) = load_cpu_model(&options.model, &device)?;
    let load_s = start.elapsed().as_secs_f64();
    let config = cpu.config().clone();
    let start = Instant::now();
    let mut gpu = TrainModel::new(ops, &config, &cpu.to_named())?;
    let upload_s = start.elapsed().as_secs_f64();

    // Parity: 2 prompts x 2 generations, 24 + 24 tokens; the CPU pass shares the prompts.
    let temperature = 0.9;
    let batch = grpo_batch(config.vocab_size, 2, 2, 24, 24);
    let score_options = ScoreOptions {
        temperature,
        with_entropy: false,
        share_prefixes: true,
    };
    let start = Instant::now();
    let (scores, pass) = CpuScorePass::forward(&cpu, &batch, &score_options)
        .map_err(|e| GpuError::Input(format!("CPU pass: {e}")))?
        .ok_or_else(|| {
            GpuError::Input(format!(
                "the CPU training pass does not apply to model `{label}` (not float32 flex)"
            ))
        })?;
    let cpu_logprobs = scores
        .logprobs
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| GpuError::Input(format!("CPU log-probs: {e:?}")))?;
    let n = cpu_logprobs.len();
    let weights: Vec<f32> = (0..n).map(|i| ((i as f32 + 1.0) * 0.731).sin()).collect();
    let loss = (scores.logprobs
        * Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), &device))
    .sum();
    let mut cpu_grads = CpuGrads::new(&cpu)
        .ok_or_else(|| GpuError::Input("CPU gradient buffers: model not float32 flex".into()))?;
    pass.backward(&loss.backward(), &mut cpu_grads)
        .map_err(|e| GpuError::Input(format!("CPU backward: {e}")))?;
    let cpu_grads: Vec<Vec<f32>> = cpu_grads.into_host().map(|(_, g)| g).collect();
    let cpu_s = start.elapsed().as_secs_f64();
    drop(cpu);

    let start = Instant::now();
    let (gpu_logprobs, act) = gpu.forward(&batch, temperature)?;
    let mut grads = gpu.zero_grads()?;
    gpu.backward(act, &weights, &mut grads)?;
    let gpu_grads = gpu.download(&grads)?;
    let gpu_s = start.elapsed().as_secs_f64();
    let logprob_diff = gpu_logprobs
        .iter()
        .zip(&cpu_logprobs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let (mut worst_rel, mut worst_name, mut max_abs) = (0.0f32, String::new(), 0.0f32);
    for ((name, g), c) in gpu_grads.iter().zip(&cpu_grads) {
        let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        let rel = if norm > 0.0 { err / norm } else { err };
        if rel.is_nan() || rel > worst_rel {
            (worst_rel, worst_name) = (rel, name.clone());
        }
        max_abs = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(max_abs, f32::max);
    }
    let bound = options.train_parity_bound;
    let parity = json!({
        "batch": "2 prompts x 2 generations, 24 prompt + 24 completion tokens",
        "temperature": temperature,
        "scored_tokens": n,
        "logprob_max_abs_diff": logprob_diff,
        "grad_max_abs_diff": max_abs,
        "grad_max_rel_diff": worst_rel,
        "grad_max_rel_diff_parameter": worst_name,
        "grad_rel_diff_is": "per parameter ||g_gpu - g_cpu|| / ||g_cpu||",
        "parameters": gpu_grads.len().min(cpu_grads.len()),
        "same_parameter_count": gpu_grads.len() == cpu_grads.len(),
        "bound": bound,
        "cpu_pass_s": cpu_s,
        "gpu_pass_s": gpu_s,
        "pass": gpu_grads.len() == cpu_grads.len()
            && logprob_diff.is_finite() && logprob_diff <= bound
            && worst_rel.is_finite() && worst_rel <= bound,
    });
    drop((grads, gpu_grads, cpu_grads));

    // The GRPO-shaped step: GRPO's loss gradient -A_g / (|o| · rows) per scored token.
    let (prompts, generations) = (options.grpo_prompts, options.grpo_generations);
    let batch = grpo_batch(
        config.vocab_size,
        prompts,
        generations,
        options.grpo_prompt_tokens,
        options.grpo_completion_tokens,
    );
    let rows = prompts * generations;
    let completion = options.grpo_completion_tokens;
    let d_logprobs: Vec<f32> = (0..rows * completion)
        .map(|i| {
            let advantage =
                ((i / completion) % generations) as f32 - (generations as f32 - 1.0) / 2.0;
            -advantage / (completion * rows) as f32
        })
        .collect();
    let adamw = AdamWConfig::default();
    let mut state = gpu.adamw_state()?;
    let mut step = || -> Result<[f64; 3], GpuError> {
        let start = Instant::now();
        let (_, act) = gpu.forward(&batch, 1.0)?;
        let forward_s = start.elapsed().as_secs_f64();
        let mut grads = gpu.zero_grads()?;
        gpu.backward(act, &d_logprobs, &mut grads)?;
        gpu.ops().synchronize()?;
        let backward_s = start.elapsed().as_secs_f64() - forward_s;
        gpu.adamw_step(&grads, &mut state, &adamw, 1e-6)?;
        gpu.ops().synchronize()?;
        Ok([forward_s, backward_s, start.elapsed().as_secs_f64()])
    };
    step()?; // warm-up: cuBLAS heuristics, first allocations
    let mut times = (0..options.grpo_steps.max(1))
        .map(|_| step())
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(|a, b| a[2].total_cmp(&b[2]));
    let [forward_s, backward_s, step_s] = times[times.len() / 2];
    let sequence_tokens = rows * (options.grpo_prompt_tokens + completion);
    let grpo = json!({
        "rows": rows,
        "prompts": prompts,
        "generations": generations,
        "prompt_tokens": options.grpo_prompt_tokens,
        "completion_tokens": completion,
        "scored_tokens": rows * completion,
        "sequence_tokens": sequence_tokens,
        "median_of": times.len(),
        "forward_s": forward_s,
        "backward_s": backward_s,
        "step_s": step_s,
        "tokens_per_s": sequence_tokens as f64 / step_s,
        "note": "f32 (SGEMM, no TF32), rows scored in full, forward + backward + AdamW (global-norm clipping); log-probs copied to the host, loss gradient uploaded",
    });
    Ok(json!({
        "model": label,
        "arch": gpu.ops().arch(),
        "compile_s": compile_s,
        "cpu_load_s": load_s,
        "gpu_upload_s": upload_s,
        "kernels_vs_host": kernels_vs_host,
        "parity": parity,
        "grpo_step": grpo,
    }))
}

/// Batched sampling on the GPU ([`BatchDecoder`] on [`CudaDecodeOps`]): tokens/s at each of
/// `generation_batches` (GRPO groups sharing their prompt, temperature 1, top-p 1, no EOS so
/// every row samples `grpo_completion_tokens`), the largest gap between the GPU's behaviour
/// log-probs and the CPU path's for the same tokens (a few rows of each batch, the whole
/// sequence scored by `Llama::forward`), one small top-p batch checked the same way, and the
/// greedy tokens of a small batch against kaizen's CPU generation.
///
/// Estimated at under a minute on an H100: model load and upload ~10 s, the three timed
/// batches (each after a short warm-up) a few seconds, the CPU scoring of ~10 rows of 113
/// tokens and 4 greedy rows of 16 tokens ~20 s.
fn generation(options: &Options) -> Result<Value, GpuError> {
    // The GPU first: without one, fail before spending seconds on the CPU model.
    let context = cuda_context(options.ordinal)?;
    let start = Instant::now();
    let ops = CudaDecodeOps::new(&context)?;
    let compile_s = start.elapsed().as_secs_f64();
    let (cpu, label) = load_cpu_model(&options.model, &Device::default())?;
    let mut out = generation_on(ops, &cpu, options)?;
    out["model"] = json!(label);
    out["compile_s"] = json!(compile_s);
    Ok(out)
}

/// The larger of `a` and `b`, NaN if either is (a NaN gap must fail the check).
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// [`generation`]'s measurements on any [`DecodeOps`] backend (the host one in tests).
fn generation_on<D: DecodeOps>(ops: D, cpu: &Llama, options: &Options) -> Result<Value, GpuError> {
    let config = cpu.config().clone();
    let vocab = config.vocab_size;
    let start = Instant::now();
    let decoder = BatchDecoder::new(ops, &config, &cpu.to_named())?;
    let upload_s = start.elapsed().as_secs_f64();
    let token = |i: usize| ((i * 7919 + 13) % vocab) as u32;
    let requests = |prompts: usize, generations: usize, prompt_tokens: usize| {
        (0..prompts * generations)
            .map(|r| DecodeRequest {
                prompt: (0..prompt_tokens)
                    .map(|i| token((r / generations) * 1000 + i))
                    .collect(),
                seed: r as u64,
            })
            .collect::<Vec<_>>()
    };
    // Log-probs of `completion` after `prompt` under the CPU model at (T, top-p), the way
    // kaizen's sampler defines them (for top-p < 1: its draw `a` from the same kept set,
    // shifted by the tempered logit gap).
    let cpu_logprobs = |prompt: &[u32], completion: &[u32], t: f32, top_p: f32| {
        let mut sequence = prompt.to_vec();
        sequence.extend(completion);
        let n = sequence.len();
        let data: Vec<i64> = sequence.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(data, [1, n]), &cpu.device());
        let logits = cpu
            .forward(input)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| GpuError::Input(format!("CPU logits: {e:?}")))?;
        let params = SamplingParams {
            temperature: t,
            top_p,
            ..Default::default()
        };
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        Ok::<_, GpuError>(
            completion
                .iter()
                .enumerate()
                .map(|(i, &tok)| {
                    let row = &logits[(prompt.len() - 1 + i) * vocab..(prompt.len() + i) * vocab];
                    let s = kaizen_model::sample(row, &params, &mut rng);
                    s.logprob + (row[tok as usize] - row[s.token as usize]) / t
                })
                .collect::<Vec<f32>>(),
        )
    };
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, nan_max)
    };
    let timed = |requests: &[DecodeRequest], decode: &DecodeOptions| {
        let start = Instant::now();
        let out = decoder.generate(requests, decode)?;
        decoder.ops().synchronize()?;
        Ok::<_, GpuError>((out, start.elapsed().as_secs_f64()))
    };

    let new_tokens = options.grpo_completion_tokens;
    let prompt_tokens = options.grpo_prompt_tokens;
    let sampling = DecodeOptions {
        sample: SampleParams::default(),
        max_new_tokens: new_tokens,
        eos_token_ids: Vec::new(),
    };
    let mut batches = Vec::new();
    let mut worst = 0.0f32;
    for &(prompts, generations) in &options.generation_batches {
        let requests = requests(prompts, generations, prompt_tokens);
        // Warm-up: first allocations, cuBLAS heuristics for this batch size.
        timed(
            &requests,
            &DecodeOptions {
                max_new_tokens: 4,
                ..sampling.clone()
            },
        )?;
        let ((completions, stats), seconds) = timed(&requests, &sampling)?;
        let mut batch_gap = 0.0f32;
        let step = (requests.len() / options.generation_scored_rows.max(1)).max(1);
        for r in (0..requests.len())
            .step_by(step)
            .take(options.generation_scored_rows)
        {
            let cpu_lp = cpu_logprobs(&requests[r].prompt, &completions[r].tokens, 1.0, 1.0)?;
            batch_gap = nan_max(batch_gap, gap(&completions[r].logprobs, &cpu_lp));
        }
        worst = nan_max(worst, batch_gap);
        batches.push(json!({
            "batch": requests.len(),
            "prompts": prompts,
            "generations": generations,
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens,
            "prefill_tokens": stats.prefill_tokens,
            "sampled_tokens": stats.sampled_tokens,
            "seconds": seconds,
            "tokens_per_s": stats.sampled_tokens as f64 / seconds,
            "logprob_max_abs_diff_vs_cpu": batch_gap,
            "rows_scored_on_cpu": requests.len().min(options.generation_scored_rows),
        }));
    }

    // Top-p on a small batch, checked the same way.
    let top_p = DecodeOptions {
        sample: SampleParams {
            temperature: 0.8,
            top_p: 0.9,
        },
        max_new_tokens: 16,
        eos_token_ids: Vec::new(),
    };
    let small = requests(2, 2, 24);
    let ((completions, _), _) = timed(&small, &top_p)?;
    let mut top_p_gap = 0.0f32;
    for (request, completion) in small.iter().zip(&completions) {
        let cpu_lp = cpu_logprobs(&request.prompt, &completion.tokens, 0.8, 0.9)?;
        top_p_gap = nan_max(top_p_gap, gap(&completion.logprobs, &cpu_lp));
    }
    worst = nan_max(worst, top_p_gap);

    // Greedy tokens against kaizen's CPU generation (informational: near-ties may flip).
    let greedy = DecodeOptions {
        sample: SampleParams {
            temperature: 0.0,
            top_p: 1.0,
        },
        max_new_tokens: 16,
        eos_token_ids: Vec::new(),
    };
    let ((ours, _), _) = timed(&small, &greedy)?;
    let cpu_requests: Vec<GenerationRequest> = small
        .iter()
        .map(|r| GenerationRequest {
            prompt: r.prompt.clone(),
            params: SamplingParams::greedy(16),
            session: None,
        })
        .collect();
    let theirs = generate(cpu, None, &cpu_requests, &GenerateOptions::default())
        .map_err(|e| GpuError::Input(format!("CPU generation: {e}")))?;
    let same_tokens: usize = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| {
            a.tokens
                .iter()
                .zip(&b.tokens)
                .take_while(|(x, y)| x == y)
                .count()
        })
        .sum();

    let bound = options.generation_logprob_bound;
    Ok(json!({
        "gpu_upload_s": upload_s,
        "batches": batches,
        "sampling": "temperature 1, top-p 1, no EOS (every row samples new_tokens), prompts shared by each group (prefilled once)",
        "top_p_check": {
            "rows": small.len(),
            "temperature": 0.8,
            "top_p": 0.9,
            "new_tokens": 16,
            "logprob_max_abs_diff_vs_cpu": top_p_gap,
        },
        "greedy_vs_cpu_generate": {
            "rows": small.len(),
            "new_tokens": 16,
            "same_leading_tokens": same_tokens,
            "of": small.len() * 16,
        },
        "logprob_max_abs_diff_vs_cpu": worst,
        "bound": bound,
        "pass": worst.is_finite() && worst <= bound,
        "note": "f32 (SGEMM, no TF32); per step one SGEMM per weight for all unfinished rows, sampling on the device, tokens and log-probs copied to the host",
    }))
}

/// The user's second message of every workload episode: a self-correction request, as the
/// self-correction job sends (`kaizen_envs`' `self_correct`, shortened).
const CORRECTION: &str = "There might be an error in the solution above. Please correct it.";

/// The question of workload prompt `p`.
fn actors_question(p: usize) -> String {
    format!("What is {} + {}?", 17 + 13 * p, 25 + 7 * p)
}

/// What the actors section decodes with: the model, its tokenizer, and its chat template
/// (`None`: raw text).
struct ActorPolicy {
    model: Llama,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    label: String,
}

/// [`load_cpu_model`]'s model for `spec` with its tokenizer and chat template; random weights
/// get the byte-level tokenizer and raw text.
fn load_actor_policy(spec: &str, device: &Device) -> Result<ActorPolicy, GpuError> {
    let spec = match spec {
        "auto" if smollm2_path().is_file() => "smollm2",
        "auto" => "random",
        spec => spec,
    };
    if spec == "random" {
        let (model, label) = load_cpu_model("random", device)?;
        return Ok(ActorPolicy {
            model,
            tokenizer: Tokenizer::byte_level(),
            template: None,
            label: format!("{label}, byte-level tokenizer, raw text"),
        });
    }
    let policy =
        Policy::load(spec, device).map_err(|e| GpuError::Input(format!("model `{spec}`: {e}")))?;
    Ok(ActorPolicy {
        model: policy.model,
        tokenizer: policy.tokenizer,
        template: Some(policy.template),
        label: format!("{spec}, its chat template"),
    })
}

/// One workload episode's token thread: through the chat template, or raw text.
enum Conversation {
    Chat(ChatThread),
    Raw(Vec<u32>),
}

impl Conversation {
    /// The episode's first prompt: `question` as the user's message.
    fn start(
        tokenizer: &Tokenizer,
        template: Option<&ChatTemplate>,
        question: &str,
    ) -> Result<Self, GpuError> {
        let text = |e: kaizen_model::Error| GpuError::Input(format!("rendering the workload: {e}"));
        Ok(match template {
            Some(t) => Self::Chat(
                ChatThread::start(t.clone(), tokenizer, &[Message::user(question)])
                    .map_err(text)?,
            ),
            None => Self::Raw(
                tokenizer
                    .encode_text(&format!("{question}\n"))
                    .map_err(text)?,
            ),
        })
    }

    /// Every id so far: the next turn's prompt.
    fn tokens(&self) -> &[u32] {
        match self {
            Self::Chat(thread) => thread.tokens(),
            Self::Raw(tokens) => tokens,
        }
    }

    /// Appends `generation` as sampled, then [`CORRECTION`] as the user's next message.
    fn continue_after(
        &mut self,
        tokenizer: &Tokenizer,
        generation: &Generation,
    ) -> Result<(), GpuError> {
        let text = |e: kaizen_model::Error| GpuError::Input(format!("rendering the workload: {e}"));
        match self {
            Self::Chat(thread) => {
                let said = generation.text.as_deref().unwrap_or_default();
                thread
                    .push_completion(tokenizer, &generation.tokens, said)
                    .map_err(text)?;
                let mut conversation = thread.messages().to_vec();
                conversation.push(Message::user(CORRECTION));
                thread
                    .continue_with(tokenizer, &conversation)
                    .map_err(text)?;
            }
            Self::Raw(tokens) => {
                tokens.extend(&generation.tokens);
                let correction = tokenizer.encode_text(&format!("\n{CORRECTION}\n"));
                tokens.extend(correction.map_err(text)?);
            }
        }
        Ok(())
    }
}

/// One turn of a workload run: each episode's prompt and completion, and the turn's wall time.
#[derive(Debug, Clone)]
struct Turn {
    prompts: Vec<Vec<u32>>,
    generations: Vec<Generation>,
    seconds: f64,
}

/// Runs `turns` turns of `conversations` on `engine` (named `name` in errors): each turn's
/// requests are admitted together, as the requests of an actor's episodes, and each next
/// prompt is the conversation with the completion as sampled and [`CORRECTION`]. Episode `r`
/// samples turn `t` with `params(r, t)` and keeps session `r`.
fn converse(
    runtime: &tokio::runtime::Runtime,
    engine: &ServingEngine,
    name: &str,
    tokenizer: &Tokenizer,
    mut conversations: Vec<Conversation>,
    turns: usize,
    params: &dyn Fn(usize, usize) -> SamplingParams,
) -> Result<Vec<Turn>, GpuError> {
    let mut out = Vec::with_capacity(turns);
    for turn in 0..turns {
        let start = Instant::now();
        if turn > 0 {
            let previous: &Turn = &out[turn - 1];
            for (c, g) in conversations.iter_mut().zip(&previous.generations) {
                c.continue_after(tokenizer, g)?;
            }
        }
        let prompts: Vec<Vec<u32>> = conversations.iter().map(|c| c.tokens().to_vec()).collect();
        let requests = prompts
            .iter()
            .enumerate()
            .map(|(r, prompt)| GenerationRequest {
                prompt: prompt.clone(),
                params: params(r, turn),
                session: Some(r as u64),
            })
            .collect();
        let generations = runtime
            .block_on(engine.complete(requests))
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                c.map(|c| c.generation).map_err(|e| {
                    GpuError::Input(format!("the {name} engine, turn {turn}, episode {r}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seconds = start.elapsed().as_secs_f64();
        out.push(Turn {
            prompts,
            generations,
            seconds,
        });
    }
    Ok(out)
}

/// Where a device engine's greedy episode first parts from the CPU engine's: the turn, the
/// first differing token (`position`; the shorter length when one completion is the other's
/// prefix) and the two tokens there (`None` past a completion's end).
#[derive(Debug, Clone, PartialEq)]
struct Divergence {
    episode: usize,
    turn: usize,
    position: usize,
    cpu_token: Option<u32>,
    device_token: Option<u32>,
}

/// The device run's completions against the CPU run's, turn by turn: how many are equal
/// (tokens, log-probs, finish reason), and each differing episode's first [`Divergence`].
fn compare_greedy(cpu: &[Turn], device: &[Turn]) -> (usize, Vec<Divergence>) {
    let mut equal = 0;
    let mut divergences: Vec<Divergence> = Vec::new();
    for (turn, (want, got)) in cpu.iter().zip(device).enumerate() {
        for (episode, (w, g)) in want.generations.iter().zip(&got.generations).enumerate() {
            if w.tokens == g.tokens
                && w.logprobs == g.logprobs
                && w.finish_reason == g.finish_reason
            {
                equal += 1;
            } else if !divergences.iter().any(|d| d.episode == episode) {
                let position = w
                    .tokens
                    .iter()
                    .zip(&g.tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                divergences.push(Divergence {
                    episode,
                    turn,
                    position,
                    cpu_token: w.tokens.get(position).copied(),
                    device_token: g.tokens.get(position).copied(),
                });
            }
        }
    }
    divergences.sort_by_key(|d| d.episode);
    (equal, divergences)
}

/// The logits of `tokens` (one sequence) under the CPU model, `[n · vocab]`.
fn cpu_logits(model: &Llama, tokens: &[u32]) -> Result<Vec<f32>, GpuError> {
    let n = tokens.len();
    let data: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(data, [1, n]), &model.device());
    model
        .forward(input)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| GpuError::Input(format!("CPU logits: {e:?}")))
}

/// The largest `|behaviour log-prob − log_softmax(CPU logits)[token]|` over every turn of
/// episodes `rows` of a run sampled at temperature 1, top-p 1, and the tokens compared. Each
/// episode is scored by one CPU forward of its last turn's sequence, which holds every earlier
/// turn's prompt and completion.
fn sampled_logprob_gap(
    model: &Llama,
    turns: &[Turn],
    rows: &[usize],
) -> Result<(f32, usize), GpuError> {
    let vocab = model.config().vocab_size;
    let Some(last) = turns.last() else {
        return Ok((0.0, 0));
    };
    let (mut gap, mut scored) = (0.0f32, 0);
    for &r in rows {
        let mut sequence = last.prompts[r].clone();
        sequence.extend(&last.generations[r].tokens);
        let logits = cpu_logits(model, &sequence)?;
        for (t, turn) in turns.iter().enumerate() {
            let (prompt, g) = (&turn.prompts[r], &turn.generations[r]);
            if !sequence.starts_with(prompt) || !sequence[prompt.len()..].starts_with(&g.tokens) {
                return Err(GpuError::Input(format!(
                    "episode {r}: turn {t}'s prompt and completion do not open its last turn"
                )));
            }
            if g.logprobs.len() != g.tokens.len() {
                gap = f32::NAN;
            }
            for (i, (&token, &logprob)) in g.tokens.iter().zip(&g.logprobs).enumerate() {
                let at = prompt.len() - 1 + i;
                let cpu = token_logprobs(&logits[at * vocab..(at + 1) * vocab], token, 0).logprob;
                gap = nan_max(gap, (logprob - cpu).abs());
                scored += 1;
            }
        }
    }
    Ok((gap, scored))
}

/// The actors' decode engine on the GPU (`kaizen_actors::ServingEngine` on
/// [`crate::actor_rows::cuda_device`], what `actors.device = "cuda"` runs) on a GRPO-shaped
/// multi-turn workload; see [`actors_on`].
///
/// Estimated at about 30 s on an H100 with SmolLM2-135M, within a minute: the CPU model
/// ~5–10 s (random weights) or ~3 s (the GGUF), kernels ~2 s; the greedy subset (16 episodes
/// × 2 turns × ≤ 64 tokens) ~5 s on the CPU engine (16 cores) and ~2 s on the GPU with the
/// weights' upload; the sampled workload (64 × 2 × 64 = 8,192 tokens, each turn one batch of
/// 64 rows at a few ms per step) under 5 s; the CPU scoring of 4 episodes of ~250 tokens
/// ~5 s.
fn actors(options: &Options) -> Result<Value, GpuError> {
    // The GPU first: without one, fail before spending seconds on the CPU model.
    let start = Instant::now();
    let device = crate::actor_rows::cuda_device(options.ordinal)?;
    let compile_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let policy = load_actor_policy(&options.model, &Device::default())?;
    let load_s = start.elapsed().as_secs_f64();
    let mut out = actors_on(device, &policy, options)?;
    out["model"] = json!(policy.label);
    out["compile_s"] = json!(compile_s);
    out["cpu_load_s"] = json!(load_s);
    Ok(out)
}

/// [`actors`]' measurements with the engine sampling on `device` (the host mirror in tests).
///
/// The workload: `actors_prompts` questions × `actors_generations` episodes each (a GRPO
/// group), `actors_turns` turns; the next turn's prompt is the conversation, the completion
/// as sampled and [`CORRECTION`] (the self-correction job's shape), through the policy's chat
/// template when it has one. Three runs:
///
/// 1. greedy parity: the first `actors_parity_prompts` groups, greedy, stopping at the
///    tokenizer's EOS ids, on the CPU engine and on `device`: every completion must be the
///    CPU engine's (tokens, log-probs, finish reason), except an episode whose first
///    divergence is a near tie (the CPU model's logits of the two tokens within
///    `parity_bound`, where rounding may pick either);
/// 2. the whole workload on `device` at temperature 1, top-p 1, without EOS (every turn
///    samples `actors_new_tokens`: a fixed amount of work), timed after a warm-up admission
///    (the weights' upload, first allocations): tokens/s and episodes/s;
/// 3. sampled parity: `actors_scored_rows` of those episodes scored by the CPU model; the
///    largest behaviour log-prob gap must be within `actors_logprob_bound`.
///
/// `parity_ok` holds when 1 and 3 do.
fn actors_on(
    device: Arc<dyn DecodeDevice>,
    policy: &ActorPolicy,
    options: &Options,
) -> Result<Value, GpuError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| GpuError::Input(format!("starting a tokio runtime: {e}")))?;
    let tokenizer = Arc::new(policy.tokenizer.clone());
    let engine = |eos_token_ids: Vec<u32>, device: Option<Arc<dyn DecodeDevice>>| {
        let generate = GenerateOptions {
            eos_token_ids,
            ..GenerateOptions::default()
        };
        ServingEngine::spawn_on(policy.model.clone(), tokenizer.clone(), generate, device)
            .map_err(|e| GpuError::Input(format!("starting a decode engine: {e}")))
    };
    let generations = options.actors_generations.max(1);
    let conversations = |prompts: usize| {
        (0..prompts * generations)
            .map(|r| {
                let question = actors_question(r / generations);
                Conversation::start(&policy.tokenizer, policy.template.as_ref(), &question)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let (turns, new_tokens) = (options.actors_turns.max(1), options.actors_new_tokens);
    let params = |temperature: f32| {
        move |r: usize, turn: usize| SamplingParams {
            temperature,
            max_new_tokens: new_tokens,
            seed: (turn * 1_000_000 + r) as u64,
            ..SamplingParams::default()
        }
    };
    let run = |engine: &ServingEngine, name: &str, prompts: usize, temperature: f32| {
        converse(
            &runtime,
            engine,
            name,
            &policy.tokenizer,
            conversations(prompts)?,
            turns,
            &params(temperature),
        )
    };

    // 1. Greedy parity on the subset, EOS on.
    let eos = policy.tokenizer.eos_token_ids().to_vec();
    let subset = options
        .actors_parity_prompts
        .clamp(1, options.actors_prompts.max(1));
    let cpu_run = run(&engine(eos.clone(), None)?, "CPU", subset, 0.0)?;
    let device_run = run(
        &engine(eos.clone(), Some(device.clone()))?,
        "device",
        subset,
        0.0,
    )?;
    let (equal, divergences) = compare_greedy(&cpu_run, &device_run);
    let vocab = policy.model.config().vocab_size;
    let mut explained = 0;
    let mut listed = Vec::new();
    for d in &divergences {
        // The CPU logits of the two tokens where the episode parts (its prompts agree so far).
        let logit_gap = match (d.cpu_token, d.device_token) {
            (Some(a), Some(b)) => {
                let mut sequence = cpu_run[d.turn].prompts[d.episode].clone();
                sequence.extend(&cpu_run[d.turn].generations[d.episode].tokens[..d.position]);
                let logits = cpu_logits(&policy.model, &sequence)?;
                let row = &logits[(sequence.len() - 1) * vocab..];
                let logit = |t: u32| row.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY);
                Some(logit(a) - logit(b))
            }
            _ => None,
        };
        let near_tie = logit_gap.is_some_and(|g| g.abs() <= options.parity_bound);
        explained += usize::from(near_tie);
        listed.push(json!({
            "episode": d.episode,
            "turn": d.turn,
            "position": d.position,
            "cpu_token": d.cpu_token,
            "device_token": d.device_token,
            "cpu_logit_gap": logit_gap,
            "near_tie": near_tie,
        }));
    }
    let greedy_rows = subset * generations * turns;
    let ended_by_eos = device_run
        .iter()
        .flat_map(|t| &t.generations)
        .filter(|g| g.finish_reason == kaizen_core::FinishReason::Eos)
        .count();
    let seconds = |run: &[Turn]| run.iter().map(|t| t.seconds).sum::<f64>();
    let greedy_ok = explained == divergences.len();
    let greedy = json!({
        "episodes": subset * generations,
        "turns": turns,
        "eos_token_ids": eos,
        "rows_ended_by_eos": ended_by_eos,
        "divergences": listed,
        "diverged_at_near_ties": explained,
        "near_tie_bound": options.parity_bound,
        "cpu_engine_s": seconds(&cpu_run),
        "device_engine_s": seconds(&device_run),
        "device_engine_s_includes": "the weights' upload and first allocations",
        "ok": greedy_ok,
    });
    drop((cpu_run, device_run));

    // 2. The whole workload, sampled, timed on the device after a warm-up admission.
    let prompts = options.actors_prompts.max(1);
    let episodes = prompts * generations;
    let engine = engine(Vec::new(), Some(device))?;
    let start = Instant::now();
    let warm_up: Vec<GenerationRequest> = conversations(prompts)?
        .iter()
        .enumerate()
        .map(|(r, c)| GenerationRequest {
            prompt: c.tokens().to_vec(),
            params: SamplingParams {
                max_new_tokens: 4,
                ..params(1.0)(r, 0)
            },
            session: None,
        })
        .collect();
    for answer in runtime.block_on(engine.complete(warm_up)) {
        answer.map_err(|e| GpuError::Input(format!("the device engine's warm-up: {e}")))?;
    }
    let warm_up_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let sampled = run(&engine, "device", prompts, 1.0)?;
    let workload_s = start.elapsed().as_secs_f64();
    let sampled_tokens: usize = sampled
        .iter()
        .flat_map(|t| &t.generations)
        .map(|g| g.tokens.len())
        .sum();
    // Prompt tokens, and those of distinct prompts: what the device prefills (a group's
    // identical prompts once). The engine's own counters see no prefill on a device that
    // prefills inside its step.
    let prompt_tokens: usize = sampled.iter().flat_map(|t| &t.prompts).map(Vec::len).sum();
    let distinct_prompt_tokens: usize = sampled
        .iter()
        .map(|t| {
            let distinct: std::collections::HashSet<&Vec<u32>> = t.prompts.iter().collect();
            distinct.iter().map(|p| p.len()).sum::<usize>()
        })
        .sum();
    let throughput = json!({
        "episodes": episodes,
        "prompts": prompts,
        "generations": generations,
        "turns": turns,
        "new_tokens_per_turn": new_tokens,
        "warm_up_s": warm_up_s,
        "seconds": workload_s,
        "turn_seconds": sampled.iter().map(|t| t.seconds).collect::<Vec<_>>(),
        "sampled_tokens": sampled_tokens,
        "prompt_tokens": prompt_tokens,
        "distinct_prompt_tokens": distinct_prompt_tokens,
        "tokens_per_s": sampled_tokens as f64 / workload_s,
        "episodes_per_s": episodes as f64 / workload_s,
        "sampling": "temperature 1, top-p 1, no EOS (every turn samples new_tokens), each turn's requests admitted together",
    });
    drop(engine);

    // 3. The sampled episodes' behaviour log-probs against the CPU model's.
    let scored = options.actors_scored_rows.min(episodes);
    let step = (episodes / scored.max(1)).max(1);
    let rows: Vec<usize> = (0..episodes).step_by(step).take(scored).collect();
    let start = Instant::now();
    let (gap, tokens_scored) = sampled_logprob_gap(&policy.model, &sampled, &rows)?;
    let bound = options.actors_logprob_bound;
    let sampled_ok = gap.is_finite() && gap <= bound;
    Ok(json!({
        "workload": {
            "first_question": actors_question(0),
            "next_turn": format!("the conversation, the completion as sampled, then the user: {CORRECTION:?}"),
            "rendering": if policy.template.is_some() { "chat template" } else { "raw text" },
        },
        "greedy_rows": greedy_rows,
        "greedy_rows_equal": equal,
        "greedy": greedy,
        "logprob_max_abs_diff_vs_cpu": gap,
        "logprob_bound": bound,
        "sampled_episodes_scored": rows.len(),
        "sampled_tokens_scored": tokens_scored,
        "cpu_scoring_s": start.elapsed().as_secs_f64(),
        "throughput": throughput,
        "parity_ok": greedy_ok && sampled_ok,
        "note": "the actors' engine (kaizen_actors::ServingEngine) on the device: each turn one BatchDecoder::generate of all its rows, every turn prefilled in full (nothing kept between turns); f32",
    }))
}

/// Each training operation on `ops` against [`HostOps`] on the same small inputs (the
/// kernels one by one, to locate a failure of the pass's parity): the largest
/// `|cuda − host| / max(1, |host|)` per operation.
fn compare_kernels(ops: &CudaOps) -> Result<Value, GpuError> {
    let cuda = kernel_probe(ops)?;
    let host = kernel_probe(&HostOps)?;
    let mut out = serde_json::Map::new();
    let mut worst = 0.0f32;
    for ((name, c), (_, h)) in cuda.iter().zip(&host) {
        let diff = if c.len() == h.len() {
            c.iter()
                .zip(h)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(
                    0.0f32,
                    |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                )
        } else {
            f32::INFINITY
        };
        worst = worst.max(diff);
        out.insert((*name).to_string(), json!(diff));
    }
    out.insert("max".into(), json!(worst));
    out.insert("pass".into(), json!(worst <= 1e-4));
    Ok(Value::Object(out))
}

/// Runs every [`TrainOps`] operation once on fixed small inputs (shapes that are not multiples
/// of the kernels' block sizes, repeated scatter indices, two packed rows of attention with
/// grouped-query heads) and returns each operation's outputs on the host.
///
/// # Errors
/// The backend's errors.
fn kernel_probe<O: TrainOps>(ops: &O) -> Result<Vec<(&'static str, Vec<f32>)>, GpuError> {
    let values = |n: usize, seed: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.377).sin()).collect()
    };
    let up = |n: usize, seed: f32| ops.upload(&values(n, seed));
    let mut out = Vec::new();
    // Products: y = x Wᵀ, dx = dy W, dW += dyᵀ x for x [5, 40], W [7, 40].
    let (rows, d_in, d_out) = (5, 40, 7);
    let (x, w, dy) = (
        up(rows * d_in, 1.0)?,
        up(d_out * d_in, 2.0)?,
        up(rows * d_out, 3.0)?,
    );
    // The pass's three forms (see `train/pass.rs`), with α = 0.5 and β = 1.
    let gemm = |transa, transb, m, n, k, lda, ldb, ldc| Gemm {
        transa,
        transb,
        m,
        n,
        k,
        alpha: 0.5,
        lda,
        ldb,
        beta: 1.0,
        ldc,
    };
    let (t, no) = (Transpose::Yes, Transpose::No);
    for (name, g, a, b, len) in [
        (
            "gemm_tn",
            gemm(t, no, d_out, rows, d_in, d_in, d_in, d_out),
            &w,
            &x,
            rows * d_out,
        ),
        (
            "gemm_nn",
            gemm(no, no, d_in, rows, d_out, d_in, d_out, d_in),
            &w,
            &dy,
            rows * d_in,
        ),
        (
            "gemm_nt",
            gemm(no, t, d_in, d_out, rows, d_in, d_out, d_in),
            &x,
            &dy,
            d_out * d_in,
        ),
    ] {
        let mut c = up(len, 4.0)?;
        ops.gemm(g, a, b, &mut c)?;
        out.push((name, ops.download(&c)?));
    }
    // Rows: 130 rows of 300 (more than one block of columns and of weight-gradient rows).
    let (rows, width) = (130, 300);
    let x = up(rows * width, 5.0)?;
    let gamma = up(width, 6.0)?;
    let dy = up(rows * width, 7.0)?;
    let index: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % 11).collect();
    let index = ops.upload_index(&index)?;
    let mut gathered = ops.alloc(rows * width)?;
    ops.gather_rows(&mut gathered, &x, &index, rows, width)?;
    out.push(("gather_rows", ops.download(&gathered)?));
    let mut scattered = up(11 * width, 8.0)?;
    ops.scatter_add_rows(&mut scattered, &dy, &index, rows, width)?;
    out.push(("scatter_add_rows", ops.download(&scattered)?));
    let mut normed = ops.alloc(rows * width)?;
    let mut inv_rms = ops.alloc(rows)?;
    ops.rms_norm(&mut normed, &mut inv_rms, &x, &gamma, rows, width, 1e-5)?;
    out.push(("rms_norm", ops.download(&normed)?));
    out.push(("rms_norm_inv_rms", ops.download(&inv_rms)?));
    let mut dx = up(rows * width, 9.0)?;
    ops.rms_norm_backward(&mut dx, &x, &inv_rms, &gamma, &dy, rows, width)?;
    out.push(("rms_norm_backward", ops.download(&dx)?));
    let mut d_gamma = up(width, 10.0)?;
    ops.rms_norm_weight_grad(&mut d_gamma, &x, &inv_rms, &dy, rows, width)?;
    out.push(("rms_norm_weight_grad", ops.download(&d_gamma)?));
    let mut sums = up(width, 11.0)?;
    ops.column_sums(&mut sums, &dy, rows, width)?;
    out.push(("column_sums", ops.download(&sums)?));
    let mut biased = up(rows * width, 12.0)?;
    ops.add_bias(&mut biased, &gamma, rows, width)?;
    ops.add(&mut biased, &dy, rows * width)?;
    out.push(("add_bias_and_add", ops.download(&biased)?));
    let (gate, upv, d_act) = (&x, &dy, &biased);
    let mut act = ops.alloc(rows * width)?;
    ops.swiglu(&mut act, gate, upv, rows * width)?;
    out.push(("swiglu", ops.download(&act)?));
    let (mut d_gate, mut d_up) = (ops.alloc(rows * width)?, ops.alloc(rows * width)?);
    ops.swiglu_backward(&mut d_gate, &mut d_up, gate, upv, d_act, rows * width)?;
    out.push(("swiglu_backward_gate", ops.download(&d_gate)?));
    out.push(("swiglu_backward_up", ops.download(&d_up)?));
    out.push((
        "sum_squares",
        vec![ops.sum_squares(&dy, rows * width)? as f32],
    ));
    let (mut p, mut m, mut v) = (
        up(rows * width, 13.0)?,
        up(rows * width, 14.0)?,
        ops.alloc(rows * width)?,
    );
    let step = AdamWStep {
        clip: 0.7,
        beta1: 0.9,
        beta2: 0.999,
        decay: 0.999,
        step_size: 1e-2,
        inv_sqrt_bias2: 3.0,
        eps: 1e-8,
    };
    ops.adamw(&mut p, &dy, &mut m, &mut v, rows * width, step)?;
    out.push(("adamw", ops.download(&p)?));
    // Log-softmax over a vocabulary of 300 (more than one block), 5 rows.
    let (n, vocab) = (5, 300);
    let targets = ops.upload_index(&[0, 299, 17, 256, 3])?;
    let mut z = up(n * vocab, 15.0)?;
    let (mut lse, mut logp) = (ops.alloc(n)?, ops.alloc(n)?);
    ops.log_softmax(&mut z, &mut lse, &mut logp, &targets, n, vocab, 1.0 / 0.7)?;
    out.push(("log_softmax", ops.download(&logp)?));
    let d_logp = up(n, 16.0)?;
    ops.log_softmax_backward(&mut z, &lse, &targets, &d_logp, n, vocab, 1.0 / 0.7)?;
    out.push(("log_softmax_backward", ops.download(&z)?));
    // Attention: two packed rows (3 and 6 tokens), 4 query heads over 2, d 8, positions 0...
    let (tokens, heads, kv, d) = (9, 4, 2, 8);
    let key_start = ops.upload_index(&[0, 0, 0, 3, 3, 3, 3, 3, 3])?;
    let row_end = ops.upload_index(&[3, 3, 3, 9, 9, 9, 9, 9, 9])?;
    let positions = ops.upload_index(&[0, 1, 2, 0, 1, 2, 3, 4, 5])?;
    let shape = AttentionShape {
        tokens,
        heads,
        kv_heads: kv,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        longest_row: 6,
    };
    let (cos, sin) = (up(6 * d, 17.0)?, up(6 * d, 18.0)?);
    let mut q = up(tokens * heads * d, 19.0)?;
    ops.rope(&mut q, &cos, &sin, &positions, tokens, heads, d, false)?;
    out.push(("rope", ops.download(&q)?));
    let mut rotated_back = up(tokens * heads * d, 19.0)?;
    ops.rope(
        &mut rotated_back,
        &cos,
        &sin,
        &positions,
        tokens,
        heads,
        d,
        true,
    )?;
    out.push(("rope_inverse", ops.download(&rotated_back)?));
    let (k, v) = (up(tokens * kv * d, 20.0)?, up(tokens * kv * d, 21.0)?);
    let mut attn = ops.alloc(tokens * heads * d)?;
    let mut attn_lse = ops.alloc(tokens * heads)?;
    ops.attention(&mut attn, &mut attn_lse, &q, &k, &v, &key_start, shape)?;
    out.push(("attention", ops.download(&attn)?));
    out.push(("attention_lse", ops.download(&attn_lse)?));
    let d_out = up(tokens * heads * d, 22.0)?;
    let mut dq = ops.alloc(tokens * heads * d)?;
    let (mut dk, mut dv) = (ops.alloc(tokens * kv * d)?, ops.alloc(tokens * kv * d)?);
    let mut delta = ops.alloc(tokens * heads)?;
    let saved = AttentionSaved {
        q: &q,
        k: &k,
        v: &v,
        out: &attn,
        lse: &attn_lse,
    };
    let rows = AttentionRows {
        key_start: &key_start,
        row_end: &row_end,
    };
    ops.attention_backward(
        &mut dq, &mut dk, &mut dv, &mut delta, saved, &d_out, rows, shape,
    )?;
    out.push(("attention_backward_dq", ops.download(&dq)?));
    out.push(("attention_backward_dk", ops.download(&dk)?));
    out.push(("attention_backward_dv", ops.download(&dv)?));
    out.push(("attention_backward_delta", ops.download(&delta)?));
    // The all-reduce buckets' packing: 13 values from offset 3 into offset 5 of 20 zeros.
    let mut packed = ops.alloc(20)?;
    ops.copy(&up(17, 23.0)?, 3, &mut packed, 5, 13)?;
    out.push(("copy", ops.download(&packed)?));
    Ok(out)
}

/// NCCL all-reduce of `nccl_floats` floats: on the device (algorithm bandwidth, single rank)
/// and through the host-buffer [`kaizen_learner::Collective`] path; the learner's bucketed
/// gradient all-reduce on the device ([`bucketed_all_reduce`]); then whether NCCL accepts two
/// ranks on one GPU.
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
    let bucketed = section(|| bucketed_all_reduce(options, &group));
    Ok(json!({
        "ranks": 1,
        "floats": floats,
        "bytes": bytes,
        "device_all_reduce_s": device_s,
        "device_algbw_gb_s": bytes as f64 / device_s / 1e9,
        "host_path_all_reduce_s": host_s,
        "host_path_gb_s": bytes as f64 / host_s / 1e9,
        "bucket_floats": crate::DEFAULT_BUCKET_ELEMS,
        "bucketed": bucketed,
        "two_ranks_one_gpu": two_ranks_on_one_gpu(options.ordinal),
        "note": "one rank: NCCL copies within the device; the ring figure needs two GPUs",
    }))
}

/// The learner's gradient all-reduce as `PassBackend<CudaOps>` runs it on NCCL
/// ([`GradBuckets`]): SmolLM2-135M's parameters (their count and sizes) in buckets of
/// [`DEFAULT_BUCKET_BYTES`], packed on the device, each summed in place by one `ncclAllReduce`,
/// unpacked. One rank sums to the values themselves, so every gradient must come back
/// unchanged (`pass`); the seconds are the median of `nccl_repeats` after a warm-up.
fn bucketed_all_reduce(options: &Options, group: &NcclCollective) -> Result<Value, GpuError> {
    let ops = CudaOps::new(&cuda_context(options.ordinal)?)?;
    let lens: Vec<usize> = layout(&LlamaConfig::smollm2_135m())
        .iter()
        .map(|(_, shape)| shape.iter().product())
        .collect();
    let values = |p: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((p * 7919 + i) % 4093) as f32 / 4093.0 - 0.5)
            .collect()
    };
    let mut grads = lens
        .iter()
        .enumerate()
        .map(|(p, &n)| ops.upload(&values(p, n)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut buckets = GradBuckets::new(lens.clone(), DEFAULT_BUCKET_BYTES);
    let mut once = || -> Result<f64, GpuError> {
        let start = Instant::now();
        buckets
            .all_reduce(&ops, grads.iter_mut().collect(), group)
            .map_err(|e| GpuError::Nccl {
                during: "the bucketed gradient all-reduce".into(),
                message: e.to_string(),
            })?;
        ops.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    once()?;
    let mut seconds = (0..options.nccl_repeats.max(1))
        .map(|_| once())
        .collect::<Result<Vec<_>, _>>()?;
    seconds.sort_by(f64::total_cmp);
    let mut changed = 0usize;
    for (p, g) in grads.iter().enumerate() {
        let back = ops.download(g)?;
        changed += back
            .iter()
            .zip(values(p, lens[p]))
            .filter(|(a, b)| **a != *b)
            .count();
    }
    let floats: usize = lens.iter().sum();
    let plan = buckets.buckets();
    Ok(json!({
        "parameters": lens.len(),
        "floats": floats,
        "bucket_bytes": DEFAULT_BUCKET_BYTES,
        "buckets": plan.len(),
        "packed_buckets": plan.iter().filter(|b| b.params.len() > 1).count(),
        "seconds": seconds[seconds.len() / 2],
        "changed_values": changed,
        "pass": changed == 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor_rows::GpuDevice;

    /// The kernel probe runs every operation on the host mirror, with finite outputs (on a GPU
    /// the same probe runs on CUDA and is compared with these).
    #[test]
    fn the_kernel_probe_runs_every_operation_on_the_host() {
        let outputs = kernel_probe(&HostOps).unwrap();
        assert_eq!(outputs.len(), 27);
        for (name, values) in outputs {
            assert!(!values.is_empty(), "{name}");
            assert!(values.iter().all(|v| v.is_finite()), "{name}: {values:?}");
        }
    }

    /// The generation section's measurements and CPU comparisons run end to end on the host
    /// mirror (a tiny model, small batches): every figure present, log-probs within bound,
    /// greedy tokens equal to kaizen's CPU generation.
    #[test]
    fn the_generation_section_runs_on_the_host_mirror() {
        let config = LlamaConfig {
            vocab_size: 300,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            value_head: false,
            initializer_range: 0.2,
        };
        let cpu = Llama::init(&config, &Device::default(), 3).unwrap();
        let options = Options {
            generation_batches: vec![(1, 1), (2, 3)],
            grpo_prompt_tokens: 9,
            grpo_completion_tokens: 6,
            ..Default::default()
        };
        let out = generation_on(HostOps, &cpu, &options).unwrap();
        assert_eq!(out["pass"], true, "{out:#}");
        let batches = out["batches"].as_array().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1]["batch"], 6);
        assert_eq!(batches[1]["sampled_tokens"], 36);
        assert_eq!(batches[1]["prefill_tokens"], 18);
        assert!(batches[1]["tokens_per_s"].as_f64().unwrap() > 0.0);
        let worst = out["logprob_max_abs_diff_vs_cpu"].as_f64().unwrap();
        assert!(worst < 1e-4, "{worst}");
        let greedy = &out["greedy_vs_cpu_generate"];
        assert_eq!(greedy["same_leading_tokens"], greedy["of"]);
    }

    /// A section past its limit is recorded as an error; one within it gives its figures.
    #[test]
    fn a_section_past_its_limit_is_an_error() {
        let slow = section_within(Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(500));
            Ok(json!({ "done": true }))
        });
        assert_eq!(slow["error"], "no answer within 0.02 s");
        let quick = section_within(Duration::from_secs(10), || Ok(json!({ "done": true })));
        assert_eq!(quick, json!({ "done": true }));
    }

    /// Without a driver the actors section fails first, naming it (no CPU model loaded).
    #[test]
    fn the_actors_section_without_a_driver_is_a_library_error() {
        if Library::Driver.is_present() {
            return;
        }
        let options = Options {
            model: "random".into(),
            ..Default::default()
        };
        let e = actors(&options).unwrap_err().to_string();
        assert!(e.contains("libcuda"), "{e}");
    }

    /// The tiny policy (byte-level tokenizer) from `seed`, with ChatML or as raw text.
    fn tiny_actor_policy(seed: u64, chat: bool) -> ActorPolicy {
        let policy = Policy::tiny(&Device::default(), seed).unwrap();
        ActorPolicy {
            model: policy.model,
            tokenizer: policy.tokenizer,
            template: chat.then_some(policy.template),
            label: "tiny".into(),
        }
    }

    /// The actors section's workload, small: 2 prompts × 2 episodes, 2 turns of 6 tokens, one
    /// group compared greedily, 2 episodes scored.
    fn small_actor_workload() -> Options {
        Options {
            actors_prompts: 2,
            actors_generations: 2,
            actors_turns: 2,
            actors_new_tokens: 6,
            actors_parity_prompts: 1,
            actors_scored_rows: 2,
            ..Default::default()
        }
    }

    fn host_device() -> Arc<dyn DecodeDevice> {
        Arc::new(GpuDevice::new(|| Ok(HostOps)).unwrap())
    }

    /// The actors section runs end to end with the engine on the host mirror (the very code the
    /// GPU machine runs on CUDA): every greedy completion is the CPU engine's, the sampled
    /// behaviour log-probs are the CPU model's within 1e-4, and the throughput figures count
    /// every sampled token.
    #[test]
    fn the_actors_section_runs_on_the_host_mirror() {
        let policy = tiny_actor_policy(3, true);
        let out = actors_on(host_device(), &policy, &small_actor_workload()).unwrap();
        assert_eq!(out["parity_ok"], true, "{out:#}");
        assert_eq!(out["workload"]["rendering"], "chat template");
        // 1 group × 2 episodes × 2 turns, every completion compared and equal.
        assert_eq!(out["greedy_rows"], 4);
        assert_eq!(out["greedy_rows_equal"], 4);
        assert_eq!(out["greedy"]["divergences"].as_array().unwrap().len(), 0);
        let gap = out["logprob_max_abs_diff_vs_cpu"].as_f64().unwrap();
        assert!(gap < 1e-4, "{gap}");
        // 2 episodes × 2 turns × 6 tokens scored; 4 episodes × 2 turns × 6 tokens sampled.
        assert_eq!(out["sampled_tokens_scored"], 24);
        let throughput = &out["throughput"];
        assert_eq!(throughput["sampled_tokens"], 48);
        let distinct = throughput["distinct_prompt_tokens"].as_u64().unwrap();
        assert!(distinct > 0 && distinct < throughput["prompt_tokens"].as_u64().unwrap());
        assert!(throughput["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(throughput["episodes_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(throughput["turn_seconds"].as_array().unwrap().len(), 2);
    }

    /// A device that decodes other weights than the engine's (a deliberately wrong device).
    #[derive(Debug)]
    struct OtherWeights {
        device: GpuDevice<HostOps>,
        model: Llama,
    }

    impl DecodeDevice for OtherWeights {
        fn rows(
            &self,
            weights: &kaizen_actors::Published,
            tokenizer: Option<Arc<Tokenizer>>,
            options: &GenerateOptions,
        ) -> Result<Box<dyn kaizen_actors::DecodeRows>, String> {
            let other = kaizen_actors::Published {
                version: weights.version,
                model: self.model.clone(),
            };
            self.device.rows(&other, tokenizer, options)
        }
    }

    /// The same section fails its parity when the device decodes with other weights: greedy
    /// completions differ from the CPU engine's (not at near ties) and the log-prob gap exceeds
    /// its bound. Raw text (no chat template), as for random weights on the GPU machine.
    #[test]
    fn a_device_decoding_other_weights_fails_the_actors_parity() {
        let policy = tiny_actor_policy(3, false);
        let wrong = Arc::new(OtherWeights {
            device: GpuDevice::new(|| Ok(HostOps)).unwrap(),
            model: Policy::tiny(&Device::default(), 4).unwrap().model,
        });
        let out = actors_on(wrong, &policy, &small_actor_workload()).unwrap();
        assert_eq!(out["parity_ok"], false, "{out:#}");
        assert_eq!(out["workload"]["rendering"], "raw text");
        assert_eq!(out["greedy_rows"], 4);
        assert!(out["greedy_rows_equal"].as_u64().unwrap() < 4, "{out:#}");
        assert_eq!(out["greedy"]["ok"], false);
        let gap = out["logprob_max_abs_diff_vs_cpu"].as_f64().unwrap();
        assert!(gap > 1e-3, "{gap}");
        assert_eq!(out["throughput"]["sampled_tokens"], 48);
    }

    /// The greedy comparison counts equal completions and finds each differing episode's first
    /// differing token, in the turn where it first differs.
    #[test]
    fn the_greedy_comparison_finds_where_an_episode_parts() {
        let generation = |tokens: &[u32]| Generation {
            tokens: tokens.to_vec(),
            logprobs: vec![0.0; tokens.len()],
            entropies: Vec::new(),
            self_certainty: None,
            token_logprobs: Vec::new(),
            finish_reason: kaizen_core::FinishReason::Length,
            text: None,
        };
        let turn = |rows: &[&[u32]]| Turn {
            prompts: vec![vec![1]; rows.len()],
            generations: rows.iter().map(|t| generation(t)).collect(),
            seconds: 0.0,
        };
        let cpu = [turn(&[&[5, 6, 7], &[5, 6, 7]]), turn(&[&[8, 9], &[8, 9]])];
        assert_eq!(compare_greedy(&cpu, &cpu), (4, Vec::new()));
        // Episode 1 parts at its first turn's third token (and so differs in turn 2 too).
        let device = [turn(&[&[5, 6, 7], &[5, 6, 3]]), turn(&[&[8, 9], &[4]])];
        let (equal, divergences) = compare_greedy(&cpu, &device);
        assert_eq!(equal, 2);
        let first = Divergence {
            episode: 1,
            turn: 0,
            position: 2,
            cpu_token: Some(7),
            device_token: Some(3),
        };
        assert_eq!(divergences, vec![first]);
        // A completion that stops early parts where it ends; a wrong finish reason counts too.
        let mut short = turn(&[&[5, 6, 7], &[5, 6]]);
        short.generations[0].finish_reason = kaizen_core::FinishReason::Eos;
        let (equal, divergences) = compare_greedy(&cpu[..1], &[short]);
        assert_eq!(equal, 0);
        assert_eq!(divergences.len(), 2);
        assert_eq!(
            (divergences[0].position, divergences[0].device_token),
            (3, None)
        );
        assert_eq!(
            (divergences[1].position, divergences[1].device_token),
            (2, None)
        );
    }
}
