//! What the learner optimises: one file per algorithm, behind one small interface.
//!
//! A learner step is the same for every algorithm (`Learner::rl_step`): build one sample per
//! conversation thread, drop stale ones, let the **objective** prepare the step's targets, split
//! the samples into micro-batches, score each (policy, and the frozen reference when the
//! objective asks), hand the scores to the objective for its loss, back-propagate, sum the
//! gradients, take one optimizer step. The objective is the only part that knows the algorithm:
//!
//! - [`Objective::prepare`] sees the step's trajectories and samples (and the models, for a
//!   no-grad pre-pass): it computes advantages or other per-token targets, says which samples
//!   are trained and the step's normalisers, and returns its diagnostics.
//! - [`Objective::micro_batches`] may constrain the split (DPO keeps a pair together).
//! - [`Objective::loss`] turns one scored micro-batch into its share of the step loss.
//!
//! | `algorithm` | file | advantage / target | loss |
//! |---|---|---|---|
//! | `grpo` (default) | [`grpo`] | group-relative per turn (GRPO, RLOO, Dr. GRPO, REINFORCE++) | clipped surrogate (GRPO/DAPO/GSPO) |
//! | `ppo` | [`ppo`] | GAE over a value head's estimates | clipped surrogate + `vf_coef` · clipped value loss |
//! | `dpo` | [`dpo`] | pairs: each group's best and worst sample | DPO / IPO |
//! | `nft` | [`nft`] | verdicts and each group's accuracy | NFT |

pub mod dpo;
pub mod grpo;
pub mod nft;
pub mod ppo;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;
use kaizen_algorithms::{
    AdvantageConfig, CriticKind, DpoConfig, GrpoBatch, GrpoLossConfig, GrpoMetrics, GrpoOutput,
    NftConfig, PpoConfig, StepNormalizers, grpo_loss,
};
use kaizen_core::Trajectory;
use kaizen_model::{CpuScorePass, Llama, ScoreBatch, ScoreOptions, Scores, score_with};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::learner::{LearnerConfig, StepMetrics};
use crate::samples::{Sample, micro_batches};

/// Which algorithm the learner optimises (`algorithm = "…"` at the top of a job config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Group-relative policy optimisation and its family (`[advantage]`, `[loss]`).
    #[default]
    Grpo,
    /// PPO with a value head on the policy and GAE (`[ppo]`, `[loss]` for the surrogate).
    Ppo,
    /// DPO / IPO on pairs of the policy's own samples (`[dpo]`).
    Dpo,
    /// Negative-aware fine-tuning (`[nft]`).
    Nft,
}

impl Algorithm {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Grpo => "grpo",
            Algorithm::Ppo => "ppo",
            Algorithm::Dpo => "dpo",
            Algorithm::Nft => "nft",
        }
    }
}

/// Everything that decides the learner's objective: the algorithm and its sections.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectiveConfig {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The clipped-surrogate policy loss (GRPO, PPO).
    pub loss: GrpoLossConfig,
    /// Group-relative advantages (GRPO).
    pub advantage: AdvantageConfig,
    /// PPO's critic.
    pub ppo: PpoConfig,
    /// DPO / IPO.
    pub dpo: DpoConfig,
    /// NFT.
    pub nft: NftConfig,
}

impl ObjectiveConfig {
    /// GRPO with `loss` and `advantage` (the learner's default shape).
    pub fn grpo(loss: GrpoLossConfig, advantage: AdvantageConfig) -> Self {
        Self {
            loss,
            advantage,
            ..Self::default()
        }
    }

    /// Whether the objective uses a frozen reference policy at all (a KL term, PPO's KL in the
    /// reward, DPO's implicit reward).
    pub fn needs_reference(&self) -> bool {
        match self.algorithm {
            Algorithm::Grpo => self.loss.beta > 0.0,
            Algorithm::Ppo => self.loss.beta > 0.0 || self.ppo.kl_coef > 0.0,
            Algorithm::Dpo => true,
            Algorithm::Nft => self.nft.beta > 0.0,
        }
    }

    /// Whether the policy needs a value head (PPO with the shared trunk).
    pub fn needs_value_head(&self) -> bool {
        self.algorithm == Algorithm::Ppo && self.ppo.critic == CriticKind::Shared
    }

    /// Whether PPO runs with a separate critic model.
    pub fn needs_critic(&self) -> bool {
        self.algorithm == Algorithm::Ppo && self.ppo.critic == CriticKind::Separate
    }

