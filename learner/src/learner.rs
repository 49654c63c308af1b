//! The learner's math loop: one RL (or SFT) optimizer step from a batch of trajectories.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use kaizen_algorithms::{AdvantageConfig, DpoConfig, GrpoLossConfig, StepNormalizers, sft_loss};
use kaizen_core::{Trajectory, WeightsVersion};
use kaizen_model::{HostTensor, Llama, ScoreBatch, ScoreOptions};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::accumulator::{Accumulator, Backprop};
use crate::collective::{Collective, SingleProcess};
use crate::critic::Critic;
use crate::objective::dpo::Dpo;
use crate::objective::{
    MetricsAcc, MicroBatch, Objective, ObjectiveConfig, StepInput, score_batch,
};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::samples::{Sample, build_samples, by_temperature, micro_batches};
use crate::schedule::Schedule;
use crate::train_backend::TrainBackend;

/// Hyper-parameters of the learner's update (TRL `GRPOConfig` names where they exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// Micro-batches per optimizer step; the step's loss and gradient do not depend on it.
    pub gradient_accumulation_steps: usize,
    /// Samples sampled by weights more than this many versions older than the newest are
    /// dropped (and counted). 0 = strictly on-policy.
    pub max_policy_lag: u64,
    /// Skip the forward/backward pass of samples whose every advantage is 0 when no KL or
    /// entropy term needs them (their loss and gradient are exactly 0; they still count in the
    /// loss normalisers, so the result is unchanged).
    pub skip_zero_signal: bool,
    /// TRL `max_completion_length`, Dr. GRPO's normaliser.
    pub max_completion_length: usize,
    /// Compute the prompt a GRPO group's samples share once per micro-batch instead of once
    /// per sample (`kaizen_model::score_with`); same loss and gradient up to float rounding.
    pub share_prompt_prefix: bool,
    /// Run the scoring pass and its backward on kaizen's CPU kernels
    /// (`kaizen_model::CpuScorePass`: packed rows, fused element-wise steps, hand-written
    /// backward) where they apply (float32 model on the CPU device); burn's
    /// autodiff otherwise. Same loss and gradient up to float rounding. A value head (PPO)
    /// trains on this path too.
    pub cpu_kernels: bool,
    /// bf16 mixed precision on the CPU training pass (TRL / `TrainingArguments` `bf16`): the
    /// products with weight matrices (`x·Wᵀ`) and their backward (`dY·W`, `dYᵀ·X`) round their
    /// operands to bfloat16 and sum in f32, as `torch.autocast(dtype=torch.bfloat16)` does;
    /// the weights, optimizer, gradients, norms, attention and log-softmax stay f32
    /// (`kaizen_model::TrainProducts`). On CPUs with AMX (Xeon since Sapphire Rapids) the
    /// products run on its tiles, several times faster than f32; elsewhere they run on the f32
    /// units and are slower than `false`. Needs `cpu_kernels`.
    pub bf16: bool,
    /// Where the training pass (scoring, backward, AdamW) runs: `"cpu"`, or `"cuda"` for
    /// `kaizen-gpu`'s pass on this rank's GPU (needs a build with `--features gpu`; the loss
    /// is still built on the host; no value head, entropy bonus, `bf16` or
    /// `share_prompt_prefix`). docs/gpu.md.
    pub device: LearnerDevice,
    /// How data-parallel learner ranks (`kaizen launch` under `mpirun`/`srun`) sum gradients:
    /// `"mpi"` (the ranks' MPI group; feature `mpi`) or `"nccl"` (NCCL between the ranks'
    /// GPUs, its id sent over that MPI group; features `gpu` and `mpi`).
    pub collective: LearnerCollective,
}

/// Where the learner's training pass runs (`learner.device`; PyTorch / accelerate device
/// names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnerDevice {
    /// kaizen's CPU training pass (or burn's autodiff).
    #[default]
    Cpu,
    /// kaizen-gpu's CUDA training pass on the rank's GPU (`LaunchEnv::local_rank`).
    Cuda,
}

