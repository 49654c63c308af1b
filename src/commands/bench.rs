//! `kaizen bench`: measure generation and training throughput of a model on this machine.
//!
//! Prints one JSON object per measurement, so scripts (e.g. `scripts/bench/compare_torch.py`)
//! can compare kaizen with other stacks in the same run.

use std::time::Instant;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_model::{
    ChatTemplate, CpuGrads, CpuScorePass, DecodeBatch, DecodeWeights, GenerateOptions,
    GenerationRequest, Llama, LlamaConfig, Policy, SamplingParams, ScoreBatch, ScoreOptions,
    Tokenizer, TrainProducts, score_with,
};

/// Arguments of `kaizen bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Batched sampling with a KV cache: new tokens per second.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Distinct prompts.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Samples per prompt (a GRPO group); prompts are prefilled once unless --no-share.
        #[arg(long, default_value_t = 1)]
        group: usize,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 32)]
        prompt_len: usize,
        /// New tokens per sample (no early stop).
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Prefill every sample separately instead of once per prompt.
        #[arg(long)]
        no_share: bool,
        /// Decode from int8 projections (`actors.decode_weights = "int8"`). Either way the
        /// report gives the behaviour log-probs' gap to the f32 model scoring the same tokens.
        #[arg(long)]
        int8: bool,
        /// Decode from bf16 projections and inputs (`actors.decode_weights = "bf16"`; on AMX
        /// tiles or AVX512-BF16 where the CPU has them).
        #[arg(long, conflicts_with = "int8")]
        bf16: bool,
    },
    /// Teacher-forced scoring forward + backward (the learner's pass): tokens per second.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Sequences per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Sequences per prompt (a GRPO group): with `--prompt-len`, the first `prompt_len`
        /// tokens of a group's sequences are equal and only the rest is scored.
        #[arg(long, default_value_t = 1)]
        group: usize,
        /// Unscored prompt tokens at the start of each sequence (0: every token but the first
        /// is scored).
        #[arg(long, default_value_t = 0)]
        prompt_len: usize,
        /// Compute each sequence in full instead of a group's shared prompt once.
        #[arg(long)]
        no_share: bool,
        /// Run the pass on burn's autodiff instead of kaizen's CPU training pass
        /// (`learner.cpu_kernels = false`).
        #[arg(long)]
        burn: bool,
        /// bf16 mixed precision on kaizen's CPU training pass (`learner.bf16 = true`).
        #[arg(long, conflicts_with = "burn")]
        bf16: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// `tiny` (random weights, `LlamaConfig::tiny(--vocab)`), `smollm2`, a .gguf or a directory.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Vocabulary of the `tiny` model.
    #[arg(long, default_value_t = 512)]
    vocab: usize,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the benchmarked model as a Hugging Face directory (for side-by-side runs).
    #[arg(long)]
    export: Option<std::path::PathBuf>,
}

fn load(args: &ModelArgs, device: &Device) -> anyhow::Result<Policy> {
    let policy = if args.model == "tiny" {
        let config = LlamaConfig::tiny(args.vocab);
        Policy {
            model: Llama::init(&config, device, 0)?,
            tokenizer: Tokenizer::byte_level(),
            template: ChatTemplate::chatml(),
            name: format!("tiny-{}", args.vocab),
        }
    } else {
        Policy::load(&args.model, device).with_context(|| format!("loading `{}`", args.model))?
    };
    if let Some(dir) = &args.export {
        policy.save_dir(dir)?;
    }
    Ok(policy)
}

fn tokens(len: usize, salt: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 31 + salt * 17 + 7) % vocab.min(256)) as u32)
        .collect()
}

