//! The training loop: actors play, the learner steps, weights are published, metrics and
//! checkpoints are written. `kaizen train` calls [`train`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use kaizen_actors::{
    ActorConfig, ActorPool, EngineConfig, EnvSlot, EpisodeReport, EpisodeTask, WeightPublisher,
    derive_seed, weight_broadcast_at,
};
use kaizen_algorithms::{AdvantageConfig, GrpoLossConfig};
use kaizen_core::{SamplingOverrides, Trajectory, WeightsVersion};
use kaizen_envs::{EpisodeLimits, Registry};
use kaizen_model::{ChatTemplate, Llama, LlamaConfig, Policy};
use kaizen_tracking::{
    LocalStore, LocalTracker, Metric, MlflowTracker, Params, RunSpec, RunStatus, Tracker, Trackers,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Error;
use crate::checkpoint::{self, TrainerState};
use crate::config::{JobConfig, Mode};
use crate::eval::{EVAL_GROUP_BIT, EvalTarget, evaluate};
use crate::learner::{Learner, StepMetrics};
use crate::optimizer::AdamW;
use crate::samples::Sample;
use crate::schedule::{Schedule, SchedulerType};
use crate::score_stages::ScoreStage;
use crate::sft_data::{chat_samples, demonstration_samples};

/// How `train` runs, besides the job config.
pub struct TrainOptions {
    /// The device to train on (its autodiff form is used for the learner).
    pub device: Device,
    /// Set to stop cleanly after the current step (Ctrl-C): a checkpoint is saved and the run
    /// is marked `KILLED`.
    pub stop: Arc<AtomicBool>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Environments by name (built-ins plus any the caller registered).
    pub registry: Registry,
    /// Continue this run directory from its newest checkpoint instead of starting a new run.
    pub resume: Option<PathBuf>,
}

/// Counts of episodes, so nothing is lost silently: at the end of a run `submitted = reported`
/// and `reported = trained + faulted + unused` (logged as `episodes/*`). `trained` counts the
/// trajectories handed to the learner; the learner may still drop sequences of one that lag
/// more than `max_policy_lag` (async mode), counted per step as `dropped_stale`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeCounts {
    /// Training episodes queued on the actors.
    pub submitted: u64,
    /// Training episodes that came back (trajectory or fault).
    pub reported: u64,
    /// Trajectories handed to the learner.
    pub trained: u64,
    /// Episodes ended by a fault (environment error, panic, timeout, policy error).
    pub faulted: u64,
    /// Trajectories left unused at the end of the run (async mode) or replaced by dynamic
    /// sampling.
    pub unused: u64,
}

/// Where a run keeps its KL reference policy when it differs from the model as loaded (after an
/// SFT warm start with `loss.beta > 0`).
const REFERENCE_DIR: &str = "reference";

/// The `episodes/*` metrics of `counts`.
fn count_metrics(counts: &EpisodeCounts) -> BTreeMap<String, f64> {
    [
        ("episodes/submitted", counts.submitted),
        ("episodes/reported", counts.reported),
        ("episodes/trained", counts.trained),
        ("episodes/faulted", counts.faulted),
        ("episodes/unused", counts.unused),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v as f64))
    .collect()
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// RL steps completed.
    pub steps: u64,
    /// Evaluation of the model as loaded, before an SFT warm start (`eval_base/...`), if run.
    pub eval_base: Option<BTreeMap<String, f64>>,
    /// Evaluation before RL (after the warm start, if any), if run.
    pub eval_start: Option<BTreeMap<String, f64>>,
    /// Evaluation after training, if run.
    pub eval_end: Option<BTreeMap<String, f64>>,
    /// Episode accounting.
    pub episodes: EpisodeCounts,
    /// How the run ended.
    pub status: RunStatus,
}

/// Loads the policy a job trains, on `device`.
///
/// # Errors
/// Model loading errors.
pub fn load_policy(config: &JobConfig, device: &Device) -> Result<Policy, Error> {
    let mut policy = if config.model.source == "tiny" {
        let tokenizer = kaizen_model::Tokenizer::byte_level();
        let llama_config = config
            .model
            .tiny
            .clone()
            .unwrap_or_else(|| LlamaConfig::tiny(tokenizer.vocab_size()));
        Policy {
            model: Llama::init(&llama_config, device, config.model.init_seed)?,
            tokenizer,
            template: ChatTemplate::chatml(),
            name: "tiny".into(),
        }
    } else {
        Policy::load(&config.model.source, device)?
    };
    match config.model.chat_template.as_str() {
        "model" => {}
        "plain" => policy.template = ChatTemplate::plain(&policy.tokenizer),
        "chatml" => policy.template = ChatTemplate::chatml(),
        other => {
            return Err(Error::Config {
                path: "[model]".into(),
                message: format!(
                    "`chat_template` = {other:?}: expected \"model\", \"chatml\" or \"plain\""
                ),
            });
        }
    }
    Ok(policy)
}