impl LearnerDevice {
    /// The config value (`"cpu"`, `"cuda"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The collective library data-parallel learner ranks sum gradients with
/// (`learner.collective`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnerCollective {
    /// MPI (`kaizen_cluster::MpiCollective`), on host buffers.
    #[default]
    Mpi,
    /// NCCL (`kaizen_gpu::NcclCollective`), one GPU per rank.
    Nccl,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            gradient_accumulation_steps: 1,
            max_policy_lag: 0,
            skip_zero_signal: true,
            max_completion_length: 256,
            share_prompt_prefix: true,
            cpu_kernels: true,
            bf16: false,
            device: LearnerDevice::Cpu,
            collective: LearnerCollective::Mpi,
        }
    }
}

/// The trainable policy, its optimizer, the frozen reference (KL penalty, DPO) and the
/// objective (`crate::objective`).
pub struct Learner {
    model: Llama,
    reference: Option<Llama>,
    optimizer: AdamW,
    schedule: Schedule,
    config: LearnerConfig,
    objective: ObjectiveConfig,
    /// PPO's separate critic, when `ppo.critic = "separate"`.
    critic: Option<Critic>,
    /// The data-parallel group (a group of one unless [`Learner::set_collective`]).
    collective: Box<dyn Collective>,
    /// The training pass when it runs outside `model` (a GPU), [`Learner::set_backend`].
    backend: Option<Box<dyn TrainBackend>>,
}

/// Metrics of one step, keyed by their logged names.
pub type StepMetrics = BTreeMap<String, f64>;

impl Learner {
    /// A GRPO learner ([`Learner::with_objective`] with `ObjectiveConfig::grpo(loss, advantage)`).
    pub fn new(
        model: Llama,
        optimizer: AdamW,
        schedule: Schedule,
        config: LearnerConfig,
        loss: GrpoLossConfig,
        advantage: AdvantageConfig,
    ) -> Self {
        Self::with_objective(
            model,
            optimizer,
            schedule,
            config,
            ObjectiveConfig::grpo(loss, advantage),
        )
    }

    /// A learner training `model` (on an autodiff device) for `objective`. When the objective
    /// uses a reference ([`ObjectiveConfig::needs_reference`]), a frozen copy of `model`'s
    /// current weights becomes it. A PPO objective needs a value head on `model`
    /// (`Llama::with_value_head`), or with `ppo.critic = "separate"` a critic given with
    /// [`Learner::set_critic`].
    pub fn with_objective(
        model: Llama,
        mut optimizer: AdamW,
        schedule: Schedule,
        config: LearnerConfig,
        objective: ObjectiveConfig,
    ) -> Self {
        let reference = objective.needs_reference().then(|| model.valid());
        optimizer.reserve(&model);
        Self {
            model,
            reference,
            optimizer,
            schedule,
            config,
            objective,
            critic: None,
            collective: Box::new(SingleProcess),
            backend: None,
        }
    }

    /// Gives PPO a separate critic (`ppo.critic = "separate"`); its values replace the policy's
    /// value head in the pre-pass and the value loss.
    pub fn set_critic(&mut self, critic: Critic) {
        self.critic = Some(critic);
    }

    /// The separate critic, if any.
    pub fn critic(&self) -> Option<&Critic> {
        self.critic.as_ref()
    }

    /// The trainable model (autodiff device).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// An inference copy of the current weights (plain device; shares tensors).
    pub fn policy(&self) -> Llama {
        self.model.valid()
    }

