//! The job's algorithm: its sections, their checks, and the learner's objective at a step.

use kaizen_algorithms::{AdvantageConfig, CriticKind, GrpoLossConfig};

use super::JobConfig;
use crate::objective::{Algorithm, ObjectiveConfig};

impl JobConfig {
    /// Checks the algorithm's section and that no other algorithm's section is set.
    pub(super) fn validate_algorithm(&self) -> Result<(), String> {
        let algorithm = self.algorithm;
        for (section, set, owner) in [
            ("ppo", self.ppo.is_some(), Algorithm::Ppo),
            ("dpo", self.dpo.is_some(), Algorithm::Dpo),
            ("nft", self.nft.is_some(), Algorithm::Nft),
        ] {
            if set && algorithm != owner {
                return Err(format!(
                    "[{section}] is set but `algorithm` = \"{}\"; add `algorithm = \"{section}\"` \
                     at the top of the file (before any table) or remove [{section}]",
                    algorithm.name()
                ));
            }
        }
        if algorithm != Algorithm::Grpo && self.advantage != AdvantageConfig::default() {
            return Err(unread_advantage(algorithm));
        }
        if matches!(algorithm, Algorithm::Dpo | Algorithm::Nft)
            && self.loss != GrpoLossConfig::default()
        {
            return Err(unread_loss(algorithm));
        }
        if self.score.is_some() && !matches!(algorithm, Algorithm::Grpo | Algorithm::Ppo) {
            return Err(format!(
                "[score] shapes the clipped-surrogate loss of `grpo` or `ppo`, not `{}`",
                algorithm.name()
            ));
        }
        if let Some(ppo) = &self.ppo
            && ppo.critic == CriticKind::Shared
            && ppo.critic_learning_rate.is_some()
        {
            return Err(
                "`ppo.critic_learning_rate` is only used with `ppo.critic = \"separate\"` (a \
                 shared value head trains at `optim.learning_rate`)"
                    .into(),
            );
        }
        let objective = self.objective_at(0);
        objective
            .ppo
            .validate()
            .map_err(|e| format!("[ppo]: {e}"))?;
        objective
            .nft
            .validate()
            .map_err(|e| format!("[nft]: {e}"))?;
        if !(objective.dpo.beta.is_finite() && objective.dpo.beta > 0.0) {
            return Err(format!(
                "`dpo.beta` must be a finite value > 0, got {}",
                objective.dpo.beta
            ));
        }
        Ok(())
    }

    /// The learner's objective at RL step `step`: the algorithm with its sections, the loss
    /// and advantages of the job or of its SCoRe stage.
    pub fn objective_at(&self, step: u64) -> ObjectiveConfig {
        let (loss, advantage) = match &self.score {
            Some(score) => score.objective(score.stage_at(step), &self.loss, &self.advantage),
            None => (self.loss.clone(), self.advantage),
        };
        ObjectiveConfig {
            algorithm: self.algorithm,
            loss,
            advantage,
            ppo: self.ppo.clone().unwrap_or_default(),
            dpo: self.dpo.clone().unwrap_or_default(),
            nft: self.nft.clone().unwrap_or_default(),
        }
    }
}

/// A section the algorithm does not read is an error even with default values (a user writing
/// it expects it to act): `[advantage]` outside `grpo`, `[loss]` with `dpo` and `nft`.
pub(super) fn check_sections(table: &toml::Table, algorithm: Algorithm) -> Result<(), String> {
    if table.contains_key("advantage") && algorithm != Algorithm::Grpo {
        return Err(unread_advantage(algorithm));
    }
    if table.contains_key("loss") && matches!(algorithm, Algorithm::Dpo | Algorithm::Nft) {
        return Err(unread_loss(algorithm));
    }
    Ok(())
}

/// The error for an `[advantage]` section under an algorithm that does not read it.
pub(super) fn unread_advantage(algorithm: Algorithm) -> String {
    let why = match algorithm {
        Algorithm::Ppo => " (PPO's advantages come from GAE, `[ppo]`)",
        _ => "",
    };
    format!(
        "[advantage] shapes GRPO's group-relative advantages; `algorithm` = \"{}\" does not \
         read it{why}: remove it",
        algorithm.name()
    )
}

/// The error for a `[loss]` section under `dpo` or `nft`.
pub(super) fn unread_loss(algorithm: Algorithm) -> String {
    format!(
        "[loss] is the clipped surrogate of `grpo` and `ppo`; `algorithm` = \"{0}\" has its own \
         loss: remove [loss] (see [{0}])",
        algorithm.name()
    )
}
