//! A user's reward over whole GRPO groups: the hook behind `[grpo] reward_source = "group"`.
//!
//! An environment sees one episode at a time; some rewards need the whole group of a prompt's
//! `num_generations` episodes — a vote, a ranking, a diversity bonus, a judge that compares the
//! samples side by side. The learner calls a [`GroupReward`] once a group's episodes are all in
//! (before DAPO's dynamic sampling judges the group) and trains on the rewards it writes.
//! kaizen's own group rewards (majority vote, Co-Reward) are built in; this trait is for yours,
//! registered by name with [`crate::Registry::register_group_reward`].

use std::collections::BTreeMap;

use super::majority_vote::GroupMember;

/// Per member of a group: the metrics to log for it (as `env/<key>`, averaged over the step's
/// episodes that have the key), or why it must be rejected (the episode becomes a
/// `fault/bad_outcome`, counted, never trained).
pub type MemberVerdict = Result<BTreeMap<String, f64>, String>;

/// A reward computed over one prompt's whole group of episodes.
///
/// ```
/// use std::collections::BTreeMap;
/// use kaizen_envs::rewards::{GroupMember, GroupReward, MemberVerdict};
///
/// /// The shortest final answer of the group earns 1, the others 0 (ties: the first).
/// struct Shortest;
///
/// impl GroupReward for Shortest {
///     fn relabel(&self, group: &mut [GroupMember<'_>]) -> Vec<MemberVerdict> {
///         let len = |m: &GroupMember<'_>| m.texts.last().map_or(usize::MAX, |t| t.len());
///         let best = (0..group.len()).min_by_key(|&i| len(&group[i]));
///         group
///             .iter_mut()
///             .enumerate()
///             .map(|(i, m)| {
///                 let reward = if Some(i) == best { 1.0 } else { 0.0 };
///                 for rewards in m.trajectory.outcome.rewards.values_mut() {
///                     rewards.iter_mut().for_each(|r| *r = reward);
///                 }
///                 Ok(BTreeMap::from([("shortest".to_string(), reward as f64)]))
///             })
///             .collect()
///     }
/// }
/// ```
pub trait GroupReward: Send + Sync {
    /// Rewrites the rewards of `group` — one prompt's episodes that produced a trajectory, each
    /// with its turns' texts, one per segment — in place: `trajectory.outcome.rewards[agent][k]`
    /// is the reward of the agent's `k`-th turn, and the list's length must stay the agent's
    /// number of turns. Returns one [`MemberVerdict`] per member, in order; a missing verdict
    /// rejects its member.
    fn relabel(&self, group: &mut [GroupMember<'_>]) -> Vec<MemberVerdict>;
}
