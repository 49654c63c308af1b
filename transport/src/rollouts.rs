//! The two interfaces the learner and the actors meet through, wherever each runs.
//!
//! - [`Rollouts`]: the learner queues [`EpisodeTask`]s and receives [`EpisodeReport`]s.
//! - [`WeightSink`]: the learner publishes whole-model weight versions.
//!
//! In one process they are `kaizen_actors::ActorPool` and its weight broadcast (channels); across
//! processes they are [`crate::wire::Coordinator`] (gRPC). The learner's loop cannot tell which.

use std::collections::BTreeMap;

use kaizen_core::WeightsVersion;
use kaizen_model::Llama;

use crate::{EpisodeReport, EpisodeTask, Error};

/// The learner's view of the actors: where episodes are queued and their reports come back.
///
/// Contract (both implementations, tested on each):
/// - Tasks of one GRPO group (same `group_id`) are played by the same actor, so their shared
///   prompt is prefilled once and batches do not depend on timing.
/// - Every submitted task comes back exactly once as a report (a trajectory or a fault), or
///   among the leftovers of [`Rollouts::shutdown`]: nothing is dropped or duplicated, also when
///   an actor process dies (its unfinished tasks are played again elsewhere).
/// - The report queue is bounded: when the learner does not read, actors wait (backpressure).
pub trait Rollouts: Send {
    /// Queues episodes.
    ///
    /// # Errors
    /// [`Error::UnknownEnv`] for a task naming an environment the actors do not have (nothing
    /// is queued); [`Error::Closed`] after shutdown.
    fn submit_all(&self, tasks: Vec<EpisodeTask>) -> Result<(), Error>;

    /// The next finished episode, in completion order; blocks until one arrives.
    ///
    /// # Errors
    /// [`Error::Closed`] when the actors have stopped and nothing is left to read.
    fn recv(&self) -> Result<EpisodeReport, Error>;

    /// Reports waiting to be read now (the `queue_depth` metric).
    fn ready(&self) -> usize;

    /// Tokens sampled so far by all actors (completion tokens).
    fn generated_tokens(&self) -> u64;

    /// Transport counters logged with each step (`cluster/*` across processes; none in one
    /// process).
    fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// Stops accepting tasks, lets running episodes finish and returns every report not read
    /// yet (so the caller's episode accounting closes).
    fn shutdown(self: Box<Self>) -> Vec<EpisodeReport>;
}

/// The learner's end of the weight stream: one version per publish, picked up by every actor
/// between decode steps (rows already decoding finish with the weights they started with).
pub trait WeightSink: Send {
    /// Publishes `model` as the next version and returns that version.
    ///
    /// # Errors
    /// [`Error::Weights`] when the weights cannot be encoded for the network.
    fn publish(&self, model: Llama) -> Result<WeightsVersion, Error>;

    /// The newest published version.
    fn version(&self) -> WeightsVersion;
}
