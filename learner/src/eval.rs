//! Held-out evaluation: accuracy at each turn (the environments' metrics) and pass@k.

use std::collections::BTreeMap;

use kaizen_core::SamplingOverrides;
use kaizen_transport::{EpisodeReport, EpisodeTask, Rollouts, derive_seed};

use crate::Error;
use crate::config::EvalConfig;

/// Group ids of evaluation episodes have this bit set, so their reports are told apart from
/// training episodes' on the shared report channel.
pub const EVAL_GROUP_BIT: u64 = 1 << 62;

/// Environment seeds of evaluation episodes when an environment has no `eval_params`: far from
/// the seeds training hands out.
pub const EVAL_SEED_OFFSET: u64 = 1 << 40;

/// One environment to evaluate: its index among the actors' environments and name.
#[derive(Debug, Clone)]
pub struct EvalTarget {
    /// Index of the evaluation slot in the job's environment list.
    pub slot: usize,
    /// Environment name (metric prefix).
    pub name: String,
    /// Whether the slot has its own held-out parameters (seeds then start at 0).
    pub held_out: bool,
}

/// Runs the evaluation episodes and returns `eval/<env>/<metric>` means (over episodes of the
/// greedy/low-temperature pass), `eval/<env>/pass@k` when configured, and fault counts.
/// Training reports that arrive meanwhile (async mode) are returned in `other`.
///
/// # Errors
/// [`Error::ActorsStopped`] if the actors stop before every evaluation episode reports.
pub fn evaluate(
    actors: &dyn Rollouts,
    targets: &[EvalTarget],
    config: &EvalConfig,
    seed: u64,
    next_task: &mut u64,
    other: &mut Vec<EpisodeReport>,
) -> Result<BTreeMap<String, f64>, Error> {
    let mut tasks = Vec::new();
    let mut expected = 0usize;
    for (t, target) in targets.iter().enumerate() {
        for i in 0..config.num_problems {
            let env_seed = if target.held_out {
                i as u64
            } else {
                EVAL_SEED_OFFSET + i as u64
            };
            let group = EVAL_GROUP_BIT | ((t as u64) << 32) | i as u64;
            let mut push = |sample: u32, temperature: f32| {
                let id = *next_task;
                *next_task += 1;
                tasks.push(EpisodeTask {
                    id,
                    group_id: group,
                    env: target.slot,
                    seed: env_seed,
                    sample,
                    sampling_seed: derive_seed(seed ^ 0xE7A1, id),
                    sampling: SamplingOverrides {
                        temperature: Some(temperature),
                        ..SamplingOverrides::default()
                    },
                    hint_turns: Vec::new(),
                    search: None,
                });
            };
            push(0, config.temperature);
            for k in 0..config.pass_k {
                push(1 + k as u32, config.pass_k_temperature);
            }
        }
        expected += config.num_problems * (1 + config.pass_k);
    }
    actors.submit_all(tasks)?;
    let mut reports: Vec<EpisodeReport> = Vec::with_capacity(expected);
    while reports.len() < expected {
        let report = actors
            .recv()
            .map_err(|e| Error::ActorsStopped(e.to_string()))?;
        if report.task.group_id & EVAL_GROUP_BIT != 0 {
            reports.push(report);
        } else {
            other.push(report);
        }
    }
    Ok(summarize(targets, config, &reports))
}

fn summarize(
    targets: &[EvalTarget],
    config: &EvalConfig,
    reports: &[EpisodeReport],
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for target in targets {
        let mine: Vec<&EpisodeReport> = reports
            .iter()
            .filter(|r| r.task.env == target.slot)
            .collect();
        let first: Vec<&&EpisodeReport> = mine.iter().filter(|r| r.task.sample == 0).collect();
        let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for r in &first {
            for (k, v) in &r.metrics {
                let e = sums.entry(k.as_str()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        for (k, (sum, n)) in &sums {
            out.insert(format!("eval/{}/{k}", target.name), sum / *n as f64);
        }
        let total = first.len().max(1) as f64;
        out.insert(format!("eval/{}/episodes", target.name), first.len() as f64);
        // Δ(t1→tN): improvement from the first to the last attempt, when the env reports both.
        let last_turn = sums
            .keys()
            .filter_map(|k| {
                k.strip_prefix("correct@t")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .max();
        if let (Some(n), Some((c1, _))) = (last_turn, sums.get("correct@t1"))
            && n > 1
            && let Some((cn, _)) = sums.get(format!("correct@t{n}").as_str())
        {
            out.insert(
                format!("eval/{}/delta_t1_t{n}", target.name),
                (cn - c1) / total,
            );
        }
        if config.pass_k > 0 {
            let mut solved: BTreeMap<u64, bool> = BTreeMap::new();
            for r in mine.iter().filter(|r| r.task.sample > 0) {
                let ok = r.metrics.get(&config.pass_metric).copied().unwrap_or(0.0) >= 1.0;
                *solved.entry(r.task.group_id).or_default() |= ok;
            }
            let n = solved.len().max(1) as f64;
            out.insert(
                format!("eval/{}/pass@{}", target.name, config.pass_k),
                solved.values().filter(|&&s| s).count() as f64 / n,
            );
        }
    }
    out
}