    /// The objective these settings describe.
    pub(crate) fn build(&self) -> Box<dyn Objective> {
        match self.algorithm {
            Algorithm::Grpo => Box::new(grpo::Grpo::new(self.loss.clone(), self.advantage)),
            Algorithm::Ppo => Box::new(ppo::Ppo::new(
                self.loss.clone(),
                self.ppo.clone(),
                self.advantage.progress_bonus,
            )),
            Algorithm::Dpo => Box::new(dpo::Dpo::new(self.dpo.clone())),
            Algorithm::Nft => Box::new(nft::Nft::new(self.nft.clone())),
        }
    }
}

/// What [`Objective::prepare`] sees of a step.
pub(crate) struct StepInput<'a> {
    /// The step's trajectories (deterministic order).
    pub trajectories: &'a [Trajectory],
    /// The samples that are fresh enough to train (advantages all 0 on entry).
    pub samples: &'a mut [Sample],
    /// The trainable policy (for a no-grad pre-pass).
    pub model: &'a Llama,
    /// PPO's separate critic, when there is one (it then gives the values).
    pub critic: Option<&'a Llama>,
    /// The frozen reference, when the objective needs one.
    pub reference: Option<&'a Llama>,
    /// The learner's settings (micro-batching, prefix sharing, kernels).
    pub learner: &'a LearnerConfig,
}

/// What [`Objective::prepare`] decides.
pub(crate) struct Prepared {
    /// Indices into the fresh samples that are trained this step, in order.
    pub used: Vec<usize>,
    /// The step's loss normalisers.
    pub normalizers: StepNormalizers,
    /// Diagnostics of the preparation (advantage statistics, skipped groups, …).
    pub metrics: StepMetrics,
}

/// One scored micro-batch (one temperature), as [`Objective::loss`] sees it.
pub(crate) struct MicroBatch<'a> {
    /// Index of each row among the step's used samples ([`Prepared::used`] order).
    pub indices: &'a [usize],
    /// The rows.
    pub samples: &'a [&'a Sample],
    /// The policy's scores (differentiable), flat over the trained tokens.
    pub scores: Scores,
    /// The reference's log-probs of the same tokens, when [`Objective::uses_reference`].
    pub ref_logprobs: Option<Tensor<1>>,
    /// Value estimates of the same tokens (differentiable): the separate critic's when there is
    /// one and [`Objective::uses_values`], else the policy's value head's, if it has one.
    pub values: Option<Tensor<1>>,
    /// The sampler's behaviour log-probs of the same tokens.
    pub behavior: Tensor<1>,
    /// The turn index of each trained token.
    pub turns: &'a [u32],
    /// Whether a row was sampled by older weights than the newest (the ratio then needs the
    /// behaviour log-probs as `π_old`).
    pub off_policy: bool,
}

impl MicroBatch<'_> {
    /// A `[n]` tensor of `values` on the scores' device.
    pub fn floats(&self, values: Vec<f32>) -> Tensor<1> {
        let n = values.len();
        Tensor::from_data(
            burn::tensor::TensorData::new(values, [n]),
            &self.scores.logprobs.device(),
        )
    }

    /// Per-token values of `per_token` (one vector per used sample, over its trained tokens),
    /// flattened in the scores' order.
    pub fn gather(&self, per_token: &[Vec<f32>]) -> Vec<f32> {
        self.indices
            .iter()
            .flat_map(|&i| per_token[i].iter().copied())
            .collect()
    }
}

/// `kaizen_algorithms::grpo_loss` (the clipped surrogate of GRPO and PPO, `loss`) of a
/// micro-batch, with each row's per-token advantages ([`Sample::advantages`]). The ratio is
/// taken against the behaviour log-probs when a row is off-policy, against the policy itself
/// (ratio exactly 1) otherwise.
///
/// # Errors
/// Loss input errors.
pub(crate) fn clipped_surrogate(
    batch: MicroBatch<'_>,
    normalizers: &StepNormalizers,
    loss: &GrpoLossConfig,
) -> Result<GrpoOutput, Error> {
    let advantages: Vec<f32> = batch
        .samples
        .iter()
        .flat_map(|s| s.trained(&s.advantages))
        .collect();
    let advantages = batch.floats(advantages);
    let scores = batch.scores;
    Ok(grpo_loss(
        GrpoBatch {
            logprobs: scores.logprobs,
            old_logprobs: batch.off_policy.then(|| batch.behavior.clone()),
            behavior_logprobs: Some(batch.behavior),
            advantages,
            ref_logprobs: batch.ref_logprobs,
            entropy: scores.entropy,
            rows: &scores.rows,
            turns: Some(batch.turns),
        },
        normalizers,
        loss,
    )?)
}

