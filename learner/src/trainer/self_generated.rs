//! The self-generated warm start (`[sft] source = "self"`): rounds of rejection sampling from
//! the policy itself, after STaR (Zelikman et al. 2022) and ReST-EM (Singh et al. 2023).
//!
//! Each round: the actors play `samples_per_problem` episodes of each of `problems_per_round`
//! fresh training problems with the current policy; every trainable model turn whose reward
//! reaches `min_reward` is kept (duplicates and turns past `max_per_problem` per problem are
//! dropped) — or, with `select = "self_certainty"`, the `max_per_problem` turns per problem
//! and turn index the model was most certain of, the verifier unused (best-of-N by
//! self-certainty, Kang et al. 2025; "sharpening", Huang et al. 2024); the learner fine-tunes on the kept turns for the round's share of `sft.steps`;
//! the new weights go to the actors for the next round. No data comes from outside the
//! model: the verifier only filters.
//!
//! A kept turn is trained with everything before it in its thread as context: for
//! self-correction, a wrong first answer stays in the prompt of the second answer that fixed
//! it, and only the fix is learned. With `keep_unchanged = false`, a right turn that repeats
//! the agent's previous turn word for word is dropped: SCoRe (Kumar et al. 2024, §4) found
//! that fine-tuning on self-generated correction traces amplifies this no-edit mode. Tokens are the ones the model sampled (never re-encoded
//! from text). Each round's kept turns are also written as chat JSONL
//! (`self_sft/round_<r>.jsonl`, earlier assistant turns with `"weight": 0`), so a round can
//! be inspected or replayed with `sft.source = <file>`.
//!
//! With `rationalize_turns` (STaR's rationalisation), each problem none of whose episodes
//! ended right is played again with the environment's hint (the gold answer) shown at those
//! turns; its selected turns join the round's data, trained without the hint in their context
//! (`self_sft/rationalized_*`; the exploration monitors below count only the unhinted episodes).
//! With `evaluate_rounds`, the held-out set is evaluated after every round but the last
//! (`eval_round/...`).
//!
//! Logged per round (at the SFT step the round starts from): `self_sft/kept`, `rejected`,
//! `duplicates`, `over_cap`, `unchanged`, `faults`, B-STaR's exploration monitors `pass@k` (problems with
//! a kept final turn among their `k` episodes) and `distinct_correct` (distinct kept final
//! completions per problem), `reward@t<i>` (mean reward of each turn), the seconds spent
//! generating, and the exploitation monitors `selected_correct` (share of kept turns the
//! verifier accepts), `best_of_k_self_certainty` and `self_certainty_agreement` (how well
//! self-certainty picks and orders each problem's final turns, judged by the verifier).

use std::collections::HashSet;

use super::tree_data;
use super::*;
use crate::config::{RelabelAs, Selection, SelfGeneratedConfig, SftConfig};

/// Group-id bit of warm-start episodes (neither training groups' counter nor
/// [`EVAL_GROUP_BIT`]).
const SELF_GROUP_BIT: u64 = 1 << 61;

/// The probe slot (bits 24–31 of a warm-start group id) of rationalised episodes; temperature
/// probes use 1..=254.
const RATIONALIZE_PROBE: u64 = 0xFF;

/// One kept model turn, ready to train on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeptTurn {
    /// The thread's tokens up to the end of the kept completion.
    pub tokens: Vec<u32>,
    /// Positions before the kept completion (context).
    pub context: usize,
    /// The turn as a chat conversation (`{"messages": [...]}`), when the report carries the
    /// conversation's text.
    pub chat: Option<serde_json::Value>,
}

/// What one round generated, kept and dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RoundCounts {
    /// Episodes that produced a trajectory.
    pub episodes: usize,
    /// Episodes that ended in a fault (no trajectory).
    pub faults: usize,
    /// Turns kept for training.
    pub kept: usize,
    /// Trainable turns below `min_reward`.
    pub rejected: usize,
    /// Kept-quality turns whose completion was already kept for the same problem and turn.
    pub duplicates: usize,
    /// Kept-quality turns past `max_per_problem` for their problem and turn.
    pub over_cap: usize,
    /// Kept-quality turns that repeat the agent's previous turn in the thread word for word
    /// (dropped when `keep_unchanged` is off).
    pub unchanged: usize,
    /// Kept-quality later turns whose previous turn was already right (dropped with
    /// `fixes_only`).
    pub not_a_fix: usize,
    /// Later right turns also kept as answers to their episode's first prompt
    /// (`relabel_first`, SMART); included in `kept`.
    pub relabelled: usize,
    /// Problems played.
    pub problems: usize,
    /// Problems with at least one final turn at `min_reward` or above (pass@k).
    pub solved: usize,
    /// Distinct final completions at `min_reward` or above, summed over problems.
    pub distinct_correct: usize,
    /// `(sum of rewards, count)` of each turn index.
    pub turn_rewards: Vec<(f64, usize)>,
    /// Kept turns whose reward reaches `min_reward` (all of them when the verifier selects).
    pub kept_correct: usize,
    /// How often a problem's final turns ordered by self-certainty agree with the verifier
    /// ([`kaizen_envs::rewards::pairwise_agreement`]); `None` without a pair to compare.
    pub self_certainty_agreement: Option<f64>,
    /// Problems whose most self-certain final turn is right: B-STaR's exploitation monitor
    /// with self-certainty as the selector (`None` without scores).
    pub best_of_k_self_certainty: Option<f64>,
    /// Mean over problems of [`balance_score`] of the final turns the selector accepts
    /// (distinct, at most `max_per_problem`; before `fixes_only` and `keep_unchanged`).
    pub balance_score: f64,
    /// B-STaR's reward threshold in use (`certainty_quantile`): the quantile and, per turn
    /// index (0-based), the self-certainty it came to; `None` without a threshold.
    pub certainty_threshold: Option<(f32, BTreeMap<usize, f32>)>,
}

