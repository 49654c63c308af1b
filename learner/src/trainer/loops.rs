//! The sync and async loops: hand out groups of episodes, collect a step's reports (replacing
//! flat groups under DAPO dynamic sampling), step, repeat.

use super::*;
use crate::config::RewardSource;

/// Whether every episode of a group got the same reward for every agent and turn: then every
/// advantage of the group is 0 (advantages are normalised per agent and turn index across the
/// group), so it carries no GRPO signal. Comparing summed rewards instead would call a group
/// flat whose per-turn returns differ (e.g. zero-sum SPC rounds, or `[1, 0]` vs `[0, 1]`).
pub(super) fn zero_signal(reports: &[EpisodeReport]) -> bool {
    let rewards: Vec<_> = reports
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|t| &t.outcome.rewards)
        .collect();
    rewards.windows(2).all(|w| w[0] == w[1])
}

/// A report rewarded with its turns' self-certainty (`[grpo] reward_source =
/// "self_certainty"`). The environment's reward goes to the report's metrics, for logging
/// only: `verifier_reward` (mean over trained turns) and `self_certainty` (the same mean of
/// the new rewards). A trained turn without a score turns the episode into a fault, logged.
fn self_certainty_rewards(mut report: EpisodeReport) -> EpisodeReport {
    let Ok(trajectory) = &mut report.result else {
        return report;
    };
    match kaizen_envs::rewards::relabel_with_self_certainty(trajectory) {
        Ok(Some(previous)) => {
            let trained = |rewards: &[f32]| {
                let values: Vec<f64> = trajectory
                    .segments
                    .iter()
                    .zip(rewards)
                    .filter(|(s, _)| s.trainable)
                    .map(|(_, &r)| f64::from(r))
                    .collect();
                values.iter().sum::<f64>() / values.len().max(1) as f64
            };
            let verifier = trained(&previous);
            let certainty = trained(&trajectory.segment_rewards().unwrap_or_default());
            report.metrics.insert("verifier_reward".into(), verifier);
            report.metrics.insert("self_certainty".into(), certainty);
        }
        Ok(None) => {}
        Err(e) => return rejected(report, &e.to_string()),
    }
    report
}

/// A group's reports rewarded by majority vote (`[grpo] reward_source = "majority_vote"`,
/// see [`kaizen_envs::rewards::relabel_group_by_majority`]); metrics as [`vote_metrics`]
/// says, under `majority_vote/`.
fn majority_vote_rewards(group: &mut [EpisodeReport], answers: kaizen_envs::rewards::VoteAnswers) {
    use kaizen_envs::rewards::relabel_group_by_majority;
    let (mut members, index) = group_members(group);
    let vote = relabel_group_by_majority(&mut members, answers);
    drop(members);
    vote_metrics(group, &index, &vote, "majority_vote", None);
}

/// A question's group and its twin's rewarded by each other's majority answer (`[grpo]
/// reward_source = "co_reward"`, see [`kaizen_envs::rewards::relabel_twin_groups`]); metrics
/// as [`vote_metrics`] says, under `co_reward/`, with `co_reward/labels_agree` (1 when the two
/// groups' majority answers are equal).
fn co_rewards(
    question: &mut [EpisodeReport],
    twin: &mut [EpisodeReport],
    answers: kaizen_envs::rewards::VoteAnswers,
) {
    use kaizen_envs::rewards::relabel_twin_groups;
    let (mut q_members, q_index) = group_members(question);
    let (mut t_members, t_index) = group_members(twin);
    let co = relabel_twin_groups(&mut q_members, &mut t_members, answers);
    drop((q_members, t_members));
    let agree = co.labels_agree.map(|a| f64::from(u8::from(a)));
    vote_metrics(question, &q_index, &co.question, "co_reward", agree);
    vote_metrics(twin, &t_index, &co.twin, "co_reward", agree);
}

