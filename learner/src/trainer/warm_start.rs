//! The supervised warm start before RL (`[sft]`): demonstrations or chat JSONL, then the KL
//! reference is frozen and RL gets a fresh optimizer.

use super::*;

impl Run {
    pub(super) fn warm_start(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        slots: &[EnvSlot],
        sft: &crate::config::SftConfig,
    ) -> Result<(), Error> {
        if sft.source == "self" {
            return self.self_generated_warm_start(sft);
        }
        let (tokenizer, template) = &self.policy_parts;
        let train_slots = &slots[..self.config.envs.len()];
        let samples: Vec<Sample> = if sft.source == "demonstrations" {
            let count = (sft.steps as usize * sft.batch_size).clamp(1, 20_000);
            // Demonstration seeds sit far above training seeds.
            demonstration_samples(runtime, train_slots, count, 1 << 36, tokenizer, template)?
        } else {
            chat_samples(Path::new(&sft.source), tokenizer, template)?
        };
        let before = samples.len();
        let samples = self.fitting(samples);
        if samples.is_empty() {
            let max_positions = self.learner.policy().config().max_position_embeddings;
            return Err(Error::Config {
                path: "[sft]".into(),
                message: format!(
                    "every one of the {before} warm-start sequences is longer than \
                     `sampling.max_prompt_length` ({}) or the model's context \
                     ({max_positions} tokens)",
                    self.config.sampling.max_prompt_length
                ),
            });
        }
        tracing::info!(
            sequences = samples.len(),
            steps = sft.steps,
            "supervised warm start"
        );
        self.start_warm_phase(sft.learning_rate, sft.steps);
        self.sft_until(&samples, sft.batch_size, sft.steps, 0)?;
        self.finish_warm_phase()
    }

    /// `samples` without the turns the actors would never play (a prompt over
    /// `sampling.max_prompt_length`) or the model cannot hold (over `max_position_embeddings`):
    /// those are left out, and counted (`sft/too_long`).
    pub(super) fn fitting(&mut self, samples: Vec<Sample>) -> Vec<Sample> {
        let max_positions = self.learner.policy().config().max_position_embeddings;
        let max_prompt = self.config.sampling.max_prompt_length;
        let before = samples.len();
        let samples: Vec<Sample> = samples
            .into_iter()
            .filter(|s| {
                let prompt = s
                    .loss_mask
                    .iter()
                    .position(|&m| m)
                    .unwrap_or(s.tokens.len());
                prompt <= max_prompt && s.tokens.len() <= max_positions
            })
            .collect();
        let too_long = before - samples.len();
        if too_long > 0 {
            tracing::warn!(
                too_long,
                max_prompt,
                max_positions,
                "warm-start sequences left out: prompt or whole sequence too long"
            );
        }
        self.trackers.log_metrics(&[Metric::new(
            "sft/too_long",
            too_long as f64,
            self.state.sft_steps,
        )]);
        samples
    }

    /// SFT steps on batches of `samples` (epochs reshuffled, seeded by the run seed and
    /// `stream`) until `state.sft_steps` reaches `until`.
    pub(super) fn sft_until(
        &mut self,
        samples: &[Sample],
        batch_size: usize,
        until: u64,
        stream: u64,
    ) -> Result<(), Error> {
        let seed = derive_seed(self.config.run.seed, 0x5F7 ^ stream << 16);
        let mut epochs = Epochs::new(samples.len(), seed);
        while self.state.sft_steps < until {
            let batch: Vec<Sample> = epochs
                .next_batch(batch_size)
                .into_iter()
                .map(|i| samples[i].clone())
                .collect();
            let metrics = self.learner.sft_step(&batch)?;
            self.state.sft_steps += 1;
            let points: Vec<Metric> = metrics
                .iter()
                .map(|(k, v)| Metric::new(k.clone(), *v, self.state.sft_steps))
                .collect();
            self.trackers.log_metrics(&points);
            if self.state.sft_steps.is_multiple_of(10) || self.state.sft_steps == until {
                tracing::info!(
                    step = self.state.sft_steps,
                    loss = metrics.get("sft/loss").copied().unwrap_or(f64::NAN),
                    "sft"
                );
            }
        }
        Ok(())
    }

    /// Before a warm-start phase (`[sft]`, `[preference]`) of `steps` steps: a fresh AdamW and
    /// a cosine schedule peaking at `lr` after `max(1, steps / 20)` warm-up steps.
    pub(super) fn start_warm_phase(&mut self, lr: f64, steps: u64) {
        let schedule = Schedule {
            lr,
            warmup_steps: (steps / 20).max(1),
            total_steps: steps,
            kind: SchedulerType::Cosine,
        };
        self.learner
            .reset_optimizer(AdamW::new(self.config.optim.adamw()), schedule);
    }

    /// After a warm-start phase (`[sft]`, `[preference]`): the reference becomes the policy RL
    /// starts from (saved so a resumed run restores it), RL gets a fresh optimizer and the
    /// actors the new weights.
    pub(super) fn finish_warm_phase(&mut self) -> Result<(), Error> {
        let (tokenizer, template) = &self.policy_parts;
        // The KL reference is the warm-started policy, saved so a resumed run restores it.
        if uses_reference(&self.config, self.state.step) {
            self.learner.freeze_reference();
            let policy = Policy {
                model: self.learner.policy(),
                tokenizer: tokenizer.clone(),
                template: template.clone(),
                name: "reference".into(),
            };
            let dir = self.run_dir.join(REFERENCE_DIR);
            policy.save_dir(&dir)?;
        }
        // A separate PPO critic starts from the warm-started policy.
        if self.config.objective_at(self.state.step).needs_critic() {
            let critic = new_critic(&self.config, self.learner.model())?;
            self.learner.set_critic(critic);
        }
        // RL starts with a fresh optimizer and its own schedule.
        self.learner.reset_optimizer(
            AdamW::new(self.config.optim.adamw()),
            rl_schedule(&self.config),
        );
        let version = self.weights.publish(self.learner.policy())?;
        self.state.weights_version = version.0;
        Ok(())
    }
}

/// Batches of indices drawn without replacement, the order reshuffled (Fisher-Yates, seeded)
/// at the start of every epoch; a batch may span two epochs.
pub(super) struct Epochs {
    rng: ChaCha8Rng,
    order: Vec<usize>,
    cursor: usize,
}

impl Epochs {
    /// Epochs over `0..len` from `seed`.
    pub(super) fn new(len: usize, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            order: (0..len).collect(),
            cursor: len,
        }
    }

    /// The next `size` indices (none when `len` is 0).
    pub(super) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size && !self.order.is_empty() {
            if self.cursor == self.order.len() {
                for i in (1..self.order.len()).rev() {
                    let j = self.rng.random_range(0..=i);
                    self.order.swap(i, j);
                }
                self.cursor = 0;
            }
            batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        batch
    }
}