    /// The optimizer: its hyper-parameters and step count, and its moments unless a backend
    /// holds them (use [`Learner::optimizer_state`] for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The optimizer's step count and moments as a checkpoint saves them (`AdamW::state`'s
    /// names: `exp_avg.<path>`, `exp_avg_sq.<path>`, flat): the CPU optimizer's, or with a
    /// backend ([`Learner::set_backend`]) the backend's, read back and renamed, so a checkpoint
    /// resumes on either pass. Before a backend's first step (a fresh or reset optimizer) there
    /// are no moments (zero).
    ///
    /// # Errors
    /// [`Error::Backend`]: the backend's copy errors, moments that do not fit the model (named),
    /// or a backend whose step count is not the learner's.
    pub fn optimizer_state(&self) -> Result<(u64, Vec<(String, HostTensor)>), Error> {
        let Some(backend) = &self.backend else {
            return Ok(self.optimizer.state());
        };
        let steps = self.optimizer.step_count();
        if steps == 0 {
            return Ok((0, Vec::new()));
        }
        let state = backend.optimizer_state()?;
        if state.step != steps {
            return Err(Error::Backend(format!(
                "the `{}` backend has taken {} AdamW steps, the learner {steps}",
                backend.name(),
                state.step
            )));
        }
        AdamW::state_of_backend(&self.model, state)
            .map_err(|m| Error::Backend(format!("{}: optimizer state: {m}", backend.name())))
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.step_count()
    }

    /// One RL step on `trajectories` (a step's groups, in a deterministic order), given the
    /// newest published weights version (for policy lag).
    ///
    /// Each conversation thread is one sample (`crate::samples::build_samples`); samples
    /// sampled more than `max_policy_lag` versions ago are dropped and counted. The objective
    /// (`crate::objective`: GRPO, PPO, DPO or NFT) computes the step's targets and picks the
    /// samples to train; they are split into `gradient_accumulation_steps` micro-batches (one
    /// forward pass per sampling temperature in each), scored, and each micro-batch's loss is
    /// back-propagated with step-level normalisers, so the gradients add up to the step's;
    /// then one AdamW update with global-norm clipping.
    ///
    /// # Errors
    /// Invalid trajectories (reward counts), model input errors, loss input errors.
    pub fn rl_step(
        &mut self,
        trajectories: &[Trajectory],
        newest: WeightsVersion,
    ) -> Result<StepMetrics, Error> {
        let start = Instant::now();
        let (samples, skipped) = build_samples(trajectories);
        let total = samples.len();
        let (mut fresh, stale): (Vec<Sample>, Vec<Sample>) = samples
            .into_iter()
            .partition(|s| s.version.lag(newest) <= self.config.max_policy_lag);
        let mut metrics = StepMetrics::new();
        metrics.insert("samples".into(), total as f64);
        metrics.insert("dropped_stale".into(), stale.len() as f64);
        metrics.insert("skipped_threads".into(), skipped.untrained as f64);
        if skipped.split_by_temperature > 0 {
            metrics.insert(
                "threads_split_by_temperature".into(),
                skipped.split_by_temperature as f64,
            );
        }
        let lags: Vec<u64> = fresh.iter().map(|s| s.version.lag(newest)).collect();
        if let Some(&max_lag) = lags.iter().max() {
            metrics.insert("policy_lag_max".into(), max_lag as f64);
            metrics.insert(
                "policy_lag_mean".into(),
                lags.iter().sum::<u64>() as f64 / lags.len() as f64,
            );
        }
        let mut objective = self.objective.build();
        let prepare_start = Instant::now();
        let prepared = objective.prepare(StepInput {
            trajectories,
            samples: &mut fresh,
            model: &self.model,
            critic: self.critic.as_ref().map(|c| &c.model),
            reference: self.reference.as_ref(),
            learner: &self.config,
        })?;
        metrics.insert(
            "time/learner_prepare".into(),
            prepare_start.elapsed().as_secs_f64(),
        );
        metrics.extend(prepared.metrics);
        let normalizers = prepared.normalizers;
        metrics.insert("trained_tokens".into(), normalizers.num_tokens as f64);
        let used: Vec<Sample> = prepared.used.iter().map(|&i| fresh[i].clone()).collect();
        if used.is_empty() {
            let lr = self.schedule.at(self.optimizer.step_count());
            metrics.insert("lr".into(), lr);
            metrics.insert("learner_seconds".into(), start.elapsed().as_secs_f64());
            metrics.insert("skipped_update".into(), 1.0);
            return Ok(metrics);
        }
        let reference = self.reference.clone();
        let trained = self.train_used(
            &used,
            objective.as_ref(),
            &normalizers,
            reference.as_ref(),
            newest,
        )?;
        metrics.extend(trained);
        let seconds = start.elapsed().as_secs_f64();
        metrics.insert("learner_seconds".into(), seconds);
        let scored = metrics.remove("learner_scored_tokens").unwrap_or(0.0);
        metrics.insert("learner_tokens_per_s".into(), scored / seconds.max(1e-9));
        Ok(metrics)
    }

