//! `kaizen`: the command line. Thin: parses arguments, calls the library crates, reports errors.

mod allocator;
mod commands;

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
    /// Plot metric curves of one or several runs, overlaid, to a PNG or SVG file.
    Report(commands::report::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
        Command::Report(args) => commands::report::run(args),
        Command::Train(args) => commands::train::run(args),
    }
}
