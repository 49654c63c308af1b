//! Writing a checkpoint of the run: metrics flushed first, then policy, optimizer moments (the
//! backend's, read back, when a `TrainBackend` trains) and the trainer's counters.

use burn::module::Module;

use super::*;

impl Run {
    pub(super) fn save_checkpoint(&mut self) -> Result<(), Error> {
        // Every metric up to this step reaches the disk before the checkpoint does: a run
        // killed after the checkpoint and resumed from it has lost none of them.
        self.trackers.flush()?;
        self.state.episodes = self.counts;
        let (tokenizer, template) = &self.policy_parts;
        let policy = Policy {
            model: self.learner.policy(),
            tokenizer: tokenizer.clone(),
            template: template.clone(),
            name: "checkpoint".into(),
        };
        let critic = self.learner.critic().map(|c| {
            (
                Policy {
                    model: c.model.valid(),
                    tokenizer: tokenizer.clone(),
                    template: template.clone(),
                    name: "critic".into(),
                },
                c.optimizer.state(),
            )
        });
        let dir = checkpoint::save(
            &self.run_dir,
            &policy,
            self.learner.optimizer_state()?,
            critic.as_ref().map(|(p, o)| (p, o)),
            &self.state,
            self.config.checkpoint.keep,
        )?;
        tracing::debug!(checkpoint = %dir.display(), "saved");
        Ok(())
    }
}