/// Builds the actors' environment list: the training environments, then their evaluation
/// variants. Returns the slots and the evaluation targets.
///
/// # Errors
/// Environment construction errors (unknown name, bad parameters).
pub fn build_envs(
    config: &JobConfig,
    registry: &Registry,
) -> Result<(Vec<EnvSlot>, Vec<EvalTarget>), Error> {
    let mut slots = Vec::new();
    for e in &config.envs {
        slots.push(EnvSlot {
            name: e.name.clone(),
            factory: registry.build(&e.name, &e.params)?,
        });
    }
    let mut targets = Vec::new();
    for e in &config.envs {
        let params = e.eval_params.as_ref().unwrap_or(&e.params);
        targets.push(EvalTarget {
            slot: slots.len(),
            name: e.name.clone(),
            held_out: e.eval_params.is_some(),
        });
        slots.push(EnvSlot {
            name: e.name.clone(),
            factory: registry.build(&e.name, params)?,
        });
    }
    Ok((slots, targets))
}

struct Run {
    config: JobConfig,
    run_dir: PathBuf,
    trackers: Trackers,
    pool: ActorPool,
    publisher: WeightPublisher,
    learner: Learner,
    policy_parts: (kaizen_model::Tokenizer, ChatTemplate),
    state: TrainerState,
    counts: EpisodeCounts,
    targets: Vec<EvalTarget>,
    stray: Vec<EpisodeReport>,
    samples_file: std::fs::File,
    progress: Option<ProgressBar>,
    eval_base: Option<BTreeMap<String, f64>>,
    eval_start: Option<BTreeMap<String, f64>>,
    eval_end: Option<BTreeMap<String, f64>>,
    /// When `run.time_limit_minutes` runs out.
    deadline: Option<Instant>,
}

