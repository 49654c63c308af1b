//! Gradients summed over a step's micro-batches: kaizen's CPU training pass where it applies,
//! burn's autodiff otherwise, or an injected [`TrainBackend`] (the GPU pass).

use std::collections::HashMap;
use std::path::Path;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Gradients, Tensor, TensorData};
use kaizen_model::{
    CpuGrads, CpuScorePass, HostTensor, Llama, ScoreBatch, ScoreOptions, Scores, TrainProducts,
    score_with,
};

use crate::LearnerConfig;
use crate::optimizer::{AdamW, StepReport};
use crate::train_backend::TrainBackend;
use crate::{Collective, Error};

/// Gradients summed over a step's micro-batches, from kaizen's CPU training pass where it
/// applies (host buffers, no tensor additions), from burn's autodiff, or held by an injected
/// backend.
pub(crate) enum Accumulator<'a> {
    /// The CPU pass's gradient buffers and its products (f32, or bf16 with the step's weight
    /// packs: an accumulator lives for one step, while the weights do not change).
    Cpu(CpuGrads, TrainProducts),
    Burn(GradientsAccumulator<Llama>),
    /// The backend holds the weights, gradients and moments; the learner's model is a copy
    /// refreshed after each step.
    Backend(&'a mut (dyn TrainBackend + 'static)),
}

/// What back-propagates a micro-batch's loss into the accumulator: burn's graph, the CPU
/// pass, or the backend (through the log-probs' autodiff leaf).
// One value per micro-batch, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backprop {
    Burn,
    Cpu(CpuScorePass),
    Backend(Tensor<1>),
}

impl<'a> Accumulator<'a> {
    /// The step's accumulator for `model`: on `backend` when one is given (its gradients are
    /// zeroed), else the CPU pass where `config` and the model allow it, else burn's.
    ///
    /// # Errors
    /// The backend's errors.
    pub(crate) fn new(
        model: &Llama,
        config: &LearnerConfig,
        backend: Option<&'a mut (dyn TrainBackend + 'static)>,
    ) -> Result<Self, Error> {
        if let Some(backend) = backend {
            backend.zero_grad()?;
            return Ok(Self::Backend(backend));
        }
        Ok(
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
            },
        )
    }

    /// The scores of `batch` (differentiable), and what back-propagates them.
    pub(crate) fn score(
        &mut self,
        model: &Llama,
        batch: &ScoreBatch,
        options: &ScoreOptions,
    ) -> Result<(Scores, Backprop), Error> {
        match self {
            Self::Backend(backend) => {
                let logprobs = backend.forward(batch, options.temperature)?;
                let n = logprobs.len();
                let leaf = Tensor::<1>::from_data(TensorData::new(logprobs, [n]), &model.device())
                    .require_grad();
                let scores = Scores {
                    logprobs: leaf.clone(),
                    entropy: None,
                    values: None,
                    rows: batch
                        .scored_positions()
                        .into_iter()
                        .map(|(b, _)| b)
                        .collect(),
                };
                Ok((scores, Backprop::Backend(leaf)))
            }
            Self::Cpu(_, products) => {
                match CpuScorePass::forward_with(model, batch, options, products)? {
                    Some((scores, pass)) => Ok((scores, Backprop::Cpu(pass))),
                    None => Ok((score_with(model, batch, options)?, Backprop::Burn)),
                }
            }
            Self::Burn(_) => Ok((score_with(model, batch, options)?, Backprop::Burn)),
        }
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
        let f32_products;
        let products = match self {
            Self::Cpu(_, products) => products,
            // The reference stays on the host: the CPU pass scores it in f32.
            Self::Backend(_) => {
                f32_products = TrainProducts::f32();
                &f32_products
            }
            Self::Burn(_) => return Ok(score_with(model, batch, options)?),
        };
        match CpuScorePass::score_detached(model, batch, options, products)? {
            Some(scores) => Ok(scores),
            None => Ok(score_with(model, batch, options)?),
        }
    }

    /// Back-propagates `loss` (built on the scores `pass` came with) and adds the gradients.
    pub(crate) fn backward(
        &mut self,
        model: &Llama,
        loss: Tensor<1>,
        pass: Backprop,
    ) -> Result<(), Error> {
        let mut grads = loss.backward();
        self.add(model, &mut grads, pass)
    }

    /// Adds `model`'s part of `grads` (the gradients of a loss built on the scores `pass`
    /// came with). Several models' parts can be taken from one loss's gradients (PPO's policy
    /// and separate critic).
    pub(crate) fn add(
        &mut self,
        model: &Llama,
        grads: &mut Gradients,
        pass: Backprop,
    ) -> Result<(), Error> {
        match (self, pass) {
            (Self::Cpu(into, _), Backprop::Cpu(pass)) => pass.backward(grads, into)?,
            (Self::Burn(acc), Backprop::Burn) => {
                acc.accumulate(model, GradientsParams::from_module(grads, model));
            }
            (Self::Backend(backend), Backprop::Backend(leaf)) => {
                let [n] = leaf.dims();
                // A loss that does not reach the log-probs has a zero gradient for them.
                let d_logprobs = match leaf.grad(grads) {
                    Some(d) => d
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| Error::Backend(format!("reading ∂loss/∂logp: {e:?}")))?,
                    None => vec![0.0; n],
                };
                backend.backward(&d_logprobs)?;
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
            Self::Backend(backend) => backend.all_reduce(collective),
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
    /// gradient tensors; a backend steps its own weights with `optimizer`'s hyper-parameters
    /// (`optimizer` only counts the step) and `model` is rebuilt from them.
    ///
    /// # Errors
    /// The backend's errors, or its weights not fitting `model`'s architecture.
    pub(crate) fn step(
        self,
        optimizer: &mut AdamW,
        model: Llama,
        lr: f64,
    ) -> Result<(Llama, StepReport), Error> {
        match self {
            Self::Cpu(grads, products) => {
                // The step's bf16 weight packs (as large as the weights) are stale once the
                // weights change: free them before the optimizer allocates the new weights.
                drop(products);
                Ok(optimizer.step_host(model, grads.into_host().collect(), lr))
            }
            Self::Burn(mut acc) => Ok(optimizer.step(model, &acc.grads(), lr)),
            Self::Backend(backend) => {
                let report = backend.step(optimizer.config(), lr, optimizer.step_count() + 1)?;
                optimizer.count_external_step();
                let mut named: HashMap<String, HostTensor> =
                    backend.weights()?.into_iter().collect();
                let updated = Llama::from_named(
                    model.config(),
                    &mut named,
                    Path::new(backend.name()),
                    &model.device(),
                )?
                .with_cpu_kernels(model.uses_cpu_kernels());
                Ok((updated, report))
            }
        }
    }
}
