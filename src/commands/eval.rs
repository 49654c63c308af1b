//! `kaizen eval`: evaluate a checkpoint or model on a job's held-out problems.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_learner::{JobConfig, evaluate_policy, load_policy, resolve_model_source};
use kaizen_model::Policy;

/// Arguments of `kaizen eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory (its newest checkpoint), a checkpoint, or a model (`tiny`, `smollm2`,
    /// a .gguf file, a model directory).
    pub model: String,
    /// The job config whose `[[env]]` held-out variants and `[eval]` settings to use (default:
    /// the run's `config.toml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override config fields, e.g. `--set eval.num_problems=50` or `--set eval.pass_k=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kaizen eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config_path = match &args.config {
        Some(p) => p.clone(),
        None => {
            let run_config = PathBuf::from(&args.model).join("config.toml");
            anyhow::ensure!(
                run_config.is_file(),
                "give --config: `{}` is not a run directory with a config.toml",
                args.model
            );
            run_config
        }
    };
    let (config, _) = JobConfig::load(&config_path, &args.overrides)?;
    let device = Device::default();
    let source = resolve_model_source(&args.model)?;
    let policy = if source == "tiny" {
        load_policy(&config, &device)?
    } else {
        let mut policy =
            Policy::load(&source, &device).with_context(|| format!("loading `{source}`"))?;
        if config.model.chat_template == "plain" {
            policy.template = kaizen_model::ChatTemplate::plain(&policy.tokenizer);
        }
        policy
    };
    let launcher = kaizen_cluster::LocalLauncher {
        device: crate::actors_device::device(&config, 0)?,
    };
    let metrics = evaluate_policy(&config, &policy, &super::registry(), &launcher)?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        for (k, v) in &metrics {
            println!("{k:50} {v:.4}");
        }
    }
    Ok(())
}
