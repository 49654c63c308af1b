//! Training data from searched episodes (`[sft.self_generated] search`): every rollout of a
//! tree as an episode of its own, ReST-MCTS*'s per-step values as process rewards, and
//! Agent-R's reflection conversations.
//!
//! - **Rollouts** ([`expand`]): a searched report holds its first rollout and the tree with the
//!   others (`EpisodeReport::tree`); each becomes a report the round's filter sees like any
//!   episode, so none is lost.
//! - **Process rewards** (Zhang et al. 2024, "ReST-MCTS*", §3.2): with `process_rewards`, the
//!   reward of each turn the tree holds becomes the value of the state it led to — the mean
//!   return, from that turn on, of the tree's rollouts through that state (with 0/1 rewards,
//!   the share that succeeded; [`TreeNode::value`]) — and later turns get the rollout's own
//!   return from that turn on. A filter at `min_reward` then keeps the steps from which the
//!   policy usually succeeds (or, with rewards along the way, earns at least that much), not
//!   only the last action of a success.
//! - **Reflection** (Yuan et al. 2025, "Agent-R: Training Language Model Agents to Reflect via
//!   Iterative Self-Training", §3.2): a failed rollout is cut at its first error — the first
//!   state on its path from which no rollout succeeded, whose parent state has a successful
//!   rollout — and spliced with that success: the conversation up to the parent, the failed
//!   action and what the environment answered (context, not trained), then a revision turn
//!   ([`REVISION`] and the successful action) and the rest of the success (trained).

use std::collections::{BTreeMap, BTreeSet};

use kaizen_envs::Turn;
use kaizen_envs::search::{TreeNode, outcome_return, returns_to_go};
use kaizen_transport::EpisodeReport;

/// The revision signal that starts a reflection turn, before the action that succeeded.
pub(super) const REVISION: &str =
    "My last action was a mistake and led nowhere. Let me go back to the plan that works.";

/// Every rollout of `report` as a report of its own (the first is the report's own episode);
/// an unsearched report is returned as it is. With `process_rewards`, each trajectory's
/// rewards are replaced as the module docs say.
pub(super) fn expand(report: &EpisodeReport, process_rewards: bool) -> Vec<EpisodeReport> {
    let Some(tree) = &report.tree else {
        return vec![report.clone()];
    };
    report
        .rollouts()
        .map(|(path, result, metrics, turns)| {
            let mut result = result.clone();
            if process_rewards && let Ok(t) = &mut result {
                let to_go = returns_to_go(&t.outcome, turns);
                let mut index: BTreeMap<kaizen_core::AgentId, usize> = BTreeMap::new();
                for (k, turn) in turns.iter().enumerate() {
                    let i = index.entry(turn.request.agent.clone()).or_default();
                    let value = path
                        .get(k + 1)
                        .and_then(|&n| tree.nodes.get(n))
                        .and_then(TreeNode::value)
                        .unwrap_or(to_go[k]);
                    if let Some(r) = t
                        .outcome
                        .rewards
                        .get_mut(&turn.request.agent)
                        .and_then(|r| r.get_mut(*i))
                    {
                        *r = value as f32;
                    }
                    *i += 1;
                }
            }
            EpisodeReport {
                task: report.task.clone(),
                env: report.env.clone(),
                result,
                metrics: metrics.clone(),
                turns: turns.to_vec(),
                tree: None,
            }
        })
        .collect()
}

/// What the trees of a round found: `tree/*` metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TreeCounts {
    /// Searched episodes.
    pub trees: usize,
    /// Rollouts played in them.
    pub rollouts: usize,
    /// Rollouts whose return reached the threshold.
    pub successes: usize,
    /// Trees with at least one such rollout.
    pub solved: usize,
    /// Whether each tree's first rollout (the ordinary episode) succeeded, summed.
    pub first_successes: usize,
    /// Nodes made.
    pub nodes: usize,
    /// Reflection conversations made, and the depth (turn) of their first errors summed.
    pub reflections: usize,
    pub error_depth_sum: usize,
    /// Per depth (answers from the root, from 1): the sum of node values and the node count,
    /// for the mean per-step value by depth.
    pub depth_values: BTreeMap<usize, (f64, usize)>,
}