impl RoundCounts {
    /// The round's metrics (`self_sft/...`).
    pub(super) fn metrics(&self, round: u32, seconds: f64) -> BTreeMap<String, f64> {
        let per_problem = |v: usize| v as f64 / self.problems.max(1) as f64;
        let mut out = BTreeMap::from([
            ("self_sft/round".to_string(), f64::from(round)),
            ("self_sft/episodes".to_string(), self.episodes as f64),
            ("self_sft/faults".to_string(), self.faults as f64),
            ("self_sft/kept".to_string(), self.kept as f64),
            ("self_sft/rejected".to_string(), self.rejected as f64),
            ("self_sft/duplicates".to_string(), self.duplicates as f64),
            ("self_sft/over_cap".to_string(), self.over_cap as f64),
            ("self_sft/unchanged".to_string(), self.unchanged as f64),
            ("self_sft/not_a_fix".to_string(), self.not_a_fix as f64),
            ("self_sft/relabelled".to_string(), self.relabelled as f64),
            ("self_sft/pass@k".to_string(), per_problem(self.solved)),
            (
                "self_sft/distinct_correct".to_string(),
                per_problem(self.distinct_correct),
            ),
            ("self_sft/generate_seconds".to_string(), seconds),
            ("self_sft/balance_score".to_string(), self.balance_score),
            (
                "self_sft/selected_correct".to_string(),
                self.kept_correct as f64 / self.kept.max(1) as f64,
            ),
        ]);
        if let Some(a) = self.self_certainty_agreement {
            out.insert("self_sft/self_certainty_agreement".to_string(), a);
        }
        if let Some(b) = self.best_of_k_self_certainty {
            out.insert("self_sft/best_of_k_self_certainty".to_string(), b);
        }
        if let Some((q, thresholds)) = &self.certainty_threshold {
            out.insert("self_sft/certainty_quantile".to_string(), f64::from(*q));
            for (i, t) in thresholds {
                out.insert(
                    format!("self_sft/certainty_threshold@t{}", i + 1),
                    f64::from(*t),
                );
            }
        }
        for (t, (sum, n)) in self.turn_rewards.iter().enumerate() {
            out.insert(
                format!("self_sft/reward@t{}", t + 1),
                sum / (*n).max(1) as f64,
            );
        }
        out
    }
}

impl RoundCounts {
    /// The metrics of a round's rationalisation (`self_sft/rationalized_*`), these counts
    /// being `keep_selected`'s over the hinted `reports`: problems played again, episodes,
    /// turns shown a hint, kept turns, the share of problems solved with the hint, and seconds.
    pub(super) fn rationalized_metrics(
        &self,
        reports: &[EpisodeReport],
        started: Instant,
    ) -> BTreeMap<String, f64> {
        let hinted = reports
            .iter()
            .flat_map(|r| &r.turns)
            .filter(|t| t.request.hint.is_some())
            .count();
        BTreeMap::from([
            (
                "self_sft/rationalized_problems".to_string(),
                self.problems as f64,
            ),
            (
                "self_sft/rationalized_episodes".to_string(),
                self.episodes as f64,
            ),
            (
                "self_sft/rationalized_hinted_turns".to_string(),
                hinted as f64,
            ),
            ("self_sft/rationalized_kept".to_string(), self.kept as f64),
            (
                "self_sft/rationalized_pass".to_string(),
                self.solved as f64 / self.problems.max(1) as f64,
            ),
            (
                "self_sft/rationalized_seconds".to_string(),
                started.elapsed().as_secs_f64(),
            ),
        ])
    }
}

/// A trainable turn of a round, before selection.
struct Candidate<'a> {
    report: &'a EpisodeReport,
    trajectory: &'a kaizen_core::Trajectory,
    /// Index of the turn's segment in its trajectory.
    index: usize,
    reward: f32,
    /// Every turn's reward in the trajectory.
    rewards: std::rc::Rc<Vec<f32>>,
    /// Whether it is its episode's final turn.
    last: bool,
}

impl Candidate<'_> {
    fn segment(&self) -> &kaizen_core::Segment {
        &self.trajectory.segments[self.index]
    }

    fn score(&self) -> f32 {
        self.segment().self_certainty.unwrap_or(f32::NEG_INFINITY)
    }
}

/// Filters a round's episode reports (grouped by problem through `group_id`) as
/// `config.select` says: with the verifier, every trainable turn with reward ≥ `min_reward`
/// in report order; by self-certainty, the turns of each problem and turn index in decreasing
/// self-certainty, whatever their reward. Either way at most `max_per_problem` distinct
/// completions per problem and turn index are kept.
pub(super) fn keep_selected(
    reports: &[EpisodeReport],
    config: &SelfGeneratedConfig,
) -> (Vec<KeptTurn>, RoundCounts) {
    keep_selected_with(reports, config, &|_| None)
}

