//! `[cluster]`: how the processes of a multi-process job find and judge each other
//! (`kaizen launch`; ignored by `kaizen train`, which runs everything in one process).

use serde::{Deserialize, Serialize};

/// `[cluster]`. Rank, world size and the coordinator's address come from the launcher's
/// environment (torchrun, Slurm) or `kaizen launch` flags; this section holds what they do not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Actor processes the learner waits for before training starts (more may join later).
    pub actor_processes: usize,
    /// Ranks `0..learners` of a launch are learner ranks, the others actor processes, when
    /// roles come from the launcher's rank (`--role auto`).
    pub learners: usize,
    /// The coordinator's port when the launcher gives none (`MASTER_PORT` wins). torchrun's
    /// default.
    pub port: u16,
    /// A peer silent this long is declared dead and named in the log, seconds.
    pub peer_timeout_s: f64,
    /// Longest the learner waits for `actor_processes` to join, seconds.
    pub join_timeout_s: f64,
    /// Longest an actor process keeps trying to reach a coordinator that went away (it may be
    /// restarting from its checkpoint), seconds.
    pub reconnect_timeout_s: f64,
    /// Largest message a peer may send (an episode report), MiB.
    pub max_message_mib: f64,
    /// Size of one weight-transfer chunk, KiB.
    pub weights_chunk_kib: usize,
    /// Longest the learner waits at the end for episodes still being played, seconds.
    pub shutdown_grace_s: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            actor_processes: 1,
            learners: 1,
            port: 29500,
            peer_timeout_s: 30.0,
            join_timeout_s: 600.0,
            reconnect_timeout_s: 300.0,
            max_message_mib: 64.0,
            weights_chunk_kib: 1024,
            shutdown_grace_s: 30.0,
        }
    }
}
