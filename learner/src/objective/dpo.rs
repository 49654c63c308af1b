//! `algorithm = "dpo"`: DPO or IPO on pairs of the policy's own samples, built online.
//!
//! Each GRPO group (one prompt, `num_generations` samples) gives at most one pair: its
//! best-rewarded sample as chosen, its worst as rejected (`kaizen_algorithms::group_pairs`; no
//! pair when all rewards are equal). A sample's reward is the sum of its trained turns' rewards
//! (a multi-turn thread is one response: its trained tokens are scored as one sequence). The
//! loss is `kaizen_algorithms::dpo_loss` against the frozen reference (the policy the RL phase
//! started from), divided by the step's pair count. Micro-batches keep a pair's two rows
//! together; a pair whose rows were sampled at different temperatures is dropped (they cannot
//! be scored in one pass) and counted.

use kaizen_algorithms::{DpoConfig, PreferenceBatch, StepNormalizers, dpo_loss, group_pairs};
use kaizen_core::AgentId;

use super::{LossOut, Merge, MetricParts, MicroBatch, Objective, Prepared, StepInput, normalizers};
use crate::Error;
use crate::learner::StepMetrics;
use crate::samples::{Sample, micro_batches};

/// DPO on online pairs.
pub(crate) struct Dpo {
    config: DpoConfig,
    /// The step's pairs, as indices into the used samples (chosen, rejected).
    pairs: Vec<(usize, usize)>,
}

impl Dpo {
    pub(crate) fn new(config: DpoConfig) -> Self {
        Self {
            config,
            pairs: Vec::new(),
        }
    }

    /// DPO on `count` given pairs laid out as (chosen, rejected) neighbours: samples `2k` and
    /// `2k + 1` (offline pairs, `[preference]`).
    pub(crate) fn with_pairs(config: DpoConfig, count: usize) -> Self {
        Self {
            config,
            pairs: (0..count).map(|k| (2 * k, 2 * k + 1)).collect(),
        }
    }
}

impl Objective for Dpo {
    fn uses_reference(&self) -> bool {
        true
    }

    fn prepare(&mut self, step: StepInput<'_>) -> Result<Prepared, Error> {
        let candidates: Vec<usize> = (0..step.samples.len())
            .filter(|&i| step.samples[i].trained_tokens() > 0)
            .collect();
        let mut rewards = Vec::with_capacity(candidates.len());
        let mut groups: Vec<(u64, &AgentId)> = Vec::with_capacity(candidates.len());
        for &i in &candidates {
            let s = &step.samples[i];
            let t = &step.trajectories[s.trajectory];
            rewards.push(
                super::trained_turn_rewards(s, step.trajectories)?
                    .iter()
                    .sum(),
            );
            let agent = s
                .trained_segments
                .first()
                .map(|&seg| &t.segments[seg].agent)
                .ok_or_else(|| {
                    Error::Algorithm(kaizen_algorithms::Error::MissingInput {
                        input: "trained segment",
                        reason: "a DPO sample needs one",
                    })
                })?;
            groups.push((t.group_id, agent));
        }
        let pairs = group_pairs(&rewards, &groups)?;
        let mut mixed = 0usize;
        let mut used = Vec::new();
        self.pairs.clear();
        for (chosen, rejected) in pairs {
            let (c, r) = (candidates[chosen], candidates[rejected]);
            if step.samples[c].temperature != step.samples[r].temperature {
                mixed += 1;
                continue;
            }
            self.pairs.push((used.len(), used.len() + 1));
            used.push(c);
            used.push(r);
        }
        let mut metrics = StepMetrics::new();
        metrics.insert("dpo/pairs".into(), self.pairs.len() as f64);
        metrics.insert("dpo/mixed_temperature_pairs".into(), mixed as f64);
        let chosen: Vec<f32> = self
            .pairs
            .iter()
            .map(|&(c, _)| rewards[candidates.iter().position(|&x| x == used[c]).unwrap_or(0)])
            .collect();
        if !chosen.is_empty() {
            metrics.insert(
                "dpo/chosen_reward_mean".into(),
                chosen.iter().map(|&r| f64::from(r)).sum::<f64>() / chosen.len() as f64,
            );
        }
        Ok(Prepared {
            normalizers: StepNormalizers {
                // `dpo_loss` divides by the pairs; the sequence count is the pair count too.
                num_sequences: self.pairs.len(),
                ..normalizers(used.iter().map(|&i| &step.samples[i]), step.learner)
            },
            used,
            metrics,
        })
    }

    /// Pairs stay together: the used samples come as (chosen, rejected) neighbours, so the
    /// split is over pairs.
    fn micro_batches(&self, samples: &[Sample], parts: usize) -> Vec<Vec<usize>> {
        let pair_samples: Vec<&Sample> = samples.chunks(2).map(|c| &c[0]).collect();
        micro_batches(&pair_samples, parts)
            .into_iter()
            .map(|part| part.iter().flat_map(|&p| [2 * p, 2 * p + 1]).collect())
            .collect()
    }

    fn loss(&self, batch: MicroBatch<'_>, normalizers: &StepNormalizers) -> Result<LossOut, Error> {
        // Local rows of this micro-batch's pairs.
        let local = |i: usize| batch.indices.iter().position(|&x| x == i);
        let pairs: Vec<(usize, usize)> = self
            .pairs
            .iter()
            .filter_map(|&(c, r)| Some((local(c)?, local(r)?)))
            .collect();
        let ref_logprobs = batch.ref_logprobs.ok_or_else(|| {
            Error::Algorithm(kaizen_algorithms::Error::MissingInput {
                input: "ref_logprobs",
                reason: "`algorithm = \"dpo\"` (the implicit reward is relative to the reference)",
            })
        })?;
        let scores = batch.scores;
        let out = dpo_loss(
            PreferenceBatch {
                logprobs: scores.logprobs,
                ref_logprobs,
                rows: &scores.rows,
                pairs: &pairs,
            },
            normalizers.num_sequences,
            &self.config,
        )?;
        let mut metrics = MetricParts::default();
        let per_pair = Merge::Mean(pairs.len() as f64);
        metrics.push("loss", f64::from(out.loss_value), Merge::Sum);
        metrics.push(
            "dpo/rewards_chosen",
            f64::from(out.rewards_chosen),
            per_pair,
        );
        metrics.push(
            "dpo/rewards_rejected",
            f64::from(out.rewards_rejected),
            per_pair,
        );
        metrics.push(
            "dpo/rewards_accuracies",
            f64::from(out.rewards_accuracies),
            per_pair,
        );
        metrics.push(
            "dpo/rewards_margins",
            f64::from(out.rewards_margins),
            per_pair,
        );
        metrics.push("num_tokens", scores.rows.len() as f64, Merge::Sum);
        Ok(LossOut {
            loss: out.loss,
            metrics,
        })
    }
}
