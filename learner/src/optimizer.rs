//! AdamW with global gradient-norm clipping; state keyed by parameter path so it can be saved
//! and restored with the weights.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use kaizen_model::{HostTensor, Llama};

use crate::train_backend::{AdamWMoments, ParamMoments};

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
/// The update is one fused pass per parameter over host memory (the parameter, its gradient
/// and both moments, in parallel chunks), in f32 as torch's `foreach` kernel computes it: the
/// parameter is read out of its tensor once and written back once, where a chain of tensor
/// operations would allocate and fill a parameter-sized temporary per operation.
///
/// The moments are keyed by the parameter's module path (`layers.3.mlp.up_proj.weight`), so
/// they survive a checkpoint round trip that rebuilds the model.
#[derive(Debug, Default)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    /// `(m, v)` per parameter path, each as long as the parameter.
    moments: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

/// Elements per parallel task of the fused update and of the gradient norm.
const CHUNK: usize = 1 << 16;

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

    /// Counts a step taken elsewhere (an injected `TrainBackend` keeps its own moments) and
    /// frees this optimizer's moments, which that step made stale.
    pub(crate) fn count_external_step(&mut self) {
        self.step += 1;
        self.moments.clear();
    }

    /// Allocates zero moments for every float parameter of `model` that has none yet, as the
    /// first update would. Called when a learner is built, so that the moments (twice the
    /// model's size) are in place before the first step: allocated lazily, they would land
    /// among the first step's buffers and push the second step's onto fresh pages (faulted in
    /// and zeroed by the kernel; measured as a slower second step).
    pub fn reserve(&mut self, model: &Llama) {
        let mut reserve = Reserve {
            optimizer: self,
            path: Vec::new(),
        };
        model.visit(&mut reserve);
    }

    /// Applies one update with learning rate `lr` and returns the updated model.
    ///
    /// `grads` hold the gradients of the (autodiff) model's parameters; parameters without a
    /// gradient are left unchanged.
    pub fn step(&mut self, model: Llama, grads: &GradientsParams, lr: f64) -> (Llama, StepReport) {
        let mut host = HostGrads {
            grads,
            host: Vec::new(),
        };
        model.visit(&mut host);
        self.step_host(model, host.host, lr)
    }

    /// As [`AdamW::step`], with each parameter's gradient given as host values (row-major, as
    /// long as the parameter) by parameter id: what kaizen's CPU training pass produces.
    /// Parameters without an entry are left unchanged.
    ///
    /// The gradient norm is summed in a fixed order (the order of `grads`, then chunk by
    /// chunk), so data-parallel ranks holding the same gradients clip by the same factor.
    pub fn step_host(
        &mut self,
        model: Llama,
        grads: Vec<(ParamId, Vec<f32>)>,
        lr: f64,
    ) -> (Llama, StepReport) {
        let chunks: Vec<&[f32]> = grads.iter().flat_map(|(_, g)| g.chunks(CHUNK)).collect();
        let partial: Vec<f64> = chunks
            .par_iter()
            .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .collect();
        let grad_norm = partial.iter().sum::<f64>().sqrt();
        let grads: HashMap<ParamId, Vec<f32>> = grads.into_iter().collect();
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
        let mut out = Vec::with_capacity(2 * self.moments.len());
        let mut paths: Vec<&String> = self.moments.keys().collect();
        paths.sort();
        for path in paths {
            let (m, v) = &self.moments[path];
            out.push((
                format!("exp_avg.{path}"),
                HostTensor::new(vec![m.len()], m.clone()),
            ));
            out.push((
                format!("exp_avg_sq.{path}"),
                HostTensor::new(vec![v.len()], v.clone()),
            ));
        }
        (self.step, out)
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    ///
    /// # Errors
    /// The name of a tensor that has no partner (`exp_avg` without `exp_avg_sq`), that is not
    /// an optimizer tensor, or whose two moments differ in length.
    pub fn restore(
        config: AdamWConfig,
        step: u64,
        tensors: HashMap<String, HostTensor>,
    ) -> Result<Self, String> {
        let mut firsts = HashMap::new();
        let mut seconds = HashMap::new();
        for (name, t) in tensors {
            if let Some(path) = name.strip_prefix("exp_avg.") {
                firsts.insert(path.to_string(), t.data);
            } else if let Some(path) = name.strip_prefix("exp_avg_sq.") {
                seconds.insert(path.to_string(), t.data);
            } else {
                return Err(format!("unexpected optimizer tensor `{name}`"));
            }
        }
        let mut moments = HashMap::with_capacity(firsts.len());
        for (path, m) in firsts {
            let v = seconds
                .remove(&path)
                .ok_or_else(|| format!("`exp_avg.{path}` has no `exp_avg_sq.{path}`"))?;
            if m.len() != v.len() {
                return Err(format!(
                    "`exp_avg.{path}` has {} values but `exp_avg_sq.{path}` has {}",
                    m.len(),
                    v.len()
                ));
            }
            moments.insert(path, (m, v));
        }
        if let Some(orphan) = seconds.keys().next() {
            return Err(format!(
                "optimizer tensor without a partner: exp_avg_sq.{orphan}"
            ));
        }
        Ok(Self {
            config,
            step,
            moments,
        })
    }
}