/// A group rewarded by the user's hook (`[grpo] reward_source = "group"`): each member's
/// metrics are merged into its report's; a member it rejects, or leaves without a verdict,
/// becomes a fault.
fn user_group_rewards(group: &mut [EpisodeReport], hook: &dyn kaizen_envs::rewards::GroupReward) {
    let (mut members, index) = group_members(group);
    let verdicts = hook.relabel(&mut members);
    drop(members);
    let mut verdicts = verdicts.into_iter();
    for i in index {
        let lined_up = group[i]
            .result
            .as_ref()
            .is_ok_and(|t| t.segment_rewards().is_ok());
        match verdicts.next() {
            Some(Ok(_)) if !lined_up => reject(
                &mut group[i],
                "group reward: the rewards no longer line up with the episode's turns",
            ),
            Some(Ok(metrics)) => group[i].metrics.extend(metrics),
            Some(Err(message)) => reject(&mut group[i], &format!("group reward: {message}")),
            None => reject(&mut group[i], "group reward: no verdict for this episode"),
        }
    }
}

/// The episodes of `group` that have a trajectory, as vote members with their turns' texts,
/// and their indices in `group`.
fn group_members(
    group: &mut [EpisodeReport],
) -> (Vec<kaizen_envs::rewards::GroupMember<'_>>, Vec<usize>) {
    let mut members = Vec::new();
    let mut index = Vec::new();
    for (i, r) in group.iter_mut().enumerate() {
        let EpisodeReport { result, turns, .. } = r;
        if let Ok(trajectory) = result {
            members.push(kaizen_envs::rewards::GroupMember {
                trajectory,
                texts: turns.iter().map(|t| t.answer.as_str()).collect(),
            });
            index.push(i);
        }
    }
    (members, index)
}

/// Each relabelled report's metrics get, for logging only: `verifier_reward` (the
/// environment's mean reward over its trained turns), `<prefix>/agreement` (the share of the
/// group's votes that agree with its pseudo-label), `<prefix>/label_accuracy` (the
/// environment's mean reward of the turns that agree with it: 1 when the pseudo-label is right
/// under a 0/1 verifier; absent when no turn agrees) and `<prefix>/reward_agreement` (the
/// share of its trained turns whose pseudo-reward equals the verifier's 0/1 verdict, reward ≥
/// 0.5), and `<prefix>/labels_agree` when given. A report whose turns do not line up with its
/// trajectory becomes a fault.
fn vote_metrics(
    group: &mut [EpisodeReport],
    index: &[usize],
    vote: &kaizen_envs::rewards::GroupVote,
    prefix: &str,
    labels_agree: Option<f64>,
) {
    // The environment's rewards of the turns that agree with the label, over the whole group.
    let label: Vec<f64> = vote
        .previous
        .iter()
        .zip(&vote.in_majority)
        .filter_map(|(previous, majority)| Some(previous.as_ref()?.iter().zip(majority)))
        .flatten()
        .filter(|(_, m)| **m)
        .map(|(r, _)| f64::from(*r))
        .collect();
    let label_accuracy =
        (!label.is_empty()).then(|| label.iter().sum::<f64>() / label.len() as f64);
    for ((&i, previous), majority) in index.iter().zip(&vote.previous).zip(&vote.in_majority) {
        let report = &mut group[i];
        let Some(verdicts) = previous else {
            reject(
                report,
                &format!(
                    "{prefix}: the episode's turns do not line up with its trajectory's segments"
                ),
            );
            continue;
        };
        let n = verdicts.len().max(1) as f64;
        let agree = verdicts
            .iter()
            .zip(majority)
            .filter(|(r, m)| (**r >= 0.5) == **m)
            .count();
        let m = &mut report.metrics;
        m.insert(
            "verifier_reward".into(),
            verdicts.iter().map(|&r| f64::from(r)).sum::<f64>() / n,
        );
        m.insert(format!("{prefix}/agreement"), vote.vote.agreement);
        m.insert(format!("{prefix}/reward_agreement"), agree as f64 / n);
        if let Some(a) = label_accuracy {
            m.insert(format!("{prefix}/label_accuracy"), a);
        }
        if let Some(a) = labels_agree {
            m.insert(format!("{prefix}/labels_agree"), a);
        }
    }
}

/// `report` as a [`kaizen_envs::FaultKind::BadOutcome`] fault with `message` (its turns kept
/// for samples), counted like any fault.
fn rejected(mut report: EpisodeReport, message: &str) -> EpisodeReport {
    reject(&mut report, message);
    report
}

