//! The training loop: actors play, the learner steps, weights are published, metrics and
//! checkpoints are written. `kaizen train` calls [`train`].
//!
//! The parts, one file each: `setup` (policy, environments, actors of a job), `loops` (sync
//! and async: collect a step's groups, DAPO dynamic sampling), `warm_start` (the supervised
//! stage before RL), `evaluation` (held-out problems), `checkpointing`, `reporting` (step
//! metrics from episodes, `samples.jsonl`, the end-of-run plot), `preference` (the offline
//! DPO stage), `step` (one step: learner update, weight publishing, logging). This file holds
//! the run's state, its start and end.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use kaizen_core::{SamplingOverrides, Trajectory, WeightsVersion};
use kaizen_envs::{EnvSlot, Registry};
use kaizen_model::{ChatTemplate, Llama, LlamaConfig, Policy};
use kaizen_tracking::{
    LocalStore, LocalTracker, Metric, MlflowTracker, Params, RunSpec, RunStatus, Tracker, Trackers,
};
use kaizen_transport::{EpisodeReport, EpisodeTask, Rollouts, WeightSink, derive_seed};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Error;
use crate::checkpoint::{self, TrainerState};
use crate::config::{JobConfig, Mode, TimeLimitScope};
use crate::critic::Critic;
use crate::eval::{EVAL_GROUP_BIT, EvalTarget, evaluate};
use crate::launcher::{ActorsSpec, Launcher, StartedActors};
use crate::learner::{Learner, StepMetrics};
use crate::optimizer::AdamW;
use crate::samples::Sample;
use crate::schedule::{Schedule, SchedulerType};
use crate::score_stages::ScoreStage;
use crate::sft_data::{chat_samples, demonstration_samples};

mod checkpointing;
mod data_parallel;
mod evaluation;
mod loops;
mod preference;
mod reporting;
mod self_generated;
mod setup;
mod step;
mod tree_data;
mod warm_start;

pub use data_parallel::follow;
pub use evaluation::evaluate_policy;
use reporting::{episode_metrics, report_metrics};
pub use setup::{build_envs, load_policy, resolve_model_source};
use setup::{load_policy_template, rl_schedule};

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
    /// Starts the actors (in this process, or actor processes joining over the network).
    pub launcher: Arc<dyn Launcher>,
    /// The learner's data-parallel group when this process is its rank 0 (the other ranks run
    /// [`follow`]); `None` for a learner of one. RL steps are data-parallel; warm-start phases
    /// run on rank 0 alone, whose state the other ranks receive when RL starts.
    pub collective: Option<Box<dyn crate::Collective>>,
    /// Builds the learner's training backend from its model when `learner.device` is not
    /// `"cpu"` (the binary provides it: `kaizen-gpu`'s CUDA pass); `None` trains on the CPU.
    pub backend: Option<crate::BackendFactory>,
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

/// Offset of the value head's initialisation seed from `model.init_seed` (PPO).
const VALUE_HEAD_SEED: u64 = 0x7661_6c75_6568_6561;

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

/// What [`train`] sets up once its run is open: the learner, the policy's tokenizer and chat
/// template, the started actors and the samples file.
struct Prepared {
    learner: Learner,
    tokenizer: kaizen_model::Tokenizer,
    template: ChatTemplate,
    rollouts: Box<dyn Rollouts>,
    weights: Box<dyn WeightSink>,
    samples_file: std::fs::File,
}

