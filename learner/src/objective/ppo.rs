//! `algorithm = "ppo"`: a value head on the policy, GAE over its estimates, the clipped
//! surrogate plus the clipped value loss.
//!
//! PPO as TRL's `PPOTrainer` and OpenRLHF run it for language models, with kaizen's one
//! optimizer step per batch:
//!
//! 1. **Pre-pass** (no gradient, the same micro-batches as the training pass): the value head's
//!    `V_old` at every trained token (the state before it) and, with `ppo.kl_coef > 0`, the
//!    reference's log-probs for the KL in the reward (`k1 = log π_behaviour − log π_ref`).
//! 2. **Targets** per conversation thread over its trained tokens in order
//!    (`kaizen_algorithms::token_rewards`, `gae`): each trained turn's reward on its last token,
//!    minus `kl_coef · k1` on every token; `A_t`, `R_t = A_t + V_t` by GAE (`gamma`, `lam`); a
//!    multi-turn episode is one thread, so credit flows across turns through the values.
//!    Advantages are whitened over the step's tokens (`whiten_advantages`, mean 0 and std 1).
//! 3. **Loss** per micro-batch: `kaizen_algorithms::grpo_loss` with those per-token advantages
//!    (`[loss]`: `epsilon` is PPO's `cliprange`, `beta` a KL in the loss) plus
//!    `vf_coef · value_loss(V_θ, V_old, R)`, the value loss aggregated with the same token
//!    weights (`loss_type`). `V_old` comes from the pre-pass with the weights the loss is taken
//!    with (one optimizer step per batch, sync or async), so `V_θ = V_old` and
//!    `cliprange_value` never acts; it is kept for TRL parity (it would matter with several
//!    updates per batch).
//!
//! With SCoRe's `[score]`, stage II's progress bonus `α · (r_k − r_{k−1})` is added to turn
//! `k`'s reward before GAE (through the values it also reaches earlier turns, unlike GRPO's
//! per-turn returns).
//!
//! The value head shares the policy's trunk (TRL's `AutoModelForCausalLMWithValueHead`; the
//! trainer attaches a fresh one with `Llama::with_value_head` when the loaded model has none) or
//! sits on a separate critic initialised from the policy (`ppo.critic = "separate"`,
//! `crate::critic`); checkpoints keep either. Every sample is trained: equal rewards in a group
//! still teach the critic, so there is no zero-signal skipping.

use kaizen_algorithms::{
    GrpoLossConfig, PpoConfig, StepNormalizers, gae, token_rewards, token_weights, value_loss,
};
use kaizen_model::ScoreOptions;

use super::{
    LossOut, Merge, MetricParts, MicroBatch, Objective, Prepared, StepInput, clipped_surrogate,
    host, normalizers, score_batch, score_no_grad, trained_turn_rewards,
};
use crate::Error;
use crate::learner::StepMetrics;
use crate::samples::{Sample, by_temperature, micro_batches};

/// PPO's objective and the step's critic targets.
pub(crate) struct Ppo {
    loss: GrpoLossConfig,
    ppo: PpoConfig,
    /// SCoRe's progress bonus α on turn rewards (0 = off).
    progress_bonus: f32,
    /// Per used sample, over its trained tokens: the values the advantages were computed with.
    old_values: Vec<Vec<f32>>,
    /// Per used sample, over its trained tokens: the value targets `R_t`.
    returns: Vec<Vec<f32>>,
}

impl Ppo {
    pub(crate) fn new(loss: GrpoLossConfig, ppo: PpoConfig, progress_bonus: f32) -> Self {
        Self {
            loss,
            ppo,
            progress_bonus,
            old_values: Vec::new(),
            returns: Vec::new(),
        }
    }
}

impl Objective for Ppo {
    fn uses_reference(&self) -> bool {
        self.loss.beta > 0.0
    }

    fn uses_values(&self) -> bool {
        true
    }