/// One micro-batch's loss and diagnostics.
pub(crate) struct LossOut {
    /// Its share of the step loss, `[1]`.
    pub loss: Tensor<1>,
    /// Its diagnostics.
    pub metrics: MetricParts,
}

/// An algorithm the learner can optimise (module docs).
pub(crate) trait Objective {
    /// Whether each micro-batch needs the reference's log-probs.
    fn uses_reference(&self) -> bool;

    /// Whether the loss uses value estimates (a separate critic is then scored and trained).
    fn uses_values(&self) -> bool {
        false
    }

    /// Computes the step's targets and picks the samples to train.
    ///
    /// # Errors
    /// Invalid rewards, model errors of a pre-pass.
    fn prepare(&mut self, step: StepInput<'_>) -> Result<Prepared, Error>;

    /// Splits the used samples into at most `parts` micro-batches (indices into `samples`).
    fn micro_batches(&self, samples: &[Sample], parts: usize) -> Vec<Vec<usize>> {
        micro_batches(samples, parts)
    }

    /// The loss of one scored micro-batch.
    ///
    /// # Errors
    /// Loss input errors.
    fn loss(&self, batch: MicroBatch<'_>, normalizers: &StepNormalizers) -> Result<LossOut, Error>;
}

/// How a metric of several micro-batches combines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Merge {
    /// Shares of a step total (losses): add.
    Sum,
    /// Means over this many items (tokens, pairs): weighted mean.
    Mean(f64),
    /// Maxima: the largest.
    Max,
}

/// Named diagnostics of one micro-batch, each with how it combines across a step.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetricParts(Vec<(String, f64, Merge)>);

impl MetricParts {
    /// Adds `name = value`.
    pub fn push(&mut self, name: &str, value: f64, merge: Merge) {
        self.0.push((name.to_string(), value, merge));
    }

    /// The parts of GRPO's surrogate metrics (names as logged since the first release).
    pub fn grpo(m: &GrpoMetrics) -> Self {
        let mut parts = Self::default();
        let tokens = Merge::Mean(m.num_tokens as f64);
        parts.push("loss", f64::from(m.loss), Merge::Sum);
        parts.push("pg_loss", f64::from(m.pg_loss), Merge::Sum);
        let optional = [
            ("kl", m.kl, tokens),
            ("entropy", m.entropy, tokens),
            ("tis_weight_mean", m.tis_weight_mean, tokens),
            ("logprob_gap_mean", m.logprob_gap_mean, tokens),
            ("logprob_gap_max", m.logprob_gap_max, Merge::Max),
        ];
        for (name, value, merge) in optional {
            if let Some(v) = value {
                parts.push(name, f64::from(v), merge);
            }
        }
        for (name, value) in [
            ("approx_kl", m.approx_kl),
            ("clip_frac_low", m.clip_frac_low),
            ("clip_frac_high", m.clip_frac_high),
            ("clip_frac", m.clip_frac),
            ("ratio_mean", m.ratio_mean),
        ] {
            parts.push(name, f64::from(value), tokens);
        }
        parts.push("ratio_max", f64::from(m.ratio_max), Merge::Max);
        parts.push("num_tokens", m.num_tokens as f64, Merge::Sum);
        parts
    }
}

/// A step's diagnostics, merged over its micro-batches.
#[derive(Debug, Default)]
pub(crate) struct MetricsAcc(BTreeMap<String, (f64, f64, Merge)>);

impl MetricsAcc {
    /// Merges one micro-batch's parts.
    pub fn add(&mut self, parts: MetricParts) {
        for (name, value, merge) in parts.0 {
            let entry = self.0.entry(name).or_insert((0.0, 0.0, merge));
            match merge {
                Merge::Sum => entry.0 += value,
                Merge::Mean(weight) => {
                    entry.0 += value * weight;
                    entry.1 += weight;
                }
                Merge::Max => {
                    entry.0 = if entry.1 == 0.0 {
                        value
                    } else {
                        entry.0.max(value)
                    };
                    entry.1 = 1.0;
                }
            }
        }
    }

