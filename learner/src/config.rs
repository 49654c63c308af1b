//! The job configuration: one TOML file describes a training job.

use std::path::{Path, PathBuf};

use kaizen_algorithms::{AdvantageConfig, DpoConfig, GrpoLossConfig, NftConfig, PpoConfig};
use kaizen_envs::rewards::VoteAnswers;
use kaizen_model::LlamaConfig;
use kaizen_tracking::TrackingConfig;
use kaizen_transport::SamplingConfig;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::learner::LearnerConfig;
use crate::objective::Algorithm;
use crate::optimizer::AdamWConfig;
use crate::schedule::SchedulerType;
use crate::score_stages::ScoreConfig;

mod algorithm;
mod cluster;
mod overrides;

pub use cluster::{ClusterConfig, WeightsTransport};

use overrides::{apply_override, expand_table};
pub use overrides::{expand_path, kaizen_cache};

/// A whole training job. Every section but `[run]`, `[model]` and `[[env]]` has defaults; every
/// unknown key is an error naming the key and the file. See `docs/configuration.md` for each
/// field; names follow TRL's `GRPOConfig` where the concept is the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The RL algorithm: `grpo` (default), `ppo`, `dpo` or `nft` (a top-level key, before the
    /// first table). See `kaizen_learner::objective`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Run identity, seed, mode, length.
    pub run: RunConfig,
    /// The policy to train.
    pub model: ModelConfig,
    /// Environments (at least one), mixed by weight.
    #[serde(rename = "env")]
    pub envs: Vec<EnvConfig>,
    /// Actor count and concurrency.
    #[serde(default)]
    pub actors: ActorsConfig,
    /// Sampling of training episodes.
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// GRPO batch shape and sampling schedule.
    #[serde(default)]
    pub grpo: GrpoConfig,
    /// Policy loss (`epsilon`, `epsilon_high`, `beta`, `loss_type`, …).
    #[serde(default)]
    pub loss: GrpoLossConfig,
    /// Advantages (`scale_rewards`, `adv_estimator`, `gamma`).
    #[serde(default)]
    pub advantage: AdvantageConfig,
    /// Micro-batching and off-policy control.
    #[serde(default)]
    pub learner: LearnerConfig,
    /// Optimizer and learning-rate schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Optional supervised warm start before RL.
    #[serde(default)]
    pub sft: Option<SftConfig>,
    /// PPO's critic (`algorithm = "ppo"`; defaults when absent).
    #[serde(default)]
    pub ppo: Option<PpoConfig>,
    /// DPO / IPO (`algorithm = "dpo"`; defaults when absent).
    #[serde(default)]
    pub dpo: Option<DpoConfig>,
    /// NFT (`algorithm = "nft"`; defaults when absent).
    #[serde(default)]
    pub nft: Option<NftConfig>,
    /// Optional offline preference stage (DPO / IPO on JSONL pairs) after the warm start and
    /// before RL.
    #[serde(default)]
    pub preference: Option<PreferenceConfig>,
    /// Optional SCoRe two-stage schedule (owns `loss.beta`, the per-turn weights and
    /// `advantage.progress_bonus`).
    #[serde(default)]
    pub score: Option<ScoreConfig>,
    /// Held-out evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Run store and MLflow mirror.
    #[serde(default)]
    pub tracking: TrackingConfig,
    /// Multi-process jobs (`kaizen launch`): ports, timeouts, size limits.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Experiment name (the run store groups runs by it; MLflow experiment).
    pub experiment: String,
    /// Run name (default: generated).
    #[serde(default)]
    pub name: Option<String>,
    /// Seed of everything random in the run (environment seeds, sampling streams).
    #[serde(default)]
    pub seed: u64,
    /// `sync`: actors wait while the learner steps (on-policy, bit-reproducible on CPU);
    /// `async`: generation and learning overlap, bounded by `learner.max_policy_lag`.
    #[serde(default)]
    pub mode: Mode,
    /// Optimizer steps of RL.
    pub max_steps: u64,
    /// Wall-clock budget in minutes (0: none). Counted from the start of training (SFT warm
    /// start and the first evaluation included; a resumed run starts a new budget); when it is
    /// spent, RL stops at the next step boundary and the run ends as if `max_steps` were
    /// reached (final evaluation, checkpoint). The schedule still spans `max_steps`.
    #[serde(default)]
    pub time_limit_minutes: f64,
    /// What `time_limit_minutes` bounds: RL (`"rl"`, the default: the final evaluation and
    /// checkpoint come after the budget) or the whole job (`"job"`: RL stops early enough that
    /// its next step and the final evaluation end inside the budget).
    #[serde(default)]
    pub time_limit_scope: TimeLimitScope,
    /// Trajectories per step written to `samples.jsonl` in the run directory (readable text).
    #[serde(default = "default_log_samples")]
    pub log_samples: usize,
}

fn default_log_samples() -> usize {
    2
}

/// What `run.time_limit_minutes` bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeLimitScope {
    /// RL: once the budget is spent, RL stops at the next step boundary; the final evaluation
    /// and checkpoint follow, after the budget.
    #[default]
    Rl,
    /// The whole job: RL does not start a step that would not end, with the final evaluation
    /// after it, inside the budget. The next step is expected to take as long as the last one,
    /// the final evaluation as long as the last evaluation (0 while none has run).
    Job,
}

