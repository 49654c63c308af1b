//! Gradients summed over a step's micro-batches: kaizen's CPU training pass where it applies,
//! burn's autodiff otherwise.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Gradients, Tensor};
use kaizen_model::{CpuGrads, CpuScorePass, Llama, ScoreBatch, ScoreOptions, Scores, score_with};

use crate::{Collective, Error};

/// Gradients summed over a step's micro-batches, from kaizen's CPU training pass where it
/// applies (host buffers, no tensor additions) or from burn's autodiff.
pub(crate) enum Accumulator {
    Cpu(CpuGrads),
    Burn(GradientsAccumulator<Llama>),
}

impl Accumulator {
    pub(crate) fn new(model: &Llama, cpu_kernels: bool) -> Self {
        match cpu_kernels.then(|| CpuGrads::new(model)).flatten() {
            Some(grads) if CpuScorePass::applies(model) => Self::Cpu(grads),
            _ => Self::Burn(GradientsAccumulator::new()),
        }
    }

    /// The scores of `batch` (differentiable), and the CPU pass that back-propagates them.
    pub(crate) fn score(
        &self,
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
    ) -> Result<(Scores, Option<CpuScorePass>), Error> {
        if let Self::Cpu(_) = self
            && let Some((scores, pass)) = CpuScorePass::forward(model, batch, options)?
        {
            return Ok((scores, Some(pass)));
        }
        Ok((score_with(model, batch, options)?, None))
    }

    /// Back-propagates `loss` (built on the scores of `pass`, or on burn's scores when `None`)
    /// and adds the gradients.
    pub(crate) fn backward(
        &mut self,
        model: &Llama,
        loss: Tensor<1>,
        pass: Option<CpuScorePass>,
    ) -> Result<(), Error> {
        let mut grads = loss.backward();
        self.add(model, &mut grads, pass)
    }

    /// Adds `model`'s part of `grads` (the gradients of a loss built on the scores of `pass`,
    /// or on burn's scores when `None`). Several models' parts can be taken from one loss's
    /// gradients (PPO's policy and separate critic).
    pub(crate) fn add(
        &mut self,
        model: &Llama,
        grads: &mut Gradients,
        pass: Option<CpuScorePass>,
    ) -> Result<(), Error> {
        match (self, pass) {
            (Self::Cpu(into), Some(pass)) => pass.backward(grads, into)?,
            (Self::Burn(acc), None) => {
                acc.accumulate(model, GradientsParams::from_module(grads, model));
            }
            _ => {
                return Err(Error::Model(kaizen_model::Error::Input(
                    "a scoring pass and the gradient accumulator disagree on the backend".into(),
                )));
            }
        }
        Ok(())
    }

    /// Sums the gradients across the data-parallel group (every rank ends with the total).
    ///
    /// # Errors
    /// [`Error::Collective`] on burn's autodiff path (only the CPU training pass's host buffers
    /// are reduced) or when the collective fails.
    pub(crate) fn all_reduce(&mut self, collective: &dyn Collective) -> Result<(), Error> {
        if collective.world_size() == 1 {
            return Ok(());
        }
        match self {
            Self::Cpu(grads) => {
                for buffer in grads.buffers_mut() {
                    collective.all_reduce_sum(buffer)?;
                }
                Ok(())
            }
            Self::Burn(_) => Err(Error::Collective(
                "data-parallel steps need the CPU training pass (`learner.cpu_kernels = true`, a \
                 float32 model on the CPU); burn's autodiff gradients are not all-reduced"
                    .into(),
            )),
        }
    }

    /// The step's summed gradients.
    pub(crate) fn grads(self, model: &Llama) -> GradientsParams {
        match self {
            Self::Cpu(grads) => grads.into_params(&model.device().inner()),
            Self::Burn(mut acc) => acc.grads(),
        }
    }
}
