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
    /// How weight versions reach actor processes: `"grpc"` (chunks over each actor's weights
    /// stream) or `"nccl"` (a broadcast in an NCCL group of the learner and the actor
    /// processes that also set it, on GPU nodes; needs `--features gpu`; docs/cluster.md).
    pub weights_transport: WeightsTransport,
}

/// `cluster.weights_transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsTransport {
    /// Chunks over each actor process's gRPC weights stream.
    #[default]
    Grpc,
    /// One NCCL broadcast per version to the actor processes that join the learner's weights
    /// group (chunks for the others, and whenever the group fails).
    Nccl,
}

impl ClusterConfig {
    /// Checks the ranges serde cannot.
    ///
    /// # Errors
    /// A message naming the key, its value and the range expected.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value, at_most) in [
            ("cluster.peer_timeout_s", self.peer_timeout_s, 86_400.0),
            (
                "cluster.join_timeout_s",
                self.join_timeout_s,
                7.0 * 86_400.0,
            ),
            (
                "cluster.reconnect_timeout_s",
                self.reconnect_timeout_s,
                7.0 * 86_400.0,
            ),
            ("cluster.shutdown_grace_s", self.shutdown_grace_s, 86_400.0),
            ("cluster.max_message_mib", self.max_message_mib, 4096.0),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= at_most) {
                return Err(format!(
                    "`{key}` = {value}: expected a number in (0, {at_most}]"
                ));
            }
        }
        if self.peer_timeout_s < 0.05 {
            return Err(format!(
                "`cluster.peer_timeout_s` = {}: expected at least 0.05 (heartbeats go every third \
                 of it)",
                self.peer_timeout_s
            ));
        }
        if self.max_message_mib < 0.01 {
            return Err(format!(
                "`cluster.max_message_mib` = {}: expected at least 0.01 (10 KiB; a report of a \
                 two-turn episode is about 1 KB)",
                self.max_message_mib
            ));
        }
        for (key, value) in [
            ("cluster.actor_processes", self.actor_processes),
            ("cluster.learners", self.learners),
            ("cluster.weights_chunk_kib", self.weights_chunk_kib),
        ] {
            if value == 0 {
                return Err(format!("`{key}` = 0: expected at least 1"));
            }
        }
        Ok(())
    }
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
            weights_transport: WeightsTransport::Grpc,
        }
    }
}
