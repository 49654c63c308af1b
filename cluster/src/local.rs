//! Actors in the learner's process: an `ActorPool` behind the transport interfaces.

use std::sync::Arc;
use std::time::Duration;

use kaizen_actors::{ActorConfig, DecodeDevice, EngineConfig, KvAcrossVersions, LocalActors};
use kaizen_envs::EpisodeLimits;
use kaizen_learner::{ActorsDevice, ActorsSpec, Error, JobConfig, Launcher, Mode, StartedActors};
use kaizen_model::{DecodeWeights, GenerateOptions, Tokenizer};

/// Tokio worker threads of the actors' runtime (episodes are light; decode runs on the
/// engines' own threads).
const WORKER_THREADS: usize = 2;

/// The actors' configuration of a job (`[actors]`, `[sampling]`, the mode's batching window).
pub fn actor_config(config: &JobConfig, tokenizer: &Tokenizer) -> ActorConfig {
    ActorConfig {
        actors: config.actors.count,
        episodes_in_flight: config.actors.episodes_in_flight,
        sampling: config.sampling.clone(),
        limits: EpisodeLimits {
            env_call_timeout: Duration::from_secs_f64(config.actors.env_timeout_s),
            respond_timeout: None,
            max_turns: config.actors.max_turns,
        },
        engine: EngineConfig {
            generate: GenerateOptions {
                eos_token_ids: tokenizer.eos_token_ids().to_vec(),
                decode_weights: match config.actors.decode_weights {
                    kaizen_learner::DecodeWeightsConfig::F32 => DecodeWeights::F32,
                    kaizen_learner::DecodeWeightsConfig::Int8 => DecodeWeights::Int8,
                    kaizen_learner::DecodeWeightsConfig::Bf16 => DecodeWeights::Bf16,
                },
                ..GenerateOptions::default()
            },
            kv_cache_bytes: (config.actors.kv_cache_mib * 1024.0 * 1024.0) as usize,
            kv_across_versions: match config.actors.kv_across_versions {
                kaizen_learner::KvAcrossVersions::Recompute => KvAcrossVersions::Recompute,
                kaizen_learner::KvAcrossVersions::Keep => KvAcrossVersions::Keep,
            },
            ..EngineConfig::new(
                tokenizer,
                match config.run.mode {
                    Mode::Sync => None,
                    Mode::Async => Some(Duration::from_millis(20)),
                },
            )
        },
        results_capacity: (config.grpo.prompts_per_step * config.grpo.num_generations).max(16),
    }
}

/// Starts a job's actors in this process ([`LocalActors`]).
#[derive(Debug, Clone, Default)]
pub struct LocalLauncher {
    /// Where the actors sample (`actors.device`; the binary builds it): `None` on the CPU.
    pub device: Option<Arc<dyn DecodeDevice>>,
}

impl Launcher for LocalLauncher {
    fn start(&self, spec: ActorsSpec<'_>) -> Result<StartedActors, Error> {
        if spec.config.actors.device == ActorsDevice::Cuda && self.device.is_none() {
            return Err(Error::Config {
                path: "job config".into(),
                message: "`actors.device = \"cuda\"`: this launcher was given no GPU to sample \
                          on (the `kaizen` binary builds it with `--features gpu`)"
                    .into(),
            });
        }
        let mut config = actor_config(spec.config, spec.tokenizer);
        config.engine.device = self.device.clone();
        let (actors, publisher) = LocalActors::spawn(
            spec.envs.to_vec(),
            Arc::new(spec.tokenizer.clone()),
            spec.template.clone(),
            spec.weights,
            spec.version,
            config,
            WORKER_THREADS,
        )
        .map_err(kaizen_transport::Error::from)?;
        Ok(StartedActors {
            rollouts: Box::new(actors),
            weights: Box::new(publisher),
        })
    }
}