/// Runs a training job to the end (or until `options.stop` is set) and returns its summary.
///
/// # Errors
/// Configuration, model, environment, tracking and checkpoint errors. Failures of single
/// episodes are not errors: they are counted (`faults`) and the run goes on.
pub fn train(
    config: JobConfig,
    resolved: toml::Table,
    options: TrainOptions,
) -> Result<TrainSummary, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kaizen-actor")
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let train_device = options.device.clone().autodiff();
    let (slots, targets) = build_envs(&config, &options.registry)?;

    // A new run, or the newest checkpoint of an old one.
    let (policy, state, optimizer_state, run_dir, trackers) = match &options.resume {
        None => {
            let policy = load_policy(&config, &train_device)?;
            let name = config
                .run
                .name
                .clone()
                .unwrap_or_else(|| config.run.experiment.clone());
            let mut spec = RunSpec::new(config.run.experiment.clone(), name);
            spec.tags.insert(
                "kaizen.mode".into(),
                format!("{:?}", config.run.mode).to_lowercase(),
            );
            spec.tags
                .insert("kaizen.model".into(), config.model.source.clone());
            let trackers = config.tracking.start(&spec)?;
            let run_dir = trackers
                .run_dir()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| config.tracking.runs_dir.clone());
            let state = TrainerState {
                step: 0,
                sft_steps: 0,
                optimizer_steps: 0,
                weights_version: 0,
                next_seed: 0,
                next_group: 0,
                next_task: 0,
                episodes: EpisodeCounts::default(),
            };
            (policy, state, None, run_dir, trackers)
        }
        Some(run_dir) => {
            let dir = checkpoint::latest(run_dir)?;
            let (state, opt_step, moments) = checkpoint::load_state(&dir)?;
            let mut policy = Policy::load_dir(&dir.join("policy"), &train_device)?;
            let base = load_policy_template(&config, &policy)?;
            policy.template = base;
            let mut trackers = Trackers::new()
                .with(LocalTracker::resume(run_dir)?)
                .with_run_dir(run_dir);
            if let Some(mlflow) = config.tracking.mlflow()? {
                let name = config
                    .run
                    .name
                    .clone()
                    .unwrap_or_else(|| config.run.experiment.clone());
                let spec = RunSpec::new(config.run.experiment.clone(), name);
                trackers = trackers
                    .with(MlflowTracker::start(&mlflow, &spec, run_dir)?)
                    .with_secrets(mlflow.secrets());
            }
            tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
            (
                policy,
                state,
                Some((opt_step, moments)),
                run_dir.clone(),
                trackers,
            )
        }
    };
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    let config_path = run_dir.join("config.toml");
    if options.resume.is_none() {
        let text = toml::to_string(&resolved).map_err(|e| Error::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&config_path, text).map_err(|e| Error::io(&config_path, e))?;
        trackers.log_params(&Params::flatten_toml(&toml::Value::Table(resolved.clone())));
        trackers.log_artifact(&config_path, None);
    }

    let schedule = rl_schedule(&config);
    let optimizer = match optimizer_state {
        Some((step, moments)) => AdamW::restore(
            config.optim.adamw(),
            step,
            moments,
            &train_device.clone().inner(),
        )
        .map_err(|message| Error::Checkpoint {
            path: run_dir.clone(),
            message,
        })?,
        None => AdamW::new(config.optim.adamw()),
    };
    // A resumed run with a KL penalty restores the reference it started RL with: the
    // warm-started policy saved under `reference/`, else the model as the config loads it.
    let resumed_reference = match &options.resume {
        Some(run_dir) if uses_reference(&config) => {
            let saved = run_dir.join(REFERENCE_DIR);
            Some(if saved.is_dir() {
                Policy::load_dir(&saved, &train_device)?.model
            } else {
                load_policy(&config, &train_device)?.model
            })
        }
        _ => None,
    };
    let Policy {
        model,
        tokenizer,
        template,
        ..
    } = policy;
    let mut learner = Learner::new(
        model,
        optimizer,
        schedule,
        config.learner.clone(),
        objective_at(&config, state.step).0,
        objective_at(&config, state.step).1,
    );
    if let Some(reference) = resumed_reference {
        learner.set_reference(reference);
    }
    let (publisher, _) =
        weight_broadcast_at(learner.policy(), WeightsVersion(state.weights_version));
    let actor_config = actor_config(&config, &tokenizer);
    let pool = ActorPool::spawn(
        runtime.handle(),
        slots.clone(),
        Arc::new(tokenizer.clone()),
        template.clone(),
        &publisher,
        actor_config,
    )?;
    let samples_path = run_dir.join("samples.jsonl");
    let samples_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&samples_path)
        .map_err(|e| Error::io(&samples_path, e))?;
    let progress = options.progress.then(|| {
        let bar = ProgressBar::new(config.run.max_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(state.step);
        bar
    });
    let mut run = Run {
        config,
        run_dir,
        trackers,
        pool,
        publisher,
        learner,
        policy_parts: (tokenizer, template),
        counts: state.episodes,
        state,
        targets,
        stray: Vec::new(),
        samples_file,
        progress,
        eval_base: None,
        eval_start: None,
        eval_end: None,
        deadline: None,
    };

    let outcome = run.execute(&runtime, &slots, &options);
    let status = match &outcome {
        Ok(killed) if *killed => RunStatus::Killed,
        Ok(_) => RunStatus::Finished,
        Err(_) => RunStatus::Failed,
    };
    if let Some(bar) = &run.progress {
        bar.finish_and_clear();
    }
    let (eval_base, eval_start, eval_end) = match &outcome {
        Ok(_) => (
            run.eval_base.take(),
            run.eval_start.take(),
            run.eval_end.take(),
        ),
        Err(_) => (None, None, None),
    };
    // Episodes still running or unread when the run ends come back here: they are reported and
    // unused, so the final accounting (logged as `episodes/*`) closes:
    // submitted = reported = trained + faulted + unused.
    let pool = run.pool;
    let leftovers = runtime.block_on(pool.shutdown());
    run.counts.reported += leftovers.len() as u64;
    run.counts.unused += leftovers.len() as u64;
    let final_counts: Vec<Metric> = count_metrics(&run.counts)
        .into_iter()
        .map(|(k, v)| Metric::new(k, v, run.state.step))
        .collect();
    run.trackers.log_metrics(&final_counts);
    // The end-of-run plot, logged as an artifact.
    if let Ok(stored) = LocalStore::new(&run.config.tracking.runs_dir).find(
        run.run_dir
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
            .as_str(),
    ) && let Ok(plot_run) = kaizen_tracking::plot::PlotRun::from_stored(&stored)
    {
        let out = run.run_dir.join("report.png");
        let options = kaizen_tracking::plot::ReportOptions {
            metrics: report_metrics(&plot_run),
            ..Default::default()
        };
        match kaizen_tracking::plot::render_report(&[plot_run], &options, &out) {
            Ok(()) => run.trackers.log_artifact(&out, None),
            Err(e) => tracing::warn!(error = %e, "could not draw the run report"),
        }
    }
    let finished = run.trackers.finish(status);
    let summary = TrainSummary {
        run_dir: run.run_dir.clone(),
        steps: run.state.step,
        eval_base,
        eval_start,
        eval_end,
        episodes: run.counts,
        status,
    };
    outcome?;
    if let Err(e) = finished {
        tracing::warn!(error = %e, "tracking did not finish cleanly");
    }
    Ok(summary)
}

