//! SCoRe's two-stage schedule (`[score]`): which objective the learner optimises at each step.
//!
//! SCoRe (Kumar et al. 2024, "Training Language Models to Self-Correct via Reinforcement
//! Learning", <https://arxiv.org/abs/2409.12917>, §5) trains two-attempt self-correction in two
//! stages, because plain RL on both attempts collapses into repeating the first answer:
//!
//! ```text
//! stage I   (steps < stage1_steps):
//!     max E[ r(y₂) ] − β₂ · KL(π_θ(·|x) ‖ π_ref(·|x))          on the first attempt only  (Eq. 3)
//!     → pg_turn_weights = [0, 1], kl_turn_weights = [1, 0], beta = stage1_beta (β₂),
//!       no progress bonus
//! stage II  (steps ≥ stage1_steps):
//!     max E[ r(y₁) + r(y₂) + α · (r(y₂) − r(y₁)) ] − β₁ · KL(π_θ ‖ π_ref)  on both    (Eq. 4)
//!     → pg_turn_weights = [1], kl_turn_weights = [1], beta = stage2_beta (β₁),
//!       advantage.progress_bonus = α
//! ```
//!
//! Stage I teaches the second attempt to correct while the strong KL holds the first attempt
//! at the reference (the warm-started policy, or the model as loaded), so the pair of attempts
//! does not collapse into one; stage II then improves both, the bonus rewarding real
//! corrections. The stage is a function of the RL step alone, so a resumed run continues in
//! the stage it was in (the step is checkpointed); the learner logs `score/stage` (1 or 2)
//! every step and the trainer announces the switch.

use kaizen_algorithms::{AdvantageConfig, GrpoLossConfig};
use serde::{Deserialize, Serialize};

/// `[score]`: SCoRe's two stages. With this section the schedule owns `loss.beta`,
/// `loss.kl_turn_weights`, `loss.pg_turn_weights` and `advantage.progress_bonus` (setting them
/// too is an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// RL steps of stage I; stage II runs from this step on.
    pub stage1_steps: u64,
    /// β₂: the KL coefficient on the first attempt in stage I (the paper's strong KL); > 0.
    pub stage1_beta: f32,
    /// β₁: the KL coefficient on both attempts in stage II; ≥ 0.
    pub stage2_beta: f32,
    /// α: stage II's progress bonus on the second attempt, `α · (r₂ − r₁)`; ≥ 0.
    pub progress_bonus: f32,
}

/// A SCoRe stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreStage {
    /// Train the second attempt; hold the first at the reference.
    One,
    /// Train both attempts with the progress bonus.
    Two,
}

impl ScoreStage {
    /// `1` or `2`, as logged in `score/stage`.
    pub fn number(self) -> u8 {
        match self {
            ScoreStage::One => 1,
            ScoreStage::Two => 2,
        }
    }
}

impl ScoreConfig {
    /// The stage of RL step `step` (0-based: the step about to be taken).
    pub fn stage_at(&self, step: u64) -> ScoreStage {
        if step < self.stage1_steps {
            ScoreStage::One
        } else {
            ScoreStage::Two
        }
    }

    /// The loss and advantage configuration of `stage`: `loss` and `advantage` with the fields
    /// the schedule owns replaced (module docs).
    pub fn objective(
        &self,
        stage: ScoreStage,
        loss: &GrpoLossConfig,
        advantage: &AdvantageConfig,
    ) -> (GrpoLossConfig, AdvantageConfig) {
        let (beta, pg, kl, bonus) = match stage {
            ScoreStage::One => (self.stage1_beta, vec![0.0, 1.0], vec![1.0, 0.0], 0.0),
            ScoreStage::Two => (self.stage2_beta, vec![1.0], vec![1.0], self.progress_bonus),
        };
        let loss = GrpoLossConfig {
            beta,
            pg_turn_weights: pg,
            kl_turn_weights: kl,
            ..loss.clone()
        };
        let advantage = AdvantageConfig {
            progress_bonus: bonus,
            ..*advantage
        };
        (loss, advantage)
    }