/// [`keep_selected`], with `encode` turning a reply's text into its trained tokens (the
/// answer and EOS) for `relabel_as = "first_reply"`; `None` drops that relabelling.
pub(super) fn keep_selected_with(
    reports: &[EpisodeReport],
    config: &SelfGeneratedConfig,
    encode: &dyn Fn(&str) -> Option<Vec<u32>>,
) -> (Vec<KeptTurn>, RoundCounts) {
    let mut counts = RoundCounts::default();
    let mut candidates = Vec::new();
    let mut problems: HashMap<u64, HashSet<Vec<u32>>> = HashMap::new();
    // Per problem: (self-certainty, reward) of each episode's final turn.
    let mut finals: BTreeMap<u64, Vec<(f32, f32)>> = BTreeMap::new();
    for report in reports {
        let solved = problems.entry(report.task.group_id).or_default();
        let Ok(trajectory) = &report.result else {
            counts.faults += 1;
            continue;
        };
        // A trajectory whose rewards do not line up with its turns counts as a fault.
        let Ok(rewards) = trajectory.segment_rewards() else {
            counts.faults += 1;
            continue;
        };
        counts.episodes += 1;
        let last = trajectory.segments.len().saturating_sub(1);
        let all = std::rc::Rc::new(rewards.clone());
        for (i, (segment, &reward)) in trajectory.segments.iter().zip(&rewards).enumerate() {
            if counts.turn_rewards.len() <= i {
                counts.turn_rewards.resize(i + 1, (0.0, 0));
            }
            counts.turn_rewards[i].0 += f64::from(reward);
            counts.turn_rewards[i].1 += 1;
            if i == last {
                if reward >= config.min_reward {
                    solved.insert(segment.completion_tokens.clone());
                }
                if let Some(score) = segment.self_certainty {
                    finals
                        .entry(report.task.group_id)
                        .or_default()
                        .push((score, reward));
                }
            }
            if segment.trainable {
                candidates.push(Candidate {
                    report,
                    trajectory,
                    index: i,
                    reward,
                    rewards: all.clone(),
                    last: i == last,
                });
            }
        }
    }
    if config.select == Selection::SelfCertainty {
        // Stable: equal scores keep report order.
        candidates.sort_by(|a, b| {
            (a.report.task.group_id, a.index)
                .cmp(&(b.report.task.group_id, b.index))
                .then(b.score().total_cmp(&a.score()))
        });
    }
    let thresholds = (config.select == Selection::SelfCertainty && config.certainty_quantile > 0.0)
        .then(|| certainty_thresholds(&candidates, config.certainty_quantile));
    let mut kept = Vec::new();
    let mut kept_correct = 0usize;
    // Per problem: the distinct final turns the selector accepts (at most `max_per_problem`)
    // and the right ones among them, for the balance score. Counted before `fixes_only` and
    // `keep_unchanged` drop turns: they shape the training data, not the selector.
    let mut selected_finals: HashMap<u64, (HashSet<&[u32]>, usize)> = HashMap::new();
    // (problem, turn index) → distinct kept completions.
    let mut seen: HashMap<(u64, usize), HashSet<Vec<u32>>> = HashMap::new();
    for c in &candidates {
        let (trajectory, i, segment) = (c.trajectory, c.index, c.segment());
        if config.select == Selection::Verifier && c.reward < config.min_reward {
            counts.rejected += 1;
            continue;
        }
        if let Some(thresholds) = &thresholds
            && thresholds.get(&c.index).is_none_or(|&t| c.score() < t)
        {
            counts.rejected += 1;
            continue;
        }
        let right = c.reward >= config.min_reward;
        if c.last {
            let (finals, right_finals) = selected_finals.entry(c.report.task.group_id).or_default();
            if finals.len() < config.max_per_problem
                && finals.insert(segment.completion_tokens.as_slice())
            {
                *right_finals += usize::from(right);
            }
        }
        let distinct = seen.entry((c.report.task.group_id, i)).or_default();
        let previous = trajectory.segments[..i]
            .iter()
            .enumerate()
            .rev()
            .find(|(_, e)| e.thread == segment.thread && e.agent == segment.agent);
        if config.fixes_only
            && let Some((p, _)) = previous
            && c.rewards[p] >= config.min_reward
        {
            counts.not_a_fix += 1;
            continue;
        }
        let previous = previous.map(|(_, e)| e);
        if !config.keep_unchanged
            && previous.is_some_and(|e| e.completion_tokens == segment.completion_tokens)
        {
            counts.unchanged += 1;
            continue;
        }
        if distinct.contains(&segment.completion_tokens) {
            counts.duplicates += 1;
            continue;
        }
        if distinct.len() >= config.max_per_problem {
            counts.over_cap += 1;
            continue;
        }
        distinct.insert(segment.completion_tokens.clone());
        if right {
            kept_correct += 1;
        }
        // The thread up to this turn: every earlier segment of the same thread, then this
        // turn's prompt, as context.
        let mut tokens = Vec::new();
        for earlier in &trajectory.segments[..i] {
            if earlier.thread == segment.thread {
                tokens.extend_from_slice(&earlier.prompt_tokens);
                tokens.extend_from_slice(&earlier.completion_tokens);
            }
        }
        tokens.extend_from_slice(&segment.prompt_tokens);
        let context = tokens.len();
        tokens.extend_from_slice(&segment.completion_tokens);
        let turns = &c.report.turns;
        let chat = (turns.len() == trajectory.segments.len()).then(|| chat_line(&turns[i]));
        kept.push(KeptTurn {
            tokens,
            context,
            chat,
        });
    }
    if config.relabel_first {
        for report in reports {
            if let Some(turn) = relabelled_first(report, config, encode) {
                let distinct = seen.entry((report.task.group_id, 0)).or_default();
                let completion = turn.tokens[turn.context..].to_vec();
                if distinct.len() < config.max_per_problem && distinct.insert(completion) {
                    kept_correct += 1;
                    counts.relabelled += 1;
                    kept.push(turn);
                }
            }
        }
    }
    counts.kept = kept.len();
    counts.kept_correct = kept_correct;
    counts.problems = problems.len();
    counts.solved = problems.values().filter(|s| !s.is_empty()).count();
    counts.distinct_correct = problems.values().map(HashSet::len).sum();
    counts.balance_score = problems
        .keys()
        .map(|p| {
            let (n, right) = selected_finals
                .get(p)
                .map_or((0, 0), |(finals, right)| (finals.len(), *right));
            balance_score(n, right, config.balance_target)
        })
        .sum::<f64>()
        / problems.len().max(1) as f64;
    counts.certainty_threshold = thresholds.map(|t| (config.certainty_quantile, t));
    let finals: Vec<Vec<(f32, f32)>> = finals.into_values().collect();
    counts.self_certainty_agreement = kaizen_envs::rewards::pairwise_agreement(&finals);
    counts.best_of_k_self_certainty = (!finals.is_empty()).then(|| {
        let right = finals
            .iter()
            .filter(|f| {
                f.iter()
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .is_some_and(|&(_, r)| r >= config.min_reward)
            })
            .count();
        right as f64 / finals.len() as f64
    });
    (kept, counts)
}