/// Sync or async training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Actors wait while the learner steps.
    #[default]
    Sync,
    /// Actors keep generating with the newest weights they have.
    Async,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `tiny`, `smollm2`, a `.gguf` file or a Hugging Face directory.
    pub source: String,
    /// Seed of the random initialisation (`tiny` only).
    #[serde(default)]
    pub init_seed: u64,
    /// Architecture of the `tiny` model (default `LlamaConfig::tiny(vocab of the byte tokenizer)`).
    #[serde(default)]
    pub tiny: Option<LlamaConfig>,
    /// `model` (the model's own template) or `plain`.
    #[serde(default = "default_template")]
    pub chat_template: String,
}

fn default_template() -> String {
    "model".into()
}

/// One `[[env]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Registered environment name (see `kaizen envs list`).
    pub name: String,
    /// Relative frequency of this environment's groups.
    #[serde(default = "one")]
    pub weight: f64,
    /// The environment's parameters (its own TOML table).
    #[serde(default)]
    pub params: toml::Table,
    /// Parameters of the held-out evaluation variant (default: `params`, with evaluation seeds
    /// far from training seeds).
    #[serde(default)]
    pub eval_params: Option<toml::Table>,
    /// The analogical twin of this environment (Co-Reward): keys that replace `params`' to
    /// ask the same problem, for the same seed, another way with the same answer, e.g.
    /// `twin = { ask = "twin" }` for `self_correct`. With `[grpo] reward_source =
    /// "co_reward"` every group of this environment is paired with a group of its twin. The
    /// twin is an environment slot of its own, named `<name>_twin`, after the evaluation
    /// slots ([`JobConfig::twin_slot`]).
    #[serde(default)]
    pub twin: Option<toml::Table>,
}

impl EnvConfig {
    /// The twin's parameters: `params` with the keys of `twin` replaced (`None` without a
    /// twin).
    pub fn twin_params(&self) -> Option<toml::Table> {
        let mut params = self.params.clone();
        params.extend(self.twin.clone()?);
        Some(params)
    }
}

fn one() -> f64 {
    1.0
}

/// `[actors]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsConfig {
    /// Number of actors.
    pub count: usize,
    /// Episodes each actor plays at once (their generations share batches).
    pub episodes_in_flight: usize,
    /// Longest a single environment call may take, seconds.
    pub env_timeout_s: f64,
    /// Most requests per episode.
    pub max_turns: usize,
    /// Keys and values kept between an episode's turns, MiB per actor (0: every turn prefills
    /// its whole conversation again). Beyond it the oldest kept turns are evicted and
    /// prefilled again when continued (counted in `actors/kv_evicted`).
    pub kv_cache_mib: f64,
    /// What kept keys and values become when new weights arrive between two turns of an
    /// episode: `"recompute"` (drop them; the next turn is prefilled with the new weights, so
    /// behaviour log-probs are exactly one model's) or `"keep"` (attend over the older weights'
    /// keys and values, as PipelineRL's in-flight updates; cheaper, not exact).
    pub kv_across_versions: KvAcrossVersions,
    /// The weights the actors decode with: `"f32"`, `"int8"` (projections quantised in
    /// blocks of 32 per output row, GGUF Q8_0-style, once per weights version) or `"bf16"`
    /// (projections and their inputs rounded to bfloat16, f32 sums; on Intel AMX tiles where
    /// the CPU has them). The actors sample from that model and their behaviour log-probs are
    /// exactly its own; the learner trains the f32 weights and sees the difference as an
    /// off-policy gap (`logprob_gap_*` metrics) its importance ratio corrects. int8 is fastest
    /// at a few rows (memory-bound); bf16 on an AMX CPU at 8 rows and more (BENCHMARKS.md).
    pub decode_weights: DecodeWeightsConfig,
    /// Where the actors sample: `"cpu"` (kaizen's CPU decoding) or `"cuda"` (the batched GPU
    /// sampler, `kaizen_gpu::actor_rows`; needs the `gpu` feature and an NVIDIA driver, on GPU
    /// 0 for `kaizen train`, the local rank's for an actor process). Each weights version the
    /// learner publishes is uploaded from its host copy (no device-to-device broadcast).
    /// `"cuda"` keeps nothing between turns (`kv_cache_mib` is unused: each turn prefills its
    /// whole conversation, a searched branch too) and samples with temperature and top-p only:
    /// it needs `kv_across_versions = "recompute"`, `decode_weights = "f32"`,
    /// `sampling.top_k = 0` and `sampling.min_p = 0` (errors name the key otherwise).
    pub device: ActorsDevice,
}

/// `actors.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorsDevice {
    /// kaizen's CPU decoding.
    #[default]
    Cpu,
    /// The batched GPU sampler (`--features gpu`).
    Cuda,
}

/// `actors.decode_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeWeightsConfig {
    /// The f32 weights.
    #[default]
    F32,
    /// int8 projections.
    Int8,
    /// bfloat16 projections and inputs.
    Bf16,
}