/// The part of [`train`] between opening the run and training: an error here still marks the
/// run failed (the caller finishes its trackers), so no run is left `RUNNING`.
#[allow(clippy::too_many_arguments)]
fn prepare(
    config: &JobConfig,
    resolved: &toml::Table,
    options: &TrainOptions,
    policy: Policy,
    state: &TrainerState,
    optimizer_state: Option<(u64, HashMap<String, kaizen_model::HostTensor>)>,
    run_dir: &Path,
    trackers: &mut Trackers,
    slots: &[EnvSlot],
    train_device: &Device,
) -> Result<Prepared, Error> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let config_path = run_dir.join("config.toml");
    if options.resume.is_none() {
        let text = toml::to_string(resolved).map_err(|e| Error::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&config_path, text).map_err(|e| Error::io(&config_path, e))?;
        trackers.log_params(&Params::flatten_toml(&toml::Value::Table(resolved.clone())));
        trackers.log_artifact(&config_path, None);
    }

    let schedule = rl_schedule(config);
    let optimizer = match optimizer_state {
        Some((step, moments)) => {
            AdamW::restore(config.optim.adamw(), step, moments).map_err(|message| {
                Error::Checkpoint {
                    path: run_dir.to_path_buf(),
                    message,
                }
            })?
        }
        None => AdamW::new(config.optim.adamw()),
    };
    // A resumed run with a KL penalty restores the reference it started RL with: the
    // warm-started policy saved under `reference/`, else the model as the config loads it.
    let resumed_reference = match &options.resume {
        Some(run_dir) if uses_reference(config, state.step) => {
            let saved = run_dir.join(REFERENCE_DIR);
            Some(if saved.is_dir() {
                Policy::load_dir(&saved, train_device)?.model
            } else {
                load_policy(config, train_device)?.model
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
    let objective = config.objective_at(state.step);
    // PPO's critic: a value head on the policy's trunk (a resumed run's checkpoint has it).
    let model = if objective.needs_value_head() {
        model.with_value_head(config.model.init_seed.wrapping_add(VALUE_HEAD_SEED))?
    } else {
        model
    };
    if config.learner.bf16 && !kaizen_model::TrainProducts::bf16_accelerated() {
        tracing::warn!(
            "learner.bf16: this CPU has neither AMX tiles nor AVX512-BF16 (or KAIZEN_NO_AMX / \
             KAIZEN_NO_AVX512 is set); the bf16 products run on the f32 units and are slower \
             than learner.bf16 = false"
        );
    }
    let mut learner = Learner::with_objective(
        model,
        optimizer,
        schedule,
        config.learner.clone(),
        objective,
    );
    if let Some(reference) = resumed_reference {
        learner.set_reference(reference);
    }
    attach_backend(&mut learner, config, options.backend.as_ref())?;
    let saved_critic = match &options.resume {
        Some(run_dir) => checkpoint::load_critic(&checkpoint::latest(run_dir)?)?,
        None => None,
    };
    let needs_critic = config.objective_at(state.step).needs_critic();
    if let Some(run_dir) = &options.resume
        && state.step > 0
        && needs_critic != saved_critic.is_some()
    {
        return Err(Error::Checkpoint {
            path: run_dir.to_path_buf(),
            message: format!(
                "the checkpoint was trained {} a separate PPO critic but the job now asks for \
                 `ppo.critic` = \"{}\"; resume with the critic the run started with",
                if saved_critic.is_some() {
                    "with"
                } else {
                    "without"
                },
                if needs_critic { "separate" } else { "shared" },
            ),
        });
    }
    if needs_critic {
        let saved = saved_critic;
        let critic = match saved {
            Some((dir, (step, moments))) => Critic {
                model: Policy::load_dir(&dir, train_device)?.model,
                optimizer: AdamW::restore(config.optim.adamw(), step, moments).map_err(
                    |message| Error::Checkpoint {
                        path: dir.clone(),
                        message,
                    },
                )?,
                schedule: critic_schedule(config),
            },
            None => new_critic(config, learner.model())?,
        };
        learner.set_critic(critic);
    }
    let StartedActors { rollouts, weights } = options.launcher.start(ActorsSpec {
        config,
        envs: slots,
        tokenizer: &tokenizer,
        template: &template,
        weights: learner.policy(),
        version: WeightsVersion(state.weights_version),
        stop: &options.stop,
    })?;
    let samples_path = run_dir.join("samples.jsonl");
    let samples_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&samples_path)
        .map_err(|e| Error::io(&samples_path, e))?;
    Ok(Prepared {
        learner,
        tokenizer,
        template,
        rollouts,
        weights,
        samples_file,
    })
}

/// Gives `learner` the training backend `learner.device` asks for, built by `factory`.
///
/// # Errors
/// [`Error::Config`] naming `learner.device` when it is not `"cpu"` and no factory was given
/// (a binary built without the feature); the factory's and [`Learner::set_backend`]'s errors.
pub(crate) fn attach_backend(
    learner: &mut Learner,
    config: &JobConfig,
    factory: Option<&crate::BackendFactory>,
) -> Result<(), Error> {
    match (config.learner.device, factory) {
        (crate::LearnerDevice::Cpu, _) => Ok(()),
        (device, None) => Err(Error::Config {
            path: "[learner]".into(),
            message: format!(
                "`learner.device = \"{}\"` needs a kaizen built with `--features gpu` \
                 (docs/gpu.md)",
                device.name()
            ),
        }),
        (_, Some(make)) => {
            let backend = make(learner.model())?;
            learner.set_backend(backend)
        }
    }
}

struct Run {
    config: JobConfig,
    run_dir: PathBuf,
    trackers: Trackers,
    /// The actors, wherever they run.
    rollouts: Box<dyn Rollouts>,
    /// Where new weights go.
    weights: Box<dyn WeightSink>,
    learner: Learner,
    policy_parts: (kaizen_model::Tokenizer, ChatTemplate),
    state: TrainerState,
    counts: EpisodeCounts,
    targets: Vec<EvalTarget>,
    stray: Vec<EpisodeReport>,
    /// Co-Reward's pairs: each submitted group's twin group, both ways, until rewarded.
    twins: HashMap<u64, u64>,
    /// The user's group reward (`[grpo] reward_source = "group"`).
    group_reward: Option<Arc<dyn kaizen_envs::rewards::GroupReward>>,
    samples_file: std::fs::File,
    progress: Option<ProgressBar>,
    eval_base: Option<BTreeMap<String, f64>>,
    eval_start: Option<BTreeMap<String, f64>>,
    eval_end: Option<BTreeMap<String, f64>>,
    /// When `run.time_limit_minutes` runs out.
    deadline: Option<Instant>,
    /// Seconds of the last RL step (0 before the first) and when it ended.
    last_step_seconds: f64,
    step_mark: Option<Instant>,
    /// Seconds of the last evaluation (0 before the first).
    eval_seconds: f64,
    /// The data-parallel group, until RL starts and the learner joins it.
    collective: Option<Box<dyn crate::Collective>>,
}

/// Runs a training job to the end (or until `options.stop` is set) and returns its summary.
///
/// # Errors
/// Configuration, model, environment, tracking and checkpoint errors. Failures of single
/// episodes are not errors: they are counted (`faults`) and the run goes on.
pub fn train(
    config: JobConfig,
    resolved: toml::Table,
    mut options: TrainOptions,
) -> Result<TrainSummary, Error> {
    let collective = options.collective.take();
    if let Some(c) = &collective
        && c.world_size() > 1
        && config.objective_at(0).needs_critic()
    {
        return Err(Error::Config {
            path: "[ppo]".into(),
            message: "a data-parallel learner does not train a separate PPO critic yet; use \
                      `ppo.critic = \"shared\"` (the value head) or one learner rank"
                .into(),
        });
    }
    // Runs the expert demonstrations of an SFT warm start (environments only, no policy).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kaizen-demo")
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let train_device = options.device.clone().autodiff();
    let (slots, targets) = build_envs(&config, &options.registry)?;
    let group_reward = match (&config.grpo.reward_source, &config.grpo.group_reward) {
        (crate::config::RewardSource::Group, Some(name)) => {
            Some(options.registry.group_reward(name)?)
        }
        _ => None,
    };

    // A new run, or the newest checkpoint of an old one.
    let (policy, state, optimizer_state, run_dir, mut trackers) = match &options.resume {
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
                preference_steps: 0,
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
    let prepared = prepare(
        &config,
        &resolved,
        &options,
        policy,
        &state,
        optimizer_state,
        &run_dir,
        &mut trackers,
        &slots,
        &train_device,
    );
    let Prepared {
        learner,
        tokenizer,
        template,
        rollouts,
        weights,
        samples_file,
    } = match prepared {
        Ok(p) => p,
        Err(e) => {
            let status = if options.stop.load(Ordering::SeqCst) {
                RunStatus::Killed
            } else {
                RunStatus::Failed
            };
            if let Err(finish) = trackers.finish(status) {
                tracing::error!(error = %finish, "could not mark the run failed");
            }
            return Err(e);
        }
    };
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
        rollouts,
        weights,
        learner,
        policy_parts: (tokenizer, template),
        counts: state.episodes,
        state,
        targets,
        stray: Vec::new(),
        twins: HashMap::new(),
        group_reward,
        samples_file,
        progress,
        eval_base: None,
        eval_start: None,
        eval_end: None,
        deadline: None,
        last_step_seconds: 0.0,
        step_mark: None,
        eval_seconds: 0.0,
        collective,
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
    let leftovers = run.rollouts.shutdown();
    run.counts.reported += leftovers.len() as u64;
    run.counts.unused += leftovers.len() as u64;
    // Training reports that arrived during the final evaluation (async mode) were counted as
    // reported then; no step takes them now.
    run.counts.unused += run.stray.len() as u64;
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

/// A separate PPO critic initialised from `policy`, with a fresh optimizer.
fn new_critic(config: &JobConfig, policy: &Llama) -> Result<Critic, Error> {
    Critic::from_policy(
        policy,
        config.model.init_seed.wrapping_add(VALUE_HEAD_SEED),
        AdamW::new(config.optim.adamw()),
        critic_schedule(config),
    )
}

/// The separate critic's schedule: RL's, at `ppo.critic_learning_rate` when set.
fn critic_schedule(config: &JobConfig) -> Schedule {
    let mut schedule = rl_schedule(config);
    if let Some(lr) = config.ppo.as_ref().and_then(|p| p.critic_learning_rate) {
        schedule.lr = lr;
    }
    schedule
}

/// Whether the job needs a frozen reference from RL step `step` on (a KL penalty or DPO now, or
/// SCoRe's stage I still to come).
fn uses_reference(config: &JobConfig, step: u64) -> bool {
    config.objective_at(step).needs_reference()
        || config
            .score
            .as_ref()
            .is_some_and(|score| step < score.stage1_steps)
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
        let sft = self
            .config
            .sft
            .clone()
            .filter(|sft| self.state.step == 0 && self.state.sft_steps < sft.steps);
        let preference = self
            .config
            .preference
            .clone()
            .filter(|p| self.state.step == 0 && self.state.preference_steps < p.steps);
        // Preference pairs are read before anything trains: a bad file fails at once.
        let preference = match preference {
            Some(p) => Some((self.preference_data(&p)?, p)),
            None => None,
        };
        if (sft.is_some() || preference.is_some())
            && self.state.sft_steps == 0
            && self.state.preference_steps == 0
            && self.config.eval.at_start
        {
            // The model as given, before the warm start: `eval_base/...` at step 0 (the
            // `eval/...` of step 0 is the policy RL starts from).
            let base = self.evaluate("eval_base")?;
            self.log(&base, 0);
            self.eval_base = Some(base);
        }
        if let Some(sft) = sft {
            self.warm_start(runtime, slots, &sft)?;
        }
        if let Some((pairs, preference)) = preference {
            self.preference_stage(&preference, pairs)?;
        }
        if self.state.step == 0 && self.config.eval.at_start {
            let eval = self.evaluate("eval")?;
            self.log(&eval, 0);
            self.eval_start = Some(eval);
        }
        // RL steps are data-parallel across the learner's group: the followers take rank 0's
        // state now (after any warm start, or as resumed).
        if let Some(group) = self.collective.take() {
            self.learner.set_collective(group);
            self.sync_followers()?;
        }
        self.step_mark = Some(Instant::now());
        let killed = match self.config.run.mode {
            Mode::Sync => self.sync_loop(&options.stop),
            Mode::Async => self.async_loop(&options.stop),
        };
        self.stop_followers()?;
        let killed = killed?;
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

/// The counts of a group id: training groups only (evaluation groups have [`EVAL_GROUP_BIT`]).
pub fn is_training_group(group_id: u64) -> bool {
    group_id & EVAL_GROUP_BIT == 0
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::Device;
    use kaizen_model::{Llama, LlamaConfig};

    use super::*;
    use crate::{AdamW, AdamWConfig, Schedule, SchedulerType};

    const JOB: &str = "[run]\nexperiment = \"t\"\nmax_steps = 1\n[model]\nsource = \"tiny\"\n\
                       [[env]]\nname = \"self_correct\"\n";

    fn learner() -> Learner {
        let model = Llama::init(&LlamaConfig::tiny(64), &Device::default().autodiff(), 1).unwrap();
        let schedule = Schedule {
            lr: 1e-3,
            warmup_steps: 0,
            total_steps: 1,
            kind: SchedulerType::Constant,
        };
        Learner::with_objective(
            model,
            AdamW::new(AdamWConfig::default()),
            schedule,
            crate::LearnerConfig::default(),
            crate::ObjectiveConfig::default(),
        )
    }

    #[test]
    fn a_cuda_learner_without_a_backend_factory_is_a_config_error_naming_the_key() {
        let overrides = [
            "learner.device=\"cuda\"".to_string(),
            "learner.share_prompt_prefix=false".to_string(),
        ];
        let (config, _) = JobConfig::parse(JOB, Path::new("job.toml"), &overrides).unwrap();
        let err = attach_backend(&mut learner(), &config, None).unwrap_err();
        assert!(
            matches!(&err, Error::Config { message, .. }
                if message.contains("learner.device") && message.contains("--features gpu")),
            "{err}"
        );
        let (cpu, _) = JobConfig::parse(JOB, Path::new("job.toml"), &[]).unwrap();
        let mut l = learner();
        attach_backend(&mut l, &cpu, None).unwrap();
        assert!(l.backend().is_none());
    }

    #[test]
    fn a_failing_backend_factory_is_reported_not_ignored() {
        let overrides = [
            "learner.device=\"cuda\"".to_string(),
            "learner.share_prompt_prefix=false".to_string(),
        ];
        let (config, _) = JobConfig::parse(JOB, Path::new("job.toml"), &overrides).unwrap();
        let factory: crate::BackendFactory =
            Arc::new(|_: &Llama| Err(Error::Backend("no driver here".into())));
        let mut l = learner();
        let err = attach_backend(&mut l, &config, Some(&factory)).unwrap_err();
        assert!(err.to_string().contains("no driver here"), "{err}");
        assert!(l.backend().is_none());
    }
}