    /// One offline preference step (DPO / IPO) on `pairs` of (chosen, rejected) samples, against
    /// `reference` (the policy as the preference stage began): the loss is
    /// `kaizen_algorithms::dpo_loss` averaged over the pairs, split into
    /// `gradient_accumulation_steps` micro-batches with each pair in one, then one AdamW update.
    ///
    /// # Errors
    /// Model input errors, loss input errors (a pair without trained tokens).
    pub fn preference_step(
        &mut self,
        pairs: &[(Sample, Sample)],
        reference: &Llama,
        config: &DpoConfig,
    ) -> Result<StepMetrics, Error> {
        let start = Instant::now();
        let used: Vec<Sample> = pairs
            .iter()
            .flat_map(|(c, r)| [c.clone(), r.clone()])
            .collect();
        let objective = Dpo::with_pairs(config.clone(), pairs.len());
        let normalizers = StepNormalizers {
            num_sequences: pairs.len(),
            num_tokens: used.iter().map(Sample::trained_tokens).sum(),
            max_completion_length: self.config.max_completion_length,
        };
        let mut metrics = self.train_used(
            &used,
            &objective,
            &normalizers,
            Some(reference),
            WeightsVersion(0),
        )?;
        metrics.remove("learner_scored_tokens");
        metrics.insert("seconds".into(), start.elapsed().as_secs_f64());
        Ok(metrics)
    }

