//! # kaizen-cluster
//!
//! Where a job's parts run. The learner's training loop reaches its actors only through
//! `kaizen-transport`'s interfaces, started by a [`kaizen_learner::Launcher`]; this crate has
//! the launchers and the actor role:
//!
//! - [`LocalLauncher`]: actors as tokio tasks in this process (`kaizen train`).
//! - [`CoordinatorLauncher`]: the learner serves a gRPC coordinator; actor processes on any
//!   host join it ([`run_actor`]) — `kaizen launch`.
//! - [`LaunchEnv`]: rank, world size and the coordinator's address from torchrun's or Slurm's
//!   environment variables.
//! - `MpiCollective` (feature `mpi`): the data-parallel learner's all-reduce over MPI.
#![warn(missing_docs)]

mod actor;
mod error;
mod launch_env;
mod local;
#[cfg(feature = "mpi")]
mod mpi;
mod remote;

pub use actor::{ActorOptions, ActorSummary, run_actor};
pub use error::ClusterError;
pub use launch_env::{LaunchEnv, first_host};
pub use local::{LocalLauncher, actor_config};
#[cfg(feature = "mpi")]
pub use mpi::MpiCollective;
pub use remote::{CoordinatorLauncher, job_fingerprint};
