//! `kaizen export`: write a policy as a Hugging Face model directory.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_model::Policy;

/// Arguments of `kaizen export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to export: a run directory (its newest checkpoint), `tiny`, `smollm2`, a .gguf
    /// file or a model directory.
    pub source: String,
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `kaizen export`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::default();
    let source = kaizen_learner::resolve_model_source(&args.source)?;
    let policy =
        Policy::load(&source, &device).with_context(|| format!("loading `{}`", args.source))?;
    policy
        .save_dir(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("exported {} to {}", policy.name, args.out.display());
    Ok(())
}
