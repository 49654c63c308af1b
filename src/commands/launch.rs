//! `kaizen launch`: one process of a multi-process job — the learner (which serves the
//! coordinator) or an actor process — as a launcher (torchrun, Slurm, Kubernetes) starts it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_cluster::{ActorOptions, CoordinatorLauncher, LaunchEnv, job_fingerprint, run_actor};
use kaizen_envs::Registry;

use super::train;

/// This process's part in the job.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// From the launcher's rank: ranks below `cluster.learners` learn, the others act.
    Auto,
    /// The learner (rank 0 serves the coordinator that actor processes join).
    Learner,
    /// An actor process: joins the coordinator, plays episodes, streams them back.
    Actor,
}

/// Arguments of `kaizen launch`: `kaizen train`'s, plus where this process stands.
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub job: train::Args,
    /// This process's role.
    #[arg(long, value_enum, default_value = "auto")]
    pub role: Role,
    /// Rank in the launch (else `RANK` / `SLURM_PROCID`).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Processes in the launch (else `WORLD_SIZE` / `SLURM_NTASKS`).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// The coordinator's `host:port` (else `MASTER_ADDR`:`MASTER_PORT`, Slurm's first node, or
    /// `127.0.0.1`; the port defaults to `cluster.port`). The learner listens on its port.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// A name for the coordinator's logs (default `host:pid`).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `kaizen launch`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (config_path, config, resolved) = train::load(&args.job)?;
    let env = LaunchEnv::from_env()?;
    let rank = args.rank.or(env.as_ref().map(|e| e.rank));
    let role = match args.role {
        Role::Auto => match rank {
            Some(r) if r < config.cluster.learners => Role::Learner,
            Some(_) => Role::Actor,
            None => anyhow::bail!(
                "no rank: pass --role learner|actor (or --rank), or start kaizen under a launcher \
                 that sets RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS (srun)"
            ),
        },
        role => role,
    };
    if role == Role::Learner && rank.unwrap_or(0) > 0 {
        anyhow::bail!(
            "learner rank {} of `cluster.learners` = {}: the data-parallel learner is not built \
             yet; use one learner rank",
            rank.unwrap_or(0),
            config.cluster.learners
        );
    }
    let port = env
        .as_ref()
        .and_then(|e| e.master_port)
        .unwrap_or(config.cluster.port);
    let coordinator = match &args.coordinator {
        Some(c) => c.clone(),
        None => {
            let host = env
                .as_ref()
                .and_then(|e| e.master_addr.clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            format!("{host}:{port}")
        }
    };
    let fingerprint = job_fingerprint(&resolved);
    match role {
        Role::Learner => {
            let port = coordinator
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .with_context(|| format!("coordinator {coordinator:?}: expected host:port"))?;
            let bind = SocketAddr::from(([0, 0, 0, 0], port));
            tracing::info!(%bind, fingerprint, "learner: serving the coordinator");
            let launcher = CoordinatorLauncher { bind, fingerprint };
            train::run_job(
                &args.job,
                &config_path,
                config,
                resolved,
                Arc::new(launcher),
            )
        }
        Role::Actor | Role::Auto => {
            // Resolve once here so a typo in the host fails fast with its name.
            coordinator
                .to_socket_addrs()
                .with_context(|| format!("coordinator address {coordinator:?}"))?;
            let name = args.name.clone().unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "actor".into());
                format!("{host}:{}", std::process::id())
            });
            tracing::info!(%coordinator, %name, "actor process: joining");
            let summary = run_actor(
                &config,
                ActorOptions {
                    coordinator,
                    name,
                    fingerprint,
                    device: Device::default(),
                    registry: Registry::with_builtins(),
                },
            )?;
            println!(
                "actor: {} reports, {} sessions, {} weight versions",
                summary.reports, summary.sessions, summary.weight_versions
            );
            Ok(())
        }
    }
}