/// The loss and advantage configuration for RL step `step`: the job's, or its SCoRe stage's.
fn objective_at(config: &JobConfig, step: u64) -> (GrpoLossConfig, AdvantageConfig) {
    match &config.score {
        Some(score) => score.objective(score.stage_at(step), &config.loss, &config.advantage),
        None => (config.loss.clone(), config.advantage),
    }
}

/// Whether the job keeps a frozen KL reference (a KL penalty now or in a later SCoRe stage).
fn uses_reference(config: &JobConfig) -> bool {
    config.loss.beta > 0.0 || config.score.is_some()
}

/// The actors' configuration of a job.
fn actor_config(config: &JobConfig, tokenizer: &kaizen_model::Tokenizer) -> ActorConfig {
    ActorConfig {
        actors: config.actors.count,
        episodes_in_flight: config.actors.episodes_in_flight,
        sampling: config.sampling.clone(),
        limits: EpisodeLimits {
            env_call_timeout: Duration::from_secs_f64(config.actors.env_timeout_s),
            respond_timeout: None,
            max_turns: config.actors.max_turns,
        },
        engine: EngineConfig::new(
            tokenizer,
            match config.run.mode {
                Mode::Sync => None,
                Mode::Async => Some(Duration::from_millis(20)),
            },
        ),
        results_capacity: (config.grpo.prompts_per_step * config.grpo.num_generations).max(16),
    }
}

/// `spec` as a model source: a run directory (`runs/<experiment>/<run-id>`, or one of its
/// checkpoints) stands for the policy of its newest checkpoint; anything else is returned as is
/// (`tiny`, `smollm2`, a .gguf file, a model directory).
///
/// # Errors
/// [`Error::Checkpoint`] for a run directory without checkpoints.
pub fn resolve_model_source(spec: &str) -> Result<String, Error> {
    let path = Path::new(spec);
    if path.join("policy").join("config.json").is_file() {
        return Ok(path.join("policy").display().to_string());
    }
    if checkpoint::checkpoints_dir(path).is_dir() {
        return Ok(checkpoint::latest(path)?
            .join("policy")
            .display()
            .to_string());
    }
    Ok(spec.to_string())
}

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

fn load_policy_template(config: &JobConfig, policy: &Policy) -> Result<ChatTemplate, Error> {
    Ok(match config.model.chat_template.as_str() {
        "plain" => ChatTemplate::plain(&policy.tokenizer),
        "chatml" => ChatTemplate::chatml(),
        _ => policy.template.clone(),
    })
}

fn rl_schedule(config: &JobConfig) -> Schedule {
    Schedule {
        lr: config.optim.learning_rate,
        warmup_steps: config.optim.warmup_steps,
        total_steps: config.run.max_steps,
        kind: config.optim.lr_scheduler_type,
    }
}

/// The panels of the end-of-run plot: the curves people look at first, when present.
fn report_metrics(run: &kaizen_tracking::plot::PlotRun) -> Vec<String> {
    let wanted = [
        "reward/mean",
        "env/correct@t1",
        "env/correct@t2",
        "delta_t1_t2",
        "entropy",
        "kl",
        "grad_norm",
        "actor_tokens_per_s",
    ];
    let mut out: Vec<String> = wanted
        .iter()
        .filter(|m| run.history.series(m).is_some())
        .map(|m| m.to_string())
        .collect();
    let mut evals: Vec<String> = run
        .history
        .keys()
        .filter(|k| {
            k.starts_with("eval/")
                && (k.contains("correct@t") || k.contains("pass@") || k.contains("delta"))
        })
        .map(|k| k.to_string())
        .collect();
    evals.sort();
    out.extend(evals.into_iter().take(4));
    out
}

