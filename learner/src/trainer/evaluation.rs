//! Held-out evaluation: of a saved policy (`kaizen eval`) and of the run's current policy.

use super::*;

/// Evaluates `policy` on the held-out variants of `config`'s environments (as `[eval]` says)
/// and returns the metrics (`eval/<env>/correct@t1`, …, `pass@k`).
///
/// # Errors
/// Environment, actor and evaluation errors.
pub fn evaluate_policy(
    config: &JobConfig,
    policy: &Policy,
    registry: &Registry,
    launcher: &dyn Launcher,
) -> Result<BTreeMap<String, f64>, Error> {
    let (slots, targets) = build_envs(config, registry)?;
    let actors = launcher.start(ActorsSpec {
        config,
        envs: &slots,
        tokenizer: &policy.tokenizer,
        template: &policy.template,
        weights: policy.model.clone(),
        version: WeightsVersion(0),
        stop: &AtomicBool::new(false),
    })?;
    let mut stray = Vec::new();
    let mut next = 0;
    let out = evaluate(
        actors.rollouts.as_ref(),
        &targets,
        &config.eval,
        config.run.seed,
        &mut next,
        &mut stray,
    );
    actors.rollouts.shutdown();
    out
}

impl Run {
    /// Evaluates the current policy; metric names start with `prefix` (`"eval"`, or
    /// `"eval_base"` before a warm start).
    pub(super) fn evaluate(&mut self, prefix: &str) -> Result<BTreeMap<String, f64>, Error> {
        let start = Instant::now();
        let mut stray = Vec::new();
        let mut next = 1u64 << 50 | self.state.step << 24;
        let mut out = evaluate(
            self.rollouts.as_ref(),
            &self.targets,
            &self.config.eval,
            self.config.run.seed,
            &mut next,
            &mut stray,
        )?;
        self.counts.reported += stray.len() as u64;
        self.stray.extend(stray);
        self.eval_seconds = start.elapsed().as_secs_f64();
        out.insert("eval/seconds".into(), self.eval_seconds);
        let out: BTreeMap<String, f64> = out
            .into_iter()
            .map(|(k, v)| (k.replacen("eval/", &format!("{prefix}/"), 1), v))
            .collect();
        let summary: Vec<String> = out
            .iter()
            .filter(|(k, _)| k.contains("correct@t") || k.contains("pass@") || k.contains("delta"))
            .map(|(k, v)| format!("{k}={v:.3}"))
            .collect();
        tracing::info!(step = self.state.step, "evaluation: {}", summary.join(" "));
        Ok(out)
    }
}
