//! `algorithm = "grpo"`: group-relative advantages per turn and the clipped surrogate.
//!
//! The advantage of each trained turn comes from comparing its return with the same turn of
//! the other samples of its group (`kaizen_algorithms::segment_advantages`: GRPO, RLOO,
//! Dr. GRPO, REINFORCE++ by `advantage.adv_estimator`), over the segments that are trained (a
//! skipped thread or a stale sample does not shape its siblings' baselines). The loss is
//! `kaizen_algorithms::grpo_loss` (GRPO / DAPO / Dr. GRPO aggregation, GSPO's sequence ratio,
//! KL, entropy, TIS by `[loss]`). Samples whose every advantage is 0 are not scored when no KL
//! or entropy term needs them (`learner.skip_zero_signal`); they still count in the normalisers.

use kaizen_algorithms::{AdvantageConfig, GrpoLossConfig, StepNormalizers, segment_advantages};

use super::{
    LossOut, MetricParts, MicroBatch, Objective, Prepared, StepInput, clipped_surrogate,
    normalizers,
};
use crate::Error;
use crate::learner::StepMetrics;
use crate::samples::trained_mask;

/// GRPO and its family.
pub(crate) struct Grpo {
    loss: GrpoLossConfig,
    advantage: AdvantageConfig,
}

impl Grpo {
    pub(crate) fn new(loss: GrpoLossConfig, advantage: AdvantageConfig) -> Self {
        Self { loss, advantage }
    }
}

impl Objective for Grpo {
    fn uses_reference(&self) -> bool {
        self.loss.beta > 0.0
    }

    fn prepare(&mut self, step: StepInput<'_>) -> Result<Prepared, Error> {
        let trained = trained_mask(step.trajectories, step.samples);
        let advantages = segment_advantages(step.trajectories, Some(&trained), &self.advantage)?;
        for sample in step.samples.iter_mut() {
            sample.assign_advantages(&advantages.advantages[sample.trajectory]);
        }
        let needs_all = self.loss.beta > 0.0 || self.loss.entropy_coef != 0.0;
        let used: Vec<usize> = (0..step.samples.len())
            .filter(|&i| {
                let s = &step.samples[i];
                s.trained_tokens() > 0
                    && (needs_all || !step.learner.skip_zero_signal || !s.zero_signal())
            })
            .collect();
        let mut metrics = StepMetrics::new();
        metrics.insert(
            "zero_signal_groups".into(),
            advantages.zero_signal_groups as f64,
        );
        metrics.insert("groups".into(), advantages.num_groups as f64);
        metrics.insert(
            "zero_signal_samples".into(),
            (step.samples.len() - used.len()) as f64,
        );
        Ok(Prepared {
            normalizers: normalizers(step.samples.iter(), step.learner),
            used,
            metrics,
        })
    }

    fn loss(&self, batch: MicroBatch<'_>, normalizers: &StepNormalizers) -> Result<LossOut, Error> {
        let out = clipped_surrogate(batch, normalizers, &self.loss)?;
        Ok(LossOut {
            loss: out.loss,
            metrics: MetricParts::grpo(&out.metrics),
        })
    }
}
