//! `kaizen`: the command line. Thin: parses arguments, calls the library crates, reports errors.

mod actors_device;
mod allocator;
mod commands;
mod learner_device;
mod weights_groups;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

/// kaizen: reinforcement learning for LLM self-improvement.
#[derive(Parser, Debug)]
#[command(name = "kaizen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the registered environments, or play one episode in the terminal.
    Envs(commands::envs::Args),
    /// Measure generation and training throughput on this machine (JSON lines).
    Bench(commands::bench::Args),
    /// Evaluate a checkpoint or model on a job's held-out problems (accuracy per turn, pass@k).
    Eval(commands::eval::Args),
    /// Export a model (a checkpoint, GGUF file or directory) as a Hugging Face directory.
    Export(commands::export::Args),
    /// Generate text with a model (the built-in tiny model or a checkpoint) and print tokens/s.
    Generate(commands::generate::Args),
    /// List, show and sync runs of the local run store (`runs/<experiment>/<run-id>/`).
    Runs(commands::runs::Args),
    /// Train a policy: `kaizen train configs/<job>.toml [--set key=value]... [--resume RUN_DIR]`.
    Train(commands::train::Args),
    /// Run one process of a multi-process job (learner or actor), as torchrun, Slurm or
    /// Kubernetes starts it: `kaizen launch configs/<job>.toml [--role learner|actor]`.
    Launch(commands::launch::Args),
    /// Serve a model behind an OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`):
    /// `kaizen serve MODEL [--port 8000]`.
    Serve(commands::serve::Args),
    /// Plot metric curves of one or several runs, overlaid, to a PNG or SVG file.
    Report(commands::report::Args),
    /// Check the GPU path on this machine (feature `gpu`): environment, logits parity with the
    /// CPU path, NCCL bandwidth, decode tokens/s, as one JSON file.
    #[cfg(feature = "gpu")]
    DeviceCheck(commands::device_check::Args),
}

/// Whether console logs get ANSI colours: only on a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>). Logs written to a file or a pipe (CI, `2>
/// log.txt`, `| tee`) stay plain text.
fn colour_logs(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .init();
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Envs(args) => commands::envs::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Launch(args) => commands::launch::run(args),
        #[cfg(feature = "gpu")]
        Command::DeviceCheck(args) => commands::device_check::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::colour_logs;

    /// Guards against ANSI colour codes in logs written to a file or pipe (issue 14.6); the
    /// end-to-end check is `tests/logs.rs`.
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(!colour_logs(false, None), "a file or a pipe");
        assert!(!colour_logs(true, Some("1".into())), "NO_COLOR=1");
        assert!(
            colour_logs(true, Some("".into())),
            "an empty NO_COLOR does not count"
        );
    }
}
