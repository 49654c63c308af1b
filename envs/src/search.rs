//! Tree search over an episode's turns: Monte-Carlo tree search with UCT (Kocsis & Szepesvári
//! 2006) on environments that can fork ([`Env::fork`]).
//!
//! A node is the state after a sequence of answers (the root: after `reset`). Each iteration
//! selects a node by UCT, forks its environment and its responder (the policy's conversation and
//! kept keys and values), samples one answer there, which makes or revisits a child, and plays
//! on to the end of the episode (a *rollout*); the rollout's return is backed up along its path,
//! each node taking the part earned from the answer that led to it on. A node's value is the
//! mean of those returns ([`TreeNode::value`]) — with 0/1 rewards, the share of the rollouts
//! through it that succeed: ReST-MCTS*'s per-step value (Zhang et al. 2024,
//! <https://arxiv.org/abs/2406.03816>, §3.2), usable as a process reward.
//!
//! Rollout 0 is exactly the ordinary episode of the same seeds: it starts at the root with the
//! responder's own sampling stream. The others sample from their own streams
//! ([`Branching::branch`]).

use kaizen_core::{AgentId, Outcome, Step};
use serde::{Deserialize, Serialize};

use crate::runner::{StepOwned, call_env, check_outcome, respond};
use crate::{Env, Episode, EpisodeLimits, Fault, FaultKind, Responder, Turn};

/// How an episode is searched (`[search]` in a job config; `EpisodeTask::search`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreeSearch {
    /// Rollouts (complete episodes) per tree, the first being the ordinary episode.
    pub rollouts: usize,
    /// Answers sampled at a node before UCT picks among its children instead (children with
    /// the same answer text are one child, so a confident policy makes fewer).
    pub branches: usize,
    /// UCT's exploration constant `c`: a child is picked by `Q + c·sqrt(ln N / n)` (`Q` its
    /// mean return, `n` its visits, `N` its parent's).
    pub exploration: f64,
    /// Answers below which nodes are made: states deeper than this are only rolled through.
    pub max_depth: usize,
}

impl Default for TreeSearch {
    fn default() -> Self {
        Self {
            rollouts: 8,
            branches: 2,
            exploration: 1.0,
            max_depth: 8,
        }
    }
}

impl TreeSearch {
    /// Checks the fields; the error names the field and what was expected.
    ///
    /// # Errors
    /// A message for `rollouts` or `branches` of 0, or a negative or non-finite `exploration`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rollouts == 0 {
            return Err("`rollouts` must be at least 1".into());
        }
        if self.branches == 0 {
            return Err("`branches` must be at least 1".into());
        }
        if !(self.exploration.is_finite() && self.exploration >= 0.0) {
            return Err(format!(
                "`exploration` must be a finite number ≥ 0, got {}",
                self.exploration
            ));
        }
        Ok(())
    }
}

/// A responder a tree search can fork.
pub trait Branching: Responder + Sized {
    /// A responder that continues this one's conversation (its threads and recorded turns) as
    /// rollout `rollout` of the tree: it samples from that rollout's stream (rollout 0: this
    /// responder's own) and keeps its own copy of what this one keeps between turns (the
    /// policy's keys and values), so later branches from this one are not disturbed.
    fn branch(&self, rollout: u32) -> Self;
}

/// One state of a search tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// The node this one's answer was given at (`None` for the root).
    pub parent: Option<usize>,
    /// Answers from the root (the root: 0); the answer that led here is turn `depth - 1`.
    pub depth: usize,
    /// The answer that led here from the parent (`None` for the root).
    pub action: Option<String>,
    /// Rollouts through this node.
    pub visits: u32,
    /// Sum of those rollouts' returns from the answer that led here on (the root: the whole
    /// return); see [`TreeNode::value`].
    pub value_sum: f64,
    /// Whether the episode ended here.
    pub terminal: bool,
}

impl TreeNode {
    /// Mean return of the rollouts through this node, counted from the answer that led here:
    /// that turn's reward and every later one, Q(s, a) of the parent's state s and this
    /// node's action a (the root: the whole return, V of the first state). With a reward only
    /// at the end (0/1) it is the share of the rollouts through here that succeeded. With
    /// rewards along the way (`household`'s subgoals) a reward earned before this node's
    /// action is not counted: a step is worth what it and its successors earn, as in MCTS
    /// with intermediate rewards. Siblings share their prefix, so UCT's choice among them is
    /// the same either way. `None` before any rollout.
    pub fn value(&self) -> Option<f64> {
        (self.visits > 0).then(|| self.value_sum / f64::from(self.visits))
    }
}