    /// Checks the ranges and that the job does not also set a field the schedule owns.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(
        &self,
        loss: &GrpoLossConfig,
        advantage: &AdvantageConfig,
    ) -> Result<(), String> {
        if !(self.stage1_beta.is_finite() && self.stage1_beta > 0.0) {
            return Err(format!(
                "`score.stage1_beta` must be > 0 (stage I holds the first attempt with the KL), got {}",
                self.stage1_beta
            ));
        }
        for (key, value) in [
            ("score.stage2_beta", self.stage2_beta),
            ("score.progress_bonus", self.progress_bonus),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("`{key}` must be finite and >= 0, got {value}"));
            }
        }
        let owned = [
            ("loss.beta", loss.beta != 0.0),
            ("loss.kl_turn_weights", !loss.kl_turn_weights.is_empty()),
            ("loss.pg_turn_weights", !loss.pg_turn_weights.is_empty()),
            ("advantage.progress_bonus", advantage.progress_bonus != 0.0),
        ];
        if let Some((key, _)) = owned.iter().find(|(_, set)| *set) {
            return Err(format!(
                "`{key}` is set by the [score] schedule; remove it (see score.stage1_beta, \
                 score.stage2_beta, score.progress_bonus)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score() -> ScoreConfig {
        ScoreConfig {
            stage1_steps: 3,
            stage1_beta: 0.5,
            stage2_beta: 0.05,
            progress_bonus: 2.0,
        }
    }

    #[test]
    fn stages_switch_at_stage1_steps_with_the_papers_objectives() {
        let s = score();
        let stages: Vec<u8> = (0..5).map(|t| s.stage_at(t).number()).collect();
        assert_eq!(stages, vec![1, 1, 1, 2, 2]);
        let base = GrpoLossConfig {
            epsilon_high: Some(0.28),
            ..GrpoLossConfig::default()
        };
        let (loss, adv) = s.objective(ScoreStage::One, &base, &AdvantageConfig::default());
        assert_eq!(
            (
                loss.beta,
                loss.pg_turn_weights.clone(),
                loss.kl_turn_weights.clone()
            ),
            (0.5, vec![0.0, 1.0], vec![1.0, 0.0])
        );
        assert_eq!(adv.progress_bonus, 0.0);
        assert_eq!(loss.epsilon_high, Some(0.28), "other fields are kept");
        let (loss, adv) = s.objective(ScoreStage::Two, &base, &AdvantageConfig::default());
        assert_eq!(
            (loss.beta, loss.pg_turn_weights, loss.kl_turn_weights),
            (0.05, vec![1.0], vec![1.0])
        );
        assert_eq!(adv.progress_bonus, 2.0);
    }

    #[test]
    fn fields_owned_by_the_schedule_and_bad_ranges_are_errors() {
        let s = score();
        let adv = AdvantageConfig::default();
        assert!(s.validate(&GrpoLossConfig::default(), &adv).is_ok());
        let loss = GrpoLossConfig {
            beta: 0.1,
            ..GrpoLossConfig::default()
        };
        let err = s.validate(&loss, &adv).unwrap_err();
        assert!(err.contains("`loss.beta`"), "{err}");
        let bonus = AdvantageConfig {
            progress_bonus: 1.0,
            ..adv
        };
        let err = s.validate(&GrpoLossConfig::default(), &bonus).unwrap_err();
        assert!(err.contains("advantage.progress_bonus"), "{err}");
        let zero = ScoreConfig {
            stage1_beta: 0.0,
            ..score()
        };
        let err = zero.validate(&GrpoLossConfig::default(), &adv).unwrap_err();
        assert!(err.contains("score.stage1_beta"), "{err}");
    }
}
