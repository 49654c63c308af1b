//! `kaizen device-check OUT.json` (feature `gpu`): the GPU machine's checks — environment,
//! logits parity with the CPU path, NCCL bandwidth, decode tokens/s — as one JSON file. The
//! same checks as the standalone `kaizen-device-check` binary that `scripts/device/check.sh`
//! carries to a GPU machine; see docs/gpu.md.

use std::path::PathBuf;

use anyhow::Context;
use kaizen_gpu::device_check::{Options, run as run_checks};

/// Arguments of `kaizen device-check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the JSON summary.
    pub out: PathBuf,
    /// `auto` (SmolLM2 from the kaizen cache, else random weights of its shape), `random`,
    /// `smollm2`, a `.gguf` file or a Hugging Face model directory.
    #[arg(long, default_value = "auto")]
    pub model: String,
    /// The GPU to use.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

/// Runs `kaizen device-check`: writes the summary, fails when a check failed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = Options {
        model: args.model,
        ordinal: args.gpu,
        ..Options::default()
    };
    let summary = run_checks(&options);
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    if summary["ok"].as_bool() != Some(true) {
        anyhow::bail!(
            "a device check failed; see {} (sections with \"error\", or parity over its bound)",
            args.out.display()
        );
    }
    Ok(())
}