    fn prepare(&mut self, step: StepInput<'_>) -> Result<Prepared, Error> {
        self.ppo.validate()?;
        let used: Vec<usize> = (0..step.samples.len())
            .filter(|&i| step.samples[i].trained_tokens() > 0)
            .collect();
        let owned: Vec<&Sample> = used.iter().map(|&i| &step.samples[i]).collect();
        let step_normalizers = normalizers(owned.iter().copied(), step.learner);
        // Pre-pass: V_old (and the reference's log-probs for the KL in the reward).
        let mut values: Vec<Vec<f32>> = vec![Vec::new(); owned.len()];
        let mut ref_logprobs: Vec<Option<Vec<f32>>> = vec![None; owned.len()];
        let kl_in_reward = self.ppo.kl_coef > 0.0;
        let reference = match (kl_in_reward, step.reference) {
            (true, Some(r)) => Some(r),
            (true, None) => {
                return Err(Error::Algorithm(kaizen_algorithms::Error::MissingInput {
                    input: "reference policy",
                    reason: "`ppo.kl_coef` > 0 (KL to the reference in the reward)",
                }));
            }
            (false, _) => None,
        };
        for part in micro_batches(&owned, step.learner.gradient_accumulation_steps) {
            for group in by_temperature(&part, &owned) {
                let rows: Vec<&Sample> = group.iter().map(|&i| owned[i]).collect();
                let batch = score_batch(&rows);
                let options = ScoreOptions {
                    temperature: rows[0].temperature,
                    with_entropy: false,
                    share_prefixes: step.learner.share_prompt_prefix,
                };
                // The values come from the separate critic when there is one.
                let critic = step.critic.unwrap_or(step.model);
                let scores = score_no_grad(critic, &batch, &options, step.learner.cpu_kernels)?;
                let v = scores.values.ok_or_else(|| {
                    Error::Algorithm(kaizen_algorithms::Error::MissingInput {
                        input: "value head",
                        reason: "`algorithm = \"ppo\"` (a value head on the policy, or a separate critic \
                         given with `Learner::set_critic` when `ppo.critic = \"separate\"`)",
                    })
                })?;
                split_rows(&host("values", v)?, &scores.rows, &group, &mut values);
                if let Some(reference) = reference {
                    let r = score_no_grad(reference, &batch, &options, step.learner.cpu_kernels)?;
                    let mut per_row = vec![Vec::new(); owned.len()];
                    split_rows(
                        &host("ref_logprobs", r.logprobs)?,
                        &r.rows,
                        &group,
                        &mut per_row,
                    );
                    for &i in &group {
                        ref_logprobs[i] = Some(std::mem::take(&mut per_row[i]));
                    }
                }
            }
        }
        // Targets per thread.
        let mut advantages: Vec<Vec<f32>> = Vec::with_capacity(owned.len());
        self.returns = Vec::with_capacity(owned.len());
        let mut kl_sum = 0.0f64;
        for (i, sample) in owned.iter().enumerate() {
            let rewards = with_progress_bonus(
                &trained_turn_rewards(sample, step.trajectories)?,
                self.progress_bonus,
            );
            let (lengths, rewards) = turns_of(sample, &rewards);
            let behavior: Vec<f32> = sample.trained(&sample.behavior_logprobs).collect();
            let kl: Option<Vec<f32>> = ref_logprobs[i]
                .as_ref()
                .map(|r| behavior.iter().zip(r).map(|(b, r)| b - r).collect());
            if let Some(kl) = &kl {
                kl_sum += kl.iter().map(|&k| f64::from(k)).sum::<f64>();
            }
            let r = token_rewards(&lengths, &rewards, kl.as_deref(), self.ppo.kl_coef)?;
            let (a, ret) = gae(&r, &values[i], self.ppo.gamma, self.ppo.lam)?;
            advantages.push(a);
            self.returns.push(ret);
        }
        let tokens: usize = advantages.iter().map(Vec::len).sum();
        let mut metrics = StepMetrics::new();
        let stats = |v: &[Vec<f32>]| mean_std(v.iter().flatten().copied());
        let (adv_mean, adv_std) = stats(&advantages);
        let (ret_mean, ret_std) = stats(&self.returns);
        let (value_mean, _) = stats(&values);
        metrics.insert("ppo/advantages_mean".into(), adv_mean);
        metrics.insert("ppo/advantages_std".into(), adv_std);
        metrics.insert("ppo/returns_mean".into(), ret_mean);
        metrics.insert("ppo/values_old_mean".into(), value_mean);
        // Fraction of the returns' variance the old values explain (TRL's `val/var_explained`).
        let residual = mean_std(
            self.returns
                .iter()
                .flatten()
                .zip(values.iter().flatten())
                .map(|(r, v)| r - v),
        )
        .1;
        if ret_std > 0.0 {
            metrics.insert(
                "ppo/explained_variance".into(),
                1.0 - residual * residual / (ret_std * ret_std),
            );
        }
        if kl_in_reward && tokens > 0 {
            metrics.insert("ppo/kl_in_reward".into(), kl_sum / tokens as f64);
        }
        if self.ppo.whiten_advantages {
            let std = adv_std.max(1e-8);
            for a in advantages.iter_mut().flatten() {
                *a = ((f64::from(*a) - adv_mean) / std) as f32;
            }
        }
        for (&i, a) in used.iter().zip(&advantages) {
            let sample = &mut step.samples[i];
            let mut it = a.iter();
            for (t, m) in sample.loss_mask.iter().enumerate() {
                sample.advantages[t] = if *m {
                    it.next().copied().unwrap_or(0.0)
                } else {
                    0.0
                };
            }
        }
        self.old_values = values;
        Ok(Prepared {
            normalizers: step_normalizers,
            used,
            metrics,
        })
    }

