//! Actors in this process behind the transport interfaces ([`Rollouts`], [`WeightSink`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use kaizen_core::WeightsVersion;
use kaizen_envs::EnvSlot;
use kaizen_model::{ChatTemplate, Llama, Tokenizer};
use kaizen_transport::{EpisodeReport, EpisodeTask, Rollouts, WeightSink};

use crate::{ActorConfig, ActorPool, EngineCounters, Error, WeightPublisher, weight_broadcast_at};

/// An [`ActorPool`] on its own tokio runtime: the in-process implementation of [`Rollouts`].
/// Its weight stream is the [`WeightPublisher`] returned by [`LocalActors::spawn`].
pub struct LocalActors {
    pool: Option<ActorPool>,
    runtime: tokio::runtime::Runtime,
    /// The engines' totals at the last [`Rollouts::metrics`] call (prefill positions, sampled
    /// tokens, reused prompt tokens, evictions, forked tokens), so metrics are per step.
    reported: std::sync::Mutex<[u64; 5]>,
}

impl LocalActors {
    /// Starts `config.actors` actors on a new runtime (`worker_threads` tokio workers), decoding
    /// with `weights` (as version `version`) until the returned publisher publishes newer ones.
    ///
    /// # Errors
    /// As [`ActorPool::spawn`]; [`Error::Spawn`] if the runtime cannot start.
    pub fn spawn(
        envs: Vec<EnvSlot>,
        tokenizer: Arc<Tokenizer>,
        template: ChatTemplate,
        weights: Llama,
        version: WeightsVersion,
        config: ActorConfig,
        worker_threads: usize,
    ) -> Result<(Self, WeightPublisher), Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("kaizen-actor")
            .enable_all()
            .build()?;
        let (publisher, _) = weight_broadcast_at(weights, version);
        let pool = ActorPool::spawn(
            runtime.handle(),
            envs,
            tokenizer,
            template,
            &publisher,
            config,
        )?;
        Ok((
            Self {
                pool: Some(pool),
                runtime,
                reported: std::sync::Mutex::new([0; 5]),
            },
            publisher,
        ))
    }

    /// The pool (present until shutdown).
    pub fn pool(&self) -> &ActorPool {
        self.pool.as_ref().expect("the pool lives until shutdown")
    }

    /// The runtime the actors run on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

impl From<Error> for kaizen_transport::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Closed(task) => Self::Closed(task),
            Error::UnknownEnv { task, env, count } => Self::UnknownEnv { task, env, count },
            other => Self::Stopped(other.to_string()),
        }
    }
}

impl Rollouts for LocalActors {
    fn submit_all(&self, tasks: Vec<EpisodeTask>) -> Result<(), kaizen_transport::Error> {
        Ok(self.pool().submit_all(tasks)?)
    }

    fn recv(&self) -> Result<EpisodeReport, kaizen_transport::Error> {
        self.pool()
            .results()
            .recv()
            .map_err(|e| kaizen_transport::Error::Stopped(e.to_string()))
    }

    fn ready(&self) -> usize {
        self.pool().results().len()
    }

    fn generated_tokens(&self) -> u64 {
        self.pool().generated_tokens()
    }

    /// The engines' work since the last call (one training step): `actors/prefill_tokens`
    /// (positions run through prefill, padding included), `actors/reused_prompt_tokens` (kept
    /// from the episode's previous turn instead), `actors/prefill_per_token` (prefill positions
    /// per sampled token) and `actors/kv_evicted` (kept turns evicted). Per step, so that a
    /// resumed run logs what an uninterrupted one does; deterministic in sync mode while the
    /// kept turns fit `actors.kv_cache_mib` (eviction follows episode timing). The bytes kept
    /// now are a timing-dependent gauge, in [`EngineCounters::kv_kept_bytes`], not logged.
    fn metrics(&self) -> BTreeMap<String, f64> {
        use std::sync::atomic::Ordering::Relaxed;
        let sum = |f: &dyn Fn(&EngineCounters) -> u64| -> u64 {
            self.pool().counters().iter().map(|c| f(c)).sum()
        };
        let now = [
            sum(&|c| c.prefill_tokens.load(Relaxed)),
            sum(&|c| c.generated_tokens.load(Relaxed)),
            sum(&|c| c.reused_prompt_tokens.load(Relaxed)),
            sum(&|c| c.kv_evicted.load(Relaxed)),
            sum(&|c| c.kv_forked_tokens.load(Relaxed)),
        ];
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let d: Vec<f64> = now
            .iter()
            .zip(reported.iter())
            .map(|(n, r)| n.saturating_sub(*r) as f64)
            .collect();
        *reported = now;
        let mut m = BTreeMap::from([
            ("actors/prefill_tokens".to_string(), d[0]),
            ("actors/reused_prompt_tokens".to_string(), d[2]),
            ("actors/kv_evicted".to_string(), d[3]),
        ]);
        if d[4] > 0.0 {
            m.insert("actors/kv_forked_tokens".into(), d[4]);
        }
        if d[1] > 0.0 {
            m.insert("actors/prefill_per_token".into(), d[0] / d[1]);
        }
        m
    }

    fn shutdown(mut self: Box<Self>) -> Vec<EpisodeReport> {
        let Some(pool) = self.pool.take() else {
            return Vec::new();
        };
        self.runtime.block_on(pool.shutdown()).try_iter().collect()
    }
}

impl WeightSink for WeightPublisher {
    fn publish(&self, model: Llama) -> Result<WeightsVersion, kaizen_transport::Error> {
        Ok(WeightPublisher::publish(self, model))
    }

    fn version(&self) -> WeightsVersion {
        WeightPublisher::version(self)
    }
}
