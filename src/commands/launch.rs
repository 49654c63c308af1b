//! `kaizen launch`: one process of a multi-process job — the learner (which serves the
//! coordinator) or an actor process — as a launcher (torchrun, Slurm, Kubernetes) starts it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::Device;
use kaizen_cluster::{ActorOptions, CoordinatorLauncher, LaunchEnv, job_fingerprint, run_actor};
#[cfg(feature = "mpi")]
use kaizen_learner::Collective;

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
    let world_size = args.world_size.or(env.as_ref().map(|e| e.world_size));
    match (rank, world_size) {
        (_, Some(0)) => anyhow::bail!("--world-size 0: a launch has at least one process"),
        (Some(r), Some(w)) if r >= w => {
            anyhow::bail!("--rank {r} is not below --world-size {w} (ranks are 0..world size)")
        }
        (_, Some(w)) if w <= config.cluster.learners && args.role == Role::Auto => {
            anyhow::bail!(
                "world size {w} leaves no actor process: ranks 0..{} are learners \
                 (`cluster.learners`); launch more processes",
                config.cluster.learners
            )
        }
        _ => {}
    }
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
    // Learner ranks form an MPI group of their own (`mpirun -n L kaizen launch --role
    // learner`); MPI gives each its rank. A learner of one needs no MPI.
    // The GPU of this process (`learner.device = "cuda"`, `learner.collective = "nccl"`).
    let local_rank = env.as_ref().map_or(0, |e| e.local_rank);
    let group = if role == Role::Learner {
        crate::learner_device::check(&config)?;
        learner_group(&config)?
    } else {
        None
    };
    let group = match group {
        Some(group) if group.rank() > 0 => {
            let rank = group.rank();
            tracing::info!(rank, world = group.world_size(), "learner follower rank");
            let collective = learner_group_box(&config, group, local_rank)?;
            let backend = crate::learner_device::backend(&config, local_rank)?;
            let steps =
                kaizen_learner::follow(&config, collective, &Device::default(), backend.as_ref())?;
            println!("learner rank {rank}: {steps} data-parallel steps");
            return Ok(());
        }
        group => group,
    };
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
            let launcher = CoordinatorLauncher {
                bind,
                fingerprint,
                weights_groups: crate::weights_groups::groups(&config, local_rank)?,
            };
            let collective = group
                .map(|g| learner_group_box(&config, g, local_rank))
                .transpose()?;
            train::run_job(
                &args.job,
                &config_path,
                config,
                resolved,
                Arc::new(launcher),
                collective,
            )
        }
        Role::Actor | Role::Auto => {
            // Not resolved here: the learner's host name may appear only once it is up (a
            // Kubernetes headless Service); the actor retries for `cluster.reconnect_timeout_s`.
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
                    decode: crate::actors_device::device(&config, local_rank)?,
                    registry: super::registry(),
                    weights_groups: crate::weights_groups::groups(&config, local_rank)?,
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

/// The learner's data-parallel group: MPI when the learner ranks were started by an MPI
/// launcher with more than one rank (or `cluster.learners` > 1); `None` for a learner of one.
#[cfg(feature = "mpi")]
fn learner_group(config: &kaizen_learner::JobConfig) -> anyhow::Result<Option<MpiGroup>> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .max()
        .unwrap_or(1);
    if launched <= 1 && config.cluster.learners <= 1 {
        return Ok(None);
    }
    let group = kaizen_cluster::MpiCollective::init()?;
    if group.world_size() != config.cluster.learners {
        anyhow::bail!(
            "`cluster.learners` = {} but MPI started {} learner ranks: start them with \
             `mpirun -n {} kaizen launch ... --role learner`",
            config.cluster.learners,
            group.world_size(),
            config.cluster.learners
        );
    }
    Ok(Some(group))
}

#[cfg(feature = "mpi")]
type MpiGroup = kaizen_cluster::MpiCollective;

/// The learner ranks' collective: their MPI group, or NCCL met over it
/// (`learner.collective`).
#[cfg(feature = "mpi")]
fn learner_group_box(
    config: &kaizen_learner::JobConfig,
    group: MpiGroup,
    local_rank: usize,
) -> anyhow::Result<Box<dyn kaizen_learner::Collective>> {
    crate::learner_device::collective(config, group, local_rank)
}

/// Without the `mpi` feature a learner is one rank.
#[cfg(not(feature = "mpi"))]
fn learner_group(config: &kaizen_learner::JobConfig) -> anyhow::Result<Option<NoGroup>> {
    if config.cluster.learners > 1 {
        anyhow::bail!(
            "`cluster.learners` = {}: data-parallel learner ranks need kaizen built with the \
             `mpi` feature (cargo build --release --features mpi; Debian: libopenmpi-dev, \
             libclang-dev)",
            config.cluster.learners
        );
    }
    Ok(None)
}

/// No group: a build without MPI has learners of one rank.
#[cfg(not(feature = "mpi"))]
enum NoGroup {}

#[cfg(not(feature = "mpi"))]
impl NoGroup {
    fn rank(&self) -> usize {
        match *self {}
    }

    fn world_size(&self) -> usize {
        match *self {}
    }
}

#[cfg(not(feature = "mpi"))]
fn learner_group_box(
    _config: &kaizen_learner::JobConfig,
    group: NoGroup,
    _local_rank: usize,
) -> anyhow::Result<Box<dyn kaizen_learner::Collective>> {
    match group {}
}
