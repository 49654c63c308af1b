//! AdamW on the pass's own buffers: the update of `kaizen_learner::AdamW` (same
//! hyper-parameters, [`AdamWConfig`], same global-norm clipping, same f32 coefficients), one
//! fused kernel per parameter, the moments living beside the weights.

use kaizen_learner::{AdamWConfig, StepReport};

use super::ops::{AdamWStep, TrainOps};
use super::pass::{TrainModel, Weights};
use crate::GpuError;

/// AdamW's moments (`m`, `v`, one buffer per parameter, zero at first) and step count.
pub struct AdamWState<B> {
    step: u64,
    m: Weights<B>,
    v: Weights<B>,
}

impl<B> AdamWState<B> {
    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the steps taken (the next step's bias correction uses `steps + 1`), e.g. to
    /// follow a learner whose optimizer was restored from a checkpoint.
    pub fn set_step_count(&mut self, steps: u64) {
        self.step = steps;
    }
}

impl<O: TrainOps> TrainModel<O> {
    /// Fresh AdamW state (step 0, zero moments) for this model's parameters.
    ///
    /// # Errors
    /// The backend's allocation errors.
    pub fn adamw_state(&self) -> Result<AdamWState<O::Buf>, GpuError> {
        Ok(AdamWState {
            step: 0,
            m: self.zero_grads()?,
            v: self.zero_grads()?,
        })
    }

    /// One AdamW step with learning rate `lr` on `grads`, as `kaizen_learner::AdamW::step_host`
    /// computes it: every gradient scaled by `min(1, max_grad_norm / (‖g‖₂ + 1e-6))` (`‖g‖₂`
    /// over all parameters; no clipping when `max_grad_norm` is 0), then per parameter
    /// `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
    /// `p ← p (1 − lr λ) − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`, the decay on
    /// matrices only.
    ///
    /// # Errors
    /// The backend's errors.
    pub fn adamw_step(
        &mut self,
        grads: &Weights<O::Buf>,
        state: &mut AdamWState<O::Buf>,
        config: &AdamWConfig,
        lr: f64,
    ) -> Result<StepReport, GpuError> {
        let mut squares = 0.0f64;
        for ((_, shape), g) in self.layout.iter().zip(grads.tensors()) {
            squares += self.ops.sum_squares(g, shape.iter().product())?;
        }
        let grad_norm = squares.sqrt();
        let clip_scale = if config.max_grad_norm > 0.0 {
            (config.max_grad_norm / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        state.step += 1;
        let t = state.step as i32;
        let step = |matrix: bool| AdamWStep {
            clip: clip_scale as f32,
            beta1: config.adam_beta1 as f32,
            beta2: config.adam_beta2 as f32,
            decay: if matrix {
                (1.0 - lr * config.weight_decay) as f32
            } else {
                1.0
            },
            step_size: (lr / (1.0 - config.adam_beta1.powi(t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - config.adam_beta2.powi(t)).sqrt()) as f32,
            eps: config.adam_epsilon as f32,
        };
        let params = self.weights.tensors_mut();
        let moments = state.m.tensors_mut().into_iter().zip(state.v.tensors_mut());
        for ((((_, shape), p), g), (m, v)) in self
            .layout
            .iter()
            .zip(params)
            .zip(grads.tensors())
            .zip(moments)
        {
            let len = shape.iter().product();
            self.ops.adamw(p, g, m, v, len, step(shape.len() >= 2))?;
        }
        Ok(StepReport {
            grad_norm,
            clip_scale,
        })
    }
}
