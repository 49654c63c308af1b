//! One step of the run: the learner update on a step's episodes, weight publishing, and the
//! step's metrics (logging, progress bar, periodic checkpoints and evaluations).

use super::*;

impl Run {
    pub(super) fn log(&self, metrics: &BTreeMap<String, f64>, step: u64) {
        let points: Vec<Metric> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| Metric::new(k.clone(), *v, step))
            .collect();
        self.trackers.log_metrics(&points);
    }

    /// One learner step on the reports of a step's groups; returns its metrics.
    pub(super) fn step_with(
        &mut self,
        mut reports: Vec<EpisodeReport>,
    ) -> Result<StepMetrics, Error> {
        reports.sort_by_key(|r| (r.task.group_id, r.task.sample));
        let mut metrics = episode_metrics(&reports);
        self.write_samples(&reports);
        let mut trajectories: Vec<Trajectory> = Vec::with_capacity(reports.len());
        for r in reports {
            match r.result {
                Ok(t) => trajectories.push(t),
                Err(_) => self.counts.faulted += 1,
            }
        }
        self.counts.trained += trajectories.len() as u64;
        let newest = self.weights.version();
        if let Some(score) = &self.config.score {
            let stage = score.stage_at(self.state.step);
            if self.state.step == score.stage1_steps && stage == ScoreStage::Two {
                tracing::info!(step = self.state.step, "SCoRe stage II starts");
            }
            let objective = self.config.objective_at(self.state.step);
            self.learner
                .set_objective(objective.loss, objective.advantage);
            metrics.insert("score/stage".into(), f64::from(stage.number()));
        }
        let learn_start = Instant::now();
        self.step_followers(&trajectories, newest)?;
        let learner_metrics = self.learner.rl_step(&trajectories, newest)?;
        metrics.extend(learner_metrics);
        metrics.insert("time/learning".into(), learn_start.elapsed().as_secs_f64());
        let version = self.weights.publish(self.learner.policy())?;
        self.state.weights_version = version.0;
        metrics.insert("weights_version".into(), version.0 as f64);
        Ok(metrics)
    }

    pub(super) fn finish_step(&mut self, mut metrics: StepMetrics) -> Result<(), Error> {
        let now = Instant::now();
        if let Some(mark) = self.step_mark {
            self.last_step_seconds = now.duration_since(mark).as_secs_f64();
        }
        self.step_mark = Some(now);
        self.state.step += 1;
        self.state.optimizer_steps = self.learner.steps();
        let step = self.state.step;
        metrics.extend(count_metrics(&self.counts));
        metrics.extend(self.rollouts.metrics());
        self.log(&metrics, step);
        if let Some(bar) = &self.progress {
            let get = |k: &str| metrics.get(k).copied().unwrap_or(f64::NAN);
            bar.set_message(format!(
                "reward {:.3} acc@t1 {:.2} gen {:.0} tok/s learn {:.0} tok/s lag {:.0}",
                get("reward/mean"),
                get("env/correct@t1"),
                get("actor_tokens_per_s"),
                get("learner_tokens_per_s"),
                get("policy_lag_max"),
            ));
            bar.set_position(step);
        } else {
            tracing::info!(
                step,
                reward = metrics.get("reward/mean").copied().unwrap_or(f64::NAN),
                "step done"
            );
        }
        if self.config.checkpoint.every > 0 && step.is_multiple_of(self.config.checkpoint.every) {
            self.save_checkpoint()?;
        }
        if self.config.eval.every > 0
            && step.is_multiple_of(self.config.eval.every)
            && step < self.config.run.max_steps
        {
            let eval = self.evaluate("eval")?;
            self.log(&eval, step);
        }
        Ok(())
    }
}
