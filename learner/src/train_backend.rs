//! A training pass that lives outside the learner's burn model — on a GPU (`kaizen-gpu`'s
//! CUDA pass) or anywhere else that holds its own copy of the weights, gradients and AdamW
//! moments.
//!
//! The learner keeps the loss on the host: for each micro-batch it hands the backend the
//! [`ScoreBatch`], gets the per-token log-probs back, wraps them as an autodiff leaf (as it does
//! for `kaizen_model::CpuScorePass`), builds the objective's loss on them, takes `∂loss/∂logp`
//! from burn and hands it back; the backend adds every parameter's gradient. At the step's end
//! it asks the backend to sum the gradients across the data-parallel group and to take the
//! AdamW step, then reads the new weights back (for the actors and for checkpoints).
//!
//! AdamW's moments live on the backend too. A checkpoint reads them back
//! ([`TrainBackend::optimizer_state`]) and saves them in the CPU learner's format
//! (`optimizer.safetensors`: `exp_avg.<path>`, `exp_avg_sq.<path>`, the step count), and a
//! resumed learner hands the saved ones to its new backend
//! ([`TrainBackend::set_optimizer_state`], from `Learner::set_backend`): a checkpoint resumes
//! on either pass.
//!
//! A backend scores log-probs only: no value head (PPO), no entropies (the entropy bonus),
//! no shared prompt prefixes, f32 products (`Learner::set_backend` refuses the options that
//! need more).

use std::sync::Arc;

use kaizen_model::{HostTensor, Llama, ScoreBatch};

use crate::optimizer::{AdamWConfig, StepReport};
use crate::{Collective, Error};

/// A scoring pass, its backward and an AdamW step, run by something that holds its own copy
/// of the policy's parameters (`Learner::set_backend` injects one).
///
/// Calls come in this order, per step: for each micro-batch [`TrainBackend::forward`] then
/// [`TrainBackend::backward`]; then [`TrainBackend::all_reduce`], [`TrainBackend::step`] and
/// [`TrainBackend::weights`]. Errors are reported as [`Error::Backend`].
pub trait TrainBackend: Send {
    /// What it runs on, for messages and metrics (`"cuda"`, `"host"`).
    fn name(&self) -> &str;

    /// Discards any gradients and kept activations (the start of a step: a step that failed
    /// half-way leaves none behind).
    ///
    /// # Errors
    /// The backend's allocation errors.
    fn zero_grad(&mut self) -> Result<(), Error>;

    /// Scores `batch` at `temperature` with the current weights and keeps what
    /// [`TrainBackend::backward`] needs.
    ///
    /// # Shapes
    /// - returns `[n]` log-probs, `n` = scored tokens, in [`ScoreBatch::scored_positions`]'
    ///   order.
    ///
    /// # Errors
    /// Invalid batches or temperatures; the backend's errors.
    fn forward(&mut self, batch: &ScoreBatch, temperature: f32) -> Result<Vec<f32>, Error>;

    /// Back-propagates `d_logprobs` (`∂loss/∂logp`, `[n]`) through the last
    /// [`TrainBackend::forward`] and adds every parameter's gradient to the step's sum.
    ///
    /// # Errors
    /// No forward to back-propagate, a length other than the forward's; the backend's errors.
    fn backward(&mut self, d_logprobs: &[f32]) -> Result<(), Error>;

    /// Sums the step's gradients across `group` (every rank ends with the total): over the
    /// backend's own collective where it has one, else through `group` on host copies.
    ///
    /// # Errors
    /// The collective's and the backend's errors.
    fn all_reduce(&mut self, group: &dyn Collective) -> Result<(), Error>;

    /// One AdamW step with learning rate `lr` on the summed gradients, as
    /// `AdamW::step_host` computes it (global-norm clipping, decay on matrices only); the
    /// gradients are zero afterwards. `step` is the learner's number for this update
    /// (1-based: AdamW's `t`); at `step == 1` the backend starts from zero moments (a fresh or
    /// reset optimizer, e.g. RL after an SFT warm start).
    ///
    /// # Errors
    /// The backend's errors.
    fn step(&mut self, config: &AdamWConfig, lr: f64, step: u64) -> Result<StepReport, Error>;

    /// The current weights on the host, named as in Hugging Face `LlamaForCausalLM`
    /// (`kaizen_model::Llama::to_named`'s names).
    ///
    /// # Errors
    /// The backend's copy errors.
    fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error>;

    /// AdamW's state on the host: the steps taken and both moments of every parameter, named
    /// and shaped as [`TrainBackend::weights`] names and shapes the parameters, in its order.
    ///
    /// # Errors
    /// The backend's copy errors.
    fn optimizer_state(&self) -> Result<AdamWMoments, Error>;

    /// Replaces AdamW's state (a resumed run, a data-parallel follower): the next
    /// [`TrainBackend::step`] continues from `state.step` steps and these moments.
    /// `state.params` holds every parameter of [`TrainBackend::weights`] once, each moment in
    /// the parameter's shape, in any order; empty, it means zero moments.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the tensor (and the shape expected) that is missing, repeated,
    /// misshaped or not a parameter; the backend's copy errors. The state is unchanged then.
    fn set_optimizer_state(&mut self, state: &AdamWMoments) -> Result<(), Error>;
}

/// AdamW's moments of one parameter, as a [`TrainBackend`] holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamMoments {
    /// The parameter's name, as [`TrainBackend::weights`] gives it
    /// (`model.layers.0.mlp.up_proj.weight`).
    pub name: String,
    /// The first moment `m` (torch's `exp_avg`), in the parameter's shape.
    pub m: HostTensor,
    /// The second moment `v` (torch's `exp_avg_sq`), in the parameter's shape.
    pub v: HostTensor,
}

/// A [`TrainBackend`]'s AdamW state: the steps taken (`t` of the last step; the next step is
/// `step + 1`) and every parameter's moments (none: all zero).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdamWMoments {
    /// Steps taken.
    pub step: u64,
    /// The moments, one entry per parameter.
    pub params: Vec<ParamMoments>,
}

/// Builds a learner's backend from its current model (the trainer calls it once the learner
/// exists, and again on data-parallel followers when rank 0 sends its state). The binary
/// provides it (`kaizen-gpu`'s CUDA pass under `learner.device = "cuda"`).
pub type BackendFactory = Arc<dyn Fn(&Llama) -> Result<Box<dyn TrainBackend>, Error> + Send + Sync>;