/// [`rejected`] in place.
fn reject(report: &mut EpisodeReport, message: &str) {
    tracing::warn!(error = message, "episode counted as a fault");
    let fault = kaizen_envs::Fault {
        kind: kaizen_envs::FaultKind::BadOutcome,
        message: message.to_string(),
    };
    let faulted = EpisodeReport::faulted(report.task.clone(), report.env.clone(), fault);
    report.result = faulted.result;
    report.metrics = faulted.metrics;
}

impl Run {
    /// The groups of the next `count` prompts: environment by weight (seeded by the group id),
    /// environment seed from the data position, `num_generations` episodes each; under
    /// Co-Reward each prompt's group is followed by its twin's (same seed, the twin slot),
    /// the pair recorded in `twins`.
    pub(super) fn next_groups(&mut self, count: usize) -> Vec<EpisodeTask> {
        let g = self.config.grpo.num_generations;
        let weights: Vec<f64> = self.config.envs.iter().map(|e| e.weight).collect();
        let total: f64 = weights.iter().sum();
        let mut tasks = Vec::with_capacity(count * g);
        for _ in 0..count {
            let group = self.state.next_group;
            self.state.next_group += 1;
            let env_seed = self.state.next_seed;
            self.state.next_seed += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.config.run.seed, group));
            let mut pick = rng.random::<f64>() * total;
            let mut env = 0;
            for (i, w) in weights.iter().enumerate() {
                env = i;
                if pick < *w {
                    break;
                }
                pick -= w;
            }
            let mut slots = vec![(group, env)];
            if self.config.grpo.reward_source == RewardSource::CoReward
                && let Some(twin_slot) = self.config.twin_slot(env)
            {
                let twin = self.state.next_group;
                self.state.next_group += 1;
                self.twins.insert(group, twin);
                self.twins.insert(twin, group);
                slots.push((twin, twin_slot));
            }
            for (group, env) in slots {
                for sample in 0..g {
                    let id = self.state.next_task;
                    self.state.next_task += 1;
                    tasks.push(EpisodeTask {
                        id,
                        group_id: group,
                        env,
                        seed: env_seed,
                        sample: sample as u32,
                        sampling_seed: sampling_seed(self.config.run.seed, id),
                        sampling: SamplingOverrides::default(),
                        hint_turns: Vec::new(),
                        search: None,
                    });
                }
            }
        }
        self.counts.submitted += tasks.len() as u64;
        tasks
    }

    /// Receives a training report (evaluation reports never arrive outside `evaluate`), its
    /// rewards replaced as `[grpo] reward_source` says.
    pub(super) fn recv(&mut self) -> Result<EpisodeReport, Error> {
        let r = match self.stray.pop() {
            Some(r) => r,
            None => {
                let r = self
                    .rollouts
                    .recv()
                    .map_err(|e| Error::ActorsStopped(e.to_string()))?;
                self.counts.reported += 1;
                r
            }
        };
        if !r.task.hint_turns.is_empty() {
            // Never submitted by the RL loops; a hinted episode's log-probs belong to a context
            // its trajectory does not show, so it must not reach a policy-gradient step.
            return Ok(rejected(
                r,
                "a rationalised (hinted) episode is supervised data only",
            ));
        }
        Ok(match self.config.grpo.reward_source {
            RewardSource::Env
            | RewardSource::MajorityVote
            | RewardSource::CoReward
            | RewardSource::Group => r,
            RewardSource::SelfCertainty => self_certainty_rewards(r),
        })
    }

    /// Rewards that need whole groups, applied to the complete groups in `groups` (before
    /// DAPO's dynamic sampling judges them): `[grpo] reward_source = "majority_vote"` rewards
    /// each group; `"co_reward"` each pair of twin groups both present (a group whose twin is
    /// not is left as it is, for a later call).
    pub(super) fn group_rewards(&mut self, groups: &mut BTreeMap<u64, Vec<EpisodeReport>>) {
        let answers = self.config.grpo.vote_answers;
        match self.config.grpo.reward_source {
            RewardSource::MajorityVote => {
                for group in groups.values_mut() {
                    majority_vote_rewards(group, answers);
                }
            }
            RewardSource::CoReward => {
                let ids: Vec<u64> = groups.keys().copied().collect();
                for id in ids {
                    let Some(&twin) = self.twins.get(&id) else {
                        continue;
                    };
                    if twin < id || !groups.contains_key(&twin) {
                        continue; // rewarded with its partner, or the partner is not in
                    }
                    let (Some(mut question), Some(mut twin_group)) =
                        (groups.remove(&id), groups.remove(&twin))
                    else {
                        continue;
                    };
                    co_rewards(&mut question, &mut twin_group, answers);
                    groups.insert(id, question);
                    groups.insert(twin, twin_group);
                    self.twins.remove(&id);
                    self.twins.remove(&twin);
                }
            }
            RewardSource::Group => {
                if let Some(hook) = &self.group_reward {
                    for group in groups.values_mut() {
                        user_group_rewards(group, hook.as_ref());
                    }
                }
            }
            RewardSource::Env | RewardSource::SelfCertainty => {}
        }
    }

    /// Whether RL goes on: steps left and time left. With `time_limit_scope = "job"`, time
    /// left for the next step and the final evaluation after it, as long as the last ones took.
    pub(super) fn more_steps(&self) -> bool {
        let final_eval = if self.config.eval.at_end {
            self.eval_seconds
        } else {
            0.0
        };
        self.state.step < self.config.run.max_steps
            && self.deadline.is_none_or(|d| {
                time_left_for_a_step(
                    self.config.run.time_limit_scope,
                    d.saturating_duration_since(Instant::now()),
                    self.last_step_seconds,
                    final_eval,
                )
            })
    }

    pub(super) fn sync_loop(&mut self, stop: &AtomicBool) -> Result<bool, Error> {
        let b = self.config.grpo.prompts_per_step;
        let g = self.config.grpo.num_generations;
        let per_prompt = self.config.grpo.groups_per_prompt();
        while self.more_steps() {
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let started = Instant::now();
            let tokens_before = self.rollouts.generated_tokens();
            let mut groups: BTreeMap<u64, Vec<EpisodeReport>> = BTreeMap::new();
            let tasks = self.next_groups(b);
            self.rollouts.submit_all(tasks)?;
            for _ in 0..b * per_prompt * g {
                let r = self.recv()?;
                groups.entry(r.task.group_id).or_default().push(r);
            }
            self.group_rewards(&mut groups);
            // DAPO dynamic sampling: replace groups without signal.
            let mut rounds = 0;
            while self.config.grpo.dynamic_sampling && rounds < self.config.grpo.max_resample_rounds
            {
                let flat: Vec<u64> = groups
                    .iter()
                    .filter(|(_, rs)| zero_signal(rs))
                    .map(|(id, _)| *id)
                    .collect();
                if flat.is_empty() {
                    break;
                }
                rounds += 1;
                // Prompts enough for one fresh group per flat one (Co-Reward pairs give two).
                let tasks = self.next_groups(flat.len().div_ceil(per_prompt));
                let count = tasks.len();
                self.rollouts.submit_all(tasks)?;
                let mut fresh: BTreeMap<u64, Vec<EpisodeReport>> = BTreeMap::new();
                for _ in 0..count {
                    let r = self.recv()?;
                    fresh.entry(r.task.group_id).or_default().push(r);
                }
                self.group_rewards(&mut fresh);
                let mut replaced = 0;
                for (id, rs) in fresh {
                    if !zero_signal(&rs)
                        && let Some(old) = flat.get(replaced)
                    {
                        if let Some(dropped) = groups.remove(old) {
                            self.counts.unused += dropped.len() as u64;
                        }
                        groups.insert(id, rs);
                        replaced += 1;
                    } else {
                        self.counts.unused += rs.len() as u64;
                    }
                }
            }
            let generation = started.elapsed().as_secs_f64();
            let generated = self.rollouts.generated_tokens() - tokens_before;
            let reports: Vec<EpisodeReport> = groups.into_values().flatten().collect();
            let mut metrics = self.step_with(reports)?;
            metrics.insert("time/generation".into(), generation);
            metrics.insert(
                "actor_tokens_per_s".into(),
                generated as f64 / generation.max(1e-9),
            );
            metrics.insert("time/waiting".into(), 0.0);
            self.finish_step(metrics)?;
        }
        Ok(false)
    }

    pub(super) fn async_loop(&mut self, stop: &AtomicBool) -> Result<bool, Error> {
        let b = self.config.grpo.prompts_per_step;
        let g = self.config.grpo.num_generations;
        let per_step = b * self.config.grpo.groups_per_prompt();
        let in_flight = b * (self.config.learner.max_policy_lag as usize + 1);
        let tasks = self.next_groups(in_flight);
        self.rollouts.submit_all(tasks)?;
        let mut pending: HashMap<u64, Vec<EpisodeReport>> = HashMap::new();
        // Complete groups whose group rewards wait for their twin (Co-Reward).
        let mut complete: BTreeMap<u64, Vec<EpisodeReport>> = BTreeMap::new();
        let mut ready: Vec<Vec<EpisodeReport>> = Vec::new();
        let mut tokens_mark = self.rollouts.generated_tokens();
        let mut mark = Instant::now();
        while self.more_steps() {
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let wait_start = Instant::now();
            while ready.len() < per_step {
                let r = self.recv()?;
                let id = r.task.group_id;
                let group = pending.entry(id).or_default();
                group.push(r);
                if group.len() == g
                    && let Some(done) = pending.remove(&id)
                {
                    complete.insert(id, done);
                    self.group_rewards(&mut complete);
                    // Groups still paired in `twins` wait for their twin.
                    let rewarded: Vec<u64> = complete
                        .keys()
                        .filter(|id| !self.twins.contains_key(id))
                        .copied()
                        .collect();
                    for id in rewarded {
                        ready.extend(complete.remove(&id));
                    }
                }
            }
            let waiting = wait_start.elapsed().as_secs_f64();
            let take: Vec<Vec<EpisodeReport>> = ready.drain(..per_step).collect();
            let elapsed = mark.elapsed().as_secs_f64();
            let generated = self.rollouts.generated_tokens() - tokens_mark;
            tokens_mark = self.rollouts.generated_tokens();
            mark = Instant::now();
            let mut reports: Vec<EpisodeReport> = take.into_iter().flatten().collect();
            reports.sort_by_key(|r| (r.task.group_id, r.task.sample));
            let mut metrics = self.step_with(reports)?;
            metrics.insert("time/waiting".into(), waiting);
            metrics.insert(
                "actor_tokens_per_s".into(),
                generated as f64 / elapsed.max(1e-9),
            );
            metrics.insert("queue_depth".into(), self.rollouts.ready() as f64);
            // Keep the actors busy: replace the groups just consumed.
            let tasks = self.next_groups(b);
            self.rollouts.submit_all(tasks)?;
            self.finish_step(metrics)?;
        }
        self.counts.unused += pending.values().map(|v| v.len() as u64).sum::<u64>()
            + complete.values().map(|v| v.len() as u64).sum::<u64>()
            + ready.iter().map(|v| v.len() as u64).sum::<u64>();
        Ok(false)
    }
}