    fn loss(&self, batch: MicroBatch<'_>, normalizers: &StepNormalizers) -> Result<LossOut, Error> {
        let old_values = batch.floats(batch.gather(&self.old_values));
        let returns = batch.floats(batch.gather(&self.returns));
        // The value loss takes the surrogate's token weights (`loss_type`).
        let weights = token_weights(self.loss.loss_type, &batch.scores.rows, normalizers)?;
        let weights = batch.floats(weights);
        let values = batch.values.clone().ok_or_else(|| {
            Error::Algorithm(kaizen_algorithms::Error::MissingInput {
                input: "values",
                reason: "`algorithm = \"ppo\"` (neither the policy nor a critic has a value head)",
            })
        })?;
        let vf = value_loss(
            values,
            old_values,
            returns,
            weights,
            self.ppo.cliprange_value,
        )?;
        let out = clipped_surrogate(batch, normalizers, &self.loss)?;
        let mut metrics = MetricParts::grpo(&out.metrics);
        let tokens = Merge::Mean(out.metrics.num_tokens as f64);
        metrics.push("ppo/vf_loss", f64::from(vf.vf_loss), Merge::Sum);
        metrics.push("ppo/vf_clipfrac", f64::from(vf.vf_clipfrac), tokens);
        metrics.push("ppo/values_mean", f64::from(vf.value_mean), tokens);
        metrics.push("loss", f64::from(self.ppo.vf_coef * vf.vf_loss), Merge::Sum);
        Ok(LossOut {
            loss: out.loss + vf.loss * f64::from(self.ppo.vf_coef),
            metrics,
        })
    }
}

/// Appends each scored token's value (flat, in `rows` order) to its sample's list.
fn split_rows(flat: &[f32], rows: &[usize], group: &[usize], into: &mut [Vec<f32>]) {
    for (&v, &r) in flat.iter().zip(rows) {
        into[group[r]].push(v);
    }
}

/// The trained-token count and reward of each trained turn of `sample` that has tokens. A turn
/// whose tokens are all outside the loss (an empty completion) passes its reward on to the next
/// turn with tokens, or, at the end, to the last one.
fn turns_of(sample: &Sample, rewards: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let mut counts = vec![0usize; rewards.len()];
    for (t, m) in sample.turns.iter().zip(&sample.loss_mask) {
        if *m && let Some(c) = counts.get_mut(*t as usize) {
            *c += 1;
        }
    }
    let (mut lengths, mut out) = (Vec::new(), Vec::new());
    let mut carried = 0.0f32;
    for (&c, &r) in counts.iter().zip(rewards) {
        if c == 0 {
            carried += r;
            continue;
        }
        lengths.push(c);
        out.push(r + carried);
        carried = 0.0;
    }
    if let Some(last) = out.last_mut() {
        *last += carried;
    }
    (lengths, out)
}

/// Turn rewards with SCoRe's progress bonus: turn `k ≥ 1` gains `α · (r_k − r_{k−1})`.
fn with_progress_bonus(rewards: &[f32], alpha: f32) -> Vec<f32> {
    let mut out = rewards.to_vec();
    if alpha != 0.0 {
        for k in 1..rewards.len() {
            out[k] += alpha * (rewards[k] - rewards[k - 1]);
        }
    }
    out
}

/// Mean and (population) standard deviation, in f64.
fn mean_std(values: impl Iterator<Item = f32>) -> (f64, f64) {
    let (mut n, mut sum, mut sq) = (0usize, 0.0f64, 0.0f64);
    for v in values {
        let v = f64::from(v);
        n += 1;
        sum += v;
        sq += v * v;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    (mean, (sq / n as f64 - mean * mean).max(0.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mask: &[bool], turns: &[u32]) -> Sample {
        Sample {
            tokens: vec![1; mask.len()],
            loss_mask: mask.to_vec(),
            advantages: vec![0.0; mask.len()],
            behavior_logprobs: vec![0.0; mask.len()],
            turns: turns.to_vec(),
            temperature: 1.0,
            trajectory: 0,
            trained_segments: vec![0, 2],
            version: Default::default(),
        }
    }

    #[test]
    fn turn_rewards_land_on_turns_with_tokens() {
        // Two trained turns of 2 and 1 tokens.
        let s = sample(&[false, true, true, false, true], &[0, 0, 0, 0, 1]);
        assert_eq!(turns_of(&s, &[0.5, 1.0]), (vec![2, 1], vec![0.5, 1.0]));
        // The second turn has no tokens: its reward joins the first's.
        let s = sample(&[false, true, true, false, false], &[0, 0, 0, 0, 0]);
        assert_eq!(turns_of(&s, &[0.5, 1.0]), (vec![2], vec![1.5]));
        // The first has none: its reward carries to the second.
        let s = sample(&[false, false, false, true, true], &[0, 0, 0, 1, 1]);
        assert_eq!(turns_of(&s, &[0.25, 1.0]), (vec![2], vec![1.25]));
    }

    #[test]
    fn the_progress_bonus_rewards_fixing_and_costs_breaking() {
        assert_eq!(with_progress_bonus(&[0.0, 1.0], 2.0), vec![0.0, 3.0]);
        assert_eq!(with_progress_bonus(&[1.0, 0.0], 2.0), vec![1.0, -2.0]);
        assert_eq!(with_progress_bonus(&[1.0, 0.0], 0.0), vec![1.0, 0.0]);
    }

    #[test]
    fn mean_std_is_the_population_formula() {
        let (m, s) = mean_std([1.0f32, 3.0].into_iter());
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(mean_std(std::iter::empty()), (0.0, 0.0));
    }
}
