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
            // Faults are a share of all episodes (only faulted ones carry `fault/<kind>`);
            // other metrics the mean over the episodes that report them.
            let n = if k.starts_with("fault/") {
                first.len()
            } else {
                *n
            };
            out.insert(format!("eval/{}/{k}", target.name), sum / n.max(1) as f64);
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
            let last = format!("correct@t{n}");
            let pairs = PairedAttempts::count(
                first
                    .iter()
                    .filter_map(|r| Some((*r.metrics.get("correct@t1")?, *r.metrics.get(&last)?))),
            );
            let prefix = format!("eval/{}", target.name);
            out.insert(format!("{prefix}/correct@t1_stderr"), pairs.first_stderr());
            out.insert(format!("{prefix}/correct@t{n}_stderr"), pairs.last_stderr());
            out.insert(
                format!("{prefix}/delta_t1_t{n}_stderr"),
                pairs.delta_stderr(),
            );
            out.insert(format!("{prefix}/fixed_t1_t{n}"), pairs.fixed as f64);
            out.insert(format!("{prefix}/broken_t1_t{n}"), pairs.broken as f64);
            out.insert(format!("{prefix}/mcnemar_p_t1_t{n}"), pairs.mcnemar_p());
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

/// The first and last attempts of the same evaluation episodes, paired: the counts behind
/// Δ(t1→tN) and its significance.
///
/// An episode counts as correct at an attempt when its `correct@t<k>` metric is ≥ 0.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairedAttempts {
    /// Episodes with both attempts reported.
    pub episodes: usize,
    /// Right at the first attempt.
    pub first_correct: usize,
    /// Right at the last attempt.
    pub last_correct: usize,
    /// Wrong at the first attempt, right at the last (McNemar's `b`).
    pub fixed: usize,
    /// Right at the first attempt, wrong at the last (McNemar's `c`).
    pub broken: usize,
}

impl PairedAttempts {
    /// Counts `(correct@t1, correct@tN)` pairs, one per episode.
    pub fn count(pairs: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let mut p = PairedAttempts::default();
        for (first, last) in pairs {
            let (first, last) = (first >= 0.5, last >= 0.5);
            p.episodes += 1;
            p.first_correct += usize::from(first);
            p.last_correct += usize::from(last);
            p.fixed += usize::from(!first && last);
            p.broken += usize::from(first && !last);
        }
        p
    }

    /// Standard error of the first attempt's accuracy, `√(p̂(1 − p̂)/n)` (binomial), as a
    /// fraction; 0 without episodes.
    pub fn first_stderr(&self) -> f64 {
        binomial_stderr(self.first_correct, self.episodes)
    }

    /// Standard error of the last attempt's accuracy (binomial), as a fraction.
    pub fn last_stderr(&self) -> f64 {
        binomial_stderr(self.last_correct, self.episodes)
    }

    /// Standard error of Δ = mean(dᵢ), dᵢ = last − first ∈ {−1, 0, 1} per episode:
    /// `√((E[d²] − E[d]²)/n)` with `E[d²] = (b + c)/n`, `E[d] = (b − c)/n`; a fraction.
    pub fn delta_stderr(&self) -> f64 {
        if self.episodes == 0 {
            return 0.0;
        }
        let n = self.episodes as f64;
        let mean = (self.fixed as f64 - self.broken as f64) / n;
        let second = (self.fixed + self.broken) as f64 / n;
        ((second - mean * mean).max(0.0) / n).sqrt()
    }

    /// One-sided exact McNemar test of "the last attempt is better than the first": under the
    /// null each discordant episode is a fix or a break with probability ½, so
    /// `p = P(X ≥ b)`, `X ~ Binomial(b + c, ½)`. 1 when no episode changed.
    pub fn mcnemar_p(&self) -> f64 {
        let (b, m) = (self.fixed, self.fixed + self.broken);
        // ln m! by summation: m is at most the number of evaluation episodes.
        let ln_fact: Vec<f64> = std::iter::once(0.0)
            .chain((1..=m).scan(0.0f64, |acc, i| {
                *acc += (i as f64).ln();
                Some(*acc)
            }))
            .collect();
        let ln_half_m = m as f64 * std::f64::consts::LN_2;
        (b..=m)
            .map(|k| (ln_fact[m] - ln_fact[k] - ln_fact[m - k] - ln_half_m).exp())
            .sum::<f64>()
            .min(1.0)
    }
}

fn binomial_stderr(successes: usize, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = successes as f64 / n as f64;
    (p * (1.0 - p) / n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(fixed: usize, broken: usize, both_right: usize, both_wrong: usize) -> PairedAttempts {
        PairedAttempts::count(
            std::iter::repeat_n((0.0, 1.0), fixed)
                .chain(std::iter::repeat_n((1.0, 0.0), broken))
                .chain(std::iter::repeat_n((1.0, 1.0), both_right))
                .chain(std::iter::repeat_n((0.0, 0.0), both_wrong)),
        )
    }

    #[test]
    fn paired_counts_and_standard_errors_match_hand_computed_values() {
        // Run 41's end: 200 episodes, t1 69 right, 18 fixed, 0 broken.
        let p = pairs(18, 0, 69, 113);
        assert_eq!((p.episodes, p.first_correct, p.last_correct), (200, 69, 87));
        assert!((p.first_stderr() - (0.345f64 * 0.655 / 200.0).sqrt()).abs() < 1e-12);
        // d: 18 ones, 182 zeros: mean 0.09, E[d²] 0.09, var 0.0819.
        assert!((p.delta_stderr() - (0.0819f64 / 200.0).sqrt()).abs() < 1e-12);
        assert!((p.mcnemar_p() - 0.5f64.powi(18)).abs() < 1e-15);
    }

    #[test]
    fn mcnemar_p_is_the_binomial_upper_tail_and_one_without_changes() {
        // b = 3, c = 1: P(X ≥ 3 | 4, ½) = (4 + 1)/16.
        assert!((pairs(3, 1, 5, 5).mcnemar_p() - 5.0 / 16.0).abs() < 1e-12);
        // b = 1, c = 3: P(X ≥ 1 | 4, ½) = 15/16.
        assert!((pairs(1, 3, 0, 0).mcnemar_p() - 15.0 / 16.0).abs() < 1e-12);
        assert_eq!(pairs(0, 0, 7, 3).mcnemar_p(), 1.0);
        assert_eq!(PairedAttempts::default().delta_stderr(), 0.0);
        // Large counts stay finite: b = 600, c = 400.
        let p = pairs(600, 400, 0, 0).mcnemar_p();
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }
}