/// One played rollout: its episode, the tree nodes it went through and the responder that
/// played it (which holds, for the policy, the turns as tokens).
#[derive(Debug)]
pub struct Rollout<R> {
    /// Node ids from the root; the episode's turns past the last node were not made nodes.
    pub path: Vec<usize>,
    /// The rollout as an episode (from `reset`: the shared prefix included).
    pub episode: Episode,
    /// The responder, after the rollout's last answer.
    pub responder: R,
}

/// A searched episode.
#[derive(Debug)]
pub struct SearchOutcome<R> {
    /// The tree; node 0 is the root.
    pub nodes: Vec<TreeNode>,
    /// Every rollout in the order played; the first is the ordinary episode.
    pub rollouts: Vec<Rollout<R>>,
}

/// What a rollout is worth: the sum of every agent's rewards (0 for a fault).
pub fn episode_return(end: &std::result::Result<Outcome, Fault>) -> f64 {
    end.as_ref().map_or(0.0, outcome_return)
}

/// The reward of each of `turns` in `outcome`, in turn order: an agent's k-th turn takes its
/// k-th reward (0 where it has none, e.g. an agent that is not trained).
pub fn turn_rewards(outcome: &Outcome, turns: &[Turn]) -> Vec<f64> {
    let mut index: std::collections::BTreeMap<&AgentId, usize> = Default::default();
    turns
        .iter()
        .map(|turn| {
            let k = index.entry(&turn.request.agent).or_default();
            let r = outcome
                .rewards
                .get(&turn.request.agent)
                .and_then(|r| r.get(*k))
                .map_or(0.0, |&r| f64::from(r));
            *k += 1;
            r
        })
        .collect()
}

/// The return from each turn of `turns` on (`out[t]` = the sum of the turns' rewards from `t`;
/// `out[turns.len()]` = 0); every agent's rewards count, as in [`outcome_return`]. Rewards not
/// tied to a turn (an agent with more rewards than turns) are added to the first entry, so
/// `out[0]` is the whole return.
pub fn returns_to_go(outcome: &Outcome, turns: &[Turn]) -> Vec<f64> {
    let per_turn = turn_rewards(outcome, turns);
    let mut out = vec![0.0; per_turn.len() + 1];
    for t in (0..per_turn.len()).rev() {
        out[t] = out[t + 1] + per_turn[t];
    }
    out[0] += outcome_return(outcome) - per_turn.iter().sum::<f64>();
    out
}

/// The sum of every agent's rewards in `outcome`.
pub fn outcome_return(outcome: &Outcome) -> f64 {
    outcome
        .rewards
        .values()
        .flat_map(|r| r.iter())
        .map(|&r| f64::from(r))
        .sum()
}

/// The value of the state after each answer of a rollout that the tree holds
/// ([`TreeNode::value`] of `path[1..]`): ReST-MCTS*'s per-step values, one per turn from the
/// first, as far as the path goes.
pub fn step_values(nodes: &[TreeNode], path: &[usize]) -> Vec<f64> {
    path.iter()
        .skip(1)
        .map(|&n| nodes[n].value().unwrap_or(0.0))
        .collect()
}

struct Snapshot<R> {
    env: Box<dyn Env>,
    step: Step,
    responder: R,
    turns: Vec<Turn>,
}

struct Tree<R> {
    nodes: Vec<TreeNode>,
    children: Vec<Vec<usize>>,
    /// Answers sampled at each node so far.
    expansions: Vec<usize>,
    snapshots: Vec<Option<Snapshot<R>>>,
}

impl<R: Branching> Tree<R> {
    /// Whether nothing is left to sample below `n`: it is finished, or it has had its
    /// `branches` answers and every child is closed.
    fn closed(&self, n: usize, spec: &TreeSearch) -> bool {
        self.nodes[n].terminal
            || (self.expansions[n] >= spec.branches
                && self.nodes[n].depth < spec.max_depth
                && self.children[n].iter().all(|&c| self.closed(c, spec)))
    }

