//! [`TrainModel`] as the learner's [`TrainBackend`]: the learner builds the loss on the pass's
//! log-probs and hands back `∂loss/∂logp`; the gradients and AdamW moments stay in the
//! backend's buffers (device memory for [`CudaOps`], host vectors for [`HostOps`]).
//!
//! [`CudaOps`]: super::CudaOps
//! [`HostOps`]: super::HostOps

use kaizen_learner::{AdamWConfig, Collective, Error, StepReport, TrainBackend};
use kaizen_model::{HostTensor, Llama, ScoreBatch};

use super::adamw::AdamWState;
use super::ops::TrainOps;
use super::pass::{Activations, TrainModel, Weights};
use crate::GpuError;

/// The training pass on the operations `O`, with the step's gradient sums, AdamW's moments and
/// the activations of the forward awaiting its backward.
pub struct PassBackend<O: TrainOps> {
    name: String,
    model: TrainModel<O>,
    grads: Weights<O::Buf>,
    adamw: AdamWState<O::Buf>,
    pending: Option<Activations<O>>,
}

fn backend_error(e: GpuError) -> Error {
    Error::Backend(e.to_string())
}

impl<O: TrainOps> PassBackend<O> {
    /// Uploads `model`'s weights to a pass on `ops` (zero gradients, fresh AdamW state);
    /// `name` labels it in messages (`"cuda"`, `"host"`).
    ///
    /// # Errors
    /// [`GpuError::Input`] for a value head or a model the pass cannot hold; the backend's
    /// allocation and copy errors.
    pub fn new(name: &str, ops: O, model: &Llama) -> Result<Self, GpuError> {
        let model = TrainModel::new(ops, model.config(), &model.to_named())?;
        Ok(Self {
            name: name.to_string(),
            grads: model.zero_grads()?,
            adamw: model.adamw_state()?,
            model,
            pending: None,
        })
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

    fn all_reduce(&mut self, group: &dyn Collective) -> Result<(), Error> {
        if group.world_size() == 1 {
            return Ok(());
        }
        // Through host copies, one parameter at a time.
        // TODO(issue 22): device buffers straight to `NcclCollective::all_reduce_sum_device`
        // (needs the pass and the communicator on one stream).
        let ops = self.model.ops();
        for g in self.grads.tensors_mut() {
            let mut host = ops.download(g).map_err(backend_error)?;
            group.all_reduce_sum(&mut host)?;
            *g = ops.upload(&host).map_err(backend_error)?;
        }
        Ok(())
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
