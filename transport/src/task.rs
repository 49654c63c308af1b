//! What actors are asked to play and what they report back.

use std::collections::BTreeMap;

use kaizen_core::{SamplingOverrides, Trajectory};
use kaizen_envs::{Fault, Turn};
use serde::{Deserialize, Serialize};

/// One episode to play.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeTask {
    /// Unique id; becomes the trajectory id.
    pub id: u64,
    /// Episodes of one group share the environment seed (the G samples of a GRPO group).
    pub group_id: u64,
    /// Index of the environment in the actor's environment list.
    pub env: usize,
    /// Environment seed (decides the problem).
    pub seed: u64,
    /// Index of this sample within its group.
    pub sample: u32,
    /// Seed of the episode's sampling streams (one stream per turn, derived from it).
    pub sampling_seed: u64,
    /// Sampling changes for every turn of this episode (e.g. greedy evaluation), applied
    /// before the environment's own per-request overrides.
    #[serde(default)]
    pub sampling: SamplingOverrides,
    /// The turns (1-based, counting the episode's requests) at which the policy is shown the
    /// environment's hint (`kaizen_envs::Env::hint`, the gold answer): STaR's
    /// rationalisation. Hinted turns are recorded without the hint (see
    /// [`kaizen_core::Request::hint`]); their behaviour log-probs belong to the hinted context,
    /// so such episodes are supervised data only and the RL trainer rejects them. Empty for
    /// every ordinary episode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hint_turns: Vec<u32>,
}

/// A finished episode: its trajectory (or the fault that ended it), metrics and readable turns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpisodeReport {
    /// The task that was played.
    pub task: EpisodeTask,
    /// The environment's name.
    pub env: String,
    /// The trajectory, or the cause of the fault that ended the episode early.
    pub result: Result<Trajectory, Fault>,
    /// Episode metrics (the outcome's, plus `fault` and `fault/<kind>`).
    pub metrics: BTreeMap<String, f64>,
    /// The conversation as text (requests and answers), for trajectory samples.
    pub turns: Vec<Turn>,
}

impl EpisodeReport {
    /// The report of an episode that `fault` ended before it had a trajectory (no turns), with
    /// the `fault` and `fault/<kind>` metrics the runtime counts.
    pub fn faulted(task: EpisodeTask, env: String, fault: Fault) -> Self {
        let metrics = BTreeMap::from([
            ("fault".to_string(), 1.0),
            (fault.kind.metric().to_string(), 1.0),
        ]);
        Self {
            task,
            env,
            result: Err(fault),
            metrics,
            turns: Vec::new(),
        }
    }
}