impl TreeCounts {
    /// `tree/*` and `reflection/*` metrics of a round.
    pub(super) fn metrics(&self) -> BTreeMap<String, f64> {
        let per_tree = |n: usize| n as f64 / self.trees.max(1) as f64;
        let mut m = BTreeMap::from([
            ("tree/trees".to_string(), self.trees as f64),
            ("tree/rollouts".to_string(), self.rollouts as f64),
            ("tree/nodes_per_tree".to_string(), per_tree(self.nodes)),
            (
                "tree/success".to_string(),
                self.successes as f64 / self.rollouts.max(1) as f64,
            ),
            // pass@1 of the ordinary episode against "any rollout of the tree": what the
            // search adds over sampling once.
            (
                "tree/first_success".to_string(),
                per_tree(self.first_successes),
            ),
            ("tree/solved".to_string(), per_tree(self.solved)),
            (
                "reflection/conversations".to_string(),
                self.reflections as f64,
            ),
        ]);
        for (depth, (sum, n)) in &self.depth_values {
            m.insert(format!("tree/value@depth{depth}"), sum / (*n).max(1) as f64);
        }
        if self.reflections > 0 {
            m.insert(
                "reflection/first_error_turn".into(),
                self.error_depth_sum as f64 / self.reflections as f64,
            );
        }
        m
    }
}

