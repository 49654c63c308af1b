//! Learning-rate schedules (Hugging Face `lr_scheduler_type` names).

use serde::{Deserialize, Serialize};

/// The shape of the learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// `lr` throughout.
    Constant,
    /// Linear decay from `lr` to 0 at the last step.
    Linear,
    /// Half-cosine decay from `lr` to 0 at the last step.
    #[default]
    Cosine,
}

/// Warm-up then decay: for step `s` (0-based) of `total`, with `w` warm-up steps,
///
/// ```text
/// lr(s) = lr · (s + 1) / w                          for s < w
/// lr(s) = lr · f((s − w) / max(1, total − w))       otherwise,
/// ```
///
/// with `f(x) = 1` (constant), `1 − x` (linear) or `½(1 + cos πx)` (cosine) — the curves of
/// `transformers.get_scheduler` (warm-up starts at `lr/w` rather than 0 so that the first step
/// is not wasted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Decay shape.
    pub kind: SchedulerType,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let x = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        let f = match self.kind {
            SchedulerType::Constant => 1.0,
            SchedulerType::Linear => 1.0 - x,
            SchedulerType::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
        };
        self.lr * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_and_linear() {
        let s = Schedule {
            lr: 1.0,
            warmup_steps: 4,
            total_steps: 14,
            kind: SchedulerType::Cosine,
        };
        assert_eq!(s.at(0), 0.25);
        assert_eq!(s.at(3), 1.0);
        assert_eq!(s.at(4), 1.0);
        assert!((s.at(9) - 0.5).abs() < 1e-12);
        assert!(s.at(14).abs() < 1e-12);
        let l = Schedule {
            kind: SchedulerType::Linear,
            ..s
        };
        assert!((l.at(9) - 0.5).abs() < 1e-12);
        let c = Schedule {
            kind: SchedulerType::Constant,
            ..s
        };
        assert_eq!(c.at(13), 1.0);
    }
}