/// `actors.kv_across_versions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvAcrossVersions {
    /// Drop kept keys and values when the weights change (exact behaviour log-probs).
    #[default]
    Recompute,
    /// Keep them across weight versions (not exact).
    Keep,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            count: 1,
            episodes_in_flight: 64,
            env_timeout_s: 30.0,
            max_turns: 64,
            kv_cache_mib: 1024.0,
            kv_across_versions: KvAcrossVersions::Recompute,
            decode_weights: DecodeWeightsConfig::F32,
            device: ActorsDevice::Cpu,
        }
    }
}

/// `[grpo]`: the batch of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// G, samples per prompt (TRL `num_generations`).
    pub num_generations: usize,
    /// Prompts (groups) per optimizer step.
    pub prompts_per_step: usize,
    /// DAPO dynamic sampling: replace groups whose rewards are all equal (no signal) with new
    /// ones, up to `max_resample_rounds` extra rounds per step.
    pub dynamic_sampling: bool,
    /// Extra sampling rounds per step for dynamic sampling.
    pub max_resample_rounds: usize,
    /// What the learner is rewarded with: the environment's rewards (`"env"`, the default), or
    /// each turn's self-certainty (`"self_certainty"`: the policy's own confidence, no
    /// verifier; Intuitor, Zhao et al. 2025). With the latter the environment's reward is
    /// still logged (`env/verifier_reward`, and how well self-certainty orders each group's
    /// samples as the verifier does, `self_certainty/agreement`), never trained on.
    /// `"majority_vote"`: label-free rewards over each whole group (TTRL, Zuo et al. 2025):
    /// the final answers of every trained turn of a prompt's `num_generations` episodes vote,
    /// and a turn earns 1 when its answer is the majority's, else 0; no gold answer is trained
    /// on (the environment's reward is logged as `env/verifier_reward`, with
    /// `env/majority_vote/*` monitors). `"co_reward"`: label-free rewards by cross-agreement
    /// (Co-Reward, Zhang et al. 2025): each group is paired with a group of the same problem
    /// asked by the environment's twin (`[[env]] twin`, required), and each group's turns earn
    /// 1 when their answer is the *other* group's majority answer; a step then trains
    /// `2 × prompts_per_step` groups (`env/co_reward/*` monitors). `"group"`: the group
    /// reward registered as `group_reward` (`kaizen_envs::rewards::GroupReward`, a user hook
    /// that sees each whole group before its rewards are final).
    pub reward_source: RewardSource,
    /// The registered group reward of `reward_source = "group"`
    /// (`kaizen_envs::Registry::register_group_reward`).
    pub group_reward: Option<String>,
    /// How a vote reads answers (`reward_source = "majority_vote"` or `"co_reward"`): `"math"` by
    /// value (`1/2` = `0.5`, and a restated `3 + 4` = 7), `"numeric"` only computed numbers
    /// (a restated question is no answer; use it with numeric verifiers).
    pub vote_answers: VoteAnswers,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            num_generations: 8,
            prompts_per_step: 8,
            dynamic_sampling: false,
            max_resample_rounds: 2,
            reward_source: RewardSource::Env,
            group_reward: None,
            vote_answers: VoteAnswers::Math,
        }
    }
}

/// `[grpo] reward_source`: see [`GrpoConfig::reward_source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    /// The environment's rewards (its verifier or judge).
    Env,
    /// Each turn's self-certainty (`kaizen_envs::rewards::relabel_with_self_certainty`).
    SelfCertainty,
    /// The group's majority answer as a pseudo-label
    /// (`kaizen_envs::rewards::relabel_group_by_majority`).
    MajorityVote,
    /// The twin group's majority answer as a pseudo-label
    /// (`kaizen_envs::rewards::relabel_twin_groups`).
    CoReward,
    /// A registered [`kaizen_envs::rewards::GroupReward`] (`[grpo] group_reward`).
    Group,
}

impl GrpoConfig {
    /// Groups trained per prompt: 2 under Co-Reward (the question's and its twin's), else 1.
    pub fn groups_per_prompt(&self) -> usize {
        if self.reward_source == RewardSource::CoReward {
            2
        } else {
            1
        }
    }
}

/// `[sft.self_generated] select`: see [`SelfGeneratedConfig::select`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Turns whose reward reaches `min_reward` (STaR / ReST-EM).
    Verifier,
    /// The `max_per_problem` turns of highest self-certainty per problem and turn, whatever
    /// the verifier says (best-of-N by the model's own confidence).
    SelfCertainty,
}

/// `[sft.self_generated] relabel_as`: see [`SelfGeneratedConfig::relabel_as`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelabelAs {
    /// The later turn's completion, as written.
    #[default]
    Completion,
    /// The environment's `info.first_replies` entry for the later turn.
    FirstReply,
}

/// `[optim]`: AdamW and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// `constant`, `linear` or `cosine`.
    pub lr_scheduler_type: SchedulerType,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// β₁.
    pub adam_beta1: f64,
    /// β₂.
    pub adam_beta2: f64,
    /// ε.
    pub adam_epsilon: f64,
    /// Decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-6,
            lr_scheduler_type: SchedulerType::Constant,
            warmup_steps: 0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

impl OptimConfig {
    /// The AdamW part.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            adam_beta1: self.adam_beta1,
            adam_beta2: self.adam_beta2,
            adam_epsilon: self.adam_epsilon,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
        }
    }
}