/// Median seconds of `repeats` (at least 1) timed calls of `run`, after one untimed warm-up.
fn median_seconds(
    repeats: usize,
    mut run: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    run()?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs `kaizen bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::default();
    match args.what {
        What::Generate {
            model,
            batch,
            group,
            prompt_len,
            new_tokens,
            no_share,
            int8,
            bf16,
        } => {
            let policy = load(&model, &device)?;
            let vocab = policy.model.config().vocab_size;
            let requests: Vec<GenerationRequest> = (0..batch)
                .flat_map(|b| {
                    (0..group).map(move |g| GenerationRequest {
                        session: None,
                        prompt: tokens(prompt_len, b, vocab),
                        params: SamplingParams {
                            temperature: 1.0,
                            max_new_tokens: new_tokens,
                            seed: (b * group + g) as u64,
                            ..SamplingParams::default()
                        },
                    })
                })
                .collect();
            let options = GenerateOptions {
                share_prefill: !no_share,
                decode_weights: if int8 {
                    DecodeWeights::Int8
                } else if bf16 {
                    DecodeWeights::Bf16
                } else {
                    DecodeWeights::F32
                },
                ..GenerateOptions::default()
            };
            // One batch for every repetition, as an actor's engine keeps one per weights
            // version (the int8 projections are made here, untimed).
            let made = Instant::now();
            let mut engine = DecodeBatch::new(policy.model.clone(), None, options);
            let quantize_s = made.elapsed().as_secs_f64();
            let mut produced = 0;
            let mut last = Vec::new();
            let seconds = median_seconds(model.repeats, || {
                let out = engine.complete(
                    requests
                        .iter()
                        .cloned()
                        .enumerate()
                        .map(|(i, r)| (i as u64, r))
                        .collect(),
                )?;
                produced = out.iter().map(|(_, g)| g.tokens.len()).sum::<usize>();
                last = out;
                Ok(())
            })?;
            let mut report = serde_json::json!({
                "bench": "generate", "model": policy.name, "batch": batch, "group": group,
                "prompt_len": prompt_len, "new_tokens": new_tokens, "shared_prefill": !no_share,
                "decode_weights": if int8 { "int8" } else if bf16 { "bf16" } else { "f32" },
                "seconds": seconds, "tokens": produced,
                "tokens_per_s": produced as f64 / seconds,
            });
            {
                // The f32 model scoring the sampled tokens (what a learner does).
                let scores = score_with(
                    &policy.model,
                    &ScoreBatch {
                        sequences: requests
                            .iter()
                            .zip(&last)
                            .map(|(r, (_, g))| [r.prompt.clone(), g.tokens.clone()].concat())
                            .collect(),
                        loss_masks: requests
                            .iter()
                            .zip(&last)
                            .map(|(r, (_, g))| {
                                (0..r.prompt.len() + g.tokens.len())
                                    .map(|t| t >= r.prompt.len())
                                    .collect()
                            })
                            .collect(),
                    },
                    &ScoreOptions::new(1.0),
                )?;
                let f32_logprobs: Vec<f32> = scores.logprobs.into_data().try_to_vec()?;
                let behaviour: Vec<f32> =
                    last.iter().flat_map(|(_, g)| g.logprobs.clone()).collect();
                let gaps: Vec<f64> = f32_logprobs
                    .iter()
                    .zip(&behaviour)
                    .map(|(a, b)| f64::from((a - b).abs()))
                    .collect();
                let n = gaps.len().max(1) as f64;
                if int8 || bf16 {
                    report["quantize_s"] = quantize_s.into();
                    report["packed_bytes"] = engine.quantized_bytes().into();
                }
                report["logprob_gap_mean"] = (gaps.iter().sum::<f64>() / n).into();
                report["logprob_gap_max"] = gaps.iter().copied().fold(0.0, f64::max).into();
            }
            println!("{report}");
        }
        What::Train {
            model,
            batch,
            seq,
            group,
            prompt_len,
            no_share,
            burn,
            bf16,
        } => {
            anyhow::ensure!(
                prompt_len < seq,
                "--prompt-len {prompt_len} must be shorter than --seq {seq}"
            );
            let device = device.autodiff();
            let policy = load(&model, &device)?;
            let vocab = policy.model.config().vocab_size;
            let group = group.max(1);
            let batch_data = ScoreBatch {
                sequences: (0..batch)
                    .map(|b| {
                        let mut row = tokens(prompt_len, b / group, vocab);
                        row.extend(tokens(seq - prompt_len, 1000 + b, vocab));
                        row
                    })
                    .collect(),
                loss_masks: (0..batch)
                    .map(|_| (0..seq).map(|t| t > prompt_len).collect())
                    .collect(),
            };
            // As the learner scores: with entropy.
            let options = ScoreOptions {
                share_prefixes: !no_share,
                with_entropy: true,
                ..ScoreOptions::new(1.0)
            };
            let cpu = !burn && CpuScorePass::applies(&policy.model);
            // The learner keeps one pack cache per weights version: packing is not timed
            // after the warm-up.
            let products = if bf16 {
                TrainProducts::bf16()
            } else {
                TrainProducts::f32()
            };
            let seconds = median_seconds(model.repeats, || {
                if cpu
                    && let Some(mut grads) = CpuGrads::new(&policy.model)
                    && let Some((scores, pass)) =
                        CpuScorePass::forward_with(&policy.model, &batch_data, &options, &products)?
                {
                    let loss = scores.logprobs.mean().neg();
                    pass.backward(&loss.backward(), &mut grads)?;
                    drop(grads.into_params(&device.clone().inner()));
                    return Ok(());
                }
                let scores = score_with(&policy.model, &batch_data, &options)?;
                drop(scores.logprobs.mean().neg().backward());
                Ok(())
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "bench": "train", "model": policy.name, "batch": batch, "seq": seq,
                    "group": group, "prompt_len": prompt_len, "shared_prefix": !no_share,
                    "pass": if cpu { "kaizen_cpu" } else { "burn_autodiff" },
                    "products": if bf16 { "bf16" } else { "f32" },
                    "seconds": seconds, "tokens_per_s": (batch * seq) as f64 / seconds,
                })
            );
        }
    }
    Ok(())
}
