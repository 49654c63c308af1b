//! [`TrainModel`] as the learner's [`TrainBackend`]: the learner builds the loss on the pass's
//! log-probs and hands back `∂loss/∂logp`; the gradients and AdamW moments stay in the
//! backend's buffers (device memory for [`CudaOps`], host vectors for [`HostOps`]). The
//! data-parallel sum runs in buckets ([`GradBuckets`]: packed on the device, summed in place
//! by NCCL when the group is an `NcclCollective`); checkpoints read the moments back and a
//! resumed run uploads them ([`TrainBackend::optimizer_state`],
//! [`TrainBackend::set_optimizer_state`]).
//!
//! [`CudaOps`]: super::CudaOps
//! [`HostOps`]: super::HostOps

use kaizen_learner::{AdamWConfig, AdamWMoments, Collective, Error, StepReport, TrainBackend};
use kaizen_model::{HostTensor, Llama, LlamaConfig, ScoreBatch};

use super::adamw::AdamWState;
use super::buckets::{Bucket, DEFAULT_BUCKET_BYTES, GradBuckets};
use super::ops::TrainOps;
use super::pass::{Activations, TrainModel, Weights};
use crate::GpuError;

/// The training pass on the operations `O`, with the step's gradient sums, AdamW's moments,
/// the activations of the forward awaiting its backward and the all-reduce's buckets.
pub struct PassBackend<O: TrainOps> {
    name: String,
    model: TrainModel<O>,
    grads: Weights<O::Buf>,
    adamw: AdamWState<O::Buf>,
    pending: Option<Activations<O>>,
    buckets: GradBuckets<O::Buf>,
}

fn backend_error(e: GpuError) -> Error {
    Error::Backend(e.to_string())
}

/// Every parameter's floats, in [`super::layout`]'s order (the gradients' order).
fn parameter_lens(config: &LlamaConfig) -> Vec<usize> {
    super::pass::layout(config)
        .iter()
        .map(|(_, shape)| shape.iter().product())
        .collect()
}

impl<O: TrainOps> PassBackend<O> {
    /// Uploads `model`'s weights to a pass on `ops` (zero gradients, fresh AdamW state, the
    /// all-reduce in buckets of [`DEFAULT_BUCKET_BYTES`]); `name` labels it in messages
    /// (`"cuda"`, `"host"`).
    ///
    /// # Errors
    /// [`GpuError::Input`] for a value head or a model the pass cannot hold; the backend's
    /// allocation and copy errors.
    pub fn new(name: &str, ops: O, model: &Llama) -> Result<Self, GpuError> {
        let model = TrainModel::new(ops, model.config(), &model.to_named())?;
        let lens = parameter_lens(model.config());
        Ok(Self {
            name: name.to_string(),
            grads: model.zero_grads()?,
            adamw: model.adamw_state()?,
            model,
            pending: None,
            buckets: GradBuckets::new(lens, DEFAULT_BUCKET_BYTES),
        })
    }

    /// Sums gradients across ranks in buckets of at most `bucket_bytes` (PyTorch DDP's
    /// `bucket_cap_mb`, in bytes; a parameter larger than that is a bucket of its own).
    pub fn with_bucket_bytes(mut self, bucket_bytes: usize) -> Self {
        self.buckets = GradBuckets::new(parameter_lens(self.model.config()), bucket_bytes);
        self
    }

    /// The all-reduce's buckets over the parameters ([`super::layout`]'s order): one
    /// collective call each.
    pub fn buckets(&self) -> &[Bucket] {
        self.buckets.buckets()
    }
}

impl<O: TrainOps> PassBackend<O> {
    /// Sets the gradient sums to 0 in place.
    fn zero_grads(&mut self) -> Result<(), Error> {
        let ops = self.model.ops();
        for g in self.grads.tensors_mut() {
            ops.zero(g).map_err(backend_error)?;
        }
        Ok(())
    }
}

impl<O> TrainBackend for PassBackend<O>
where
    O: TrainOps + Send,
    O::Buf: Send,
    O::Index: Send,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn zero_grad(&mut self) -> Result<(), Error> {
        self.pending = None;
        self.zero_grads()
    }

    fn forward(&mut self, batch: &ScoreBatch, temperature: f32) -> Result<Vec<f32>, Error> {
        // Free the previous activations before allocating the next.
        self.pending = None;
        let (logprobs, act) = self
            .model
            .forward(batch, temperature)
            .map_err(backend_error)?;
        self.pending = Some(act);
        Ok(logprobs)
    }

    fn backward(&mut self, d_logprobs: &[f32]) -> Result<(), Error> {
        let act = self
            .pending
            .take()
            .ok_or_else(|| Error::Backend(format!("{}: backward without a forward", self.name)))?;
        self.model
            .backward(act, d_logprobs, &mut self.grads)
            .map_err(backend_error)
    }

    /// One collective call per bucket: on the device when `group` is an `NcclCollective`
    /// of this GPU (`CudaOps`), else through one host copy per bucket.
    fn all_reduce(&mut self, group: &dyn Collective) -> Result<(), Error> {
        if group.world_size() == 1 {
            return Ok(());
        }
        self.buckets
            .all_reduce(self.model.ops(), self.grads.tensors_mut(), group)
    }

    fn step(&mut self, config: &AdamWConfig, lr: f64, step: u64) -> Result<StepReport, Error> {
        self.pending = None;
        if step <= 1 && self.adamw.step_count() > 0 {
            // A fresh optimizer on the learner's side (RL after an SFT warm start).
            self.adamw = self.model.adamw_state().map_err(backend_error)?;
        }
        self.adamw.set_step_count(step.saturating_sub(1));
        let report = self
            .model
            .adamw_step(&self.grads, &mut self.adamw, config, lr)
            .map_err(backend_error)?;
        self.zero_grads()?;
        Ok(report)
    }

    fn optimizer_state(&self) -> Result<AdamWMoments, Error> {
        self.model
            .download_adamw(&self.adamw)
            .map_err(backend_error)
    }

    fn set_optimizer_state(&mut self, state: &AdamWMoments) -> Result<(), Error> {
        self.adamw = self
            .model
            .upload_adamw(state)
            .map_err(|e| Error::Backend(format!("{}: optimizer state: {e}", self.name)))?;
        Ok(())
    }

    fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        let shapes = super::pass::layout(self.model.config());
        let values = self.model.download_weights().map_err(backend_error)?;
        Ok(values
            .into_iter()
            .zip(shapes)
            .map(|((name, data), (_, shape))| (name, HostTensor::new(shape, data)))
            .collect())
    }
}