/// `[sft]`: supervised warm start before RL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// `self` (rejection sampling from the policy itself, STaR / ReST-EM: see
    /// [`SelfGeneratedConfig`]), `demonstrations` (expert episodes of the configured
    /// environments: an oracle, for comparison) or a JSONL file of `{"messages": [...]}` chat
    /// data (loss on assistant turns).
    pub source: String,
    /// Optimizer steps (with `source = "self"`: over all rounds, split evenly between them).
    pub steps: u64,
    /// Sequences per step.
    #[serde(default = "default_sft_batch")]
    pub batch_size: usize,
    /// Peak learning rate (cosine decay, 5% warm-up).
    #[serde(default = "default_sft_lr")]
    pub learning_rate: f64,
    /// `[sft.self_generated]`: the rounds of `source = "self"` (defaults when absent; an error
    /// with another `source`, as every unread section is).
    #[serde(default)]
    pub self_generated: Option<SelfGeneratedConfig>,
}

/// `[sft.self_generated]`: the self-generated warm start (`[sft] source = "self"`), after STaR
/// (Zelikman et al. 2022, "Bootstrapping Reasoning With Reasoning") and ReST-EM (Singh et al.
/// 2023, "Beyond Human Data"): each round samples `samples_per_problem` episodes of
/// `problems_per_round` training problems from the current policy, keeps every model turn the
/// verifier rewards with at least `min_reward` (for self-correction: a right first answer, and
/// a second answer that fixed or kept a right one, its first answer as context), and
/// fine-tunes on the kept turns for `steps / rounds` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfGeneratedConfig {
    /// Generate → filter → fine-tune rounds (≥ 1).
    pub rounds: u32,
    /// Training problems sampled per round (≥ 1).
    pub problems_per_round: usize,
    /// Episodes per problem, `k` of STaR's sampling (≥ 1).
    pub samples_per_problem: usize,
    /// Sampling temperature of the generated episodes (> 0).
    pub temperature: f32,
    /// A turn is kept when its reward is at least this (the verifier's 1 = right).
    pub min_reward: f32,
    /// Distinct kept completions per problem and turn at most (ReST-EM caps them so easy
    /// problems do not dominate; ≥ 1).
    pub max_per_problem: usize,
    /// Keep a right turn that repeats the agent's previous turn in its thread word for word.
    /// SCoRe (Kumar et al. 2024, §4) found that fine-tuning on self-generated corrections
    /// amplifies this no-edit mode; `false` drops such turns. On the main job dropping them
    /// did not help (BENCHMARKS.md, runs 16–17), so the default keeps them.
    pub keep_unchanged: bool,
    /// How turns are chosen: `"verifier"` (reward ≥ `min_reward`, the default) or
    /// `"self_certainty"`: per problem and turn index, the `max_per_problem` distinct
    /// completions the model was most certain of (Kang et al. 2025's best-of-N; Huang et al.
    /// 2024's "sharpening" by SFT on the model's own most-likely answers). No verifier is used
    /// to choose; it is only logged (`self_sft/selected_correct`).
    pub select: Selection,
    /// Keep a later turn only when it fixes its thread's previous turn (that turn's reward
    /// below `min_reward`): self-correction data made only of incorrect → correct episodes,
    /// never of right answers kept right, which teach the second attempt to copy the first
    /// (SCoRe, Kumar et al. 2024, §4). Dropped turns count in `self_sft/not_a_fix`.
    pub fixes_only: bool,
    /// B-STaR's adaptive temperature (Zeng et al. 2024, "B-STaR: Monitoring and Balancing
    /// Exploration and Exploitation in Self-Taught Reasoners", §4): when not empty, each round
    /// first plays the same `probe_problems` problems at every temperature listed here and samples the
    /// round at the one whose selected turns have the highest balance score (see
    /// `balance_target`); `temperature` is then unused. Each value > 0.
    pub temperatures: Vec<f32>,
    /// Problems of each temperature's probe (≥ 1 when `temperatures` is set).
    pub probe_problems: usize,
    /// B-STaR's `n*` in the balance score of a problem, `min(n'/n*, 1) · n'/n` with `n'` the
    /// distinct right final turns among the `n` selected (0 when none is selected): it asks for
    /// `n*` distinct right answers (exploration) that the selector picked without wrong ones
    /// (exploitation). The round's score (`self_sft/balance_score`) is the mean over problems.
    /// ≥ 1.
    pub balance_target: usize,
    /// B-STaR's reward threshold with self-certainty as the reward model (Zeng et al. 2024,
    /// §4; `select = "self_certainty"` only): a turn is kept only when its self-certainty is at
    /// least the `certainty_quantile`-quantile of the self-certainties of the round's turns at
    /// the same index (self-certainty has no fixed scale, so the threshold is a quantile of
    /// the round's own scores: 0.5 keeps the more certain half). In `[0, 1)`; 0 (the default)
    /// sets no threshold. The thresholds used are logged as `self_sft/certainty_threshold@t<i>`.
    pub certainty_quantile: f32,
    /// B-STaR's adaptive reward threshold: when not empty, each round (and each temperature
    /// probe) selects its turns once at every quantile listed here, as `certainty_quantile`, and
    /// keeps the selection with the highest balance score (the first on ties), logging each
    /// one's score (`self_sft/balance_at_quantile_<q>`) and the choice
    /// (`self_sft/certainty_quantile`). The turns are still chosen by self-certainty alone; the
    /// choice of threshold counts right answers with the verifier, as B-STaR's does with the
    /// training set's gold answers. Each value in `[0, 1)`; needs `select = "self_certainty"`.
    pub certainty_quantiles: Vec<f32>,
    /// STaR's rationalisation (Zelikman et al. 2022, §3.2): after a round's sampling, each
    /// problem with no right final turn is played `rationalize_samples` more times with the
    /// environment's hint (the gold answer, `Env::hint`) shown at these turns (1-based, counting
    /// the episode's requests; for self-correction `[2]` hints the second attempt, so a wrong
    /// first answer is followed by a fix). The selected turns are trained on without the hint
    /// in their context. Empty (the default): no rationalisation. Needs `select = "verifier"`.
    pub rationalize_turns: Vec<u32>,
    /// Hinted episodes per unsolved problem (≥ 1).
    pub rationalize_samples: usize,
    /// Evaluate the held-out set after every round but the last (`eval_round/...` at the SFT
    /// step the round ended on; the last round is the `eval/...` RL starts from), so the
    /// accuracy of each round of self-training is logged.
    pub evaluate_rounds: bool,
    /// SMART's relabelling (Liu et al. 2025, "SMART: Self-learning Meta-strategy Agent for
    /// Reasoning Tasks", §3): in an episode whose first turn is below `min_reward` and a later
    /// turn of the same agent and thread reaches it, the later turn's completion is also kept
    /// as the answer to the *first* turn's prompt, so the strategy that finally succeeded is
    /// learnt as the first choice. Needs `select = "verifier"`; counted in
    /// `self_sft/relabelled` (within `max_per_problem` distinct first-turn completions).
    pub relabel_first: bool,
    /// What `relabel_first` keeps as the first turn's answer: `"completion"` (the default),
    /// the later turn's completion as it was written (SMART: the winning strategy becomes the
    /// first choice); `"first_reply"`, the later turn's final answer written as a reply to
    /// the first prompt, which the environment reports as `info.first_replies[k]` for its
    /// `k`-th answered turn (`self_correct`: `\\boxed{answer}`, also what a program printed).
    /// The second distils what a later attempt worked out — with a program, or by
    /// correcting itself — into the first attempt's direct answer (Yu et al. 2024,
    /// "Distilling System 2 into System 1", <https://arxiv.org/abs/2407.06023>). Episodes
    /// without that entry are not relabelled.
    pub relabel_as: RelabelAs,
    /// Search each of the round's episodes as a tree (Monte-Carlo tree search over its turns,
    /// `kaizen_envs::search`): each of the `samples_per_problem` episodes of a problem is a tree
    /// of `search.rollouts` rollouts, and every rollout is filtered as an episode of its own.
    /// Only on environments that can fork (`household`). Unset (the default): no search.
    pub search: Option<kaizen_envs::search::TreeSearch>,
    /// ReST-MCTS*'s process rewards (Zhang et al. 2024, §3.2): the reward of each turn a tree
    /// holds becomes the value of the state it led to (the share of the tree's rollouts through
    /// it that succeeded), later turns the rollout's return, before the filter at
    /// `min_reward`. Needs `search`.
    pub process_rewards: bool,
    /// Agent-R's reflection data (Yuan et al. 2025, §3.2): each failed rollout of a tree is
    /// cut at its first error (the first state from which no rollout succeeded) and spliced
    /// with a success from the parent state after a revision turn; these conversations are
    /// trained with the round's kept turns and written to `self_sft/reflection_<round>.jsonl`.
    /// A rollout succeeds when its return reaches `min_reward`. Needs `search`.
    pub reflection: bool,
}

