//! `kaizen generate`: sample a completion and report throughput.

use std::time::Instant;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_core::Message;
use kaizen_model::{GenerateOptions, GenerationRequest, Policy, SamplingParams, generate};

/// Arguments of `kaizen generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `tiny` (built-in random model, byte-level tokenizer) or a model directory.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// The prompt. With `--chat` it is the user message's content (plain text: a
    /// special-token string in it stays text); without, it is the raw prompt, markup included
    /// (`<|im_start|>` becomes the special id).
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of samples of the prompt, generated as one batch (one shared prefill).
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
}

/// Runs `kaizen generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::default();
    let load_start = Instant::now();
    let policy = Policy::load(&args.model, &device)
        .with_context(|| format!("loading model `{}`", args.model))?;
    tracing::info!(
        model = %policy.name,
        seconds = load_start.elapsed().as_secs_f64(),
        "model loaded"
    );
    let prompt = if args.chat {
        policy.template.render_ids(
            &policy.tokenizer,
            &[Message::user(args.prompt.as_str())],
            true,
        )?
    } else {
        policy.tokenizer.encode(&args.prompt, false)?
    };
    let requests: Vec<GenerationRequest> = (0..args.num_samples.max(1))
        .map(|i| GenerationRequest {
            session: None,
            prompt: prompt.clone(),
            params: SamplingParams {
                temperature: args.temperature,
                top_p: args.top_p,
                top_k: args.top_k,
                max_new_tokens: args.max_tokens,
                seed: args.seed + i as u64,
                ..SamplingParams::default()
            },
        })
        .collect();
    let options = GenerateOptions {
        eos_token_ids: policy.tokenizer.eos_token_ids().to_vec(),
        ..GenerateOptions::default()
    };
    let start = Instant::now();
    let generations = generate(&policy.model, Some(&policy.tokenizer), &requests, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
    for (i, g) in generations.iter().enumerate() {
        if generations.len() > 1 {
            println!("--- sample {i} ({:?}) ---", g.finish_reason);
        }
        println!("{}", g.text.clone().unwrap_or_default());
    }
    eprintln!(
        "{tokens} tokens in {seconds:.2} s: {:.1} tokens/s (prompt {} tokens, {} sample(s), finish {:?})",
        tokens as f64 / seconds.max(1e-9),
        prompt.len(),
        generations.len(),
        generations.first().map(|g| g.finish_reason),
    );
    Ok(())
}