    /// The node the next rollout starts from: descend by UCT through nodes that have had their
    /// `branches` answers, among children that are not closed; `None` when the whole tree is.
    fn select(&self, spec: &TreeSearch) -> Option<usize> {
        if self.nodes[0].visits > 0 && self.closed(0, spec) {
            return None;
        }
        let mut n = 0;
        while self.nodes[n].depth < spec.max_depth && self.expansions[n] >= spec.branches {
            let ln_parent = f64::from(self.nodes[n].visits.max(1)).ln();
            let uct = |c: usize| {
                let node = &self.nodes[c];
                let visits = f64::from(node.visits.max(1));
                node.value().unwrap_or(0.0) + spec.exploration * (ln_parent / visits).sqrt()
            };
            let mut best: Option<usize> = None;
            for &c in &self.children[n] {
                if self.closed(c, spec) {
                    continue;
                }
                if best.is_none_or(|b| uct(c) > uct(b)) {
                    best = Some(c);
                }
            }
            n = best?;
        }
        Some(n)
    }

    fn path_to(&self, mut n: usize) -> Vec<usize> {
        let mut path = vec![n];
        while let Some(p) = self.nodes[n].parent {
            path.push(p);
            n = p;
        }
        path.reverse();
        path
    }

    /// Adds a rollout along `path` (node `path[j]` has depth j: the state after answer j-1);
    /// `to_go[t]` is its return from turn t on, `to_go[0]` the whole return (a faulted rollout:
    /// empty, every node backs up 0).
    fn backup(&mut self, path: &[usize], to_go: &[f64]) {
        for (j, &n) in path.iter().enumerate() {
            self.nodes[n].visits += 1;
            self.nodes[n].value_sum += to_go.get(j.saturating_sub(1)).copied().unwrap_or(0.0);
        }
    }
}

fn cannot_fork() -> Fault {
    Fault {
        kind: FaultKind::EnvError,
        message: "the environment cannot fork (`Env::fork` returned None); tree search needs \
                  one that can"
            .into(),
    }
}

/// Searches the episode of `env` from `seed` by MCTS: `spec.rollouts` rollouts, each answered
/// by a [`Branching::branch`] of `root` (rollout 0 by `root`'s own stream), with every
/// environment call and answer under `limits` as in [`crate::run_episode`]. A rollout that
/// faults is returned with its fault and backs up 0.
///
/// Fewer rollouts are played when the tree is exhausted: every node has had its `branches`
/// answers and every path below ends in a finished state. When `reset` fails the outcome has one rollout with that fault. Must run inside a tokio
/// runtime.
pub async fn search_episode<R: Branching>(
    env: Box<dyn Env>,
    seed: u64,
    root: R,
    limits: EpisodeLimits,
    spec: &TreeSearch,
) -> SearchOutcome<R> {
    let root_node = TreeNode {
        parent: None,
        depth: 0,
        action: None,
        visits: 0,
        value_sum: 0.0,
        terminal: false,
    };
    let (env, step) = match call_env(env, limits, move |env| env.reset(seed)).await {
        Ok(started) => started,
        Err(fault) => {
            let rollout = Rollout {
                path: vec![0],
                episode: Episode {
                    seed,
                    turns: Vec::new(),
                    end: Err(fault),
                },
                responder: root,
            };
            return SearchOutcome {
                nodes: vec![root_node],
                rollouts: vec![rollout],
            };
        }
    };
    let mut tree = Tree {
        nodes: vec![TreeNode {
            terminal: matches!(step, Step::Done(_)),
            ..root_node
        }],
        children: vec![Vec::new()],
        expansions: vec![0],
        snapshots: vec![Some(Snapshot {
            env,
            step,
            responder: root,
            turns: Vec::new(),
        })],
    };
    let mut rollouts = Vec::new();
    while rollouts.len() < spec.rollouts {
        let Some(n) = tree.select(spec) else {
            break;
        };
        let index = rollouts.len() as u32;
        let (path, episode, responder) = roll_out(&mut tree, n, index, seed, limits, spec).await;
        let to_go = episode
            .end
            .as_ref()
            .map_or_else(|_| Vec::new(), |o| returns_to_go(o, &episode.turns));
        tree.backup(&path, &to_go);
        rollouts.push(Rollout {
            path,
            episode,
            responder,
        });
    }
    SearchOutcome {
        nodes: tree.nodes,
        rollouts,
    }
}