impl Default for SelfGeneratedConfig {
    fn default() -> Self {
        Self {
            rounds: 2,
            problems_per_round: 160,
            samples_per_problem: 4,
            temperature: 1.0,
            min_reward: 1.0,
            max_per_problem: 2,
            keep_unchanged: true,
            select: Selection::Verifier,
            fixes_only: false,
            temperatures: Vec::new(),
            probe_problems: 16,
            balance_target: 2,
            certainty_quantile: 0.0,
            certainty_quantiles: Vec::new(),
            rationalize_turns: Vec::new(),
            rationalize_samples: 1,
            evaluate_rounds: false,
            relabel_first: false,
            relabel_as: RelabelAs::Completion,
            search: None,
            process_rewards: false,
            reflection: false,
        }
    }
}

fn default_sft_batch() -> usize {
    16
}

fn default_sft_lr() -> f64 {
    1e-4
}

/// `[preference]`: offline DPO / IPO on preference pairs from a JSONL file
/// (`crate::preference_data`), after `[sft]` and before RL. The reference is the policy as the
/// stage begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceConfig {
    /// JSONL of `{"prompt", "chosen", "rejected"}` (TRL's standard or conversational format).
    pub source: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs per step.
    #[serde(default = "default_preference_batch")]
    pub batch_size: usize,
    /// Peak learning rate (cosine decay, 5% warm-up).
    #[serde(default = "default_preference_lr")]
    pub learning_rate: f64,
    /// β of the implicit reward (TRL default 0.1); > 0.
    #[serde(default = "default_preference_beta")]
    pub beta: f32,
    /// `sigmoid` (DPO) or `ipo`.
    #[serde(default)]
    pub loss_type: kaizen_algorithms::PreferenceLoss,
}