/// Counts `reports`' trees and makes their reflection conversations (chat lines
/// `{"messages": [...]}` with `"weight": 0` on untrained assistant messages), a rollout
/// succeeding when its return is at least `threshold`.
pub(super) fn reflections(
    reports: &[EpisodeReport],
    threshold: f64,
    make: bool,
) -> (Vec<serde_json::Value>, TreeCounts) {
    let mut counts = TreeCounts::default();
    let mut lines = Vec::new();
    for report in reports {
        let Some(tree) = &report.tree else { continue };
        let rollouts: Vec<(&[usize], &[Turn], f64)> = report
            .rollouts()
            .filter(|(_, result, _, _)| result.is_ok())
            .map(|(path, result, _, turns)| {
                let ret = result.as_ref().map_or(0.0, |t| outcome_return(&t.outcome));
                (path, turns, ret)
            })
            .collect();
        counts.trees += 1;
        counts.nodes += tree.nodes.len();
        for node in tree.nodes.iter().filter(|n| n.depth > 0) {
            if let Some(v) = node.value() {
                let e = counts.depth_values.entry(node.depth).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        counts.rollouts += report.rollouts().count();
        let wins = rollouts.iter().filter(|r| r.2 >= threshold).count();
        counts.successes += wins;
        counts.solved += usize::from(wins > 0);
        counts.first_successes += usize::from(
            report
                .result
                .as_ref()
                .is_ok_and(|t| outcome_return(&t.outcome) >= threshold),
        );
        if !make {
            continue;
        }
        // The nodes at least one successful rollout went through.
        let won: BTreeSet<usize> = rollouts
            .iter()
            .filter(|r| r.2 >= threshold)
            .flat_map(|r| r.0.iter().copied())
            .collect();
        let mut spliced: BTreeSet<usize> = BTreeSet::new();
        for (path, turns, ret) in &rollouts {
            if *ret >= threshold {
                continue;
            }
            let Some(k) = first_error(&won, path) else {
                continue;
            };
            // One conversation per wrong child.
            if !spliced.insert(path[k]) {
                continue;
            }
            let parent = path[k - 1];
            let good = rollouts
                .iter()
                .filter(|(p, t, r)| {
                    *r >= threshold
                        && p.get(k - 1) == Some(&parent)
                        && p.get(k) != Some(&path[k])
                        && t.len() >= k
                        && t[k - 1].answer != turns[k - 1].answer
                })
                .min_by_key(|(_, t, _)| t.len());
            if let Some((_, good, _)) = good
                && let Some(line) = splice(turns, good, k)
            {
                counts.reflections += 1;
                counts.error_depth_sum += k;
                lines.push(line);
            }
        }
    }
    (lines, counts)
}

/// The first node on `path` (its index in it, ≥ 1) from which no rollout succeeded while its
/// parent has a success below it (`won`: the nodes some successful rollout went through);
/// `None` when the path has none. Counting successes, not summing returns, keeps this exact
/// for any return scale.
fn first_error(won: &BTreeSet<usize>, path: &[usize]) -> Option<usize> {
    (1..path.len()).find(|&k| !won.contains(&path[k]) && won.contains(&path[k - 1]))
}

/// The messages `turns[k]`'s request adds after `turns[k - 1]`'s request and answer.
fn added(turns: &[Turn], k: usize) -> &[kaizen_core::Message] {
    let before = turns[k - 1].request.messages.len() + 1;
    turns[k].request.messages.get(before..).unwrap_or(&[])
}

/// The reflection conversation: `bad` up to its `k`-th answer (the error) and the environment's
/// reply to it, the revision turn with `good`'s `k`-th answer, then `good`'s remaining turns.
/// The revision turn opens with [`REVISION`] unless that turn was asked under guided choice
/// (its request's `sampling.choices`), where a reply can only be a choice.
/// `None` when the failed rollout ended at its error (nothing was observed after it).
fn splice(bad: &[Turn], good: &[Turn], k: usize) -> Option<serde_json::Value> {
    let message = |m: &kaizen_core::Message| {
        let mut v = serde_json::json!({"role": m.role, "content": m.content});
        if m.role == kaizen_core::Role::Assistant {
            v["weight"] = 0.into();
        }
        v
    };
    let assistant = |text: &str, weight: u8| serde_json::json!({"role": "assistant", "content": text, "weight": weight});
    if bad.len() <= k {
        return None;
    }
    let error = &bad[k - 1];
    let mut messages: Vec<serde_json::Value> = error.request.messages.iter().map(message).collect();
    messages.push(assistant(&error.answer, 0));
    let observed = added(bad, k);
    if observed.is_empty() {
        return None;
    }
    messages.extend(observed.iter().map(message));
    // A turn answered under guided choice (`sampling.choices`) can only be one of its choices:
    // its revision is the successful action alone, which the policy can write there.
    let revision = if good[k - 1].request.sampling.choices.is_empty() {
        format!("{REVISION}\n{}", good[k - 1].answer)
    } else {
        good[k - 1].answer.clone()
    };
    messages.push(assistant(&revision, 1));
    for t in k..good.len() {
        messages.extend(added(good, t).iter().map(message));
        messages.push(assistant(&good[t].answer, 1));
    }
    Some(serde_json::json!({ "messages": messages }))
}

#[cfg(test)]
mod tests {
    use kaizen_core::{AgentId, Message, Outcome, Request, Segment, Trajectory};
    use kaizen_transport::{EpisodeTask, RolloutReport, SearchReport};

    use super::*;

    fn node(parent: Option<usize>, depth: usize, visits: u32, value_sum: f64) -> TreeNode {
        TreeNode {
            parent,
            depth,
            action: None,
            visits,
            value_sum,
            terminal: false,
        }
    }

    /// A thread of `answers`: turn k's request repeats the thread and adds `obs k`.
    fn turns(answers: &[&str]) -> Vec<Turn> {
        let mut messages = vec![Message::user("start")];
        let mut out = Vec::new();
        for (k, a) in answers.iter().enumerate() {
            if k > 0 {
                messages.push(Message::assistant(answers[k - 1]));
                messages.push(Message::user(format!("after {}", answers[k - 1])));
            }
            out.push(Turn {
                request: Request::new("agent", messages.clone()),
                answer: a.to_string(),
            });
        }
        out
    }

    fn trajectory(n: usize, win: bool) -> Trajectory {
        let mut rewards = vec![0.0; n];
        if win {
            rewards[n - 1] = 1.0;
        }
        Trajectory {
            id: 1,
            env: "household".into(),
            seed: 3,
            group_id: 0,
            segments: (0..n)
                .map(|_| Segment {
                    agent: AgentId::from("agent"),
                    thread: 0,
                    prompt_tokens: vec![1],
                    completion_tokens: vec![2],
                    behavior_logprobs: vec![-0.1],
                    trainable: true,
                    temperature: 1.0,
                    weights_version: kaizen_core::WeightsVersion(0),
                    finish_reason: kaizen_core::FinishReason::Eos,
                    self_certainty: None,
                })
                .collect(),
            outcome: Outcome::single("agent", rewards),
        }
    }

    /// Root 0 → a (node 1, a dead end: its rollout fails) and b (node 2, wins); both rollouts
    /// take three actions.
    fn report() -> EpisodeReport {
        let bad = turns(&["go a", "look", "look"]);
        let good = turns(&["go b", "take x", "put x"]);
        let task = EpisodeTask {
            id: 1,
            group_id: 0,
            env: 0,
            seed: 3,
            sample: 0,
            sampling_seed: 9,
            sampling: Default::default(),
            hint_turns: Vec::new(),
            search: None,
        };
        EpisodeReport {
            task,
            env: "household".into(),
            result: Ok(trajectory(3, false)),
            metrics: BTreeMap::new(),
            turns: bad,
            tree: Some(SearchReport {
                nodes: vec![
                    node(None, 0, 2, 1.0),
                    node(Some(0), 1, 1, 0.0),
                    node(Some(0), 1, 1, 1.0),
                ],
                path: vec![0, 1],
                rollouts: vec![RolloutReport {
                    path: vec![0, 2],
                    result: Ok(trajectory(3, true)),
                    metrics: BTreeMap::new(),
                    turns: good,
                }],
            }),
        }
    }

    #[test]
    fn every_rollout_becomes_an_episode_and_process_rewards_are_state_values() {
        let r = report();
        let plain = expand(&r, false);
        assert_eq!(plain.len(), 2);
        assert!(plain.iter().all(|p| p.tree.is_none()));
        let rewards = |p: &EpisodeReport| {
            p.result.as_ref().unwrap().outcome.rewards[&AgentId::from("agent")].clone()
        };
        assert_eq!(rewards(&plain[1]), vec![0.0, 0.0, 1.0]);
        let valued = expand(&r, true);
        // Turn 0 led to node 1 (value 0) or node 2 (value 1); later turns take the return.
        assert_eq!(rewards(&valued[0]), vec![0.0, 0.0, 0.0]);
        assert_eq!(rewards(&valued[1]), vec![1.0, 1.0, 1.0]);
        assert_eq!(valued[1].turns[2].answer, "put x");
    }

    #[test]
    fn a_failure_is_spliced_at_its_first_error_with_the_sibling_that_succeeded() {
        let (lines, counts) = reflections(&[report()], 1.0, true);
        assert_eq!(counts.reflections, 1);
        assert_eq!(
            (
                counts.trees,
                counts.rollouts,
                counts.successes,
                counts.solved
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(counts.first_successes, 0);
        // Depth 1 holds the dead end (0) and the winning child (1).
        assert_eq!(counts.metrics()["tree/value@depth1"], 0.5);
        let messages = lines[0]["messages"].as_array().unwrap();
        let text: Vec<(String, String, Option<u64>)> = messages
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                    m["weight"].as_u64(),
                )
            })
            .collect();
        assert_eq!(text[0], ("user".into(), "start".into(), None));
        assert_eq!(
            text[1],
            ("assistant".into(), "go a".into(), Some(0)),
            "the error, not trained"
        );
        assert_eq!(
            text[2],
            ("user".into(), "after go a".into(), None),
            "what it led to"
        );
        assert_eq!(
            text[3],
            ("assistant".into(), format!("{REVISION}\ngo b"), Some(1))
        );
        assert_eq!(text[4].1, "after go b");
        assert_eq!(text[5], ("assistant".into(), "take x".into(), Some(1)));
        assert_eq!(text[7], ("assistant".into(), "put x".into(), Some(1)));
        assert_eq!(text.len(), 8);
        // Under guided choice the revision is the bare action: the only reply a choice allows.
        let mut guided = report();
        let choose = |turns: &mut Vec<Turn>| {
            for turn in turns {
                turn.request.sampling.choices = vec!["go a".into(), "go b".into()];
            }
        };
        choose(&mut guided.turns);
        if let Some(tree) = &mut guided.tree {
            for rollout in &mut tree.rollouts {
                choose(&mut rollout.turns);
            }
        }
        let (guided_lines, _) = reflections(&[guided], 1.0, true);
        let revision = &guided_lines[0]["messages"][3];
        assert_eq!(revision["content"], "go b");
        assert_eq!(revision["weight"], 1);
        assert_eq!(guided_lines[0]["messages"].as_array().unwrap().len(), 8);
        // Returns that are not 0/1: the dead end's summed returns (say three failures at 0.5)
        // pass the threshold, yet nothing through it succeeded — still the first error.
        let mut partial = report();
        if let Some(tree) = &mut partial.tree {
            tree.nodes[1].value_sum = 1.5;
        }
        let (again, _) = reflections(&[partial], 1.0, true);
        assert_eq!(again, lines);
        // No success in the tree: nothing to splice with.
        let mut lost = report();
        if let Some(tree) = &mut lost.tree {
            tree.rollouts[0].result = Ok(trajectory(3, false));
            tree.nodes[0].value_sum = 0.0;
            tree.nodes[2].value_sum = 0.0;
        }
        let (none, counts) = reflections(&[lost], 1.0, true);
        assert!(none.is_empty());
        assert_eq!(counts.solved, 0);
    }
}
