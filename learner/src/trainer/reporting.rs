//! What a step reports besides the learner's numbers: episode metrics, sample transcripts in
//! `samples.jsonl`, and the panels of the end-of-run plot.

use super::*;

/// Step metrics computed from the episodes: rewards, environment metrics, lengths, faults.
pub(super) fn episode_metrics(reports: &[EpisodeReport]) -> StepMetrics {
    let mut m = StepMetrics::new();
    let mut rewards = Vec::new();
    let mut lengths = Vec::new();
    let mut env_sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut faults = 0usize;
    for r in reports {
        for (k, v) in &r.metrics {
            let e = env_sums.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
        match &r.result {
            Ok(t) => {
                let per_segment = t.segment_rewards().unwrap_or_default();
                let trained: Vec<f32> = t
                    .segments
                    .iter()
                    .zip(&per_segment)
                    .filter(|(s, _)| s.trainable)
                    .map(|(_, r)| *r)
                    .collect();
                if !trained.is_empty() {
                    rewards.push(trained.iter().sum::<f32>() as f64 / trained.len() as f64);
                }
                lengths.extend(
                    t.segments
                        .iter()
                        .filter(|s| s.trainable)
                        .map(|s| s.completion_tokens.len() as f64),
                );
            }
            Err(_) => faults += 1,
        }
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let reward_mean = mean(&rewards);
    let var = rewards
        .iter()
        .map(|r| (r - reward_mean).powi(2))
        .sum::<f64>()
        / rewards.len().max(1) as f64;
    m.insert("reward/mean".into(), reward_mean);
    m.insert("reward/std".into(), var.sqrt());
    m.insert("response_length".into(), mean(&lengths));
    m.insert("faults".into(), faults as f64);
    for (k, (sum, n)) in &env_sums {
        // A metric is the mean over the episodes that report it (`accuracy@t1/direct` only
        // over episodes that answered directly), except faults: only faulted episodes carry
        // `fault/<kind>`, and its share is over all of the step's episodes.
        let n = if k.starts_with("fault/") {
            reports.len()
        } else {
            *n
        };
        m.insert(format!("env/{k}"), sum / n.max(1) as f64);
    }
    let last = env_sums
        .keys()
        .filter_map(|k| {
            k.strip_prefix("correct@t")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max();
    if let (Some(n), Some(c1)) = (last, m.get("env/correct@t1").copied())
        && n > 1
        && let Some(cn) = m.get(&format!("env/correct@t{n}")).copied()
    {
        m.insert(format!("delta_t1_t{n}"), cn - c1);
    }
    if let Some(agreement) = self_certainty_agreement(reports) {
        m.insert("self_certainty/agreement".into(), agreement);
    }
    m
}

/// With self-certainty rewards: how well each group's self-certainty orders its episodes as
/// the verifier does ([`kaizen_envs::rewards::pairwise_agreement`] over the reports'
/// `self_certainty` and `verifier_reward` metrics); `None` otherwise or without a pair.
fn self_certainty_agreement(reports: &[EpisodeReport]) -> Option<f64> {
    let mut groups: BTreeMap<u64, Vec<(f32, f32)>> = BTreeMap::new();
    for r in reports {
        if let (Some(&score), Some(&reward)) = (
            r.metrics.get("self_certainty"),
            r.metrics.get("verifier_reward"),
        ) {
            groups
                .entry(r.task.group_id)
                .or_default()
                .push((score as f32, reward as f32));
        }
    }
    let groups: Vec<_> = groups.into_values().collect();
    kaizen_envs::rewards::pairwise_agreement(&groups)
}

/// The panels of the end-of-run plot: the curves people look at first, when present.
pub(super) fn report_metrics(run: &kaizen_tracking::plot::PlotRun) -> Vec<String> {
    let wanted = [
        "reward/mean",
        "env/correct@t1",
        "env/correct@t2",
        "delta_t1_t2",
        "entropy",
        "kl",
        "grad_norm",
        "actor_tokens_per_s",
    ];
    let mut out: Vec<String> = wanted
        .iter()
        .filter(|m| run.history.series(m).is_some())
        .map(|m| m.to_string())
        .collect();
    let mut evals: Vec<String> = run
        .history
        .keys()
        .filter(|k| {
            k.starts_with("eval/")
                && (k.contains("correct@t") || k.contains("pass@") || k.contains("delta"))
        })
        .map(|k| k.to_string())
        .collect();
    evals.sort();
    out.extend(evals.into_iter().take(4));
    out
}

impl Run {
    pub(super) fn write_samples(&mut self, reports: &[EpisodeReport]) {
        for r in reports.iter().take(self.config.run.log_samples) {
            let turns: Vec<serde_json::Value> = r
                .turns
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "agent": t.request.agent,
                        "prompt": t.request.messages.last().map(|m| m.content.clone()),
                        "answer": t.answer,
                    })
                })
                .collect();
            let rewards = r.result.as_ref().ok().map(|t| t.outcome.rewards.clone());
            let fault = r.result.as_ref().err().map(|f| f.to_string());
            let line = serde_json::json!({
                "step": self.state.step + 1,
                "env": r.env,
                "seed": r.task.seed,
                "group": r.task.group_id,
                "sample": r.task.sample,
                "rewards": rewards,
                "fault": fault,
                "metrics": r.metrics,
                "turns": turns,
            });
            if let Err(e) = writeln!(self.samples_file, "{line}") {
                tracing::warn!(error = %e, "could not write samples.jsonl");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen_envs::{Fault, FaultKind};

    fn report(result: Result<Trajectory, Fault>, metrics: &[(&str, f64)]) -> EpisodeReport {
        EpisodeReport {
            task: EpisodeTask {
                id: 0,
                group_id: 0,
                env: 0,
                seed: 0,
                sample: 0,
                sampling_seed: 0,
                sampling: SamplingOverrides::default(),
                hint_turns: Vec::new(),
                search: None,
            },
            env: "self_correct".into(),
            result,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            turns: Vec::new(),
            tree: None,
        }
    }

    #[test]
    fn a_fault_kind_is_a_share_of_all_episodes_and_other_metrics_of_those_reporting_them() {
        let fault = |kind| Fault {
            kind,
            message: "x".into(),
        };
        let reports = vec![
            report(
                Err(fault(FaultKind::Sandbox)),
                &[("fault", 1.0), ("fault/sandbox", 1.0)],
            ),
            report(
                Err(fault(FaultKind::EnvTimeout)),
                &[("fault", 1.0), ("fault/env_timeout", 1.0)],
            ),
            report(
                Err(fault(FaultKind::Sandbox)),
                &[("fault", 1.0), ("fault/sandbox", 1.0)],
            ),
            report(
                Err(fault(FaultKind::Policy)),
                &[("fault", 0.0), ("accuracy@t1/direct", 1.0)],
            ),
        ];
        let m = episode_metrics(&reports);
        assert_eq!(m["env/fault/sandbox"], 0.5);
        assert_eq!(m["env/fault/env_timeout"], 0.25);
        assert_eq!(m["env/fault"], 0.75);
        // Reported by one episode: its mean over that episode.
        assert_eq!(m["env/accuracy@t1/direct"], 1.0);
        assert_eq!(m["faults"], 4.0);
    }
}