fn default_preference_batch() -> usize {
    8
}

fn default_preference_lr() -> f64 {
    5e-6
}

fn default_preference_beta() -> f32 {
    0.1
}

impl PreferenceConfig {
    /// The DPO loss settings.
    pub fn dpo(&self) -> DpoConfig {
        DpoConfig {
            beta: self.beta,
            loss_type: self.loss_type,
        }
    }
}

/// `[eval]`: held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many RL steps (0 = only at start and end).
    pub every: u64,
    /// Evaluate before training.
    pub at_start: bool,
    /// Evaluate after training.
    pub at_end: bool,
    /// Problems (episodes) per environment.
    pub num_problems: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f32,
    /// Samples per problem for pass@k (0 = off); at `pass_k_temperature`.
    pub pass_k: usize,
    /// Temperature of the pass@k samples.
    pub pass_k_temperature: f32,
    /// The episode metric that says "solved" for pass@k.
    pub pass_metric: String,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 0,
            at_start: true,
            at_end: true,
            num_problems: 200,
            temperature: 0.0,
            pass_k: 0,
            pass_k_temperature: 1.0,
            pass_metric: "correct@t1".into(),
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many RL steps (0 = only at the end).
    pub every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 10, keep: 2 }
    }
}

impl JobConfig {
    /// The actors' slot of environment `env`'s twin (`[[env]] twin`): the slots are the
    /// training environments, their evaluation variants, then the twins in environment order
    /// (see `build_envs`). `None` when `env` has no twin.
    pub fn twin_slot(&self, env: usize) -> Option<usize> {
        self.envs.get(env)?.twin.as_ref()?;
        let before = self.envs[..env].iter().filter(|e| e.twin.is_some()).count();
        Some(2 * self.envs.len() + before)
    }

