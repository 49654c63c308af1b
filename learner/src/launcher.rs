//! How the training loop gets its actors: a [`Launcher`] starts them (in this process, or in
//! actor processes on other hosts) and hands back the two transport interfaces.

use kaizen_core::WeightsVersion;
use kaizen_envs::EnvSlot;
use kaizen_model::{ChatTemplate, Llama, Tokenizer};
use kaizen_transport::{Rollouts, WeightSink};

use crate::{Error, JobConfig};

/// What a launcher needs to start a job's actors.
pub struct ActorsSpec<'a> {
    /// The job (actor count, sampling, limits, mode).
    pub config: &'a JobConfig,
    /// The job's environments: training ones, then their evaluation variants
    /// ([`crate::build_envs`]). Remote actors build the same list from the same config.
    pub envs: &'a [EnvSlot],
    /// The policy's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat template requests are rendered with.
    pub template: &'a ChatTemplate,
    /// The weights to start from (an inference copy: not on an autodiff device).
    pub weights: Llama,
    /// Their version (a resumed run continues its numbering).
    pub version: WeightsVersion,
    /// Set when the job is asked to stop (a signal): a launcher waiting for actors gives up.
    pub stop: &'a std::sync::atomic::AtomicBool,
}

/// Started actors, as the learner sees them.
pub struct StartedActors {
    /// Where episodes are queued and reports come back.
    pub rollouts: Box<dyn Rollouts>,
    /// Where new weights are published.
    pub weights: Box<dyn WeightSink>,
}

/// Starts a job's actors. `kaizen-cluster` has the two implementations: actors in this process
/// (`LocalLauncher`) and actor processes joining a gRPC coordinator (`CoordinatorLauncher`).
pub trait Launcher: Send + Sync {
    /// Starts the actors of `spec`.
    ///
    /// # Errors
    /// Configuration, spawn and network errors.
    fn start(&self, spec: ActorsSpec<'_>) -> Result<StartedActors, Error>;
}
