//! # kaizen-learner
//!
//! The learner side of kaizen and the training loop that ties everything together.
//!
//! - [`JobConfig`] is one TOML file describing a job (model, environments, actors, sampling,
//!   GRPO batch, loss, advantages, optimizer, warm start, evaluation, checkpoints, tracking);
//!   `--set key.path=value` overrides any field.
//! - [`Learner`] owns the trainable policy (on an autodiff device), its [`AdamW`] optimizer and
//!   [`Schedule`]: [`Learner::rl_step`] turns a step's trajectories into samples
//!   ([`build_samples`]: one sequence per conversation thread, loss on trainable model tokens),
//!   lets the [`objective`] (GRPO, PPO, DPO or NFT, chosen by [`Algorithm`]) compute the
//!   step's targets and each micro-batch's loss (`kaizen-algorithms`), clips the global
//!   gradient norm and updates the weights. [`ScoreConfig`] (`[score]`) switches the loss
//!   between SCoRe's two stages.
//! - A [`TrainBackend`] (`learner.device = "cuda"`: `kaizen-gpu`'s CUDA pass, injected by the
//!   binary through [`TrainOptions::backend`]) takes over the scoring pass, its backward and
//!   AdamW: the learner hands it each micro-batch, builds the loss on the log-probs it returns
//!   and hands back `∂loss/∂logp`; after the step it reads the new weights back.
//! - [`train`] runs a job: actors play the environments with the newest published weights
//!   (the learner reaches them only through `kaizen-transport`'s [`kaizen_transport::Rollouts`]
//!   and [`kaizen_transport::WeightSink`], started by a [`Launcher`]: in this process, or in
//!   actor processes elsewhere), the learner steps (sync: actors wait; async: they keep generating,
//!   bounded by `max_policy_lag`), weights are published, metrics go to the trackers
//!   (`kaizen-tracking`), evaluation runs on held-out problems, checkpoints are written
//!   atomically and a run resumes exactly from its newest one.
#![warn(missing_docs)]

mod accumulator;
mod checkpoint;
mod collective;
mod config;
mod critic;
mod error;
mod eval;
mod launcher;
mod learner;
pub mod objective;
mod optimizer;
mod preference_data;
mod samples;
mod schedule;
mod score_stages;
mod sft_data;
mod train_backend;
mod trainer;

pub use checkpoint::{
    OptimizerState, SavedMoments, TrainerState, checkpoints_dir, latest as latest_checkpoint,
    list as list_checkpoints, read_optimizer as read_optimizer_state,
    write_optimizer as write_optimizer_state,
};
pub use collective::{Collective, SingleProcess};
pub use config::{
    ActorsConfig, ActorsDevice, CheckpointConfig, ClusterConfig, DecodeWeightsConfig, EnvConfig,
    EvalConfig, GrpoConfig, JobConfig, KvAcrossVersions, Mode, ModelConfig, OptimConfig,
    PreferenceConfig, RelabelAs, RewardSource, RunConfig, Selection, SelfGeneratedConfig,
    SftConfig, TimeLimitScope, WeightsTransport, expand_path, kaizen_cache,
};
pub use critic::Critic;
pub use error::Error;
pub use eval::{EVAL_GROUP_BIT, EVAL_SEED_OFFSET, EvalTarget, PairedAttempts, evaluate};
pub use launcher::{ActorsSpec, Launcher, StartedActors};
pub use learner::{Learner, LearnerCollective, LearnerConfig, LearnerDevice, StepMetrics};
pub use objective::{Algorithm, ObjectiveConfig};
pub use optimizer::{AdamW, AdamWConfig, StepReport};
pub use preference_data::preference_pairs;
pub use samples::{Sample, SkippedThreads, build_samples, micro_batches, trained_mask};
pub use schedule::{Schedule, SchedulerType};
pub use score_stages::{ScoreConfig, ScoreStage};
pub use sft_data::{chat_samples, demonstration_samples};
pub use train_backend::{AdamWMoments, BackendFactory, ParamMoments, TrainBackend};
pub use trainer::{
    EpisodeCounts, TrainOptions, TrainSummary, build_envs, evaluate_policy, follow,
    is_training_group, load_policy, resolve_model_source, train,
};