    /// Reads `path`, applies `--set key.path=value` overrides, and validates.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Config`] naming the file and the key for
    /// TOML syntax errors, unknown keys, wrong types and invalid values.
    pub fn load(path: &Path, overrides: &[String]) -> Result<(Self, toml::Table), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses config text (`path` labels errors).
    ///
    /// # Errors
    /// As [`JobConfig::load`].
    pub fn parse(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<(Self, toml::Table), Error> {
        let fail = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o).map_err(|message| Error::Config {
                path: PathBuf::from("--set"),
                message,
            })?;
        }
        let mut config: JobConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| fail(e.to_string()))?;
        for env in &mut config.envs {
            expand_table(&mut env.params);
            if let Some(p) = &mut env.eval_params {
                expand_table(p);
            }
        }
        if let Some(sft) = &mut config.sft {
            sft.source = expand_path(&sft.source);
        }
        if let Some(preference) = &mut config.preference {
            preference.source = expand_path(&preference.source);
        }
        config.validate().map_err(fail)?;
        algorithm::check_sections(&table, config.algorithm).map_err(fail)?;
        Ok((config, table))
    }

    /// The options `actors.device = "cuda"` cannot run (the GPU engine samples with
    /// temperature and top-p, from f32 weights, and keeps no keys and values between turns),
    /// each named.
    fn check_cuda_actors(&self) -> Result<(), String> {
        let refuse = |what: String| {
            Err(format!(
                "`actors.device = \"cuda\"`: {what} (the GPU sampler decodes f32 weights with \
                 temperature and top-p and keeps no keys and values between turns; docs/gpu.md)"
            ))
        };
        if self.actors.decode_weights != DecodeWeightsConfig::F32 {
            return refuse(format!(
                "set `actors.decode_weights = \"f32\"` (got {:?})",
                self.actors.decode_weights
            ));
        }
        if self.actors.kv_across_versions != KvAcrossVersions::Recompute {
            return refuse("set `actors.kv_across_versions = \"recompute\"`".into());
        }
        if self.sampling.top_k != 0 {
            return refuse(format!(
                "set `sampling.top_k = 0` (got {})",
                self.sampling.top_k
            ));
        }
        if self.sampling.min_p != 0.0 {
            return refuse(format!(
                "set `sampling.min_p = 0` (got {})",
                self.sampling.min_p
            ));
        }
        let generated = self.sft.as_ref().and_then(|s| s.self_generated.as_ref());
        let uses_certainty = self.grpo.reward_source == RewardSource::SelfCertainty
            || generated.is_some_and(|g| g.select == Selection::SelfCertainty);
        if uses_certainty {
            return refuse(
                "`grpo.reward_source = \"self_certainty\"` and `sft.self_generated.select = \
                 \"self_certainty\"` need each completion's self-certainty, which the GPU \
                 sampler does not compute"
                    .into(),
            );
        }
        Ok(())
    }

    /// The options `learner.device = "cuda"` cannot run (the GPU pass scores log-probs only,
    /// in f32), each named. `learner.share_prompt_prefix` is not among them: it changes how the
    /// CPU pass computes the same log-probs, and the GPU pass scores every row in full.
    fn check_cuda_learner(&self) -> Result<(), String> {
        let refuse = |what: String| {
            Err(format!(
                "`learner.device = \"cuda\"`: {what} (the GPU training pass scores log-probs \
                 only, in f32; docs/gpu.md)"
            ))
        };
        if self.learner.bf16 {
            return refuse("set `learner.bf16 = false` (no bf16 products on the GPU yet)".into());
        }
        let objective = self.objective_at(0);
        if objective.needs_value_head() || objective.needs_critic() {
            return refuse(format!(
                "`algorithm = \"{}\"` needs a value head or critic, which the GPU pass does not \
                 have; use `learner.device = \"cpu\"`",
                objective.algorithm.name()
            ));
        }
        if self.loss.entropy_coef != 0.0 {
            return refuse(format!(
                "set `loss.entropy_coef = 0` (got {}; the GPU pass computes no entropies)",
                self.loss.entropy_coef
            ));
        }
        Ok(())
    }

    /// Checks values serde cannot.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.cluster.validate()?;
        if self.envs.is_empty() {
            return Err("at least one [[env]] is required".into());
        }
        if !(self.actors.kv_cache_mib.is_finite()
            && (0.0..=1_048_576.0).contains(&self.actors.kv_cache_mib))
        {
            return Err(format!(
                "`actors.kv_cache_mib` = {}: expected a number of MiB in [0, 1048576] (0 keeps \
                 nothing between turns)",
                self.actors.kv_cache_mib
            ));
        }
        match (self.grpo.reward_source, &self.grpo.group_reward) {
            (RewardSource::Group, None) => {
                return Err(
                    "`grpo.reward_source = \"group\"` needs `grpo.group_reward`, the name \
                            a group reward was registered under"
                        .into(),
                );
            }
            (RewardSource::Group, Some(_)) | (_, None) => {}
            (_, Some(name)) => {
                return Err(format!(
                    "`grpo.group_reward = {name:?}` is used only with `grpo.reward_source = \
                     \"group\"`"
                ));
            }
        }
        for (i, e) in self.envs.iter().enumerate() {
            if !(e.weight.is_finite() && e.weight > 0.0) {
                return Err(format!("env[{i}].weight must be > 0, got {}", e.weight));
            }
            if self.grpo.reward_source == RewardSource::CoReward && e.twin.is_none() {
                return Err(format!(
                    "`grpo.reward_source = \"co_reward\"` pairs every group with its twin, but \
                     env[{i}] ({}) has no `twin` (e.g. `twin = {{ ask = \"twin\" }}` for \
                     self_correct)",
                    e.name
                ));
            }
        }
        let positive = [
            ("grpo.num_generations", self.grpo.num_generations),
            ("grpo.prompts_per_step", self.grpo.prompts_per_step),
            ("actors.count", self.actors.count),
            ("actors.episodes_in_flight", self.actors.episodes_in_flight),
            (
                "learner.gradient_accumulation_steps",
                self.learner.gradient_accumulation_steps,
            ),
            (
                "sampling.max_completion_length",
                self.sampling.max_completion_length,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("`{key}` must be >= 1"));
            }
        }
        if self.learner.bf16 && !self.learner.cpu_kernels {
            return Err(
                "`learner.bf16 = true` needs `learner.cpu_kernels = true` (the mixed-precision \
                 products are the CPU training pass's)"
                    .into(),
            );
        }
        if self.learner.device == crate::LearnerDevice::Cuda {
            self.check_cuda_learner()?;
        }
        if self.actors.device == ActorsDevice::Cuda {
            self.check_cuda_actors()?;
        }
        if !(self.optim.learning_rate.is_finite() && self.optim.learning_rate >= 0.0) {
            return Err(format!(
                "`optim.learning_rate` must be >= 0, got {}",
                self.optim.learning_rate
            ));
        }
        if !(self.actors.env_timeout_s.is_finite() && self.actors.env_timeout_s > 0.0) {
            return Err("`actors.env_timeout_s` must be > 0".into());
        }
        if let Some(g) = self.sft.as_ref().and_then(|s| s.self_generated.as_ref()) {
            if g.rounds == 0 || g.problems_per_round == 0 || g.samples_per_problem == 0 {
                return Err("`sft.self_generated`: `rounds`, `problems_per_round` and \
                            `samples_per_problem` must be >= 1"
                    .into());
            }
            if g.max_per_problem == 0 {
                return Err("`sft.self_generated.max_per_problem` must be >= 1".into());
            }
            if let Some(t) = g
                .temperatures
                .iter()
                .find(|t| !(**t > 0.0 && t.is_finite()))
            {
                return Err(format!(
                    "`sft.self_generated.temperatures` must all be > 0, got {t}"
                ));
            }
            if !g.temperatures.is_empty() && g.probe_problems == 0 {
                return Err("`sft.self_generated.probe_problems` must be >= 1 when \
                            `temperatures` is set"
                    .into());
            }
            if g.problems_per_round >= 1 << 24 || g.probe_problems >= 1 << 24 {
                return Err(
                    "`sft.self_generated.problems_per_round` and `probe_problems` must \
                            be < 16777216 (they number the round's groups)"
                        .into(),
                );
            }
            if g.balance_target == 0 {
                return Err("`sft.self_generated.balance_target` must be >= 1".into());
            }
            for (name, q) in std::iter::once(("certainty_quantile", &g.certainty_quantile)).chain(
                g.certainty_quantiles
                    .iter()
                    .map(|q| ("certainty_quantiles", q)),
            ) {
                if !(0.0..1.0).contains(q) {
                    return Err(format!(
                        "`sft.self_generated.{name}` must be in [0, 1) (a quantile of the \
                         round's self-certainties), got {q}"
                    ));
                }
            }
            if (g.certainty_quantile > 0.0 || !g.certainty_quantiles.is_empty())
                && g.select != Selection::SelfCertainty
            {
                return Err(
                    "`sft.self_generated.certainty_quantile(s)` needs `select = \
                            \"self_certainty\"`: it thresholds the self-certainty of the turns"
                        .into(),
                );
            }
            if g.temperatures.len() >= 255 {
                return Err("`sft.self_generated.temperatures` holds at most 254 values".into());
            }
            if g.rationalize_turns.contains(&0) {
                return Err(
                    "`sft.self_generated.rationalize_turns` are 1-based turn numbers: \
                            each must be >= 1"
                        .into(),
                );
            }
            if !g.rationalize_turns.is_empty() {
                if g.rationalize_samples == 0 {
                    return Err(
                        "`sft.self_generated.rationalize_samples` must be >= 1 when \
                                `rationalize_turns` is set"
                            .into(),
                    );
                }
                if g.select != Selection::Verifier {
                    return Err("`sft.self_generated.rationalize_turns` needs `select = \
                                \"verifier\"`: the hint is the gold answer"
                        .into());
                }
            }
            if g.relabel_first && g.select != Selection::Verifier {
                return Err(
                    "`sft.self_generated.relabel_first` needs `select = \"verifier\"`: \
                            it relabels the turn the verifier accepted"
                        .into(),
                );
            }
            if !(g.temperature > 0.0 && g.temperature.is_finite()) {
                return Err(format!(
                    "`sft.self_generated.temperature` must be > 0, got {}",
                    g.temperature
                ));
            }
            match &g.search {
                Some(search) => search
                    .validate()
                    .map_err(|e| format!("`sft.self_generated.search`: {e}"))?,
                None if g.process_rewards || g.reflection => {
                    return Err("`sft.self_generated.process_rewards` and `reflection` need                                 `search` (they read the searched trees)"
                        .into());
                }
                None => {}
            }
        }
        if let Some(sft) = &self.sft
            && sft.self_generated.is_some()
            && sft.source != "self"
        {
            return Err(format!(
                "`[sft.self_generated]` is read only with `sft.source = \"self\"`, got `{}`",
                sft.source
            ));
        }
        if let Some(sft) = &self.sft
            && sft.batch_size == 0
        {
            return Err("`sft.batch_size` must be >= 1".into());
        }
        if let Some(p) = &self.preference {
            if p.batch_size == 0 {
                return Err("`preference.batch_size` must be >= 1".into());
            }
            if !(p.beta.is_finite() && p.beta > 0.0) {
                return Err(format!("`preference.beta` must be > 0, got {}", p.beta));
            }
            if !(p.learning_rate.is_finite() && p.learning_rate >= 0.0) {
                return Err(format!(
                    "`preference.learning_rate` must be >= 0, got {}",
                    p.learning_rate
                ));
            }
        }
        if !(self.sampling.temperature.is_finite() && self.sampling.temperature > 0.0) {
            return Err(format!(
                "`sampling.temperature` must be a finite value > 0 for training (the learner \
                 scores at it), got {}",
                self.sampling.temperature
            ));
        }
        if !(self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0) {
            return Err(format!(
                "`sampling.top_p` must be in (0, 1], got {}",
                self.sampling.top_p
            ));
        }
        if !(self.sampling.min_p >= 0.0 && self.sampling.min_p < 1.0) {
            return Err(format!(
                "`sampling.min_p` must be in [0, 1), got {}",
                self.sampling.min_p
            ));
        }
        if self.grpo.num_generations < 2 {
            return Err(format!(
                "`grpo.num_generations` must be >= 2 (group-relative advantages of a group of \
                 one are always 0), got {}",
                self.grpo.num_generations
            ));
        }
        if !(0.0..=1.0).contains(&self.advantage.gamma) {
            return Err(format!(
                "`advantage.gamma` must be in [0, 1], got {}",
                self.advantage.gamma
            ));
        }
        let limit = self.run.time_limit_minutes;
        if !(limit.is_finite() && limit >= 0.0) {
            return Err(format!(
                "`run.time_limit_minutes` must be finite and >= 0 (0 = no limit), got {limit}"
            ));
        }
        let bonus = self.advantage.progress_bonus;
        if !(bonus.is_finite() && bonus >= 0.0) {
            return Err(format!(
                "`advantage.progress_bonus` must be finite and >= 0, got {bonus}"
            ));
        }
        self.loss.validate().map_err(|e| format!("[loss]: {e}"))?;
        if let Some(score) = &self.score {
            score.validate(&self.loss, &self.advantage)?;
        }
        self.validate_algorithm()
    }
}

#[cfg(test)]
mod tests;