impl AdamW {
    /// Moves this optimizer's step count and moments out, for a training backend that holds
    /// `model`'s parameters: each parameter's moments under its Hugging Face name
    /// (`Llama::to_named`'s, as `TrainBackend::weights` names them) and in its shape. At step 0
    /// the moments are zero and none are moved (an empty list); a parameter without moments
    /// gets zeros, as [`AdamW::step`] would start it. Put them back with
    /// [`AdamW::put_back_moments`] if the backend refuses them.
    ///
    /// # Errors
    /// Naming the moment (`exp_avg.<path>`) that has another number of values than its
    /// parameter, with the parameter's shape, or that belongs to no parameter of `model`. The
    /// optimizer is unchanged then.
    pub(crate) fn take_moments_for(&mut self, model: &Llama) -> Result<AdamWMoments, String> {
        let params = parameters(model);
        if self.step == 0 {
            self.moments.clear();
            return Ok(AdamWMoments::default());
        }
        let known: HashMap<&str, &[usize]> = params
            .iter()
            .map(|p| (p.path.as_str(), p.shape.as_slice()))
            .collect();
        let mut paths: Vec<&String> = self.moments.keys().collect();
        paths.sort();
        for path in paths {
            let (m, _) = &self.moments[path];
            let Some(shape) = known.get(path.as_str()) else {
                return Err(format!(
                    "optimizer tensor `exp_avg.{path}` belongs to no parameter of the model"
                ));
            };
            let n: usize = shape.iter().product();
            if m.len() != n {
                return Err(format!(
                    "optimizer tensors `exp_avg.{path}` / `exp_avg_sq.{path}` have {} values, \
                     expected {n}: the shape {shape:?} of `{}`",
                    m.len(),
                    hf_name(path)
                ));
            }
        }
        let params = params
            .into_iter()
            .map(|p| {
                let n = p.shape.iter().product();
                let (m, v) = self
                    .moments
                    .remove(&p.path)
                    .unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]));
                ParamMoments {
                    m: HostTensor::new(p.shape.clone(), m),
                    v: HostTensor::new(p.shape, v),
                    name: p.name,
                }
            })
            .collect();
        Ok(AdamWMoments {
            step: self.step,
            params,
        })
    }

    /// Takes back the moments [`AdamW::take_moments_for`] moved out for `model` (a backend
    /// refused them).
    pub(crate) fn put_back_moments(&mut self, model: &Llama, moments: AdamWMoments) {
        let paths: HashMap<String, String> = parameters(model)
            .into_iter()
            .map(|p| (p.name, p.path))
            .collect();
        for p in moments.params {
            if let Some(path) = paths.get(&p.name) {
                self.moments.insert(path.clone(), (p.m.data, p.v.data));
            }
        }
    }

    /// A training backend's AdamW state (`TrainBackend::optimizer_state`, by Hugging Face
    /// name) in [`AdamW::state`]'s form (`exp_avg.<path>`, `exp_avg_sq.<path>`, flat, sorted by
    /// path), for `model`'s parameters: the checkpoint a CPU learner writes.
    ///
    /// # Errors
    /// Naming the backend's tensor that is no parameter of `model`, or whose moment has
    /// another number of values than the parameter's shape (given).
    pub(crate) fn state_of_backend(
        model: &Llama,
        moments: AdamWMoments,
    ) -> Result<(u64, Vec<(String, HostTensor)>), String> {
        let params: HashMap<String, (String, Vec<usize>)> = parameters(model)
            .into_iter()
            .map(|p| (p.name, (p.path, p.shape)))
            .collect();
        let mut by_path = Vec::with_capacity(moments.params.len());
        for p in moments.params {
            let Some((path, shape)) = params.get(&p.name) else {
                return Err(format!(
                    "the backend's moments of `{}` belong to no parameter of the model",
                    p.name
                ));
            };
            let n: usize = shape.iter().product();
            for (what, t) in [("m", &p.m), ("v", &p.v)] {
                if t.data.len() != n {
                    return Err(format!(
                        "the backend's moment {what} of `{}` has {} values, expected the \
                         shape {shape:?}",
                        p.name,
                        t.data.len()
                    ));
                }
            }
            by_path.push((path.clone(), p.m.data, p.v.data));
        }
        by_path.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(2 * by_path.len());
        for (path, m, v) in by_path {
            out.push((format!("exp_avg.{path}"), HostTensor::new(vec![m.len()], m)));
            out.push((
                format!("exp_avg_sq.{path}"),
                HostTensor::new(vec![v.len()], v),
            ));
        }
        Ok((moments.step, out))
    }
}

