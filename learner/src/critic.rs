//! PPO's separate critic (`ppo.critic = "separate"`): a second model, initialised from the
//! policy, that carries the value head and has its own optimizer and learning rate.
//!
//! The critic scores the same micro-batches as the policy; the value loss is built on its
//! values, so one `loss.backward()` gives both models their gradients (the policy's through its
//! log-probs, the critic's through its values) and each takes its own AdamW step. Its weights
//! start as an independent copy of the policy's (fresh parameters, so no tensor or parameter id
//! is shared) plus a fresh value head.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use kaizen_model::Llama;

use crate::Error;
use crate::optimizer::AdamW;
use crate::schedule::Schedule;

/// A separate critic model, its optimizer and schedule.
pub struct Critic {
    /// The critic (autodiff device), with a value head.
    pub model: Llama,
    /// Its optimizer.
    pub optimizer: AdamW,
    /// Its learning-rate schedule.
    pub schedule: Schedule,
}

/// Replaces every parameter by a fresh one with the same values (a new autodiff leaf, a new
/// parameter id).
struct FreshParams;

impl ModuleMapper for FreshParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        Param::from_tensor(param.val().detach())
    }
}

impl Critic {
    /// A critic initialised from `policy`: an independent copy of its weights with a fresh value
    /// head drawn from `seed` (`Llama::with_value_head`), a fresh optimizer.
    ///
    /// # Errors
    /// [`Error::Model`] for an invalid `initializer_range`.
    pub fn from_policy(
        policy: &Llama,
        seed: u64,
        optimizer: AdamW,
        schedule: Schedule,
    ) -> Result<Self, Error> {
        let mut model = policy.clone().map(&mut FreshParams);
        model.value_head = None;
        let model = model.with_value_head(seed)?;
        Ok(Self {
            model,
            optimizer,
            schedule,
        })
    }
}