/// Per turn index, the `q`-quantile of the self-certainties of `candidates` at that index
/// (the score at rank `⌊q·n⌋` of the `n` in increasing order; turns without a score are left
/// out, and an index none of whose turns has one gets no entry: its turns are not kept).
fn certainty_thresholds(candidates: &[Candidate<'_>], q: f32) -> BTreeMap<usize, f32> {
    let mut scores: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    for c in candidates {
        if let Some(s) = c.segment().self_certainty {
            scores.entry(c.index).or_default().push(s);
        }
    }
    scores
        .into_iter()
        .map(|(i, mut s)| {
            s.sort_by(f32::total_cmp);
            let rank = ((f64::from(q) * s.len() as f64) as usize).min(s.len() - 1);
            (i, s[rank])
        })
        .collect()
}

/// [`keep_selected_with`] at B-STaR's adaptive reward threshold: with
/// `config.certainty_quantiles` set, the selection at each of those quantiles (as
/// `certainty_quantile`) whose balance score is highest (the first on ties), and every
/// quantile's balance score; otherwise the selection `config` describes and no scores.
pub(super) fn keep_best_selected(
    reports: &[EpisodeReport],
    config: &SelfGeneratedConfig,
    encode: &dyn Fn(&str) -> Option<Vec<u32>>,
) -> (Vec<KeptTurn>, RoundCounts, Vec<(f32, f64)>) {
    if config.certainty_quantiles.is_empty() {
        let (kept, counts) = keep_selected_with(reports, config, encode);
        return (kept, counts, Vec::new());
    }
    let mut best: Option<(Vec<KeptTurn>, RoundCounts)> = None;
    let mut scores = Vec::with_capacity(config.certainty_quantiles.len());
    for &q in &config.certainty_quantiles {
        let at = SelfGeneratedConfig {
            certainty_quantile: q,
            ..config.clone()
        };
        let (kept, mut counts) = keep_selected_with(reports, &at, encode);
        // Quantile 0 keeps every turn; it is still the threshold chosen.
        counts
            .certainty_threshold
            .get_or_insert_with(|| (q, BTreeMap::new()));
        scores.push((q, counts.balance_score));
        if best
            .as_ref()
            .is_none_or(|(_, b)| counts.balance_score > b.balance_score)
        {
            best = Some((kept, counts));
        }
    }
    let (kept, counts) = best.unwrap_or_default();
    (kept, counts, scores)
}

/// SMART's relabelling of one episode (`relabel_first`): when its first trainable turn is
/// below `min_reward` and a later turn of the same agent and thread reaches it, that later
/// completion (or, with `relabel_as = "first_reply"`, the environment's
/// `info.first_replies` entry for it, encoded by `encode`) as the answer to the first turn's
/// prompt (the first prompt is the whole thread so far, so it stands alone). `None`
/// otherwise, or for a fault.
fn relabelled_first(
    report: &EpisodeReport,
    config: &SelfGeneratedConfig,
    encode: &dyn Fn(&str) -> Option<Vec<u32>>,
) -> Option<KeptTurn> {
    let min_reward = config.min_reward;
    let trajectory = report.result.as_ref().ok()?;
    let rewards = trajectory.segment_rewards().ok()?;
    let (first, first_segment) = trajectory
        .segments
        .iter()
        .enumerate()
        .find(|(_, s)| s.trainable)?;
    if rewards[first] >= min_reward {
        return None;
    }
    let (later, segment) = trajectory
        .segments
        .iter()
        .enumerate()
        .skip(first + 1)
        .find(|(i, s)| {
            s.trainable
                && s.thread == first_segment.thread
                && s.agent == first_segment.agent
                && rewards[*i] >= min_reward
        })?;
    let mut tokens = first_segment.prompt_tokens.clone();
    let context = tokens.len();
    let turns = &report.turns;
    let answer = match config.relabel_as {
        RelabelAs::Completion => {
            tokens.extend_from_slice(&segment.completion_tokens);
            turns.get(later).map(|t| t.answer.clone())
        }
        RelabelAs::FirstReply => {
            // The later turn's index among the agent's answered turns.
            let k = trajectory.segments[..later]
                .iter()
                .filter(|s| s.agent == segment.agent)
                .count();
            let reply = trajectory.outcome.info["first_replies"][k].as_str()?;
            tokens.extend(encode(reply)?);
            Some(reply.to_string())
        }
    };
    let chat = (turns.len() == trajectory.segments.len()).then(|| {
        let mut line = chat_line(&turns[first]);
        if let Some(messages) = line["messages"].as_array_mut()
            && let Some(last) = messages.last_mut()
        {
            last["content"] = answer.clone().unwrap_or_default().into();
        }
        line
    });
    Some(KeptTurn {
        tokens,
        context,
        chat,
    })
}

/// B-STaR's balance score of one problem (Zeng et al. 2024, §4): `min(n'/n*, 1) · n'/n`
/// for `n` selected final turns of which `n'` distinct ones are right and a target of `n*`
/// (`target`); 0 when nothing was selected. The first factor rewards exploration (enough
/// distinct right answers), the second exploitation (a selector that picks no wrong ones).
pub(super) fn balance_score(selected: usize, right: usize, target: usize) -> f64 {
    if selected == 0 {
        return 0.0;
    }
    let right = right as f64;
    (right / target.max(1) as f64).min(1.0) * right / selected as f64
}

/// A turn as an OpenAI-style chat line: the request's messages (earlier assistant messages as
/// context, `"weight": 0`) and the answer (trained).
fn chat_line(turn: &kaizen_envs::Turn) -> serde_json::Value {
    let mut messages: Vec<serde_json::Value> = turn
        .request
        .messages
        .iter()
        .map(|m| {
            let mut v = serde_json::json!({"role": m.role, "content": m.content});
            if m.role == kaizen_core::Role::Assistant {
                v["weight"] = 0.into();
            }
            v
        })
        .collect();
    messages.push(serde_json::json!({"role": "assistant", "content": turn.answer}));
    serde_json::json!({ "messages": messages })
}

impl Run {
    /// `[sft] source = "self"`: the rounds described in the module docs, then the warm phase
    /// ends as for any warm start (reference frozen, fresh RL optimizer, weights published).
    pub(super) fn self_generated_warm_start(&mut self, sft: &SftConfig) -> Result<(), Error> {
        let config = sft.self_generated.clone().unwrap_or_default();
        let rounds = u64::from(config.rounds);
        let per_round = (sft.steps / rounds).max(1);
        self.start_warm_phase(sft.learning_rate, sft.steps);
        let dir = self.run_dir.join("self_sft");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // A resumed run continues with the round its SFT steps were in (its data generated
        // afresh by the policy as restored).
        let first = (self.state.sft_steps / per_round).min(rounds - 1);
        for round in first..rounds {
            let until = if round + 1 == rounds {
                sft.steps
            } else {
                (round + 1) * per_round
            };
            let round = round as u32;
            let temperature = if config.temperatures.is_empty() {
                config.temperature
            } else {
                self.choose_temperature(round, &config)?
            };
            let start = Instant::now();
            let searched =
                self.generate_round(round, 0, config.problems_per_round, temperature, &config)?;
            let (reflection, trees) =
                tree_data::reflections(&searched, f64::from(config.min_reward), config.reflection);
            let reports: Vec<EpisodeReport> = searched
                .iter()
                .flat_map(|r| tree_data::expand(r, config.process_rewards))
                .collect();
            let (tokenizer, _) = &self.policy_parts;
            let encode = |reply: &str| crate::sft_data::answer_tokens(tokenizer, reply).ok();
            let (mut kept, counts, quantiles) = keep_best_selected(&reports, &config, &encode);
            let mut metrics = counts.metrics(round, start.elapsed().as_secs_f64());
            for (q, score) in quantiles {
                metrics.insert(format!("self_sft/balance_at_quantile_{q}"), score);
            }
            if config.search.is_some() {
                metrics.extend(trees.metrics());
            }
            if !config.rationalize_turns.is_empty() {
                let started = Instant::now();
                let unsolved = unsolved_problems(&reports, config.min_reward);
                let hinted = self.rationalize(round, &unsolved, temperature, &config)?;
                let (more, hinted_counts) = keep_selected(&hinted, &config);
                metrics.extend(hinted_counts.rationalized_metrics(&hinted, started));
                kept.extend(more);
            }
            let seconds = start.elapsed().as_secs_f64();
            let path = dir.join(format!("round_{round}.jsonl"));
            let mut lines = String::new();
            for chat in kept.iter().filter_map(|k| k.chat.as_ref()) {
                lines.push_str(&chat.to_string());
                lines.push('\n');
            }
            std::fs::write(&path, lines).map_err(|e| Error::io(&path, e))?;
            let reflected = if config.reflection {
                self.reflection_samples(&dir, round, &reflection)?
            } else {
                Vec::new()
            };
            metrics.insert("self_sft/generate_seconds".into(), seconds);
            metrics.insert("self_sft/temperature".into(), f64::from(temperature));
            let points: Vec<Metric> = metrics
                .iter()
                .map(|(k, v)| Metric::new(k.clone(), *v, self.state.sft_steps))
                .collect();
            self.trackers.log_metrics(&points);
            tracing::info!(
                round,
                kept = kept.len(),
                rejected = counts.rejected,
                duplicates = counts.duplicates,
                pass_at_k = metrics["self_sft/pass@k"],
                seconds,
                file = %path.display(),
                "self-generated warm start: round generated"
            );
            let mut samples: Vec<Sample> = kept
                .into_iter()
                .enumerate()
                .map(|(i, k)| crate::sft_data::sample(k.tokens, k.context, i))
                .collect();
            samples.extend(reflected);
            let samples = self.fitting(samples);
            if samples.is_empty() {
                // Nothing to learn from this round: its steps are skipped, and counted.
                tracing::warn!(
                    round,
                    episodes = counts.episodes,
                    min_reward = config.min_reward,
                    "no turn reached `min_reward`: the round trains nothing (raise \
                     `samples_per_problem` or `temperature`, or lower `min_reward`)"
                );
                self.trackers.log_metrics(&[Metric::new(
                    "self_sft/skipped_steps",
                    (until - self.state.sft_steps) as f64,
                    self.state.sft_steps,
                )]);
                self.state.sft_steps = until;
                continue;
            }
            self.sft_until(&samples, sft.batch_size, until, u64::from(round))?;
            if round as u64 + 1 < rounds {
                let version = self.weights.publish(self.learner.policy())?;
                self.state.weights_version = version.0;
                if config.evaluate_rounds {
                    let eval = self.evaluate("eval_round")?;
                    let points: Vec<Metric> = eval
                        .iter()
                        .map(|(k, v)| Metric::new(k.clone(), *v, self.state.sft_steps))
                        .collect();
                    self.trackers.log_metrics(&points);
                }
            }
        }
        self.finish_warm_phase()
    }

    /// Writes a round's reflection conversations to `self_sft/reflection_<round>.jsonl` and
    /// renders them for training as any chat file is (`sft_data::chat_samples`).
    fn reflection_samples(
        &self,
        dir: &std::path::Path,
        round: u32,
        lines: &[serde_json::Value],
    ) -> Result<Vec<Sample>, Error> {
        let path = dir.join(format!("reflection_{round}.jsonl"));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let (tokenizer, template) = &self.policy_parts;
        crate::sft_data::chat_samples(&path, tokenizer, template)
    }

    /// B-STaR's choice of the round's temperature: plays the same `probe_problems` fresh
    /// problems at each of `config.temperatures`, selects their turns as the round would, and returns the
    /// temperature with the highest balance score (the first on ties). Logs each probe's score
    /// (`self_sft/balance_at_temperature_<t>`) and the seconds spent.
    fn choose_temperature(
        &mut self,
        round: u32,
        config: &SelfGeneratedConfig,
    ) -> Result<f32, Error> {
        let start = Instant::now();
        let mut best = (f64::NEG_INFINITY, config.temperatures[0]);
        let mut points = Vec::new();
        // Every temperature plays the same problems (B-STaR scores the configurations on one
        // subset of queries); the round then draws fresh ones after them.
        let first_seed = self.state.next_seed;
        for (k, &t) in config.temperatures.iter().enumerate() {
            self.state.next_seed = first_seed;
            let reports: Vec<EpisodeReport> = self
                .generate_round(round, k as u64 + 1, config.probe_problems, t, config)?
                .iter()
                .flat_map(|r| tree_data::expand(r, config.process_rewards))
                .collect();
            let (_, counts, _) = keep_best_selected(&reports, config, &|_| None);
            tracing::info!(
                round,
                temperature = t,
                balance_score = counts.balance_score,
                pass_at_k = counts.solved as f64 / counts.problems.max(1) as f64,
                "self-generated warm start: temperature probe"
            );
            points.push(Metric::new(
                format!("self_sft/balance_at_temperature_{t}"),
                counts.balance_score,
                self.state.sft_steps,
            ));
            if counts.balance_score > best.0 {
                best = (counts.balance_score, t);
            }
        }
        points.push(Metric::new(
            "self_sft/probe_seconds",
            start.elapsed().as_secs_f64(),
            self.state.sft_steps,
        ));
        self.trackers.log_metrics(&points);
        Ok(best.1)
    }

    /// Plays `problems` fresh training problems × `samples_per_problem` episodes at
    /// `temperature` with the current policy and returns their reports. `probe` 0 is the
    /// round itself, `k` its `k`-th temperature probe (distinct group ids).
    fn generate_round(
        &mut self,
        round: u32,
        probe: u64,
        problems: usize,
        temperature: f32,
        config: &SelfGeneratedConfig,
    ) -> Result<Vec<EpisodeReport>, Error> {
        let envs = self.config.envs.len().max(1);
        let mut tasks = Vec::with_capacity(problems * config.samples_per_problem);
        for p in 0..problems {
            let env_seed = self.state.next_seed;
            self.state.next_seed += 1;
            let group = SELF_GROUP_BIT | u64::from(round) << 32 | probe << 24 | p as u64;
            for sample in 0..config.samples_per_problem {
                tasks.push(self.round_task(group, p % envs, env_seed, sample, temperature));
            }
        }
        self.play_round(tasks)
    }

    /// STaR's rationalisation: plays each problem of `unsolved` (a task of it) again
    /// `rationalize_samples` times at `temperature`, the environment's hint shown at
    /// `rationalize_turns`, and returns the reports.
    fn rationalize(
        &mut self,
        round: u32,
        unsolved: &[EpisodeTask],
        temperature: f32,
        config: &SelfGeneratedConfig,
    ) -> Result<Vec<EpisodeReport>, Error> {
        let mut tasks = Vec::with_capacity(unsolved.len() * config.rationalize_samples);
        for (p, problem) in unsolved.iter().enumerate() {
            let group =
                SELF_GROUP_BIT | u64::from(round) << 32 | RATIONALIZE_PROBE << 24 | p as u64;
            for sample in 0..config.rationalize_samples {
                let mut task =
                    self.round_task(group, problem.env, problem.seed, sample, temperature);
                task.hint_turns = config.rationalize_turns.clone();
                // Hinted episodes are played once, not searched.
                task.search = None;
                tasks.push(task);
            }
        }
        self.play_round(tasks)
    }

    /// A warm-start episode of problem `seed` in environment `env`.
    fn round_task(
        &mut self,
        group: u64,
        env: usize,
        seed: u64,
        sample: usize,
        temperature: f32,
    ) -> EpisodeTask {
        let id = self.state.next_task;
        self.state.next_task += 1;
        EpisodeTask {
            id,
            group_id: group,
            env,
            seed,
            sample: sample as u32,
            sampling_seed: sampling_seed(self.config.run.seed, id),
            sampling: SamplingOverrides {
                temperature: Some(temperature),
                ..SamplingOverrides::default()
            },
            hint_turns: Vec::new(),
            search: self
                .config
                .sft
                .as_ref()
                .and_then(|s| s.self_generated.as_ref())
                .and_then(|g| g.search.clone()),
        }
    }

    /// Submits `tasks` and returns their reports (any other report that arrives meanwhile is
    /// kept for the training loop).
    fn play_round(&mut self, tasks: Vec<EpisodeTask>) -> Result<Vec<EpisodeReport>, Error> {
        let expected = tasks.len();
        self.rollouts.submit_all(tasks)?;
        let mut reports = Vec::with_capacity(expected);
        while reports.len() < expected {
            let report = self
                .rollouts
                .recv()
                .map_err(|e| Error::ActorsStopped(e.to_string()))?;
            if report.task.group_id & SELF_GROUP_BIT != 0
                && report.task.group_id & EVAL_GROUP_BIT == 0
            {
                reports.push(report);
            } else {
                self.counts.reported += 1;
                self.stray.push(report);
            }
        }
        Ok(reports)
    }
}

/// One task of each problem (group) among `reports` with no final turn at `min_reward` or
/// above, in order of first appearance: the problems rationalisation plays again.
pub(super) fn unsolved_problems(reports: &[EpisodeReport], min_reward: f32) -> Vec<EpisodeTask> {
    let mut order: Vec<u64> = Vec::new();
    let mut first: HashMap<u64, (&EpisodeTask, bool)> = HashMap::new();
    for r in reports {
        let solved = r.result.as_ref().is_ok_and(|t| {
            t.segment_rewards()
                .ok()
                .and_then(|rewards| rewards.last().copied())
                .is_some_and(|last| last >= min_reward)
        });
        let entry = first.entry(r.task.group_id).or_insert_with(|| {
            order.push(r.task.group_id);
            (&r.task, false)
        });
        entry.1 |= solved;
    }
    order
        .into_iter()
        .filter_map(|g| first.get(&g).filter(|(_, solved)| !solved))
        .map(|(task, _)| (*task).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use kaizen_core::{AgentId, FinishReason, Outcome, Segment, Trajectory};
    use kaizen_transport::EpisodeTask;

    use super::*;

    fn segment(prompt: &[u32], completion: &[u32]) -> Segment {
        Segment {
            agent: AgentId::new("solver"),
            thread: 0,
            prompt_tokens: prompt.to_vec(),
            completion_tokens: completion.to_vec(),
            behavior_logprobs: vec![0.0; completion.len()],
            trainable: true,
            temperature: 1.0,
            weights_version: WeightsVersion(0),
            finish_reason: FinishReason::Eos,
            self_certainty: None,
        }
    }

    /// A two-attempt episode of problem `group` with answers `a1`, `a2` and their rewards.
    fn episode(group: u64, a1: &[u32], a2: &[u32], rewards: [f32; 2]) -> EpisodeReport {
        let trajectory = Trajectory {
            id: 0,
            env: "self_correct".into(),
            seed: group,
            group_id: group,
            segments: vec![segment(&[1, 2], a1), segment(&[3], a2)],
            outcome: Outcome::single("solver", rewards.to_vec()),
        };
        EpisodeReport {
            task: EpisodeTask {
                id: 0,
                group_id: group,
                env: 0,
                seed: group,
                sample: 0,
                sampling_seed: 0,
                sampling: SamplingOverrides::default(),
                hint_turns: Vec::new(),
                search: None,
            },
            env: "self_correct".into(),
            result: Ok(trajectory),
            metrics: BTreeMap::new(),
            turns: Vec::new(),
            tree: None,
        }
    }

    #[test]
    fn relabel_first_keeps_a_later_success_as_the_answer_to_the_first_prompt() {
        let config = SelfGeneratedConfig {
            relabel_first: true,
            ..SelfGeneratedConfig::default()
        };
        let reports = vec![
            // Wrong, then right: the fix is kept in its thread and relabelled onto turn 1.
            episode(5, &[7], &[8, 9], [0.0, 1.0]),
            // The same success again: a duplicate first-turn completion, not kept twice.
            episode(5, &[6], &[8, 9], [0.0, 1.0]),
            // Right at once: nothing to relabel.
            episode(6, &[4], &[4], [1.0, 1.0]),
        ];
        let (kept, counts) = keep_selected(&reports, &config);
        assert_eq!(counts.relabelled, 1);
        let relabelled: Vec<_> = kept.iter().filter(|k| k.tokens == [1, 2, 8, 9]).collect();
        assert_eq!(relabelled.len(), 1);
        assert_eq!(relabelled[0].context, 2);
        assert_eq!(counts.kept, kept.len());
        let (plain, counts) = keep_selected(&reports, &SelfGeneratedConfig::default());
        assert_eq!(counts.relabelled, 0);
        assert!(plain.iter().all(|k| k.tokens != [1, 2, 8, 9]));
    }

    #[test]
    fn relabel_as_first_reply_distils_the_later_answer_into_a_direct_first_answer() {
        let config = SelfGeneratedConfig {
            relabel_first: true,
            relabel_as: RelabelAs::FirstReply,
            ..SelfGeneratedConfig::default()
        };
        let with_replies = |mut report: EpisodeReport, replies: serde_json::Value| {
            if let Ok(t) = &mut report.result {
                t.outcome.info = serde_json::json!({ "first_replies": replies });
            }
            report
        };
        let reports = vec![
            // Wrong, then a right program: its printed answer becomes the first answer.
            with_replies(
                episode(5, &[7], &[8, 9, 10], [0.0, 1.0]),
                serde_json::json!(["\\boxed{1}", "\\boxed{3}"]),
            ),
            // No reply reported for the later turn: not relabelled.
            with_replies(
                episode(6, &[7], &[8, 9, 11], [0.0, 1.0]),
                serde_json::json!(["\\boxed{1}", null]),
            ),
            // No info at all: not relabelled.
            episode(7, &[7], &[8, 9, 12], [0.0, 1.0]),
        ];
        let encode = |reply: &str| (reply == "\\boxed{3}").then(|| vec![30, 31]);
        let (kept, counts) = keep_selected_with(&reports, &config, &encode);
        assert_eq!(counts.relabelled, 1);
        let first: Vec<_> = kept.iter().filter(|k| k.context == 2).collect();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].tokens.as_slice(), first[0].context),
            (&[1, 2, 30, 31][..], 2)
        );
        // The later turns stay kept as they were written.
        assert_eq!(kept.len(), 4);
        // Without an encoder nothing is relabelled.
        let (_, counts) = keep_selected(&reports, &config);
        assert_eq!(counts.relabelled, 0);
    }

    #[test]
    fn keeps_right_turns_with_their_thread_as_context_and_counts_the_rest() {
        let config = SelfGeneratedConfig {
            max_per_problem: 1,
            keep_unchanged: true,
            ..SelfGeneratedConfig::default()
        };
        let reports = vec![
            // Wrong then fixed: only the fix is kept, the wrong answer is context.
            episode(7, &[10], &[20, 21], [0.0, 1.0]),
            // Right and kept right: both turns, but turn 2 repeats... a new completion.
            episode(7, &[11], &[22], [1.0, 1.0]),
            // The same fix again: a duplicate.
            episode(7, &[12], &[20, 21], [0.0, 1.0]),
            // Problem 8: wrong twice.
            episode(8, &[13], &[23], [0.0, 0.0]),
        ];
        let (kept, counts) = keep_selected(&reports, &config);
        assert_eq!(
            kept,
            vec![
                KeptTurn {
                    tokens: vec![1, 2, 10, 3, 20, 21],
                    context: 4,
                    chat: None
                },
                KeptTurn {
                    tokens: vec![1, 2, 11],
                    context: 2,
                    chat: None
                },
            ]
        );
        assert_eq!(counts.kept, 2);
        // Turn 1 of the first, third and fourth episode, turn 2 of the fourth.
        assert_eq!(counts.rejected, 4);
        assert_eq!(counts.duplicates, 1);
        // Episode 2's turn 2 is right but problem 7 already has one kept turn-2 completion.
        assert_eq!(counts.over_cap, 1);
        assert_eq!((counts.problems, counts.solved), (2, 1));
        // Problem 7's right final answers: [20, 21] and [22].
        assert_eq!(counts.distinct_correct, 2);
        assert_eq!(counts.turn_rewards, vec![(1.0, 4), (3.0, 4)]);
        let metrics = counts.metrics(0, 1.0);
        assert_eq!(metrics["self_sft/pass@k"], 0.5);
        assert_eq!(metrics["self_sft/reward@t2"], 0.75);
    }

    #[test]
    fn a_right_answer_repeated_word_for_word_is_dropped_unless_asked() {
        let reports = vec![
            episode(3, &[10], &[10], [1.0, 1.0]),
            episode(3, &[10], &[11, 10], [1.0, 1.0]),
        ];
        let drop_copies = SelfGeneratedConfig {
            keep_unchanged: false,
            ..SelfGeneratedConfig::default()
        };
        let (kept, counts) = keep_selected(&reports, &drop_copies);
        // Turn 1 once (the second is a duplicate), the recomputed turn 2; the copy is dropped.
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].tokens, vec![1, 2, 10, 3, 11, 10]);
        assert_eq!((counts.unchanged, counts.duplicates), (1, 1));
        let (kept, counts) = keep_selected(&reports, &SelfGeneratedConfig::default());
        assert_eq!((kept.len(), counts.unchanged), (3, 0));
    }

    /// `episode` with the self-certainty of each turn set.
    fn scored(
        group: u64,
        a1: &[u32],
        a2: &[u32],
        rewards: [f32; 2],
        scores: [f32; 2],
    ) -> EpisodeReport {
        let mut report = episode(group, a1, a2, rewards);
        if let Ok(t) = &mut report.result {
            for (s, score) in t.segments.iter_mut().zip(scores) {
                s.self_certainty = Some(score);
            }
        }
        report
    }

    #[test]
    fn self_certainty_keeps_the_most_certain_turns_whatever_the_verifier_says() {
        let config = SelfGeneratedConfig {
            max_per_problem: 1,
            select: Selection::SelfCertainty,
            ..SelfGeneratedConfig::default()
        };
        let reports = vec![
            scored(7, &[10], &[20], [0.0, 1.0], [1.0, 2.0]),
            scored(7, &[11], &[21], [1.0, 0.0], [3.0, 5.0]),
            scored(8, &[12], &[22], [0.0, 0.0], [0.5, 0.5]),
            scored(8, &[13], &[23], [0.0, 1.0], [0.2, 0.9]),
        ];
        let (kept, counts) = keep_selected(&reports, &config);
        let completions: Vec<u32> = kept.iter().map(|k| *k.tokens.last().unwrap()).collect();
        // Problem 7: [11] (3.0) and [21] (5.0, wrong); problem 8: [12] (0.5) and [23] (0.9).
        assert_eq!(completions, vec![11, 21, 12, 23]);
        assert_eq!(kept[1].tokens, vec![1, 2, 11, 3, 21]);
        assert_eq!((counts.kept, counts.over_cap, counts.rejected), (4, 4, 0));
        // Right: [11] and [23].
        assert_eq!(counts.kept_correct, 2);
        // Final turns: problem 7 ranks wrong (5.0) over right (2.0); problem 8 agrees.
        assert_eq!(counts.self_certainty_agreement, Some(0.5));
        assert_eq!(counts.best_of_k_self_certainty, Some(0.5));
        let metrics = counts.metrics(1, 1.0);
        assert_eq!(metrics["self_sft/selected_correct"], 0.5);
        assert_eq!(metrics["self_sft/self_certainty_agreement"], 0.5);
        // The verifier keeps right turns only, so every kept turn is right.
        let (kept, counts) = keep_selected(
            &reports,
            &SelfGeneratedConfig {
                max_per_problem: 1,
                ..SelfGeneratedConfig::default()
            },
        );
        assert_eq!(kept.len(), 3);
        assert_eq!(counts.metrics(1, 1.0)["self_sft/selected_correct"], 1.0);
    }

    #[test]
    fn b_star_chooses_the_certainty_threshold_with_the_best_balance_score() {
        // Problem 7: final turns right at 5.0, wrong at 4.0 and 1.0; problem 8: right at 6.0,
        // wrong at 2.0, right at 0.5. First turns (all wrong) at 0.1 … 0.6.
        let reports = vec![
            scored(7, &[10], &[20], [0.0, 1.0], [0.1, 5.0]),
            scored(7, &[11], &[21], [0.0, 0.0], [0.2, 4.0]),
            scored(7, &[12], &[22], [0.0, 0.0], [0.3, 1.0]),
            scored(8, &[13], &[30], [0.0, 1.0], [0.4, 6.0]),
            scored(8, &[14], &[31], [0.0, 0.0], [0.5, 2.0]),
            scored(8, &[15], &[32], [0.0, 1.0], [0.6, 0.5]),
        ];
        let config = SelfGeneratedConfig {
            select: Selection::SelfCertainty,
            balance_target: 1,
            certainty_quantiles: vec![0.0, 0.5, 0.7, 0.9],
            ..SelfGeneratedConfig::default()
        };
        let (kept, counts, scores) = keep_best_selected(&reports, &config, &|_| None);
        // Final scores in order: 0.5 1 2 4 5 6. Quantile 0 keeps the two most certain of each
        // problem (one right, one wrong: ½ each); 0.5 → 4.0 (problem 8 keeps only its right
        // 6.0); 0.7 → 5.0 (each keeps only its right answer); 0.9 → 6.0 (problem 7 keeps none).
        assert_eq!(
            scores,
            vec![(0.0, 0.5), (0.5, 0.75), (0.7, 1.0), (0.9, 0.5)]
        );
        assert_eq!(counts.balance_score, 1.0);
        let (q, thresholds) = counts.certainty_threshold.clone().unwrap();
        assert_eq!(q, 0.7);
        // Each turn index has its own threshold: first turns at their 0.7-quantile, 0.5.
        assert_eq!(thresholds, BTreeMap::from([(0, 0.5), (1, 5.0)]));
        let last: Vec<u32> = kept.iter().map(|k| *k.tokens.last().unwrap()).collect();
        assert_eq!(last, vec![20, 15, 14, 30]);
        assert_eq!((counts.kept, counts.rejected), (4, 8));
        let metrics = counts.metrics(0, 0.0);
        assert_eq!(metrics["self_sft/certainty_quantile"], f64::from(0.7f32));
        assert_eq!(metrics["self_sft/certainty_threshold@t1"], 0.5);
        assert_eq!(metrics["self_sft/certainty_threshold@t2"], 5.0);
        // A fixed quantile is the same selection; without one, nothing is thresholded.
        let fixed = SelfGeneratedConfig {
            certainty_quantiles: Vec::new(),
            certainty_quantile: 0.7,
            ..config.clone()
        };
        let (same, fixed_counts, none) = keep_best_selected(&reports, &fixed, &|_| None);
        assert_eq!((same, fixed_counts, none), (kept, counts, Vec::new()));
        let plain = SelfGeneratedConfig {
            certainty_quantiles: Vec::new(),
            ..config
        };
        let (kept, counts) = keep_selected(&reports, &plain);
        assert_eq!((kept.len(), counts.rejected), (8, 0));
        assert_eq!(counts.certainty_threshold, None);
        assert!(
            !counts
                .metrics(0, 0.0)
                .contains_key("self_sft/certainty_quantile")
        );
    }

    #[test]
    fn the_balance_score_wants_enough_right_answers_and_no_wrong_picks() {
        assert_eq!(balance_score(0, 0, 2), 0.0);
        // Two right of two selected: full marks; one right of one: half the target.
        assert_eq!(balance_score(2, 2, 2), 1.0);
        assert_eq!(balance_score(1, 1, 2), 0.5);
        // Two right of four selected: the target met, half the picks wrong.
        assert_eq!(balance_score(4, 2, 2), 0.5);
        assert_eq!(balance_score(3, 0, 2), 0.0);
        // In a round: the verifier keeps problem 7's [20] (a final turn, right) and [11] (a
        // first turn); problem 8 keeps nothing.
        let reports = vec![
            episode(7, &[10], &[20], [0.0, 1.0]),
            episode(7, &[11], &[21], [1.0, 0.0]),
            episode(8, &[12], &[22], [0.0, 0.0]),
        ];
        let (_, counts) = keep_selected(&reports, &SelfGeneratedConfig::default());
        assert_eq!(counts.balance_score, (0.5 + 0.0) / 2.0);
        assert_eq!(counts.metrics(0, 0.0)["self_sft/balance_score"], 0.25);
    }

    #[test]
    fn fixes_only_keeps_second_attempts_that_fix_a_wrong_first() {
        let reports = vec![
            episode(3, &[10], &[11], [0.0, 1.0]),
            episode(3, &[12], &[13], [1.0, 1.0]),
        ];
        let config = SelfGeneratedConfig {
            fixes_only: true,
            ..SelfGeneratedConfig::default()
        };
        let (kept, counts) = keep_selected(&reports, &config);
        // The fix [11] and the right first answer [12]; [13] only kept [12] right.
        let last: Vec<u32> = kept.iter().map(|k| *k.tokens.last().unwrap()).collect();
        assert_eq!(last, vec![11, 12]);
        assert_eq!(counts.not_a_fix, 1);
        assert_eq!(counts.metrics(0, 0.0)["self_sft/not_a_fix"], 1.0);
        // The balance score judges the selector: both right final turns count, though only
        // the fix is trained on.
        assert_eq!(counts.balance_score, 1.0);
        let (kept, counts) = keep_selected(&reports, &SelfGeneratedConfig::default());
        assert_eq!(kept.len(), 3);
        assert_eq!(counts.balance_score, 1.0);
    }

    #[test]
    fn unsolved_problems_are_those_without_a_right_final_turn() {
        let mut faulted = episode(10, &[1], &[2], [1.0, 1.0]);
        faulted.result = Err(kaizen_envs::Fault {
            kind: kaizen_envs::FaultKind::EnvError,
            message: "broke".into(),
        });
        let reports = vec![
            episode(7, &[10], &[20], [0.0, 1.0]),
            // A right first answer broken on the second attempt: not solved.
            episode(8, &[11], &[21], [1.0, 0.0]),
            episode(8, &[12], &[22], [0.0, 0.0]),
            episode(9, &[13], &[23], [0.0, 0.0]),
            episode(7, &[14], &[24], [0.0, 0.0]),
            faulted,
        ];
        let unsolved = unsolved_problems(&reports, 1.0);
        let groups: Vec<u64> = unsolved.iter().map(|t| t.group_id).collect();
        assert_eq!(groups, vec![8, 9, 10]);
        // The task kept is the problem's (its environment and seed are replayed).
        assert_eq!(unsolved[0].seed, 8);
        assert!(
            unsolved_problems(&reports, 0.0)
                .iter()
                .all(|t| t.group_id == 10)
        );
    }

    #[test]
    fn a_fault_or_a_reward_count_mismatch_is_counted_not_kept() {
        let mut bad = episode(1, &[5], &[6], [1.0, 1.0]);
        if let Ok(t) = &mut bad.result {
            t.outcome = Outcome::single("solver", vec![1.0]);
        }
        let (kept, counts) = keep_selected(&[bad], &SelfGeneratedConfig::default());
        assert!(kept.is_empty());
        assert_eq!((counts.faults, counts.episodes), (1, 0));
    }
}