    /// Scores `used` in micro-batches (one forward pass per sampling temperature in each),
    /// takes `objective`'s loss of each, back-propagates, sums the gradients and takes one
    /// AdamW step. Returns the merged loss diagnostics, the timing split, the gradient norm,
    /// the learning rate and `learner_scored_tokens`.
    fn train_used(
        &mut self,
        used: &[Sample],
        objective: &dyn Objective,
        normalizers: &StepNormalizers,
        reference: Option<&Llama>,
        newest: WeightsVersion,
    ) -> Result<StepMetrics, Error> {
        let mut metrics = StepMetrics::new();
        let lr = self.schedule.at(self.optimizer.step_count());
        metrics.insert("lr".into(), lr);
        // Data-parallel ranks take every `world`-th micro-batch (at least one each).
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let parts =
            objective.micro_batches(used, self.config.gradient_accumulation_steps.max(world));
        let mut accumulator =
            Accumulator::new(&self.model, &self.config, self.backend.as_deref_mut())?;
        // A separate critic is scored (and trained) alongside when the objective uses values.
        let critic = self
            .critic
            .as_ref()
            .filter(|_| objective.uses_values())
            .map(|c| c.model.clone());
        let mut critic_acc = critic
            .as_ref()
            .map(|c| Accumulator::new(c, &self.config, None))
            .transpose()?;
        let mut merged = MetricsAcc::default();
        let mut scored_tokens = 0usize;
        let uses_reference = objective.uses_reference();
        // Seconds in the forward pass and loss, in the backward pass and gradient accumulation.
        let (mut forward_s, mut backward_s) = (0.0, 0.0);
        for part in parts.into_iter().skip(rank).step_by(world) {
            // One temperature per forward pass.
            for indices in by_temperature(&part, used) {
                let group: Vec<&Sample> = indices.iter().map(|&i| &used[i]).collect();
                let score_batch = score_batch(&group);
                scored_tokens += score_batch.sequences.iter().map(Vec::len).sum::<usize>();
                let options = ScoreOptions {
                    temperature: group[0].temperature,
                    with_entropy: true,
                    share_prefixes: self.config.share_prompt_prefix,
                };
                let forward_start = Instant::now();
                let (scores, pass) = accumulator.score(&self.model, &score_batch, &options)?;
                let n = scores.rows.len();
                let (values, critic_pass) = match (&critic, &mut critic_acc) {
                    (Some(model), Some(acc)) => {
                        let options = ScoreOptions {
                            with_entropy: false,
                            ..options
                        };
                        let (s, pass) = acc.score(model, &score_batch, &options)?;
                        (s.values, pass)
                    }
                    _ => (scores.values.clone(), Backprop::Burn),
                };
                let behavior: Vec<f32> = group
                    .iter()
                    .flat_map(|s| s.trained(&s.behavior_logprobs))
                    .collect();
                let turns: Vec<u32> = group
                    .iter()
                    .flat_map(|s| {
                        s.turns
                            .iter()
                            .zip(&s.loss_mask)
                            .filter(|(_, m)| **m)
                            .map(|(t, _)| *t)
                    })
                    .collect();
                let off_policy = group.iter().any(|s| s.version != newest);
                let behavior =
                    Tensor::<1>::from_data(TensorData::new(behavior, [n]), &self.model.device());
                // The reference is scored only while the objective uses it (SCoRe's stage II
                // may run with `beta = 0` and keep the stage-I reference).
                let ref_logprobs = match reference {
                    Some(reference) if uses_reference => {
                        let options = ScoreOptions {
                            with_entropy: false,
                            ..options
                        };
                        let scores =
                            accumulator.score_detached(reference, &score_batch, &options)?;
                        Some(Tensor::from_inner(scores.logprobs.inner()))
                    }
                    _ => None,
                };
                let out = objective.loss(
                    MicroBatch {
                        indices: &indices,
                        samples: &group,
                        scores,
                        ref_logprobs,
                        values,
                        behavior,
                        turns: &turns,
                        off_policy,
                    },
                    normalizers,
                )?;
                let backward_start = Instant::now();
                forward_s += (backward_start - forward_start).as_secs_f64();
                let mut grads = out.loss.backward();
                accumulator.add(&self.model, &mut grads, pass)?;
                if let (Some(model), Some(acc)) = (&critic, &mut critic_acc) {
                    acc.add(model, &mut grads, critic_pass)?;
                }
                backward_s += backward_start.elapsed().as_secs_f64();
                merged.add(out.metrics);
            }
        }
        let optimizer_start = Instant::now();
        accumulator.all_reduce(self.collective.as_ref())?;
        if let Some(acc) = &mut critic_acc {
            acc.all_reduce(self.collective.as_ref())?;
        }
        let merged = merged.all_gather(self.collective.as_ref())?;
        let scored_tokens = sum_across_ranks(self.collective.as_ref(), scored_tokens as f64)?;
        // Cloning a module shares its tensors; the update builds new ones.
        let (model, report) = accumulator.step(&mut self.optimizer, self.model.clone(), lr)?;
        self.model = model;
        if let (Some(model), Some(acc), Some(c)) = (critic, critic_acc, self.critic.as_mut()) {
            let critic_lr = c.schedule.at(c.optimizer.step_count());
            let (model, report) = acc.step(&mut c.optimizer, model, critic_lr)?;
            c.model = model;
            metrics.insert("ppo/critic_grad_norm".into(), report.grad_norm);
            metrics.insert("ppo/critic_lr".into(), critic_lr);
        }
        metrics.insert("time/learner_forward".into(), forward_s);
        metrics.insert("time/learner_backward".into(), backward_s);
        metrics.insert(
            "time/learner_optimizer".into(),
            optimizer_start.elapsed().as_secs_f64(),
        );
        merged.finish(&mut metrics);
        metrics.insert("grad_norm".into(), report.grad_norm);
        metrics.insert("grad_clip_scale".into(), report.clip_scale);
        metrics.insert("learner_scored_tokens".into(), scored_tokens);
        Ok(metrics)
    }

    /// Takes the learner out of its data-parallel group (it becomes a group of one) and returns
    /// the group.
    pub fn take_collective(&mut self) -> Box<dyn Collective> {
        std::mem::replace(&mut self.collective, Box::new(SingleProcess))
    }

