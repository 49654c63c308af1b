//! AdamW with global gradient-norm clipping; state keyed by parameter path so it can be saved
//! and restored with the weights.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use kaizen_model::{HostTensor, Llama};

/// AdamW hyper-parameters (Hugging Face `TrainingArguments` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// β₁.
    pub adam_beta1: f64,
    /// β₂.
    pub adam_beta2: f64,
    /// ε added to the denominator.
    pub adam_epsilon: f64,
    /// Decoupled weight decay λ, applied to matrices only (not to norms or biases, as the
    /// Hugging Face Trainer does).
    pub weight_decay: f64,
    /// Clip the global L2 norm of all gradients to this (0 = off).
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// AdamW (Loshchilov & Hutter 2019, <https://arxiv.org/abs/1711.05101>), as `torch.optim.AdamW`
/// computes it. For parameter `p` with gradient `g` at step `t`:
///
/// ```text
/// p ← p · (1 − lr·λ)                      (decoupled decay, matrices only)
/// m ← β₁ m + (1 − β₁) g
/// v ← β₂ v + (1 − β₂) g²
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// Before the update every gradient is scaled by `min(1, max_grad_norm / (‖g‖₂ + 1e-6))`,
/// `‖g‖₂` being the norm of all gradients together (`torch.nn.utils.clip_grad_norm_`).
///
/// The moments are keyed by the parameter's module path (`layers.3.mlp.up_proj.weight`), so
/// they survive a checkpoint round trip that rebuilds the model.
#[derive(Debug, Default)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    moments: HashMap<String, (Tensor<1>, Tensor<1>)>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

impl AdamW {
    /// A fresh optimizer (step 0, no moments).
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr` and returns the updated model.
    ///
    /// `grads` hold the gradients of the (autodiff) model's parameters; parameters without a
    /// gradient are left unchanged.
    pub fn step(&mut self, model: Llama, grads: &GradientsParams, lr: f64) -> (Llama, StepReport) {
        let mut norm = GradNorm {
            grads,
            sum_squares: 0.0,
        };
        model.visit(&mut norm);
        let grad_norm = norm.sum_squares.sqrt();
        let clip_scale = if self.config.max_grad_norm > 0.0 {
            (self.config.max_grad_norm / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.step += 1;
        let mut update = Update {
            optimizer: self,
            grads,
            lr,
            clip_scale,
            path: Vec::new(),
        };
        let model = model.map(&mut update);
        (
            model,
            StepReport {
                grad_norm,
                clip_scale,
            },
        )
    }

    /// The moments and step count as named host tensors (`exp_avg.<path>`,
    /// `exp_avg_sq.<path>`), for checkpoints.
    pub fn state(&self) -> (u64, Vec<(String, HostTensor)>) {
        let host = |t: &Tensor<1>| {
            let n = t.dims()[0];
            // Optimizer moments are f32 tensors, which always convert.
            let data = t
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .expect("f32 moments");
            HostTensor::new(vec![n], data)
        };
        let mut out = Vec::with_capacity(2 * self.moments.len());
        let mut paths: Vec<&String> = self.moments.keys().collect();
        paths.sort();
        for path in paths {
            let (m, v) = &self.moments[path];
            out.push((format!("exp_avg.{path}"), host(m)));
            out.push((format!("exp_avg_sq.{path}"), host(v)));
        }
        (self.step, out)
    }

    /// Restores moments and step count saved by [`AdamW::state`] onto `device`.
    ///
    /// # Errors
    /// The name of a tensor that has no partner (`exp_avg` without `exp_avg_sq`).
    pub fn restore(
        config: AdamWConfig,
        step: u64,
        tensors: HashMap<String, HostTensor>,
        device: &burn::tensor::Device,
    ) -> Result<Self, String> {
        let mut moments = HashMap::new();
        let mut pending: HashMap<String, HostTensor> = HashMap::new();
        for (name, t) in tensors {
            if let Some(path) = name.strip_prefix("exp_avg.") {
                pending.insert(format!("m {path}"), t);
            } else if let Some(path) = name.strip_prefix("exp_avg_sq.") {
                pending.insert(format!("v {path}"), t);
            } else {
                return Err(format!("unexpected optimizer tensor `{name}`"));
            }
        }
        let paths: Vec<String> = pending
            .keys()
            .filter_map(|k| k.strip_prefix("m ").map(str::to_string))
            .collect();
        for path in paths {
            let m = pending.remove(&format!("m {path}"));
            let v = pending
                .remove(&format!("v {path}"))
                .ok_or_else(|| format!("`exp_avg.{path}` has no `exp_avg_sq.{path}`"))?;
            let upload = |t: HostTensor| {
                let n = t.data.len();
                Tensor::<1>::from_data(TensorData::new(t.data, [n]), device)
            };
            if let Some(m) = m {
                moments.insert(path, (upload(m), upload(v)));
            }
        }
        if let Some(orphan) = pending.keys().next() {
            return Err(format!("optimizer tensor without a partner: {orphan}"));
        }
        Ok(Self {
            config,
            step,
            moments,
        })
    }
}

struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum_squares: f64,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sum_squares += g.square().sum().into_scalar::<f64>();
        }
    }
}

struct Update<'a> {
    optimizer: &'a mut AdamW,
    grads: &'a GradientsParams,
    lr: f64,
    clip_scale: f64,
    path: Vec<String>,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let p = tensor.inner().reshape([n]);
        let g = grad.reshape([n]) * self.clip_scale;
        let c = &self.optimizer.config;
        let t = self.optimizer.step as i32;
        let path = self.path.join(".");
        let (m, v) = match self.optimizer.moments.remove(&path) {
            Some((m, v)) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m * c.adam_beta1 + g.clone() * (1.0 - c.adam_beta1);
        let v = v * c.adam_beta2 + g.square() * (1.0 - c.adam_beta2);
        let bias1 = 1.0 - c.adam_beta1.powi(t);
        let bias2 = 1.0 - c.adam_beta2.powi(t);
        let decayed = if D >= 2 && c.weight_decay > 0.0 {
            p * (1.0 - self.lr * c.weight_decay)
        } else {
            p
        };
        let denom = v.clone().sqrt() / bias2.sqrt() + c.adam_epsilon;
        let updated = decayed - m.clone() / denom * (self.lr / bias1);
        self.optimizer.moments.insert(path, (m, v));
        let mut updated = Tensor::from_inner(updated.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}
