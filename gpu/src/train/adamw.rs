//! AdamW on the pass's own buffers: the update of `kaizen_learner::AdamW` (same
//! hyper-parameters, [`AdamWConfig`], same global-norm clipping, same f32 coefficients), one
//! fused kernel per parameter, the moments living beside the weights.

use std::collections::HashMap;

use kaizen_learner::{AdamWConfig, AdamWMoments, ParamMoments, StepReport};
use kaizen_model::HostTensor;

use super::ops::{AdamWStep, TrainOps};
use super::pass::{TrainModel, Weights};
use crate::GpuError;

/// One of a parameter's saved moments, with its name for messages.
type Moment = (&'static str, fn(&ParamMoments) -> &HostTensor);

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

    /// `state`'s step count and moments on the host, each moment named and shaped as its
    /// parameter ([`super::layout`]'s order): a checkpoint's optimizer state.
    ///
    /// # Errors
    /// Copy errors.
    pub fn download_adamw(&self, state: &AdamWState<O::Buf>) -> Result<AdamWMoments, GpuError> {
        let params = self
            .layout
            .iter()
            .zip(state.m.tensors().into_iter().zip(state.v.tensors()))
            .map(|((name, shape), (m, v))| {
                let host = |b: &O::Buf| -> Result<HostTensor, GpuError> {
                    let mut data = self.ops.download(b)?;
                    // A backend may round an allocation up (CUDA: at least one float).
                    data.truncate(shape.iter().product());
                    Ok(HostTensor::new(shape.clone(), data))
                };
                Ok(ParamMoments {
                    name: name.clone(),
                    m: host(m)?,
                    v: host(v)?,
                })
            })
            .collect::<Result<_, GpuError>>()?;
        Ok(AdamWMoments {
            step: state.step,
            params,
        })
    }

    /// AdamW state uploaded from `saved` (a checkpoint's, by parameter name, in any order):
    /// its step count and moments; zero moments when `saved` has none.
    ///
    /// # Errors
    /// [`GpuError::Input`] naming the parameter and moment that is missing, repeated,
    /// misshaped (with the shape expected) or not a parameter of this model; the backend's
    /// allocation and copy errors.
    pub fn upload_adamw(&self, saved: &AdamWMoments) -> Result<AdamWState<O::Buf>, GpuError> {
        if saved.params.is_empty() {
            let mut state = self.adamw_state()?;
            state.step = saved.step;
            return Ok(state);
        }
        let mut by_name: HashMap<&str, &ParamMoments> = HashMap::new();
        for p in &saved.params {
            if by_name.insert(p.name.as_str(), p).is_some() {
                return Err(GpuError::Input(format!(
                    "AdamW moments of `{}` are given twice",
                    p.name
                )));
            }
        }
        let mut extra: Vec<&str> = by_name
            .keys()
            .copied()
            .filter(|name| !self.layout.iter().any(|(n, _)| n == name))
            .collect();
        extra.sort_unstable();
        if let Some(name) = extra.first() {
            return Err(GpuError::Input(format!(
                "AdamW moments of `{name}`, which is not a parameter of the model"
            )));
        }
        // Each moment, with its name in messages.
        let m: Moment = ("m", |p| &p.m);
        let v: Moment = ("v", |p| &p.v);
        let values = |name: &str, shape: &[usize], (which, pick): Moment| {
            let p = by_name.get(name).ok_or_else(|| {
                GpuError::Input(format!(
                    "AdamW moments of `{name}` (shape {shape:?}) are missing"
                ))
            })?;
            let t = pick(p);
            if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(GpuError::Input(format!(
                    "AdamW moment {which} of `{name}` has shape {:?} ({} values), expected \
                     {shape:?}",
                    t.shape,
                    t.data.len()
                )));
            }
            Ok(t.data.as_slice())
        };
        // Every moment is checked before any is uploaded.
        for (name, shape) in &self.layout {
            values(name, shape, m)?;
            values(name, shape, v)?;
        }
        let upload = |moment: Moment| {
            Weights::build(self.config(), |name, shape| {
                self.ops.upload(values(name, shape, moment)?)
            })
        };
        Ok(AdamWState {
            step: saved.step,
            m: upload(m)?,
            v: upload(v)?,
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