    /// The data-parallel group this learner belongs to.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Makes this learner rank `collective.rank()` of a data-parallel group: each step trains
    /// its share of the micro-batches and sums gradients and metrics across the group. Every
    /// rank must hold the same weights and optimizer state and be given the same steps.
    pub fn set_collective(&mut self, collective: Box<dyn Collective>) {
        self.collective = collective;
    }

    /// One supervised step (negative log-likelihood of the masked tokens, token mean over the
    /// step) on `samples`, split into `gradient_accumulation_steps` micro-batches.
    ///
    /// # Errors
    /// Model input errors, empty batches.
    pub fn sft_step(&mut self, samples: &[Sample]) -> Result<StepMetrics, Error> {
        let start = Instant::now();
        let num_tokens: usize = samples.iter().map(Sample::trained_tokens).sum();
        let lr = self.schedule.at(self.optimizer.step_count());
        let mut accumulator =
            Accumulator::new(&self.model, &self.config, self.backend.as_deref_mut())?;
        let mut loss = 0.0f64;
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let parts = micro_batches(samples, self.config.gradient_accumulation_steps.max(world));
        for part in parts.into_iter().skip(rank).step_by(world) {
            let batch = ScoreBatch {
                sequences: part.iter().map(|&i| samples[i].tokens.clone()).collect(),
                loss_masks: part.iter().map(|&i| samples[i].loss_mask.clone()).collect(),
            };
            let options = ScoreOptions {
                share_prefixes: self.config.share_prompt_prefix,
                ..ScoreOptions::new(1.0)
            };
            let (scores, pass) = accumulator.score(&self.model, &batch, &options)?;
            let out = sft_loss(scores.logprobs, num_tokens)?;
            loss += out.metrics.loss as f64;
            accumulator.backward(&self.model, out.loss, pass)?;
        }
        accumulator.all_reduce(self.collective.as_ref())?;
        let loss = sum_across_ranks(self.collective.as_ref(), loss)?;
        // Cloning a module shares its tensors; the update builds new ones.
        let (model, report) = accumulator.step(&mut self.optimizer, self.model.clone(), lr)?;
        self.model = model;
        let mut metrics = StepMetrics::new();
        metrics.insert("sft/loss".into(), loss);
        metrics.insert("sft/tokens".into(), num_tokens as f64);
        metrics.insert("sft/grad_norm".into(), report.grad_norm);
        metrics.insert("sft/lr".into(), lr);
        metrics.insert("sft/seconds".into(), start.elapsed().as_secs_f64());
        Ok(metrics)
    }

    /// Replaces the loss and advantage configuration (SCoRe's stage switch). The KL reference
    /// is kept as it is: create it at construction or with [`Learner::freeze_reference`].
    pub fn set_objective(&mut self, loss: GrpoLossConfig, advantage: AdvantageConfig) {
        self.objective.loss = loss;
        self.objective.advantage = advantage;
    }

    /// The loss configuration in use.
    pub fn loss_config(&self) -> &GrpoLossConfig {
        &self.objective.loss
    }

    /// The objective in use.
    pub fn objective(&self) -> &ObjectiveConfig {
        &self.objective
    }

    /// Makes a frozen copy of the current weights the reference (when the objective uses one;
    /// a no-op otherwise). The trainer calls it after an SFT warm start, so the penalty anchors
    /// RL to the warm-started policy rather than to the model as loaded.
    pub fn freeze_reference(&mut self) {
        if self.objective.needs_reference() {
            self.reference = Some(self.model.valid());
        }
    }

    /// Replaces the reference (a resumed run restores the one it started RL with); ignored
    /// when the objective uses none. `reference` must have the policy's architecture.
    pub fn set_reference(&mut self, reference: Llama) {
        if self.objective.needs_reference() {
            self.reference = Some(reference.valid());
        }
    }

    /// The frozen reference, when the objective uses one.
    pub fn reference(&self) -> Option<&Llama> {
        self.reference.as_ref()
    }