/// Whether RL may start another step with `left` before the deadline: under
/// [`TimeLimitScope::Rl`] while any is left; under [`TimeLimitScope::Job`] while the step
/// (`last_step` seconds, as the last one took) and the final evaluation (`final_eval` seconds)
/// both fit.
fn time_left_for_a_step(
    scope: TimeLimitScope,
    left: Duration,
    last_step: f64,
    final_eval: f64,
) -> bool {
    match scope {
        TimeLimitScope::Rl => !left.is_zero(),
        TimeLimitScope::Job => left.as_secs_f64() > last_step + final_eval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_scoped_limit_keeps_time_for_the_next_step_and_the_final_evaluation() {
        let left = Duration::from_secs(300);
        // RL scope: any time left starts a step, however long the last one was.
        assert!(time_left_for_a_step(TimeLimitScope::Rl, left, 1e6, 1e6));
        assert!(!time_left_for_a_step(
            TimeLimitScope::Rl,
            Duration::ZERO,
            0.0,
            0.0
        ));
        // Job scope: 300 s left holds a 150 s step and a 140 s evaluation, not a 170 s one.
        assert!(time_left_for_a_step(
            TimeLimitScope::Job,
            left,
            150.0,
            140.0
        ));
        assert!(!time_left_for_a_step(
            TimeLimitScope::Job,
            left,
            150.0,
            170.0
        ));
        // Before the first step and evaluation nothing is reserved.
        assert!(time_left_for_a_step(TimeLimitScope::Job, left, 0.0, 0.0));
        assert!(!time_left_for_a_step(
            TimeLimitScope::Job,
            Duration::ZERO,
            0.0,
            0.0
        ));
    }
}
