//! # kaizen-transport
//!
//! The seam between the learner and the actors. Both sides meet only through:
//!
//! - [`EpisodeTask`] / [`EpisodeReport`]: what actors are asked to play and what comes back;
//! - [`Rollouts`]: submit tasks, receive reports;
//! - [`WeightSink`]: publish whole-model weight versions;
//! - [`SamplingConfig`] and [`derive_seed`]: the job's sampling contract.
//!
//! In one process, `kaizen_actors` implements these with bounded channels. Across processes
//! and hosts, [`wire`] implements them over gRPC (tonic): the learner's rank 0 runs a
//! [`wire::Coordinator`] server, actor processes join it with [`wire::ActorLink`].
#![warn(missing_docs)]

mod error;
mod rollouts;
mod sampling;
mod task;
pub mod wire;

pub use error::Error;
pub use rollouts::{Rollouts, WeightSink};
pub use sampling::{SamplingConfig, derive_seed};
pub use task::{EpisodeReport, EpisodeTask, RolloutReport, RolloutView, SearchReport};
