//! Actors: tokio tasks that play many episodes at once and stream their trajectories.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kaizen_core::Trajectory;
use kaizen_envs::search::{TreeSearch, search_episode};
use kaizen_envs::{EnvSlot, EpisodeLimits, Fault, FaultKind, run_episode_with_hints};
use kaizen_model::{ChatTemplate, Tokenizer};
use kaizen_transport::{RolloutReport, SearchReport};
use tokio::task::JoinSet;

use crate::SamplingConfig;
use crate::engine::{BusyGuard, EngineConfig, EngineCounters, EngineHandle, spawn_engine};
use crate::responder::PolicyResponder;
use crate::weights::WeightPublisher;
use crate::{EpisodeReport, EpisodeTask, Error};

/// How many actors, how many episodes each plays at once, and how they sample.
#[derive(Debug, Clone)]
pub struct ActorConfig {
    /// Number of actors (each has its own decode engine thread).
    pub actors: usize,
    /// Episodes each actor plays at once; their generation requests share batches.
    pub episodes_in_flight: usize,
    /// Default sampling.
    pub sampling: SamplingConfig,
    /// Timeouts and turn limits of each episode.
    pub limits: EpisodeLimits,
    /// Batching of the decode engines.
    pub engine: EngineConfig,
    /// Capacity of the report channel: when the learner falls behind, actors wait here
    /// (backpressure) instead of dropping anything.
    pub results_capacity: usize,
}

struct Shared {
    envs: Vec<EnvSlot>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    sampling: SamplingConfig,
    limits: EpisodeLimits,
    episodes_in_flight: usize,
}

/// A set of actors sharing one report channel.
///
/// Tasks are routed by `group_id % actors`, so the G samples of a group meet in one decode
/// engine (their shared prompt is prefilled once) and the assignment is deterministic.
pub struct ActorPool {
    tasks: Vec<flume::Sender<Vec<EpisodeTask>>>,
    results: flume::Receiver<EpisodeReport>,
    counters: Vec<Arc<EngineCounters>>,
    actors: Vec<tokio::task::JoinHandle<()>>,
    engines: Vec<std::thread::JoinHandle<()>>,
    env_count: usize,
}

