//! The offline preference stage (`[preference]`): DPO / IPO on JSONL pairs after the warm start
//! and before RL, against the policy as the stage begins. Logged as `preference/*` at the
//! stage's own steps 1 to `preference.steps`.

use super::warm_start::Epochs;
use super::*;
use crate::config::PreferenceConfig;
use crate::preference_data::preference_pairs;

impl Run {
    /// Reads and checks `[preference]`'s pairs (before any training, so a bad file fails at
    /// once); errors name `preference.source`.
    pub(super) fn preference_data(
        &self,
        config: &PreferenceConfig,
    ) -> Result<Vec<(Sample, Sample)>, Error> {
        let (tokenizer, template) = &self.policy_parts;
        preference_pairs(Path::new(&config.source), tokenizer, template).map_err(|e| {
            Error::Config {
                path: PathBuf::from("[preference]"),
                message: format!("`preference.source` = {:?}: {e}", config.source),
            }
        })
    }

    pub(super) fn preference_stage(
        &mut self,
        config: &PreferenceConfig,
        pairs: Vec<(Sample, Sample)>,
    ) -> Result<(), Error> {
        let max_positions = self.learner.policy().config().max_position_embeddings;
        let before = pairs.len();
        let pairs: Vec<(Sample, Sample)> = pairs
            .into_iter()
            .filter(|(c, r)| c.tokens.len() <= max_positions && r.tokens.len() <= max_positions)
            .collect();
        if pairs.is_empty() {
            return Err(Error::Config {
                path: PathBuf::from(&config.source),
                message: format!(
                    "every one of the {before} pairs is longer than the model's context \
                     ({max_positions} tokens)"
                ),
            });
        }
        self.trackers.log_metrics(&[Metric::new(
            "preference/too_long",
            (before - pairs.len()) as f64,
            0,
        )]);
        tracing::info!(
            pairs = pairs.len(),
            steps = config.steps,
            "offline preference stage (DPO)"
        );
        let reference = self.learner.policy();
        self.start_warm_phase(config.learning_rate, config.steps);
        let dpo = config.dpo();
        let mut epochs = Epochs::new(pairs.len(), derive_seed(self.config.run.seed, 0xD90));
        while self.state.preference_steps < config.steps {
            let batch: Vec<(Sample, Sample)> = epochs
                .next_batch(config.batch_size)
                .into_iter()
                .map(|i| pairs[i].clone())
                .collect();
            let metrics = self.learner.preference_step(&batch, &reference, &dpo)?;
            self.state.preference_steps += 1;
            let step = self.state.preference_steps;
            let points: Vec<Metric> = metrics
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| {
                    let name = k.strip_prefix("dpo/").unwrap_or(k);
                    Metric::new(format!("preference/{name}"), *v, step)
                })
                .collect();
            self.trackers.log_metrics(&points);
            if step.is_multiple_of(10) || step == config.steps {
                tracing::info!(
                    step,
                    loss = metrics.get("loss").copied().unwrap_or(f64::NAN),
                    accuracy = metrics
                        .get("dpo/rewards_accuracies")
                        .copied()
                        .unwrap_or(f64::NAN),
                    "preference"
                );
            }
        }
        self.finish_warm_phase()
    }
}