impl Run {
    /// Returns whether the run was stopped early.
    fn execute(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        slots: &[EnvSlot],
        options: &TrainOptions,
    ) -> Result<bool, Error> {
        let limit = self.config.run.time_limit_minutes;
        self.deadline =
            (limit > 0.0).then(|| Instant::now() + Duration::from_secs_f64(limit * 60.0));
        if let Some(sft) = self.config.sft.clone()
            && self.state.step == 0
            && self.state.sft_steps < sft.steps
        {
            if self.state.sft_steps == 0 && self.config.eval.at_start {
                // The model as given, before the warm start: `eval_base/...` at step 0 (the
                // `eval/...` of step 0 is the policy RL starts from).
                let base = self.evaluate("eval_base")?;
                self.log(&base, 0);
                self.eval_base = Some(base);
            }
            self.warm_start(runtime, slots, &sft)?;
        }
        if self.state.step == 0 && self.config.eval.at_start {
            let eval = self.evaluate("eval")?;
            self.log(&eval, 0);
            self.eval_start = Some(eval);
        }
        let killed = match self.config.run.mode {
            Mode::Sync => self.sync_loop(&options.stop)?,
            Mode::Async => self.async_loop(&options.stop)?,
        };
        if !killed && self.state.step < self.config.run.max_steps {
            tracing::warn!(
                step = self.state.step,
                max_steps = self.config.run.max_steps,
                minutes = limit,
                "time limit reached: training stops early"
            );
            self.log(
                &BTreeMap::from([("run/time_limit_reached".to_string(), 1.0)]),
                self.state.step,
            );
        }
        if !killed && self.config.eval.at_end {
            let eval = self.evaluate("eval")?;
            self.log(&eval, self.state.step);
            self.eval_end = Some(eval);
        }
        if !killed || self.state.step > 0 {
            self.save_checkpoint()?;
        }
        Ok(killed)
    }
}

/// Per-episode sampling seed: a function of the run seed and the task id only, so a resumed run
/// samples exactly what the uninterrupted one would have.
fn sampling_seed(run_seed: u64, task: u64) -> u64 {
    derive_seed(run_seed ^ 0x5A3F_1E2D, task)
}