    /// Merges every data-parallel rank's accumulated metrics, in rank order, on every rank.
    ///
    /// # Errors
    /// [`Error::Collective`] when the collective fails or a rank's metrics do not decode.
    pub fn all_gather(self, collective: &dyn crate::Collective) -> Result<Self, Error> {
        if collective.world_size() == 1 {
            return Ok(self);
        }
        let tag = |m: Merge| match m {
            Merge::Sum => 0u8,
            Merge::Mean(_) => 1,
            Merge::Max => 2,
        };
        let mine: Vec<(String, f64, f64, u8)> = self
            .0
            .into_iter()
            .map(|(name, (value, weight, merge))| (name, value, weight, tag(merge)))
            .collect();
        let bytes = serde_json::to_vec(&mine)
            .map_err(|e| Error::Collective(format!("encoding step metrics: {e}")))?;
        let mut all = Self::default();
        for (rank, theirs) in collective.all_gather_bytes(&bytes)?.into_iter().enumerate() {
            let theirs: Vec<(String, f64, f64, u8)> = serde_json::from_slice(&theirs)
                .map_err(|e| Error::Collective(format!("rank {rank}'s step metrics: {e}")))?;
            for (name, value, weight, kind) in theirs {
                let merge = match kind {
                    0 => Merge::Sum,
                    1 => Merge::Mean(0.0),
                    _ => Merge::Max,
                };
                let entry = all.0.entry(name).or_insert((0.0, 0.0, merge));
                match merge {
                    Merge::Sum => entry.0 += value,
                    Merge::Mean(_) => {
                        entry.0 += value;
                        entry.1 += weight;
                    }
                    Merge::Max if weight > 0.0 => {
                        entry.0 = if entry.1 == 0.0 {
                            value
                        } else {
                            entry.0.max(value)
                        };
                        entry.1 = 1.0;
                    }
                    Merge::Max => {}
                }
            }
        }
        Ok(all)
    }

    /// The merged values into `metrics`.
    pub fn finish(self, metrics: &mut StepMetrics) {
        for (name, (value, weight, merge)) in self.0 {
            let v = match merge {
                Merge::Mean(_) if weight > 0.0 => value / weight,
                Merge::Mean(_) => continue,
                Merge::Sum | Merge::Max => value,
            };
            metrics.insert(name, v);
        }
    }
}

/// Scores `batch` under `model` without keeping a backward pass (a pre-pass: PPO's old values),
/// on kaizen's CPU pass where it applies, else burn's inference path.
///
/// # Errors
/// Model input errors.
pub(crate) fn score_no_grad(
    model: &Llama,
    batch: &ScoreBatch,
    options: &ScoreOptions,
    cpu_kernels: bool,
) -> Result<Scores, Error> {
    if cpu_kernels && let Some((scores, _pass)) = CpuScorePass::forward(model, batch, options)? {
        return Ok(scores);
    }
    Ok(score_with(&model.valid(), batch, options)?)
}

/// The [`ScoreBatch`] of `samples`.
pub(crate) fn score_batch(samples: &[&Sample]) -> ScoreBatch {
    ScoreBatch {
        sequences: samples.iter().map(|s| s.tokens.clone()).collect(),
        loss_masks: samples.iter().map(|s| s.loss_mask.clone()).collect(),
    }
}

/// Reads a `[n]` tensor back to the host.
pub(crate) fn host(tensor: &'static str, t: Tensor<1>) -> Result<Vec<f32>, Error> {
    t.try_to_vec_as::<f32>()
        .map_err(|source| Error::Algorithm(kaizen_algorithms::Error::Read { tensor, source }))
}

/// The step normalisers of `samples` (every sample a sequence, every trained token a token).
pub(crate) fn normalizers<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    learner: &LearnerConfig,
) -> StepNormalizers {
    let (mut num_sequences, mut num_tokens) = (0, 0);
    for s in samples {
        num_sequences += 1;
        num_tokens += s.trained_tokens();
    }
    StepNormalizers {
        num_sequences,
        num_tokens,
        max_completion_length: learner.max_completion_length,
    }
}

/// `(reward of each trained turn)` of `sample`, from its trajectory's per-segment rewards.
///
/// # Errors
/// A trajectory whose rewards do not match its turns.
pub(crate) fn trained_turn_rewards(
    sample: &Sample,
    trajectories: &[Trajectory],
) -> Result<Vec<f32>, Error> {
    let per_segment = trajectories[sample.trajectory]
        .segment_rewards()
        .map_err(|e| Error::Algorithm(e.into()))?;
    Ok(sample
        .trained_segments
        .iter()
        .map(|&s| per_segment.get(s).copied().unwrap_or(0.0))
        .collect())
}
