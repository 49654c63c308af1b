//! `kaizen train`: run a training job from a TOML config.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use burn::tensor::Device;
use kaizen_learner::{JobConfig, TrainOptions, train};

/// Arguments of `kaizen train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job config (TOML). With `--resume`, defaults to the run's saved `config.toml`.
    pub config: Option<PathBuf>,
    /// Override any config field: `--set optim.learning_rate=1e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue a run directory (`runs/<experiment>/<run-id>`) from its newest checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar (log lines instead).
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs `kaizen train`: every part of the job in this process.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (config_path, config, resolved) = load(&args)?;
    // The GPU the actors sample on (`actors.device = "cuda"`), as the learner's.
    let local_rank = kaizen_cluster::LaunchEnv::from_env()?.map_or(0, |e| e.local_rank);
    let launcher = kaizen_cluster::LocalLauncher {
        device: crate::actors_device::device(&config, local_rank)?,
    };
    run_job(
        &args,
        &config_path,
        config,
        resolved,
        Arc::new(launcher),
        None,
    )
}

/// The job config of `args` (its own file, or the resumed run's), resolved with overrides.
pub(crate) fn load(args: &Args) -> anyhow::Result<(PathBuf, JobConfig, toml::Table)> {
    let config_path = match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run)) => run.join("config.toml"),
        (None, None) => anyhow::bail!("give a config file, or --resume RUN_DIR"),
    };
    let (config, resolved) = JobConfig::load(&config_path, &args.overrides)?;
    Ok((config_path, config, resolved))
}

/// Trains `config` with actors started by `launcher`, and prints the summary.
pub(crate) fn run_job(
    args: &Args,
    config_path: &std::path::Path,
    config: JobConfig,
    resolved: toml::Table,
    launcher: Arc<dyn kaizen_learner::Launcher>,
    collective: Option<Box<dyn kaizen_learner::Collective>>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nkaizen: second stop signal, exiting now");
                std::process::exit(130);
            }
            eprintln!(
                "\nkaizen: stopping after this step (checkpoint, then exit); Ctrl-C again to abort"
            );
        })?;
    }
    // The GPU the learner's training pass uses (`learner.device = "cuda"`): the launcher's
    // local rank, 0 for `kaizen train`.
    let local_rank = kaizen_cluster::LaunchEnv::from_env()?.map_or(0, |e| e.local_rank);
    let backend = crate::learner_device::backend(&config, local_rank)?;
    let options = TrainOptions {
        device: Device::default(),
        stop,
        progress: !args.no_progress,
        registry: super::registry(),
        resume: args.resume.clone(),
        launcher,
        collective,
        backend,
    };
    let summary = train(config, resolved, options)
        .with_context(|| format!("training job {}", config_path.display()))?;
    println!("run: {}", summary.run_dir.display());
    println!("steps: {} ({:?})", summary.steps, summary.status);
    let show = |label: &str, eval: &Option<std::collections::BTreeMap<String, f64>>| {
        if let Some(eval) = eval {
            let line: Vec<String> = eval
                .iter()
                .filter(|(k, _)| {
                    k.contains("correct@t") || k.contains("pass@") || k.contains("delta")
                })
                .map(|(k, v)| format!("{k}={v:.3}"))
                .collect();
            println!("{label}: {}", line.join(" "));
        }
    };
    show("eval before the warm start", &summary.eval_base);
    let before = if summary.eval_base.is_some() {
        "eval before RL"
    } else {
        "eval before"
    };
    show(before, &summary.eval_start);
    show("eval after", &summary.eval_end);
    let e = summary.episodes;
    println!(
        "episodes: submitted {} reported {} trained {} faulted {} unused {}",
        e.submitted, e.reported, e.trained, e.faulted, e.unused
    );
    Ok(())
}

/// Installs a handler for Ctrl-C (SIGINT) and, on Unix, SIGTERM (what Slurm, Kubernetes and
/// `kill` send to stop a job) on a small background runtime.
fn ctrlc_handler(on_signal: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    #[cfg(unix)]
    let mut term = {
        let _guard = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?
    };
    std::thread::Builder::new()
        .name("kaizen-signal".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    #[cfg(unix)]
                    let got = tokio::select! {
                        r = tokio::signal::ctrl_c() => r.is_ok(),
                        r = term.recv() => r.is_some(),
                    };
                    #[cfg(not(unix))]
                    let got = tokio::signal::ctrl_c().await.is_ok();
                    if !got {
                        break;
                    }
                    on_signal();
                }
            })
        })
        .context("signal thread")?;
    Ok(())
}