impl Run {
    fn log(&self, metrics: &BTreeMap<String, f64>, step: u64) {
        let points: Vec<Metric> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| Metric::new(k.clone(), *v, step))
            .collect();
        self.trackers.log_metrics(&points);
    }

    /// The next `count` groups: environment by weight (seeded by the group id), environment seed
    /// from the data position, `num_generations` episodes each.
    fn next_groups(&mut self, count: usize) -> Vec<EpisodeTask> {
        let g = self.config.grpo.num_generations;
        let weights: Vec<f64> = self.config.envs.iter().map(|e| e.weight).collect();
        let total: f64 = weights.iter().sum();
        let mut tasks = Vec::with_capacity(count * g);
        for _ in 0..count {
            let group = self.state.next_group;
            self.state.next_group += 1;
            let env_seed = self.state.next_seed;
            self.state.next_seed += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.config.run.seed, group));
            let mut pick = rng.random::<f64>() * total;
            let mut env = 0;
            for (i, w) in weights.iter().enumerate() {
                env = i;
                if pick < *w {
                    break;
                }
                pick -= w;
            }
            for sample in 0..g {
                let id = self.state.next_task;
                self.state.next_task += 1;
                tasks.push(EpisodeTask {
                    id,
                    group_id: group,
                    env,
                    seed: env_seed,
                    sample: sample as u32,
                    sampling_seed: sampling_seed(self.config.run.seed, id),
                    sampling: SamplingOverrides::default(),
                });
            }
        }
        self.counts.submitted += tasks.len() as u64;
        tasks
    }

    /// Receives a training report (evaluation reports never arrive outside `evaluate`).
    fn recv(&mut self) -> Result<EpisodeReport, Error> {
        if let Some(r) = self.stray.pop() {
            return Ok(r);
        }
        let r = self
            .pool
            .results()
            .recv()
            .map_err(|e| Error::ActorsStopped(e.to_string()))?;
        self.counts.reported += 1;
        Ok(r)
    }

    /// Whether RL goes on: steps left and time left.
    fn more_steps(&self) -> bool {
        self.state.step < self.config.run.max_steps
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn sync_loop(&mut self, stop: &AtomicBool) -> Result<bool, Error> {
        let b = self.config.grpo.prompts_per_step;
        let g = self.config.grpo.num_generations;
        while self.more_steps() {
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let started = Instant::now();
            let tokens_before = self.pool.generated_tokens();
            let mut groups: BTreeMap<u64, Vec<EpisodeReport>> = BTreeMap::new();
            let tasks = self.next_groups(b);
            self.pool.submit_all(tasks)?;
            for _ in 0..b * g {
                let r = self.recv()?;
                groups.entry(r.task.group_id).or_default().push(r);
            }
            // DAPO dynamic sampling: replace groups without signal.
            let mut rounds = 0;
            while self.config.grpo.dynamic_sampling && rounds < self.config.grpo.max_resample_rounds
            {
                let flat: Vec<u64> = groups
                    .iter()
                    .filter(|(_, rs)| zero_signal(rs))
                    .map(|(id, _)| *id)
                    .collect();
                if flat.is_empty() {
                    break;
                }
                rounds += 1;
                let tasks = self.next_groups(flat.len());
                self.pool.submit_all(tasks)?;
                let mut fresh: BTreeMap<u64, Vec<EpisodeReport>> = BTreeMap::new();
                for _ in 0..flat.len() * g {
                    let r = self.recv()?;
                    fresh.entry(r.task.group_id).or_default().push(r);
                }
                let mut replaced = 0;
                for (id, rs) in fresh {
                    if !zero_signal(&rs)
                        && let Some(old) = flat.get(replaced)
                    {
                        if let Some(dropped) = groups.remove(old) {
                            self.counts.unused += dropped.len() as u64;
                        }
                        groups.insert(id, rs);
                        replaced += 1;
                    } else {
                        self.counts.unused += rs.len() as u64;
                    }
                }
            }
            let generation = started.elapsed().as_secs_f64();
            let generated = self.pool.generated_tokens() - tokens_before;
            let reports: Vec<EpisodeReport> = groups.into_values().flatten().collect();
            let mut metrics = self.step_with(reports)?;
            metrics.insert("time/generation".into(), generation);
            metrics.insert(
                "actor_tokens_per_s".into(),
                generated as f64 / generation.max(1e-9),
            );
            metrics.insert("time/waiting".into(), 0.0);
            self.finish_step(metrics)?;
        }
        Ok(false)
    }

    fn async_loop(&mut self, stop: &AtomicBool) -> Result<bool, Error> {
        let b = self.config.grpo.prompts_per_step;
        let g = self.config.grpo.num_generations;
        let in_flight = b * (self.config.learner.max_policy_lag as usize + 1);
        let tasks = self.next_groups(in_flight);
        self.pool.submit_all(tasks)?;
        let mut pending: HashMap<u64, Vec<EpisodeReport>> = HashMap::new();
        let mut ready: Vec<Vec<EpisodeReport>> = Vec::new();
        let mut tokens_mark = self.pool.generated_tokens();
        let mut mark = Instant::now();
        while self.more_steps() {
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let wait_start = Instant::now();
            while ready.len() < b {
                let r = self.recv()?;
                let id = r.task.group_id;
                let group = pending.entry(id).or_default();
                group.push(r);
                if group.len() == g
                    && let Some(done) = pending.remove(&id)
                {
                    ready.push(done);
                }
            }
            let waiting = wait_start.elapsed().as_secs_f64();
            let take: Vec<Vec<EpisodeReport>> = ready.drain(..b).collect();
            let elapsed = mark.elapsed().as_secs_f64();
            let generated = self.pool.generated_tokens() - tokens_mark;
            tokens_mark = self.pool.generated_tokens();
            mark = Instant::now();
            let mut reports: Vec<EpisodeReport> = take.into_iter().flatten().collect();
            reports.sort_by_key(|r| (r.task.group_id, r.task.sample));
            let mut metrics = self.step_with(reports)?;
            metrics.insert("time/waiting".into(), waiting);
            metrics.insert(
                "actor_tokens_per_s".into(),
                generated as f64 / elapsed.max(1e-9),
            );
            metrics.insert("queue_depth".into(), self.pool.results().len() as f64);
            // Keep the actors busy: replace the groups just consumed.
            let tasks = self.next_groups(b);
            self.pool.submit_all(tasks)?;
            self.finish_step(metrics)?;
        }
        self.counts.unused += pending.values().map(|v| v.len() as u64).sum::<u64>()
            + ready.iter().map(|v| v.len() as u64).sum::<u64>();
        Ok(false)
    }

    /// One learner step on the reports of a step's groups; returns its metrics.
    fn step_with(&mut self, mut reports: Vec<EpisodeReport>) -> Result<StepMetrics, Error> {
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
        let newest = self.publisher.version();
        if let Some(score) = &self.config.score {
            let stage = score.stage_at(self.state.step);
            if self.state.step == score.stage1_steps && stage == ScoreStage::Two {
                tracing::info!(step = self.state.step, "SCoRe stage II starts");
            }
            let (loss, advantage) = objective_at(&self.config, self.state.step);
            self.learner.set_objective(loss, advantage);
            metrics.insert("score/stage".into(), f64::from(stage.number()));
        }
        let learn_start = Instant::now();
        let learner_metrics = self.learner.grpo_step(&trajectories, newest)?;
        metrics.extend(learner_metrics);
        metrics.insert("time/learning".into(), learn_start.elapsed().as_secs_f64());
        let version = self.publisher.publish(self.learner.policy());
        self.state.weights_version = version.0;
        metrics.insert("weights_version".into(), version.0 as f64);
        Ok(metrics)
    }

    fn finish_step(&mut self, mut metrics: StepMetrics) -> Result<(), Error> {
        self.state.step += 1;
        self.state.optimizer_steps = self.learner.steps();
        let step = self.state.step;
        metrics.extend(count_metrics(&self.counts));
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

    /// Evaluates the current policy; metric names start with `prefix` (`"eval"`, or
    /// `"eval_base"` before a warm start).
    fn evaluate(&mut self, prefix: &str) -> Result<BTreeMap<String, f64>, Error> {
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

    fn save_checkpoint(&mut self) -> Result<(), Error> {
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
        let dir = checkpoint::save(
            &self.run_dir,
            &policy,
            self.learner.optimizer().state(),
            &self.state,
            self.config.checkpoint.keep,
        )?;
        tracing::debug!(checkpoint = %dir.display(), "saved");
        Ok(())
    }

    fn write_samples(&mut self, reports: &[EpisodeReport]) {
        for r in reports.iter().take(self.config.run.log_samples) {
            let turns: Vec<serde_json::Value> = r
                .turns
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "agent": t.request.agent,
                        "prompt": t.request.messages.last().map(|m| m.content.clone()),
                        "answer": t.answer,
                    })
                })
                .collect();
            let rewards = r.result.as_ref().ok().map(|t| t.outcome.rewards.clone());
            let fault = r.result.as_ref().err().map(|f| f.to_string());
            let line = serde_json::json!({
                "step": self.state.step + 1,
                "env": r.env,
                "seed": r.task.seed,
                "group": r.task.group_id,
                "sample": r.task.sample,
                "rewards": rewards,
                "fault": fault,
                "metrics": r.metrics,
                "turns": turns,
            });
            if let Err(e) = writeln!(self.samples_file, "{line}") {
                tracing::warn!(error = %e, "could not write samples.jsonl");
            }
        }
    }

    fn warm_start(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        slots: &[EnvSlot],
        sft: &crate::config::SftConfig,
    ) -> Result<(), Error> {
        let (tokenizer, template) = &self.policy_parts;
        let train_slots = &slots[..self.config.envs.len()];
        let samples: Vec<Sample> = if sft.source == "demonstrations" {
            let count = (sft.steps as usize * sft.batch_size).clamp(1, 20_000);
            // Demonstration seeds sit far above training seeds.
            demonstration_samples(runtime, train_slots, count, 1 << 36, tokenizer, template)?
        } else {
            chat_samples(Path::new(&sft.source), tokenizer, template)?
        };
        // Turns the actors would never play (a prompt over `sampling.max_prompt_length`) or the
        // model cannot hold (over `max_position_embeddings`) are left out, and counted.
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
        if samples.is_empty() {
            return Err(Error::Config {
                path: "[sft]".into(),
                message: format!(
                    "every one of the {before} warm-start sequences is longer than \
                     `sampling.max_prompt_length` ({max_prompt}) or the model's context \
                     ({max_positions} tokens)"
                ),
            });
        }
        if too_long > 0 {
            tracing::warn!(
                too_long,
                max_prompt,
                max_positions,
                "warm-start sequences left out: prompt or whole sequence too long"
            );
        }
        self.trackers
            .log_metrics(&[Metric::new("sft/too_long", too_long as f64, 0)]);
        tracing::info!(
            sequences = samples.len(),
            steps = sft.steps,
            "supervised warm start"
        );
        let schedule = Schedule {
            lr: sft.learning_rate,
            warmup_steps: (sft.steps / 20).max(1),
            total_steps: sft.steps,
            kind: SchedulerType::Cosine,
        };
        self.learner
            .reset_optimizer(AdamW::new(self.config.optim.adamw()), schedule);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.config.run.seed, 0x5F7));
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut cursor = order.len();
        while self.state.sft_steps < sft.steps {
            let mut batch = Vec::with_capacity(sft.batch_size);
            while batch.len() < sft.batch_size {
                if cursor == order.len() {
                    // Fisher-Yates shuffle for each epoch.
                    for i in (1..order.len()).rev() {
                        let j = rng.random_range(0..=i);
                        order.swap(i, j);
                    }
                    cursor = 0;
                }
                batch.push(samples[order[cursor]].clone());
                cursor += 1;
            }
            let metrics = self.learner.sft_step(&batch)?;
            self.state.sft_steps += 1;
            let points: Vec<Metric> = metrics
                .iter()
                .map(|(k, v)| Metric::new(k.clone(), *v, self.state.sft_steps))
                .collect();
            self.trackers.log_metrics(&points);
            if self.state.sft_steps.is_multiple_of(10) || self.state.sft_steps == sft.steps {
                tracing::info!(
                    step = self.state.sft_steps,
                    loss = metrics.get("sft/loss").copied().unwrap_or(f64::NAN),
                    "sft"
                );
            }
        }
        // The KL reference is the warm-started policy, saved so a resumed run restores it.
        if uses_reference(&self.config) {
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
        // RL starts with a fresh optimizer and its own schedule.
        self.learner.reset_optimizer(
            AdamW::new(self.config.optim.adamw()),
            rl_schedule(&self.config),
        );
        let version = self.publisher.publish(self.learner.policy());
        self.state.weights_version = version.0;
        Ok(())
    }
}

