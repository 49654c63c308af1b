//! Gradients summed over a step's micro-batches: kaizen's CPU training pass where it applies,
//! burn's autodiff otherwise.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Gradients, Tensor};
use kaizen_model::{
    CpuGrads, CpuScorePass, Llama, ScoreBatch, ScoreOptions, Scores, TrainProducts, score_with,
};

use crate::LearnerConfig;
use crate::optimizer::{AdamW, StepReport};
use crate::{Collective, Error};

/// Gradients summed over a step's micro-batches, from kaizen's CPU training pass where it
/// applies (host buffers, no tensor additions) or from burn's autodiff.
pub(crate) enum Accumulator {
    /// The CPU pass's gradient buffers and its products (f32, or bf16 with the step's weight
    /// packs: an accumulator lives for one step, while the weights do not change).
    Cpu(CpuGrads, TrainProducts),
    Burn(GradientsAccumulator<Llama>),
}

impl Accumulator {
    pub(crate) fn new(model: &Llama, config: &LearnerConfig) -> Self {
        match config.cpu_kernels.then(|| CpuGrads::new(model)).flatten() {
            Some(grads) if CpuScorePass::applies(model) => {
                let products = if config.bf16 {
                    TrainProducts::bf16()
                } else {
                    TrainProducts::f32()
                };
                Self::Cpu(grads, products)
            }
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
        if let Self::Cpu(_, products) = self
            && let Some((scores, pass)) =
                CpuScorePass::forward_with(model, batch, options, products)?
        {
            return Ok((scores, Some(pass)));
        }
        Ok((score_with(model, batch, options)?, None))
    }

    /// Scores `batch` under a model nothing is back-propagated into (the frozen KL
    /// reference): on the CPU pass with this step's products where it applies, else
    /// [`score_with`].
    pub(crate) fn score_detached(
        &self,
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
    ) -> Result<Scores, Error> {
        if let Self::Cpu(_, products) = self
            && let Some(scores) = CpuScorePass::score_detached(model, batch, options, products)?
        {
            return Ok(scores);
        }
        Ok(score_with(model, batch, options)?)
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
            (Self::Cpu(into, _), Some(pass)) => pass.backward(grads, into)?,
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
            Self::Cpu(grads, _) => {
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

    /// Applies the step's summed gradients to `model` with `optimizer` at learning rate `lr`:
    /// the CPU pass's host buffers go to the optimizer as they are, burn's through its
    /// gradient tensors.
    pub(crate) fn step(self, optimizer: &mut AdamW, model: Llama, lr: f64) -> (Llama, StepReport) {
        match self {
            Self::Cpu(grads, products) => {
                // The step's bf16 weight packs (as large as the weights) are stale once the
                // weights change: free them before the optimizer allocates the new weights.
                drop(products);
                optimizer.step_host(model, grads.into_host().collect(), lr)
            }
            Self::Burn(mut acc) => optimizer.step(model, &acc.grads(), lr),
        }
    }
}
