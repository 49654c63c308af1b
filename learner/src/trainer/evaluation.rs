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
) -> Result<BTreeMap<String, f64>, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let (slots, targets) = build_envs(config, registry)?;
    let (publisher, _) = weight_broadcast_at(policy.model.clone(), WeightsVersion(0));
    let pool = ActorPool::spawn(
        runtime.handle(),
        slots,
        Arc::new(policy.tokenizer.clone()),
        policy.template.clone(),
        &publisher,
        actor_config(config, &policy.tokenizer),
    )?;
    let mut stray = Vec::new();
    let mut next = 0;
    let out = evaluate(
        &pool,
        &targets,
        &config.eval,
        config.run.seed,
        &mut next,
        &mut stray,
    );
    runtime.block_on(pool.shutdown());
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
            &self.pool,
            &self.targets,
            &self.config.eval,
            self.config.run.seed,
            &mut next,
            &mut stray,
        )?;
        self.counts.reported += stray.len() as u64;
        self.stray.extend(stray);
        out.insert("eval/seconds".into(), start.elapsed().as_secs_f64());
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