/// Whether every episode of a group got the same reward for every agent and turn: then every
/// advantage of the group is 0 (advantages are normalised per agent and turn index across the
/// group), so it carries no GRPO signal. Comparing summed rewards instead would call a group
/// flat whose per-turn returns differ (e.g. zero-sum SPC rounds, or `[1, 0]` vs `[0, 1]`).
fn zero_signal(reports: &[EpisodeReport]) -> bool {
    let rewards: Vec<_> = reports
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|t| &t.outcome.rewards)
        .collect();
    rewards.windows(2).all(|w| w[0] == w[1])
}

/// Step metrics computed from the episodes: rewards, environment metrics, lengths, faults.
fn episode_metrics(reports: &[EpisodeReport]) -> StepMetrics {
    let mut m = StepMetrics::new();
    let mut rewards = Vec::new();
    let mut lengths = Vec::new();
    let mut env_sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut faults = 0usize;
    for r in reports {
        for (k, v) in &r.metrics {
            let e = env_sums.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
        match &r.result {
            Ok(t) => {
                let per_segment = t.segment_rewards().unwrap_or_default();
                let trained: Vec<f32> = t
                    .segments
                    .iter()
                    .zip(&per_segment)
                    .filter(|(s, _)| s.trainable)
                    .map(|(_, r)| *r)
                    .collect();
                if !trained.is_empty() {
                    rewards.push(trained.iter().sum::<f32>() as f64 / trained.len() as f64);
                }
                lengths.extend(
                    t.segments
                        .iter()
                        .filter(|s| s.trainable)
                        .map(|s| s.completion_tokens.len() as f64),
                );
            }
            Err(_) => faults += 1,
        }
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let reward_mean = mean(&rewards);
    let var = rewards
        .iter()
        .map(|r| (r - reward_mean).powi(2))
        .sum::<f64>()
        / rewards.len().max(1) as f64;
    m.insert("reward/mean".into(), reward_mean);
    m.insert("reward/std".into(), var.sqrt());
    m.insert("response_length".into(), mean(&lengths));
    m.insert("faults".into(), faults as f64);
    for (k, (sum, n)) in &env_sums {
        m.insert(format!("env/{k}"), sum / *n as f64);
    }
    let last = env_sums
        .keys()
        .filter_map(|k| {
            k.strip_prefix("correct@t")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max();
    if let (Some(n), Some(c1)) = (last, m.get("env/correct@t1").copied())
        && n > 1
        && let Some(cn) = m.get(&format!("env/correct@t{n}")).copied()
    {
        m.insert(format!("delta_t1_t{n}"), cn - c1);
    }
    m
}

/// The counts of a group id: training groups only (evaluation groups have [`EVAL_GROUP_BIT`]).
pub fn is_training_group(group_id: u64) -> bool {
    group_id & EVAL_GROUP_BIT == 0
}
