//! What actors are asked to play and what they report back.

use std::collections::BTreeMap;

use kaizen_core::{SamplingOverrides, Trajectory};
use kaizen_envs::search::{TreeNode, TreeSearch};
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
    /// Search this episode as a tree (`kaizen_envs::search`, MCTS over its turns) instead of
    /// playing it once: the report's own trajectory is the first rollout (the ordinary
    /// episode) and [`EpisodeReport::tree`] holds the tree and the other rollouts. Only on
    /// environments that can fork. `None` for every ordinary episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<TreeSearch>,
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
    /// The searched tree, when the task asked for a search ([`EpisodeTask::search`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<SearchReport>,
}

/// One rollout of a report, borrowed: its node path, result, metrics and turns.
pub type RolloutView<'a> = (
    &'a [usize],
    &'a Result<Trajectory, Fault>,
    &'a BTreeMap<String, f64>,
    &'a [Turn],
);

/// A searched episode's tree and its rollouts after the first (which is the report's own
/// trajectory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    /// The tree's nodes; node 0 is the root, each with its visits and mean return (the
    /// per-step value of the state it stands for).
    pub nodes: Vec<TreeNode>,
    /// The node path of the report's own rollout (the first).
    pub path: Vec<usize>,
    /// The other rollouts, in the order they were played.
    pub rollouts: Vec<RolloutReport>,
}

/// One rollout of a searched episode after the first: a whole episode from `reset` (the
/// prefix it shares with its tree included).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutReport {
    /// Node ids from the root; turns past the last node were not made nodes.
    pub path: Vec<usize>,
    /// The trajectory (its id is the task's), or the fault that ended the rollout.
    pub result: Result<Trajectory, Fault>,
    /// Episode metrics, as [`EpisodeReport::metrics`].
    pub metrics: BTreeMap<String, f64>,
    /// The conversation as text.
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
            tree: None,
        }
    }

    /// Every rollout of this report, its own first: `(path, result, metrics, turns)`. One item
    /// for an episode that was not searched (its path is empty).
    pub fn rollouts(&self) -> impl Iterator<Item = RolloutView<'_>> {
        let own = (
            self.tree.as_ref().map_or(&[][..], |t| &t.path[..]),
            &self.result,
            &self.metrics,
            &self.turns[..],
        );
        let rest = self.tree.iter().flat_map(|t| {
            t.rollouts
                .iter()
                .map(|r| (&r.path[..], &r.result, &r.metrics, &r.turns[..]))
        });
        std::iter::once(own).chain(rest)
    }
}
