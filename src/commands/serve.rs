//! `kaizen serve`: the policy behind an OpenAI-compatible HTTP endpoint.

use std::sync::Arc;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_actors::ServingEngine;
use kaizen_model::{DecodeWeights, GenerateOptions, Policy};
use kaizen_serve::{AppState, ServeConfig, ServedModel};

/// Arguments of `kaizen serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `tiny` (built-in random model), a checkpoint or Hugging Face directory, or a GGUF file.
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model id clients send (`model`) and `/v1/models` lists (default: MODEL as given).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on `/v1` routes.
    #[arg(long, env = "KAIZEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seeds of requests without a `seed` are drawn from this one.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weights the decode steps multiply by: f32, int8 (Q8_0-style blocks) or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8", "bf16"])]
    pub decode_weights: String,
    /// Largest `n` a request may ask for.
    #[arg(long, default_value_t = 16)]
    pub max_n: usize,
}

/// Runs `kaizen serve` until Ctrl-C (or SIGTERM); requests in flight finish first.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::default();
    let policy = Policy::load(&args.model, &device)
        .with_context(|| format!("loading model `{}`", args.model))?;
    let decode_weights = match args.decode_weights.as_str() {
        "int8" => DecodeWeights::Int8,
        "bf16" => DecodeWeights::Bf16,
        _ => DecodeWeights::F32,
    };
    let tokenizer = Arc::new(policy.tokenizer.clone());
    let max_context = policy.model.config().max_position_embeddings;
    let options = GenerateOptions {
        eos_token_ids: policy.tokenizer.eos_token_ids().to_vec(),
        decode_weights,
        ..GenerateOptions::default()
    };
    let engine = ServingEngine::spawn(policy.model, tokenizer.clone(), options)
        .context("starting the decode engine")?;
    let state = Arc::new(AppState::new(
        engine,
        ServedModel {
            tokenizer,
            template: policy.template,
            max_context,
        },
        ServeConfig {
            served_model_name: args.served_model_name.unwrap_or(args.model),
            api_key: args.api_key,
            max_n: args.max_n.max(1),
            seed: args.seed,
            ..ServeConfig::default()
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        // The one line scripts wait for (the port may have been 0).
        eprintln!("listening on http://{local}");
        tracing::info!(%local, "serving the OpenAI API under /v1");
        kaizen_serve::serve(listener, state, shutdown_signal())
            .await
            .context("serving HTTP")
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