impl ActorPool {
    /// Starts `config.actors` actors on `runtime`, decoding with the weights `weights`
    /// publishes.
    ///
    /// # Errors
    /// [`Error::Config`] for zero actors or episodes in flight; [`Error::Spawn`] if an engine
    /// thread cannot start.
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        envs: Vec<EnvSlot>,
        tokenizer: Arc<Tokenizer>,
        template: ChatTemplate,
        weights: &WeightPublisher,
        config: ActorConfig,
    ) -> Result<Self, Error> {
        if config.actors == 0 || config.episodes_in_flight == 0 {
            return Err(Error::Config(format!(
                "actors ({}) and episodes_in_flight ({}) must be >= 1",
                config.actors, config.episodes_in_flight
            )));
        }
        let env_count = envs.len();
        let shared = Arc::new(Shared {
            envs,
            tokenizer: tokenizer.clone(),
            template,
            sampling: config.sampling.clone(),
            limits: config.limits,
            episodes_in_flight: config.episodes_in_flight,
        });
        let (results_tx, results) = flume::bounded(config.results_capacity.max(1));
        let mut pool = Self {
            tasks: Vec::new(),
            results,
            counters: Vec::new(),
            actors: Vec::new(),
            engines: Vec::new(),
            env_count,
        };
        for i in 0..config.actors {
            let counters = Arc::new(EngineCounters::default());
            let (engine, thread) = spawn_engine(
                format!("kaizen-engine-{i}"),
                weights.subscribe(),
                tokenizer.clone(),
                config.engine.clone(),
                counters.clone(),
            )?;
            let (task_tx, task_rx) = flume::unbounded();
            let actor = runtime.spawn(actor_loop(
                shared.clone(),
                task_rx,
                results_tx.clone(),
                engine,
            ));
            pool.tasks.push(task_tx);
            pool.counters.push(counters);
            pool.actors.push(actor);
            pool.engines.push(thread);
        }
        Ok(pool)
    }

    /// Queues an episode on actor `group_id % actors`.
    ///
    /// # Errors
    /// As [`ActorPool::submit_all`].
    pub fn submit(&self, task: EpisodeTask) -> Result<(), Error> {
        self.submit_all(vec![task])
    }

    /// Queues episodes, each on actor `group_id % actors`. Each actor receives its share as
    /// one message and starts it together (in task order), so batches do not depend on timing.
    ///
    /// # Errors
    /// [`Error::UnknownEnv`] for a bad environment index (nothing is queued);
    /// [`Error::Closed`] after shutdown.
    pub fn submit_all(&self, tasks: Vec<EpisodeTask>) -> Result<(), Error> {
        self.submitter().submit_all(tasks)
    }

    /// A handle that queues tasks on this pool from elsewhere (another task or thread).
    pub fn submitter(&self) -> Submitter {
        Submitter {
            tasks: self.tasks.clone(),
            env_count: self.env_count,
        }
    }

    /// Finished episodes, in completion order.
    pub fn results(&self) -> &flume::Receiver<EpisodeReport> {
        &self.results
    }

    /// Tokens sampled so far by all actors.
    pub fn generated_tokens(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.generated_tokens.load(Ordering::Relaxed))
            .sum()
    }

    /// Per-engine counters.
    pub fn counters(&self) -> &[Arc<EngineCounters>] {
        &self.counters
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the pool has no actors (never, once spawned).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops accepting tasks, lets running episodes finish (their reports stay readable from
    /// the channel returned here), and joins the engine threads.
    pub async fn shutdown(self) -> flume::Receiver<EpisodeReport> {
        drop(self.tasks);
        let results = self.results;
        // Actors exit once their queue is empty and closed; keep draining so they never block.
        let drain = results.clone();
        let mut pending = Vec::new();
        for actor in self.actors {
            while !actor.is_finished() {
                while let Ok(r) = drain.try_recv() {
                    pending.push(r);
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let _ = actor.await;
        }
        for engine in self.engines {
            let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        }
        let (tx, rx) = flume::unbounded();
        for r in pending.into_iter().chain(drain.try_iter()) {
            let _ = tx.send(r);
        }
        rx
    }
}

/// Queues tasks on an [`ActorPool`] ([`ActorPool::submitter`]); the pool shuts down only once
/// every submitter is dropped too.
#[derive(Clone)]
pub struct Submitter {
    tasks: Vec<flume::Sender<Vec<EpisodeTask>>>,
    env_count: usize,
}

impl Submitter {
    /// As [`ActorPool::submit_all`].
    ///
    /// # Errors
    /// As [`ActorPool::submit_all`].
    pub fn submit_all(&self, tasks: Vec<EpisodeTask>) -> Result<(), Error> {
        if let Some(bad) = tasks.iter().find(|t| t.env >= self.env_count) {
            return Err(Error::UnknownEnv {
                task: bad.id,
                env: bad.env,
                count: self.env_count,
            });
        }
        let mut per_actor: Vec<Vec<EpisodeTask>> = vec![Vec::new(); self.tasks.len()];
        for task in tasks {
            per_actor[(task.group_id % self.tasks.len() as u64) as usize].push(task);
        }
        for (actor, share) in per_actor.into_iter().enumerate() {
            if !share.is_empty() {
                self.tasks[actor].send(share).map_err(|e| {
                    let first = e.into_inner().into_iter().next();
                    Error::Closed(Box::new(first.expect("shares are not empty")))
                })?;
            }
        }
        Ok(())
    }
}

async fn actor_loop(
    shared: Arc<Shared>,
    tasks: flume::Receiver<Vec<EpisodeTask>>,
    results: flume::Sender<EpisodeReport>,
    engine: EngineHandle,
) {
    let mut running: JoinSet<(EpisodeReport, Option<BusyGuard>)> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, EpisodeTask> = HashMap::new();
    let mut queued: VecDeque<EpisodeTask> = VecDeque::new();
    let mut open = true;
    loop {
        while open {
            match tasks.try_recv() {
                Ok(batch) => queued.extend(batch),
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => open = false,
            }
        }
        while running.len() < shared.episodes_in_flight {
            let Some(task) = queued.pop_front() else {
                break;
            };
            spawn_episode(&shared, &engine, &mut running, &mut in_flight, task);
        }
        if running.is_empty() {
            if !open {
                break;
            }
            match tasks.recv_async().await {
                Ok(batch) => queued.extend(batch),
                Err(_) => open = false,
            }
            continue;
        }
        tokio::select! {
            joined = running.join_next_with_id() => {
                let (report, busy) = match joined {
                    Some(Ok((id, done))) => {
                        in_flight.remove(&id);
                        done
                    }
                    Some(Err(e)) => {
                        let Some(task) = in_flight.remove(&e.id()) else { continue };
                        (panicked(&shared, task, &e), None)
                    }
                    None => continue,
                };
                // Start the next queued episode before the finished one stops counting as
                // busy, so the engine's next step sees the newcomer's request.
                if let Some(task) = queued.pop_front() {
                    spawn_episode(&shared, &engine, &mut running, &mut in_flight, task);
                }
                drop(busy);
                if results.send_async(report).await.is_err() {
                    break;
                }
            }
            batch = tasks.recv_async(), if open => match batch {
                Ok(batch) => queued.extend(batch),
                Err(_) => open = false,
            },
        }
    }
}

fn spawn_episode(
    shared: &Arc<Shared>,
    engine: &EngineHandle,
    running: &mut JoinSet<(EpisodeReport, Option<BusyGuard>)>,
    in_flight: &mut HashMap<tokio::task::Id, EpisodeTask>,
    task: EpisodeTask,
) {
    // Busy from now until it first waits on the engine, so the engine batches its request
    // with the others'.
    let busy = engine.gate.busy();
    let handle = running.spawn(play(shared.clone(), engine.clone(), busy, task.clone()));
    in_flight.insert(handle.id(), task);
}

async fn play(
    shared: Arc<Shared>,
    engine: EngineHandle,
    busy: BusyGuard,
    task: EpisodeTask,
) -> (EpisodeReport, Option<BusyGuard>) {
    let slot = &shared.envs[task.env];
    let env = slot.factory.make();
    let responder = PolicyResponder {
        engine,
        busy: Arc::new(Mutex::new(Some(busy))),
        session: task.id,
        branches: Arc::new(AtomicU64::new(0)),
        tokenizer: shared.tokenizer.clone(),
        template: shared.template.clone(),
        sampling: shared.sampling.clone(),
        task_sampling: task.sampling.clone(),
        episode: task.id,
        sampling_seed: task.sampling_seed,
        root_seed: task.sampling_seed,
        threads: HashMap::new(),
        next_thread: 0,
        segments: Vec::new(),
    };
    if let Some(spec) = task.search.clone() {
        return play_tree(&shared, slot, env, responder, task, &spec).await;
    }
    let mut responder = responder;
    let episode = run_episode_with_hints(
        env,
        task.seed,
        &mut responder,
        shared.limits,
        &task.hint_turns,
    )
    .await;
    let metrics = episode.metrics();
    let result = trajectory(&task, slot, episode.end, &mut responder);
    let report = EpisodeReport {
        env: slot.name.clone(),
        task,
        result,
        metrics,
        turns: episode.turns,
        tree: None,
    };
    (report, responder.take_busy())
}

/// The trajectory of an episode that ended with `end`, its turns as tokens taken from
/// `responder`.
fn trajectory(
    task: &EpisodeTask,
    slot: &EnvSlot,
    end: Result<kaizen_core::Outcome, Fault>,
    responder: &mut PolicyResponder,
) -> Result<Trajectory, Fault> {
    end.map(|outcome| Trajectory {
        id: task.id,
        env: slot.name.clone(),
        seed: task.seed,
        group_id: task.group_id,
        segments: std::mem::take(&mut responder.segments),
        outcome,
    })
}

/// Searches the task's episode as a tree ([`kaizen_envs::search::search_episode`]); the report
/// carries the first rollout as its own trajectory and the tree with the others.
async fn play_tree(
    shared: &Shared,
    slot: &EnvSlot,
    env: Box<dyn kaizen_envs::Env>,
    root: PolicyResponder,
    task: EpisodeTask,
    spec: &TreeSearch,
) -> (EpisodeReport, Option<BusyGuard>) {
    let busy = root.busy.clone();
    let outcome = search_episode(env, task.seed, root, shared.limits, spec).await;
    let mut rollouts = outcome
        .rollouts
        .into_iter()
        .map(|mut r| {
            let metrics = r.episode.metrics();
            let result = trajectory(&task, slot, r.episode.end, &mut r.responder);
            RolloutReport {
                path: r.path,
                result,
                metrics,
                turns: r.episode.turns,
            }
        })
        .collect::<Vec<_>>()
        .into_iter();
    let first = rollouts
        .next()
        .expect("a search plays at least one rollout");
    let guard = busy.lock().unwrap_or_else(|e| e.into_inner()).take();
    let report = EpisodeReport {
        env: slot.name.clone(),
        task,
        result: first.result,
        metrics: first.metrics,
        turns: first.turns,
        tree: Some(SearchReport {
            nodes: outcome.nodes,
            path: first.path,
            rollouts: rollouts.collect(),
        }),
    };
    (report, guard)
}

fn panicked(shared: &Shared, task: EpisodeTask, e: &tokio::task::JoinError) -> EpisodeReport {
    let env = shared
        .envs
        .get(task.env)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let fault = Fault {
        kind: FaultKind::EnvPanic,
        message: format!("episode task failed: {e}"),
    };
    EpisodeReport::faulted(task, env, fault)
}