/// A float parameter of a model: its module path (the optimizer's key), its Hugging Face
/// name and its shape.
struct Parameter {
    path: String,
    name: String,
    shape: Vec<usize>,
}

/// Every float parameter of `model`, in visiting order.
fn parameters(model: &Llama) -> Vec<Parameter> {
    let mut visitor = Parameters {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

struct Parameters {
    path: Vec<String>,
    out: Vec<Parameter>,
}

impl ModuleVisitor for Parameters {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        self.out.push(Parameter {
            name: hf_name(&path),
            shape: param.shape().to_vec(),
            path,
        });
    }
}

/// The Hugging Face name (`Llama::to_named`) of the parameter at module path `path` (the
/// optimizer's key): `embed_tokens` → `model.embed_tokens.weight`, `layers.…` and `norm.…`
/// under `model.`, `value_head.…` → `v_head.summary.…` (TRL's name), `lm_head.…` as it is.
fn hf_name(path: &str) -> String {
    if path == "embed_tokens" {
        "model.embed_tokens.weight".to_string()
    } else if path.starts_with("layers.") || path.starts_with("norm.") {
        format!("model.{path}")
    } else if let Some(rest) = path.strip_prefix("value_head.") {
        format!("v_head.summary.{rest}")
    } else {
        path.to_string()
    }
}

/// Copies every parameter's gradient to host memory.
struct HostGrads<'a> {
    grads: &'a GradientsParams,
    /// In the model's visiting order.
    host: Vec<(ParamId, Vec<f32>)>,
}

impl ModuleVisitor for HostGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        self.host.push((param.id, host_f32(g.into_data())));
    }
}

/// Zero moments for parameters without any ([`AdamW::reserve`]), keyed by the path
/// [`Update`] gives them.
struct Reserve<'a> {
    optimizer: &'a mut AdamW,
    path: Vec<String>,
}

impl ModuleVisitor for Reserve<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements();
        self.optimizer
            .moments
            .entry(self.path.join("."))
            .or_insert_with(|| (vec![0.0; n], vec![0.0; n]));
    }
}

struct Update<'a> {
    optimizer: &'a mut AdamW,
    grads: HashMap<ParamId, Vec<f32>>,
    lr: f64,
    clip_scale: f64,
    path: Vec<String>,
}

/// The per-step constants of the fused update, in f32.
#[derive(Clone, Copy)]
struct Coefficients {
    /// `max_grad_norm`'s clip factor.
    clip: f32,
    beta1: f32,
    beta2: f32,
    /// `1 − lr·λ` (1 for vectors).
    decay: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    inv_sqrt_bias2: f32,
    eps: f32,
}

/// One element of the fused AdamW update (see [`AdamW`]): the new parameter from the old one
/// `p` and gradient `g`, updating the moments `m` and `v` in place.
#[inline(always)]
fn adamw_element(p: f32, g: f32, m: &mut f32, v: &mut f32, k: &Coefficients) -> f32 {
    let g = g * k.clip;
    *m = k.beta1 * *m + (1.0 - k.beta1) * g;
    *v = k.beta2 * *v + (1.0 - k.beta2) * g * g;
    let denom = v.sqrt() * k.inv_sqrt_bias2 + k.eps;
    p * k.decay - k.step_size * *m / denom
}

/// One fused AdamW update of `p` in place (see [`AdamW`]) with gradient `g` and moments `m`,
/// `v`: for parameters whose buffer the optimizer owns.
fn fused_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Coefficients) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p = adamw_element(*p, g, m, v, &k);
            }
        });
}

