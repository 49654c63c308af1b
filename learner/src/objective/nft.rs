//! `algorithm = "nft"`: negative-aware fine-tuning on the policy's own verified answers.
//!
//! Every trained turn is an answer with a verdict: its turn reward, which must lie in `[0, 1]`
//! (1 right, 0 wrong; a verifier's reward). A group's accuracy `r̂` at a turn is the mean
//! verdict over its samples that train that turn (the same members GRPO compares). Answers of
//! a (group, agent, turn) whose verdicts are all equal carry no signal (`r̂` is 0 or 1; NFT's
//! release filters such prompts out) and are not trained; a sample none of whose turns carries
//! signal is skipped and counted; like GRPO's zero-signal samples they still count in the step's
//! normalisers (so on-policy NFT with `normalize = "negative_rate"` takes Dr. GRPO's step,
//! tested). The loss is `kaizen_algorithms::nft_loss` with each token's verdict and accuracy.

use std::collections::BTreeMap;

use kaizen_algorithms::{NftBatch, NftConfig, StepNormalizers, nft_loss};
use kaizen_core::AgentId;

use super::{
    LossOut, Merge, MetricParts, MicroBatch, Objective, Prepared, StepInput, normalizers,
    trained_turn_rewards,
};
use crate::Error;
use crate::learner::StepMetrics;

/// NFT and its per-token verdicts.
pub(crate) struct Nft {
    config: NftConfig,
    /// Per used sample, over its trained tokens: the verdict `r` and the accuracy `r̂`.
    correct: Vec<Vec<f32>>,
    rate: Vec<Vec<f32>>,
}

impl Nft {
    pub(crate) fn new(config: NftConfig) -> Self {
        Self {
            config,
            correct: Vec::new(),
            rate: Vec::new(),
        }
    }
}

impl Objective for Nft {
    fn uses_reference(&self) -> bool {
        self.config.beta > 0.0
    }

    fn prepare(&mut self, step: StepInput<'_>) -> Result<Prepared, Error> {
        self.config.validate()?;
        // Verdicts per sample and trained turn; sums per (group, agent, turn).
        let mut verdicts: Vec<Vec<f32>> = Vec::with_capacity(step.samples.len());
        let mut totals: BTreeMap<(u64, &AgentId, usize), (f64, usize)> = BTreeMap::new();
        let mut keys = Vec::with_capacity(step.samples.len());
        for s in step.samples.iter() {
            let t = &step.trajectories[s.trajectory];
            let rewards = trained_turn_rewards(s, step.trajectories)?;
            let agent = s
                .trained_segments
                .first()
                .map(|&seg| &t.segments[seg].agent);
            if let Some(&value) = rewards.iter().find(|r| !(0.0..=1.0).contains(*r)) {
                return Err(Error::Config {
                    path: "[nft]".into(),
                    message: format!(
                        "environment `{}` gave agent `{}` the turn reward {value}; NFT verdicts \
                         must be in [0, 1] (1 right, 0 wrong, as a verifier's); use an \
                         environment with such rewards or another algorithm",
                        t.env,
                        agent.map_or("?".to_string(), ToString::to_string),
                    ),
                });
            }
            let mut counted = vec![false; rewards.len()];
            for (turn, m) in s.turns.iter().zip(&s.loss_mask) {
                if *m {
                    counted[*turn as usize] = true;
                }
            }
            for (turn, (&r, &has_tokens)) in rewards.iter().zip(&counted).enumerate() {
                if let (Some(agent), true) = (agent, has_tokens) {
                    let e = totals.entry((t.group_id, agent, turn)).or_insert((0.0, 0));
                    e.0 += f64::from(r);
                    e.1 += 1;
                }
            }
            keys.push((t.group_id, agent));
            verdicts.push(rewards);
        }
        let rate_of = |group: u64, agent: &AgentId, turn: usize| {
            totals
                .get(&(group, agent, turn))
                .map_or(0.0, |&(sum, n)| (sum / n as f64) as f32)
        };
        // Normalisers over every fresh sample with trained tokens, before turns without signal
        // leave the loss: Dr. GRPO's constant normaliser (and GRPO's, whose zero-signal samples
        // also count), so the step size does not grow with the share of solved prompts.
        let normalizers = normalizers(
            step.samples.iter().filter(|s| s.trained_tokens() > 0),
            step.learner,
        );
        let mut used = Vec::new();
        self.correct.clear();
        self.rate.clear();
        let (mut signal_tokens, mut silent_tokens) = (0usize, 0usize);
        for (i, s) in step.samples.iter_mut().enumerate() {
            let (group, Some(agent)) = keys[i] else {
                continue;
            };
            let (mut correct, mut rate) = (Vec::new(), Vec::new());
            let mut any_signal = false;
            for (t, m) in s.loss_mask.iter_mut().enumerate() {
                if !*m {
                    continue;
                }
                let turn = s.turns[t] as usize;
                let r_hat = rate_of(group, agent, turn);
                if r_hat <= 0.0 || r_hat >= 1.0 {
                    // No signal at this turn: out of the loss.
                    *m = false;
                    silent_tokens += 1;
                    continue;
                }
                any_signal = true;
                signal_tokens += 1;
                correct.push(verdicts[i][turn]);
                rate.push(r_hat);
            }
            if any_signal {
                used.push(i);
                self.correct.push(correct);
                self.rate.push(rate);
            }
        }
        let mut metrics = StepMetrics::new();
        metrics.insert(
            "nft/skipped_samples".into(),
            (step.samples.len() - used.len()) as f64,
        );
        metrics.insert("nft/silent_tokens".into(), silent_tokens as f64);
        let correct_tokens: f64 = self.correct.iter().flatten().map(|&c| f64::from(c)).sum();
        if signal_tokens > 0 {
            metrics.insert(
                "nft/positive_token_frac".into(),
                correct_tokens / signal_tokens as f64,
            );
        }
        Ok(Prepared {
            normalizers,
            used,
            metrics,
        })
    }

    fn loss(&self, batch: MicroBatch<'_>, normalizers: &StepNormalizers) -> Result<LossOut, Error> {
        let correct = batch.gather(&self.correct);
        let rate = batch.gather(&self.rate);
        let scores = batch.scores;
        let out = nft_loss(
            NftBatch {
                logprobs: scores.logprobs,
                old_logprobs: batch.off_policy.then_some(batch.behavior),
                ref_logprobs: batch.ref_logprobs,
                correct: &correct,
                rate: &rate,
                rows: &scores.rows,
            },
            normalizers,
            &self.config,
        )?;
        let mut metrics = MetricParts::default();
        let tokens = Merge::Mean(out.num_tokens as f64);
        metrics.push("loss", f64::from(out.loss_value), Merge::Sum);
        metrics.push("nft/pos_loss", f64::from(out.pos_loss), Merge::Sum);
        metrics.push("nft/neg_loss", f64::from(out.neg_loss), Merge::Sum);
        metrics.push("ratio_mean", f64::from(out.ratio_mean), tokens);
        metrics.push("nft/neg_clamp_frac", f64::from(out.neg_clamp_frac), tokens);
        if let Some(kl) = out.kl {
            metrics.push("kl", f64::from(kl), tokens);
        }
        metrics.push("num_tokens", out.num_tokens as f64, Merge::Sum);
        Ok(LossOut {
            loss: out.loss,
            metrics,
        })
    }
}
