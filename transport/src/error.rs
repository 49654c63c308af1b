//! Errors of kaizen-transport.

use crate::EpisodeTask;

/// Errors of the transport seam (in-process and network).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The actors have shut down; the task was not queued (it is returned).
    #[error("the actors have shut down; task {} was not queued", .0.id)]
    Closed(Box<EpisodeTask>),
    /// The actors stopped and no report is left to read.
    #[error("the actors stopped: {0}")]
    Stopped(String),
    /// A task names an environment index the actors do not have.
    #[error("task {task}: environment index {env} is out of range ({count} environments)")]
    UnknownEnv {
        /// Task id.
        task: u64,
        /// The index given.
        env: usize,
        /// Number of environments.
        count: usize,
    },
    /// A peer sent a message that is malformed, oversized or breaks the protocol.
    #[error("protocol error from {peer}: {message}")]
    Protocol {
        /// The peer (its name or address).
        peer: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A peer runs another protocol version or another job.
    #[error("{peer} cannot join: {message}")]
    Incompatible {
        /// The peer (its name or address).
        peer: String,
        /// The versions or fingerprints that differ.
        message: String,
    },
    /// Weights could not be encoded, sent or rebuilt.
    #[error("weights: {0}")]
    Weights(String),
    /// A network failure (connect, bind, stream).
    #[error("network: {0}")]
    Network(String),
}