/// [`fused_update`] out of place: the updated parameters of `old` as a new buffer, read and
/// written in one pass (no copy of `old` first). The parameters are shared with the weights
/// published to the actors, so the update cannot overwrite them.
fn fused_update_into(
    old: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: Coefficients,
) -> Vec<f32> {
    let mut new = Vec::with_capacity(old.len());
    new.spare_capacity_mut()[..old.len()]
        .par_chunks_mut(CHUNK)
        .zip(old.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|((((new, old), g), m), v)| {
            for ((((new, &p), &g), m), v) in new
                .iter_mut()
                .zip(old)
                .zip(g)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                new.write(adamw_element(p, g, m, v, &k));
            }
        });
    // SAFETY: every one of the first `old.len()` elements was written just above (the chunks
    // of `old`, `g`, `m`, `v` and of the spare capacity cover the same `old.len()` indices).
    unsafe { new.set_len(old.len()) };
    new
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.remove(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let inner = tensor.inner();
        let (device, dtype) = (inner.device(), inner.dtype());
        let n = shape.num_elements();
        let c = &self.optimizer.config;
        let t = self.optimizer.step as i32;
        let path = self.path.join(".");
        let (mut m, mut v) = match self.optimizer.moments.remove(&path) {
            Some((m, v)) if m.len() == n => (m, v),
            Some((m, _)) => {
                tracing::warn!(
                    parameter = %path,
                    saved = m.len(),
                    expected = n,
                    "optimizer moments do not fit the parameter; starting them from zero"
                );
                (vec![0.0; n], vec![0.0; n])
            }
            None => (vec![0.0; n], vec![0.0; n]),
        };
        let k = Coefficients {
            clip: self.clip_scale as f32,
            beta1: c.adam_beta1 as f32,
            beta2: c.adam_beta2 as f32,
            decay: if D >= 2 {
                (1.0 - self.lr * c.weight_decay) as f32
            } else {
                1.0
            },
            step_size: (self.lr / (1.0 - c.adam_beta1.powi(t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - c.adam_beta2.powi(t)).sqrt()) as f32,
            eps: c.adam_epsilon as f32,
        };
        // f32 parameters on the flex device are read in place (one pass writes the new
        // buffer); any other is copied out, updated, and converted back.
        let p = match kaizen_model::with_host_values(&inner, |old| {
            fused_update_into(old, &g, &mut m, &mut v, k)
        }) {
            Some(p) => p,
            None => {
                let mut p = host_f32(inner.into_data());
                fused_update(&mut p, &g, &mut m, &mut v, k);
                p
            }
        };
        self.optimizer.moments.insert(path, (m, v));
        let data = TensorData::new(p, shape).convert_dtype(dtype);
        let updated = Tensor::<D>::from_inner(Tensor::from_data(data, &device));
        Param::from_mapped_value(id, restore_grad(updated, require_grad), mapper)
    }
}

/// The values of `data` as f32 (parameters and gradients of an f32 model already are; another
/// float dtype converts, and the update converts back).
fn host_f32(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("TensorData::convert::<f32> yields f32 values")
}

