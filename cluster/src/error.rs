//! Errors of kaizen-cluster.

/// Errors of launching and running a job's processes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The launch is misconfigured (rank, world size, address, role).
    #[error("launch: {0}")]
    Launch(String),
    /// The transport failed (network, protocol, incompatible peer).
    #[error(transparent)]
    Transport(#[from] kaizen_transport::Error),
    /// Building the job's parts failed (environments, policy).
    #[error(transparent)]
    Learner(#[from] kaizen_learner::Error),
    /// The actors failed to start.
    #[error(transparent)]
    Actors(#[from] kaizen_actors::Error),
}