/// Plays rollout `index` from node `n`: forks its state, makes (or revisits) the child its
/// first answer leads to, then plays to the end.
async fn roll_out<R: Branching>(
    tree: &mut Tree<R>,
    n: usize,
    index: u32,
    seed: u64,
    limits: EpisodeLimits,
    spec: &TreeSearch,
) -> (Vec<usize>, Episode, R) {
    let snapshot = tree.snapshots[n]
        .as_ref()
        .expect("every unfinished node keeps its state");
    let mut responder = snapshot.responder.branch(index);
    let mut turns = snapshot.turns.clone();
    let mut path = tree.path_to(n);
    let forked = snapshot.env.fork();
    let mut step = snapshot.step.clone();
    tree.expansions[n] += 1;
    let Some(mut env) = forked else {
        let episode = Episode {
            seed,
            turns,
            end: Err(cannot_fork()),
        };
        return (path, episode, responder);
    };
    let mut node = n;
    let mut expand = tree.nodes[n].depth < spec.max_depth;
    let end = loop {
        let request = match step {
            Step::Done(outcome) => break check_outcome(&outcome, &turns).map(|()| outcome),
            Step::Request(request) => request,
        };
        if turns.len() >= limits.max_turns {
            break Err(Fault {
                kind: FaultKind::TurnLimit,
                message: format!("more than {} requests", limits.max_turns),
            });
        }
        let answer = match respond(&mut responder, &request, limits).await {
            Ok(answer) => answer,
            Err(fault) => break Err(fault),
        };
        let agent = request.agent.clone();
        let text = answer.clone();
        turns.push(Turn { request, answer });
        match call_env(env, limits, move |env| env.step_owned(agent, text)).await {
            Ok((next_env, next_step)) => (env, step) = (next_env, next_step),
            Err(fault) => break Err(fault),
        }
        if !expand {
            continue;
        }
        // The first answer of the rollout makes a node (or revisits the sibling that gave the
        // same answer, whose state is the same: environments are deterministic).
        expand = false;
        let answer = turns.last().map(|t| t.answer.as_str());
        let existing = tree.children[node]
            .iter()
            .copied()
            .find(|&c| tree.nodes[c].action.as_deref() == answer);
        node = match existing {
            Some(c) => c,
            None => {
                let terminal = matches!(step, Step::Done(_));
                let snapshot = if terminal {
                    None
                } else {
                    let Some(env_copy) = env.fork() else {
                        break Err(cannot_fork());
                    };
                    Some(Snapshot {
                        env: env_copy,
                        step: step.clone(),
                        responder: responder.branch(index),
                        turns: turns.clone(),
                    })
                };
                let c = tree.nodes.len();
                tree.nodes.push(TreeNode {
                    parent: Some(node),
                    depth: tree.nodes[node].depth + 1,
                    action: answer.map(str::to_string),
                    visits: 0,
                    value_sum: 0.0,
                    terminal,
                });
                tree.children.push(Vec::new());
                tree.expansions.push(0);
                tree.snapshots.push(snapshot);
                tree.children[node].push(c);
                c
            }
        };
        path.push(node);
    };
    let episode = Episode { seed, turns, end };
    (path, episode, responder)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use kaizen_core::{AgentId, Message, Request};

    use super::*;
    use crate::{Dialogue, run_episode};

    /// Three answers, `L` or `R`; reward 1 on the last turn iff they were `R L R`.
    #[derive(Clone, Default)]
    struct Path {
        dialogue: Dialogue,
        answers: Vec<String>,
        forkable: bool,
    }

    #[async_trait]
    impl Env for Path {
        async fn reset(&mut self, _seed: u64) -> crate::Result<Step> {
            self.dialogue = Dialogue::new();
            self.answers.clear();
            Ok(Step::Request(
                self.dialogue.ask("agent", [Message::user("L or R?")]),
            ))
        }

        async fn step(&mut self, agent: &AgentId, text: &str) -> crate::Result<Step> {
            self.dialogue.answer(agent, text)?;
            self.answers.push(text.to_string());
            if self.answers.len() == 3 {
                self.dialogue.finish();
                let win = self.answers == ["R", "L", "R"];
                let rewards = vec![0.0, 0.0, f32::from(u8::from(win))];
                return Ok(Step::Done(Outcome::single("agent", rewards)));
            }
            Ok(Step::Request(
                self.dialogue.ask("agent", [Message::user("again")]),
            ))
        }

        fn fork(&self) -> Option<Box<dyn Env>> {
            self.forkable
                .then(|| Box::new(self.clone()) as Box<dyn Env>)
        }
    }

    /// Answers `L` or `R` from a hash of (rollout, turn).
    struct Coin {
        rollout: u32,
        turn: u64,
    }

    #[async_trait]
    impl Responder for Coin {
        async fn respond(&mut self, _request: &Request) -> std::result::Result<String, String> {
            let h = (u64::from(self.rollout) * 0x9E37_79B9 + self.turn * 0x85EB_CA6B) >> 7;
            self.turn += 1;
            Ok(if h % 2 == 1 { "R" } else { "L" }.to_string())
        }
    }

    impl Branching for Coin {
        fn branch(&self, rollout: u32) -> Self {
            Coin {
                rollout,
                turn: self.turn,
            }
        }
    }

    fn env(forkable: bool) -> Box<dyn Env> {
        Box::new(Path {
            forkable,
            ..Path::default()
        })
    }

    fn spec(rollouts: usize) -> TreeSearch {
        TreeSearch {
            rollouts,
            branches: 2,
            exploration: 1.0,
            max_depth: 3,
        }
    }

    /// Searches seed 1 of `Path` with `Coin` for `rollouts` rollouts.
    async fn searched(forkable: bool, rollouts: usize) -> SearchOutcome<Coin> {
        let coin = Coin {
            rollout: 0,
            turn: 0,
        };
        search_episode(
            env(forkable),
            1,
            coin,
            EpisodeLimits::default(),
            &spec(rollouts),
        )
        .await
    }

    #[tokio::test]
    async fn the_first_rollout_is_the_ordinary_episode() {
        let limits = EpisodeLimits::default();
        let plain = run_episode(
            env(true),
            4,
            &mut Coin {
                rollout: 0,
                turn: 0,
            },
            limits,
        )
        .await;
        let searched = search_episode(
            env(true),
            4,
            Coin {
                rollout: 0,
                turn: 0,
            },
            limits,
            &spec(5),
        )
        .await;
        assert_eq!(searched.rollouts[0].episode, plain);
        assert_eq!(searched.rollouts.len(), 5);
    }

    #[tokio::test]
    async fn node_values_are_the_mean_returns_of_the_rollouts_through_them() {
        let out = searched(true, 12).await;
        let mut through: BTreeMap<usize, (u32, f64)> = BTreeMap::new();
        for r in &out.rollouts {
            let ret = episode_return(&r.episode.end);
            assert_eq!(r.path[0], 0);
            for (k, &n) in r.path.iter().enumerate() {
                let node = &out.nodes[n];
                assert_eq!(node.depth, k);
                if k > 0 {
                    assert_eq!(node.parent, Some(r.path[k - 1]));
                    assert_eq!(
                        node.action.as_deref(),
                        Some(r.episode.turns[k - 1].answer.as_str())
                    );
                }
                let e = through.entry(n).or_default();
                e.0 += 1;
                e.1 += ret;
            }
        }
        for (n, node) in out.nodes.iter().enumerate() {
            let (visits, sum) = through[&n];
            assert_eq!((node.visits, node.value_sum), (visits, sum), "node {n}");
            let mut actions: Vec<_> = out
                .nodes
                .iter()
                .filter(|c| c.parent == Some(n))
                .map(|c| &c.action)
                .collect();
            let all = actions.len();
            actions.sort();
            actions.dedup();
            assert_eq!(actions.len(), all, "siblings answer differently");
        }
        // Per-step values follow the path.
        let values = step_values(&out.nodes, &out.rollouts[0].path);
        assert_eq!(values.len(), out.rollouts[0].path.len() - 1);
    }

    #[tokio::test]
    async fn a_reward_along_the_way_counts_for_the_nodes_at_and_before_its_turn_only() {
        // Rewards on every turn: 0.25 for each `R`, and 1 at the end for `R L R`.
        #[derive(Clone, Default)]
        struct Shaped(Path);
        #[async_trait]
        impl Env for Shaped {
            async fn reset(&mut self, seed: u64) -> crate::Result<Step> {
                self.0.reset(seed).await
            }
            async fn step(&mut self, agent: &AgentId, text: &str) -> crate::Result<Step> {
                let step = self.0.step(agent, text).await?;
                Ok(match step {
                    Step::Done(mut o) => {
                        let r = o.rewards.get_mut(agent).unwrap();
                        for (r, a) in r.iter_mut().zip(&self.0.answers) {
                            *r += if a == "R" { 0.25 } else { 0.0 };
                        }
                        Step::Done(o)
                    }
                    other => other,
                })
            }
            fn fork(&self) -> Option<Box<dyn Env>> {
                Some(Box::new(self.clone()))
            }
        }
        let env = Box::new(Shaped(Path {
            forkable: true,
            ..Path::default()
        }));
        let coin = Coin {
            rollout: 0,
            turn: 0,
        };
        let out = search_episode(env, 1, coin, EpisodeLimits::default(), &spec(12)).await;
        let mut through: BTreeMap<usize, (u32, f64)> = BTreeMap::new();
        for r in &out.rollouts {
            let o = r.episode.end.as_ref().unwrap();
            let per_turn = turn_rewards(o, &r.episode.turns);
            assert_eq!(per_turn.len(), 3);
            for (t, a) in r.episode.turns.iter().enumerate() {
                let win = u8::from(t == 2 && per_turn.iter().sum::<f64>() >= 1.0);
                let r_a = if a.answer == "R" { 0.25 } else { 0.0 };
                assert_eq!(per_turn[t], r_a + f64::from(win));
            }
            let to_go = returns_to_go(o, &r.episode.turns);
            assert_eq!(to_go[0], episode_return(&r.episode.end));
            for (j, &n) in r.path.iter().enumerate() {
                // The root takes the whole return; node j (after answer j-1) the return from
                // turn j-1 on, so a reward earned before that answer is not its value.
                let from = j.saturating_sub(1);
                let e = through.entry(n).or_default();
                e.0 += 1;
                e.1 += per_turn[from..].iter().sum::<f64>();
            }
        }
        let mut whole: BTreeMap<usize, f64> = BTreeMap::new();
        for r in &out.rollouts {
            for &n in &r.path {
                *whole.entry(n).or_default() += episode_return(&r.episode.end);
            }
        }
        for (n, node) in out.nodes.iter().enumerate() {
            let (visits, sum) = through[&n];
            assert_eq!(node.visits, visits, "node {n}");
            assert!((node.value_sum - sum).abs() < 1e-9, "node {n}");
        }
        // Some node below an earlier reward is worth less than the whole returns through it.
        assert!(
            out.nodes
                .iter()
                .enumerate()
                .any(|(n, node)| node.value_sum + 1e-9 < whole[&n]),
            "the search reached no reward before a node's own answer"
        );
    }

    #[tokio::test]
    async fn an_exhausted_tree_stops_and_holds_every_leaf_it_reached_once() {
        // 2 answers at each of 3 depths: at most 1 + 2 + 4 nodes to expand twice each.
        let out = searched(true, 100).await;
        assert!(out.rollouts.len() <= 14, "{} rollouts", out.rollouts.len());
        let leaves: Vec<&TreeNode> = out.nodes.iter().filter(|n| n.terminal).collect();
        assert!(leaves.iter().all(|n| n.depth == 3 && n.visits >= 1));
        // The tree is closed: more rollouts would find nothing new.
        assert_eq!(out.nodes[0].visits as usize, out.rollouts.len());
        // Every node on a winning rollout's path has a positive value.
        for r in &out.rollouts {
            if episode_return(&r.episode.end) == 1.0 {
                assert!(r.path.iter().all(|&n| out.nodes[n].value_sum >= 1.0));
            }
        }
    }

    #[tokio::test]
    async fn an_environment_that_cannot_fork_ends_its_rollout_with_a_named_fault() {
        let out = searched(false, 3).await;
        let fault = out.rollouts[0].episode.end.as_ref().unwrap_err();
        assert_eq!(fault.kind, FaultKind::EnvError);
        assert!(fault.message.contains("cannot fork"), "{fault}");
    }

    #[test]
    fn bad_specs_are_named() {
        let bad = TreeSearch {
            branches: 0,
            ..TreeSearch::default()
        };
        assert!(bad.validate().unwrap_err().contains("`branches`"));
        let bad = TreeSearch {
            exploration: f64::NAN,
            ..TreeSearch::default()
        };
        assert!(bad.validate().unwrap_err().contains("`exploration`"));
        assert!(TreeSearch::default().validate().is_ok());
    }
}