fn restore_grad<const D: usize>(tensor: Tensor<D>, require_grad: bool) -> Tensor<D> {
    if require_grad {
        tensor.require_grad()
    } else {
        tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.optim.AdamW's step for one element, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        p: f64,
        g: f64,
        m: f64,
        v: f64,
        t: i32,
        lr: f64,
        c: &AdamWConfig,
        clip: f64,
    ) -> [f64; 3] {
        let g = g * clip;
        let m = c.adam_beta1 * m + (1.0 - c.adam_beta1) * g;
        let v = c.adam_beta2 * v + (1.0 - c.adam_beta2) * g * g;
        let p = p * (1.0 - lr * c.weight_decay);
        let denom = v.sqrt() / (1.0 - c.adam_beta2.powi(t)).sqrt() + c.adam_epsilon;
        [p - lr / (1.0 - c.adam_beta1.powi(t)) * m / denom, m, v]
    }

    #[test]
    fn the_fused_update_follows_torch_over_steps_with_decay_and_clipping() {
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let n = 3 * CHUNK + 17; // several parallel chunks and a short one
        let mut p: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut expected: Vec<[f64; 3]> = p.iter().map(|&x| [f64::from(x), 0.0, 0.0]).collect();
        let lr = 1e-3;
        for t in 1..=3 {
            let g: Vec<f32> = (0..n)
                .map(|i| (((i * 7 + t) % 13) as f32 - 6.0) / 3.0)
                .collect();
            let clip = 0.5;
            let k = Coefficients {
                clip: clip as f32,
                beta1: c.adam_beta1 as f32,
                beta2: c.adam_beta2 as f32,
                decay: (1.0 - lr * c.weight_decay) as f32,
                step_size: (lr / (1.0 - c.adam_beta1.powi(t as i32))) as f32,
                inv_sqrt_bias2: (1.0 / (1.0 - c.adam_beta2.powi(t as i32)).sqrt()) as f32,
                eps: c.adam_epsilon as f32,
            };
            fused_update(&mut p, &g, &mut m, &mut v, k);
            for (e, &g) in expected.iter_mut().zip(&g) {
                *e = reference(e[0], f64::from(g), e[1], e[2], t as i32, lr, &c, clip);
            }
        }
        for (i, e) in expected.iter().enumerate() {
            assert!(
                (f64::from(p[i]) - e[0]).abs() < 1e-6,
                "p[{i}]: {} vs {}",
                p[i],
                e[0]
            );
            assert!(
                (f64::from(m[i]) - e[1]).abs() < 1e-6,
                "m[{i}]: {} vs {}",
                m[i],
                e[1]
            );
            assert!(
                (f64::from(v[i]) - e[2]).abs() < 1e-6,
                "v[{i}]: {} vs {}",
                v[i],
                e[2]
            );
        }
    }

    #[test]
    fn the_update_out_of_place_equals_the_update_in_place() {
        let n = 2 * CHUNK + 5;
        let old: Vec<f32> = (0..n).map(|i| ((i % 31) as f32 - 15.0) / 20.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) / 7.0).collect();
        let m0: Vec<f32> = (0..n).map(|i| (i % 5) as f32 / 100.0).collect();
        let v0: Vec<f32> = (0..n).map(|i| (i % 3) as f32 / 1000.0).collect();
        let k = Coefficients {
            clip: 0.7,
            beta1: 0.9,
            beta2: 0.999,
            decay: 0.999,
            step_size: 1e-3,
            inv_sqrt_bias2: 3.0,
            eps: 1e-8,
        };
        let (mut p, mut m, mut v) = (old.clone(), m0.clone(), v0.clone());
        fused_update(&mut p, &g, &mut m, &mut v, k);
        let (mut m2, mut v2) = (m0, v0);
        let p2 = fused_update_into(&old, &g, &mut m2, &mut v2, k);
        assert_eq!(p2, p);
        assert_eq!((m2, v2), (m, v));
        assert_ne!(p, old, "the update moved the parameters");
    }

    /// A 2-layer model: tied or not, with q/k/v biases or not, with a value head or not.
    fn small_model(tied: bool, bias: bool, value_head: bool) -> Llama {
        let mut c = kaizen_model::LlamaConfig::tiny(40);
        c.hidden_size = 16;
        c.intermediate_size = 24;
        c.num_hidden_layers = 2;
        c.tie_word_embeddings = tied;
        c.attention_bias = bias;
        let model = Llama::init(&c, &burn::tensor::Device::default(), 3).unwrap();
        if value_head {
            model.with_value_head(5).unwrap()
        } else {
            model
        }
    }

    #[test]
    fn every_parameter_path_maps_to_its_hugging_face_name_and_shape() {
        for (tied, bias, value_head) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let model = small_model(tied, bias, value_head);
            let mut ours: Vec<(String, Vec<usize>)> = parameters(&model)
                .into_iter()
                .map(|p| (p.name, p.shape))
                .collect();
            let mut theirs: Vec<(String, Vec<usize>)> = model
                .to_named()
                .into_iter()
                .map(|(name, t)| (name, t.shape))
                .collect();
            ours.sort();
            theirs.sort();
            assert_eq!(
                ours, theirs,
                "tied {tied}, bias {bias}, value head {value_head}"
            );
        }
    }

    /// An optimizer at step 3 whose moments are distinct values for every parameter of
    /// `model`.
    fn stepped(model: &Llama) -> AdamW {
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.reserve(model);
        opt.step = 3;
        for (i, (m, v)) in opt.moments.values_mut().enumerate() {
            for (j, (m, v)) in m.iter_mut().zip(v.iter_mut()).enumerate() {
                *m = (i * 1000 + j) as f32 * 1e-3;
                *v = (i * 1000 + j) as f32 * 1e-4;
            }
        }
        opt
    }

    #[test]
    fn a_backends_moments_round_trip_to_the_cpu_optimizers_checkpoint_form() {
        let model = small_model(false, true, false);
        let mut opt = stepped(&model);
        let saved = opt.state();
        let moved = opt.take_moments_for(&model).unwrap();
        assert!(opt.moments.is_empty(), "the moments moved to the backend");
        assert_eq!(moved.step, 3);
        let named: HashMap<String, HostTensor> = model.to_named().into_iter().collect();
        assert_eq!(moved.params.len(), named.len());
        for p in &moved.params {
            assert_eq!(p.m.shape, named[&p.name].shape, "{}", p.name);
            assert_eq!(p.v.shape, named[&p.name].shape, "{}", p.name);
        }
        assert_eq!(AdamW::state_of_backend(&model, moved).unwrap(), saved);
        // At step 0 nothing moves: the backend's moments are zero.
        let mut fresh = AdamW::new(AdamWConfig::default());
        fresh.reserve(&model);
        assert_eq!(
            fresh.take_moments_for(&model).unwrap(),
            AdamWMoments::default()
        );
    }

    #[test]
    fn moments_that_do_not_fit_the_model_are_named_with_the_shape_expected() {
        let model = small_model(true, false, false);
        let mut opt = stepped(&model);
        let path = "layers.1.mlp.up_proj.weight";
        opt.moments
            .insert(path.into(), (vec![0.0; 3], vec![0.0; 3]));
        let before = opt.state();
        let err = opt.take_moments_for(&model).unwrap_err();
        assert!(
            err.contains("exp_avg.layers.1.mlp.up_proj.weight")
                && err.contains("[24, 16]")
                && err.contains("model.layers.1.mlp.up_proj.weight"),
            "{err}"
        );
        assert_eq!(
            opt.state(),
            before,
            "a refused take leaves the optimizer as it was"
        );
        opt.moments.remove(path);
        opt.moments
            .insert("layers.9.mlp.up_proj.weight".into(), (vec![0.0], vec![0.0]));
        let err = opt.take_moments_for(&model).unwrap_err();
        assert!(err.contains("exp_avg.layers.9.mlp.up_proj.weight"), "{err}");

        let mut moved = stepped(&model).take_moments_for(&model).unwrap();
        moved.params[2].v = HostTensor::new(vec![2], vec![0.0; 2]);
        let name = moved.params[2].name.clone();
        let err = AdamW::state_of_backend(&model, moved).unwrap_err();
        assert!(err.contains(&name) && err.contains("moment v"), "{err}");
    }

    #[test]
    fn moments_put_back_after_a_refusal_are_the_ones_taken() {
        let model = small_model(true, false, false);
        let mut opt = stepped(&model);
        let before = opt.state();
        let moved = opt.take_moments_for(&model).unwrap();
        opt.put_back_moments(&model, moved);
        assert_eq!(opt.state(), before);
    }

    #[test]
    fn moments_round_trip_and_bad_state_is_named() {
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.step = 4;
        opt.moments.insert(
            "layers.0.mlp.up_proj.weight".into(),
            (vec![1.0, 2.0], vec![3.0, 4.0]),
        );
        let (step, tensors) = opt.state();
        let named: HashMap<String, HostTensor> = tensors.into_iter().collect();
        let back = AdamW::restore(AdamWConfig::default(), step, named.clone()).expect("restores");
        assert_eq!(back.step, 4);
        assert_eq!(back.moments, opt.moments);

        let mut short = named.clone();
        short.insert(
            "exp_avg_sq.layers.0.mlp.up_proj.weight".into(),
            HostTensor::new(vec![1], vec![0.0]),
        );
        let err = AdamW::restore(AdamWConfig::default(), 4, short).unwrap_err();
        assert!(
            err.contains("has 2 values") && err.contains("has 1"),
            "{err}"
        );

        let mut orphan = named.clone();
        orphan.remove("exp_avg.layers.0.mlp.up_proj.weight");
        let err = AdamW::restore(AdamWConfig::default(), 4, orphan).unwrap_err();
        assert!(
            err.contains("exp_avg_sq.layers.0.mlp.up_proj.weight"),
            "{err}"
        );

        let mut stray = named;
        stray.insert("momentum.x".into(), HostTensor::new(vec![1], vec![0.0]));
        let err = AdamW::restore(AdamWConfig::default(), 4, stray).unwrap_err();
        assert!(err.contains("momentum.x"), "{err}");
    }
}
