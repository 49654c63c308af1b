//! # kaizen-algorithms
//!
//! The math of kaizen's learner, as pure functions: batch in, loss and metrics out. Nothing here
//! owns a model, an optimizer, a channel or a file; the learner calls these functions and
//! decides what to do with the numbers.
//!
//! How the parts fit, in the order the learner uses them:
//!
//! 1. **Advantages** ([`group_advantages`]). GRPO plays each prompt `num_generations` times;
//!    each sample's reward is compared with its group's (`A = (r − mean) / (std + eps)`, or
//!    RLOO's leave-one-out baseline, or Dr. GRPO's unscaled `r − mean`, or REINFORCE++'s
//!    whitening over the whole batch, [`whiten`]). A group whose rewards are all equal gets
//!    exactly 0 and is counted as zero-signal.
//! 2. **Multi-turn credit** ([`turn_advantages`], [`segment_advantages`]). An episode with one
//!    reward per turn gives turn `k` the return to go `G_k = Σ_{j≥k} γ^{j−k} r_j`, normalised
//!    within the group at the same turn index; every token of the turn carries that advantage.
//! 3. **Policy loss** ([`grpo_loss`]). Per trained token: importance ratio against the old
//!    policy, clipped surrogate (`epsilon`, `epsilon_high`), optional truncated importance
//!    weight against the sampler's behaviour log-probs (`tis_cap`), GSPO's sequence-level
//!    ratio instead of the token's ([`sequence_log_ratio`], `importance_sampling_level`),
//!    two-sided clipping (`delta`), optional KL penalty to a
//!    reference ([`kl_estimate`], `beta`), aggregated by `loss_type` (`grpo`, `bnpo`, `dapo`,
//!    `dr_grpo`), minus an optional entropy bonus.
//! 4. **PPO's critic** ([`token_rewards`], [`gae`], [`value_loss`]): per-token rewards (turn
//!    rewards on turn ends, optionally the KL in the reward), generalised advantage estimation
//!    over a thread's trained tokens, and the clipped value loss.
//! 5. **Preference losses** ([`dpo_loss`], [`group_pairs`]): DPO and IPO on pairs of the
//!    policy's own samples (a group's best and worst).
//! 6. **Negative-aware fine-tuning** ([`nft_loss`]): NFT's likelihood of right answers under the
//!    policy and of wrong ones under the implicit negative policy.
//! 7. **Supervised warm start** ([`sft_loss`]): token-mean negative log-likelihood.
//!
//! Losses take flat `[n]` tensors over the trained tokens only (the order of
//! `kaizen_model::Scores`), the row of each token, and normalisers counted over the **whole
//! optimizer step** ([`StepNormalizers`]). Each token's weight therefore does not depend on how
//! the step is split into micro-batches: summing micro-batch losses and gradients gives exactly
//! the step's (gradient accumulation is split-invariant, and tested so).
//!
//! Hyper-parameters carry TRL's `GRPOConfig` names (`epsilon`, `epsilon_high`, `beta`,
//! `loss_type`, `scale_rewards`, `entropy_coef`, `max_completion_length`), so a TRL recipe
//! carries over field by field; deliberate departures are noted where they happen.
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use kaizen_algorithms::{
//!     AdvantageEstimator, GrpoBatch, GrpoLossConfig, ScaleRewards, StepNormalizers,
//!     group_advantages, grpo_loss,
//! };
//!
//! // Two samples of one prompt (group 7) were rewarded 1 and 0.
//! let adv = group_advantages(&[1.0, 0.0], &[7, 7], AdvantageEstimator::Grpo, ScaleRewards::Group)?;
//! assert!(adv.advantages[0] > 0.0 && adv.advantages[1] < 0.0);
//!
//! // Sample 0 has two trained tokens, sample 1 one (its EOS): each carries its sample's advantage.
//! let rows = [0, 0, 1];
//! let per_token: Vec<f32> = rows.iter().map(|&r| adv.advantages[r]).collect();
//! let device = Device::flex().autodiff();
//! let floats = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [3]), &device);
//! let logprobs = floats(vec![-0.5, -1.2, -0.3]).require_grad(); // from teacher-forced scoring
//! let batch = GrpoBatch {
//!     logprobs: logprobs.clone(),
//!     old_logprobs: None, // on-policy: ratio 1
//!     behavior_logprobs: None,
//!     advantages: floats(per_token),
//!     ref_logprobs: None,
//!     entropy: None,
//!     rows: &rows,
//!     turns: None, // every token in turn 0
//! };
//! let step = StepNormalizers { num_sequences: 2, num_tokens: 3, max_completion_length: 8 };
//! let out = grpo_loss(batch, &step, &GrpoLossConfig::default())?;
//! let grads = out.loss.backward();
//! let grad = logprobs.grad(&grads).unwrap().try_to_vec_as::<f32>().unwrap();
//! assert!(grad[0] < 0.0 && grad[2] > 0.0); // push the rewarded tokens up, the other down
//! # Ok::<(), kaizen_algorithms::Error>(())
//! ```
#![warn(missing_docs)]

mod advantages;
mod aggregation;
mod dpo;
mod error;
mod grpo;
mod gspo;
mod kl;
mod multi_turn;
mod nft;
mod ppo;
mod reinforce_pp;
mod sft;
mod units;

pub use advantages::{
    AdvantageConfig, AdvantageEstimator, GroupAdvantages, STD_EPS, ScaleRewards, group_advantages,
};
pub use aggregation::token_weights;
pub use dpo::{DpoConfig, DpoOutput, PreferenceBatch, PreferenceLoss, dpo_loss, group_pairs};
pub use error::Error;
pub use grpo::{
    GrpoBatch, GrpoLossConfig, GrpoMetrics, GrpoOutput, ImportanceSamplingLevel, LOG_RATIO_BOUND,
    LossType, StepNormalizers, grpo_loss,
};
pub use gspo::sequence_log_ratio;
pub use kl::{KL_LOG_RATIO_BOUND, KlEstimator, kl_estimate};
pub use multi_turn::{TurnAdvantages, returns_to_go, segment_advantages, turn_advantages};
pub use nft::{NFT_RATE_BOUNDS, NftBatch, NftConfig, NftNormalize, NftOutput, nft_loss};
pub use ppo::{CriticKind, PpoConfig, ValueLossOutput, gae, token_rewards, value_loss};
pub use reinforce_pp::whiten;
pub use sft::{SftMetrics, SftOutput, sft_loss};