    /// Replaces the optimizer and schedule (e.g. after an SFT warm start, RL starts fresh). With
    /// a backend, `optimizer` should be fresh (step 0): the backend restarts its moments at the
    /// next step, and `optimizer`'s own moments are not used.
    pub fn reset_optimizer(&mut self, mut optimizer: AdamW, schedule: Schedule) {
        if self.backend.is_none() {
            optimizer.reserve(&self.model);
        }
        self.optimizer = optimizer;
        self.schedule = schedule;
    }

    /// The AdamW configuration in use.
    pub fn optim_config(&self) -> AdamWConfig {
        self.optimizer.config().clone()
    }

    /// Runs every following step's scoring pass, backward and AdamW update on `backend`
    /// (`crate::TrainBackend`: e.g. `kaizen-gpu`'s CUDA pass), which must hold this learner's
    /// current weights. The loss is still built here, on the backend's log-probs; after each
    /// step the learner's model (what [`Learner::policy`] publishes and checkpoints save) is
    /// rebuilt from the backend's weights, and the optimizer only counts the step (the moments
    /// live on the backend). The optimizer's moments so far (a resumed run's, restored from its
    /// checkpoint) move to the backend (`TrainBackend::set_optimizer_state`).
    ///
    /// # Errors
    /// [`Error::Backend`] naming the option a backend cannot run: a value head or separate
    /// critic (PPO), an entropy bonus (`loss.entropy_coef`), `learner.bf16`; naming the
    /// optimizer moment (and the shape it should have) that does not fit the model or that the
    /// backend refuses. The learner is unchanged then. (`learner.share_prompt_prefix` only
    /// changes how the CPU pass computes the same log-probs; a backend scores its rows as it
    /// does.)
    pub fn set_backend(&mut self, mut backend: Box<dyn TrainBackend>) -> Result<(), Error> {
        let name = backend.name().to_string();
        let refuse = |what: &str| {
            Err(Error::Backend(format!(
                "the `{name}` learner backend scores log-probs only, in f32: {what}"
            )))
        };
        if self.model.config().value_head || self.objective.needs_value_head() {
            return refuse("it has no value head (PPO's critic); use `learner.device = \"cpu\"`");
        }
        if self.critic.is_some() || self.objective.needs_critic() {
            return refuse(
                "it does not train a separate PPO critic; use `learner.device = \"cpu\"`",
            );
        }
        if self.objective.loss.entropy_coef != 0.0 {
            return refuse(&format!(
                "it has no entropies for the entropy bonus; set `loss.entropy_coef = 0` (got {})",
                self.objective.loss.entropy_coef
            ));
        }
        if self.config.bf16 {
            return refuse("it has no bf16 products; set `learner.bf16 = false`");
        }
        let moments = self.optimizer.take_moments_for(&self.model).map_err(|m| {
            Error::Backend(format!(
                "the optimizer state (a checkpoint's `optimizer.safetensors`) does not fit the \
                 model: {m}"
            ))
        })?;
        if moments.step > 0
            && let Err(e) = backend.set_optimizer_state(&moments)
        {
            self.optimizer.put_back_moments(&self.model, moments);
            return Err(e);
        }
        self.backend = Some(backend);
        Ok(())
    }

    /// The injected training backend's name, when one runs the steps.
    pub fn backend(&self) -> Option<&str> {
        self.backend.as_deref().map(TrainBackend::name)
    }
}

/// `value` summed over the data-parallel group (exact for counts below 2^53).
fn sum_across_ranks(collective: &dyn Collective, value: f64) -> Result<f64, Error> {
    if collective.world_size() == 1 {
        return Ok(value);
    }
    let mut sum = 0.0;
    for (rank, bytes) in collective
        .all_gather_bytes(&value.to_le_bytes())?
        .into_iter()
        .enumerate()
    {
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| Error::Collective(format!("rank {rank} sent a malformed count")))?;
        sum += f64::from_le_bytes(bytes);
    }
    Ok(sum)
}
