//! The coordinator: learner rank 0's gRPC server that actor processes join. It implements
//! [`Rollouts`] and [`WeightSink`], so the training loop drives remote actors exactly as it
//! drives in-process ones.
//!
//! Episode accounting across processes: every submitted task is *outstanding* until exactly one
//! report for it is accepted. A report is accepted only while its task is outstanding (later
//! copies are acknowledged and dropped as duplicates), queued for the learner (bounded: when the
//! learner does not read, the actor's stream stops being read and HTTP/2 flow control makes the
//! actor wait), then acknowledged. When an actor process leaves (its stream breaks, it sends a
//! malformed message, or it is silent longer than the peer timeout) its unfinished tasks are
//! handed to the others — or wait for the next actor to join — so nothing is lost; at shutdown,
//! tasks nobody finished come back as `fault/actor_lost` reports, so accounting still closes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kaizen_core::WeightsVersion;
use kaizen_envs::{Fault, FaultKind};
use kaizen_model::Llama;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::group::WeightsGroups;
use super::group_hub::{GroupHub, Subscriber};
use super::proto::coordinator_server::{Coordinator as CoordinatorService, CoordinatorServer};
use super::proto::{
    self, ActorMessage, CoordinatorMessage, JoinReply, JoinRequest, WeightsChunk, WeightsRequest,
    actor_message, coordinator_message,
};
use super::{EncodedWeights, PROTOCOL_VERSION, report_from_proto, task_to_proto};
use crate::{EpisodeReport, EpisodeTask, Error, Rollouts, WeightSink};

/// How a coordinator listens and judges its peers.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Address to listen on (`0.0.0.0:29500`; port 0 picks a free one).
    pub bind: SocketAddr,
    /// A peer silent this long is declared dead (actors send heartbeats every third of it).
    pub peer_timeout: Duration,
    /// Reports queued for the learner before actors are made to wait.
    pub results_capacity: usize,
    /// Largest message accepted from an actor (a report), in bytes.
    pub max_message_bytes: usize,
    /// Size of one weights data chunk, in bytes.
    pub weights_chunk_bytes: usize,
    /// The job's environment names, by index (tasks name environments by index).
    pub env_names: Vec<String>,
    /// Fingerprint of the job's configuration; actors must present the same one.
    pub job_fingerprint: String,
    /// How long shutdown waits for outstanding episodes.
    pub shutdown_grace: Duration,
    /// Weights groups (`cluster.weights_transport = "nccl"`): each version goes to the
    /// group-capable actors by one broadcast, chunks stay for the others and the fallback
    /// ([`super::group`]). `None`: chunks only.
    pub weights_groups: Option<Arc<dyn WeightsGroups>>,
}

/// Transport counters of a coordinator (logged as `cluster/*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Actor processes connected now.
    pub actors: u64,
    /// Joins accepted so far (rejoins included).
    pub joined: u64,
    /// Actor processes that left (stream broken, silent, or refused).
    pub departed: u64,
    /// Tasks handed to another actor after theirs left.
    pub requeued: u64,
    /// Reports dropped because their task had already been reported.
    pub duplicates: u64,
    /// Messages refused as malformed or oversized.
    pub refused: u64,
    /// Weight versions published.
    pub published: u64,
    /// Versions delivered to a weights group by broadcast.
    pub weights_by_group: u64,
    /// Weights groups formed.
    pub weights_groups_formed: u64,
    /// Weights-group joins or broadcasts that failed (the version went as chunks).
    pub weights_group_failures: u64,
    /// Weights subscribers able to join a weights group, connected now.
    pub weights_group_capable: u64,
}

struct Outstanding {
    task: EpisodeTask,
    /// The actor playing it; `None` while it waits for one.
    actor: Option<u64>,
}

struct ActorEntry {
    name: String,
    /// The open episode stream (`None` between join and `Hello`).
    tx: Option<mpsc::UnboundedSender<Result<CoordinatorMessage, Status>>>,
    /// Increases with every `Hello`, so a replaced stream's reader does not remove the actor.
    stream: u64,
    assigned: BTreeSet<u64>,
    last_seen: Instant,
    generated_tokens: u64,
}

#[derive(Default)]
struct State {
    actors: BTreeMap<u64, ActorEntry>,
    tasks: HashMap<u64, Outstanding>,
    /// Outstanding tasks without an actor, in submission order.
    waiting: Vec<u64>,
    next_actor: u64,
    closed: bool,
    departed_tokens: u64,
    stats: CoordinatorStats,
}

struct Shared {
    state: Mutex<State>,
    results: flume::Sender<EpisodeReport>,
    weights: watch::Sender<Option<Arc<EncodedWeights>>>,
    config: CoordinatorConfig,
    incarnation: u64,
    /// The group-capable subscribers and their group, when `config.weights_groups` is set.
    hub: Option<GroupHub>,
    /// The coordinator's runtime, for publishes (which run on the learner's thread).
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst stale; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn newest_version(&self) -> u64 {
        self.weights.borrow().as_ref().map_or(0, |w| w.version().0)
    }
}

impl State {
    fn live(&self) -> Vec<u64> {
        self.actors
            .iter()
            .filter(|(_, a)| a.tx.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hands `ids` (outstanding, unassigned) to the live actors: a group goes to
    /// `live[group_id % live.len()]`, each actor's share as one message in task order.
    fn dispatch(&mut self, ids: Vec<u64>, version: u64) {
        let live = self.live();
        if live.is_empty() {
            self.waiting.extend(ids);
            return;
        }
        let mut shares: BTreeMap<u64, Vec<EpisodeTask>> = BTreeMap::new();
        for id in ids {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            let actor = live[(t.task.group_id % live.len() as u64) as usize];
            t.actor = Some(actor);
            shares.entry(actor).or_default().push(t.task.clone());
        }
        for (actor, share) in shares {
            let Some(entry) = self.actors.get_mut(&actor) else {
                continue;
            };
            entry.assigned.extend(share.iter().map(|t| t.id));
            let message = CoordinatorMessage {
                body: Some(coordinator_message::Body::Tasks(proto::Tasks {
                    tasks: share.iter().map(task_to_proto).collect(),
                    weights_version: version,
                })),
            };
            if let Some(tx) = &entry.tx
                && tx.send(Ok(message)).is_err()
            {
                // The stream just closed; its reader will remove the actor and requeue.
                tracing::debug!(actor = %entry.name, "tasks sent to a closing stream");
            }
        }
    }

    /// Removes an actor and hands its unfinished tasks to the others. Returns how many.
    fn depart(&mut self, actor: u64, version: u64, why: &str) -> usize {
        let Some(entry) = self.actors.remove(&actor) else {
            return 0;
        };
        self.stats.departed += 1;
        self.departed_tokens += entry.generated_tokens;
        let mut unfinished: Vec<u64> = entry
            .assigned
            .into_iter()
            .filter(|id| self.tasks.contains_key(id))
            .collect();
        unfinished.sort_unstable();
        for id in &unfinished {
            if let Some(t) = self.tasks.get_mut(id) {
                t.actor = None;
            }
        }
        let n = unfinished.len();
        self.stats.requeued += n as u64;
        tracing::warn!(
            actor = %entry.name,
            reason = why,
            requeued = n,
            "actor process left the job; its unfinished episodes go to the others"
        );
        self.dispatch(unfinished, version);
        n
    }
}

/// A running coordinator: the gRPC server and the learner's two interfaces to it.
pub struct Coordinator {
    shared: Arc<Shared>,
    results: flume::Receiver<EpisodeReport>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Coordinator {
    /// Binds `config.bind`, publishes `initial` weights as `version` and starts serving.
    ///
    /// # Errors
    /// [`Error::Network`] if the address cannot be bound; [`Error::Weights`] if the weights
    /// cannot be encoded.
    pub fn start(
        config: CoordinatorConfig,
        initial: &Llama,
        version: WeightsVersion,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kaizen-coordinator")
            .enable_all()
            .build()
            .map_err(|e| Error::Network(format!("tokio runtime: {e}")))?;
        let encoded = EncodedWeights::encode(initial, version)?;
        let (results_tx, results) = flume::bounded(config.results_capacity.max(1));
        let (weights, _) = watch::channel(Some(Arc::new(encoded)));
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_actor: 1,
                stats: CoordinatorStats {
                    published: 1,
                    ..CoordinatorStats::default()
                },
                ..State::default()
            }),
            results: results_tx,
            weights,
            hub: config
                .weights_groups
                .clone()
                .map(|groups| GroupHub::new(groups, config.peer_timeout)),
            runtime: runtime.handle().clone(),
            config: config.clone(),
            incarnation,
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.bind))
            .map_err(|e| Error::Network(format!("cannot listen on {}: {e}", config.bind)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Network(format!("listener address: {e}")))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = CoordinatorServer::new(Service {
            shared: shared.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.weights_chunk_bytes.max(1 << 20) + 4096);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        runtime.spawn(async move {
            let served = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .initial_stream_window_size(super::STREAM_WINDOW_BYTES)
                .initial_connection_window_size(super::CONNECTION_WINDOW_BYTES)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "coordinator server stopped");
            }
        });
        runtime.spawn(reaper(shared.clone()));
        tracing::info!(address = %local_addr, "coordinator listening for actor processes");
        Ok(Self {
            shared,
            results,
            local_addr,
            stop: Some(stop_tx),
            runtime,
        })
    }

    /// The address actors connect to (the bound port when `bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Actor processes connected now.
    pub fn actors(&self) -> usize {
        self.shared.lock().live().len()
    }

    /// Waits until at least `count` actor processes are connected.
    ///
    /// # Errors
    /// [`Error::Network`] naming how many joined when `timeout` runs out first.
    pub fn wait_for_actors(&self, count: usize, timeout: Duration) -> Result<(), Error> {
        self.wait_for_actors_or_stop(count, timeout, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Coordinator::wait_for_actors`] that also gives up when `stop` is set (a signal asked
    /// the job to stop).
    ///
    /// # Errors
    /// [`Error::Network`] saying how many joined, on timeout or stop.
    pub fn wait_for_actors_or_stop(
        &self,
        count: usize,
        timeout: Duration,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.actors();
            if now >= count {
                return Ok(());
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Network(format!(
                    "stopped while waiting for actor processes ({now} of {count} joined {})",
                    self.local_addr
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Network(format!(
                    "{now} of {count} actor processes joined {} within {:.0} s",
                    self.local_addr,
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The weight stream's publishing end.
    pub fn weights(&self) -> CoordinatorWeights {
        CoordinatorWeights {
            shared: self.shared.clone(),
        }
    }

    /// Transport counters.
    pub fn stats(&self) -> CoordinatorStats {
        let groups = self
            .shared
            .hub
            .as_ref()
            .map(GroupHub::counts)
            .unwrap_or_default();
        let state = self.shared.lock();
        CoordinatorStats {
            actors: state.live().len() as u64,
            weights_by_group: groups.by_group,
            weights_groups_formed: groups.formed,
            weights_group_failures: groups.failures,
            weights_group_capable: groups.capable,
            ..state.stats
        }
    }
}

impl Rollouts for Coordinator {
    fn submit_all(&self, tasks: Vec<EpisodeTask>) -> Result<(), Error> {
        let count = self.shared.config.env_names.len();
        if let Some(bad) = tasks.iter().find(|t| t.env >= count) {
            return Err(Error::UnknownEnv {
                task: bad.id,
                env: bad.env,
                count,
            });
        }
        let version = self.shared.newest_version();
        let mut state = self.shared.lock();
        if state.closed {
            let first = tasks.into_iter().next();
            return match first {
                Some(t) => Err(Error::Closed(Box::new(t))),
                None => Ok(()),
            };
        }
        let ids: Vec<u64> = tasks.iter().map(|t| t.id).collect();
        for task in tasks {
            state
                .tasks
                .insert(task.id, Outstanding { task, actor: None });
        }
        state.dispatch(ids, version);
        Ok(())
    }

    fn recv(&self) -> Result<EpisodeReport, Error> {
        let mut waited = Duration::ZERO;
        let tick = self
            .shared
            .config
            .peer_timeout
            .max(Duration::from_millis(100));
        loop {
            match self.results.recv_timeout(tick) {
                Ok(r) => return Ok(r),
                Err(flume::RecvTimeoutError::Timeout) => {
                    waited += tick;
                    let state = self.shared.lock();
                    if state.live().is_empty() {
                        tracing::warn!(
                            address = %self.local_addr,
                            outstanding = state.tasks.len(),
                            waited_s = waited.as_secs_f64(),
                            "no actor process is connected; waiting for one to join"
                        );
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Stopped("the coordinator stopped".into()));
                }
            }
        }
    }

    fn ready(&self) -> usize {
        self.results.len()
    }

    fn generated_tokens(&self) -> u64 {
        let state = self.shared.lock();
        state.departed_tokens
            + state
                .actors
                .values()
                .map(|a| a.generated_tokens)
                .sum::<u64>()
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let s = self.stats();
        [
            ("cluster/actors", s.actors),
            ("cluster/joined", s.joined),
            ("cluster/departed", s.departed),
            ("cluster/requeued", s.requeued),
            ("cluster/duplicates", s.duplicates),
            ("cluster/refused", s.refused),
            ("cluster/weights_by_group", s.weights_by_group),
            ("cluster/weights_group_failures", s.weights_group_failures),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64))
        .collect()
    }

    fn shutdown(mut self: Box<Self>) -> Vec<EpisodeReport> {
        self.shared.lock().closed = true;
        let mut out = Vec::new();
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        while !self.shared.lock().tasks.is_empty() && Instant::now() < deadline {
            if let Ok(r) = self.results.recv_timeout(Duration::from_millis(50)) {
                out.push(r);
            }
        }
        out.extend(self.results.try_iter());
        let mut state = self.shared.lock();
        let mut lost: Vec<Outstanding> = state.tasks.drain().map(|(_, t)| t).collect();
        lost.sort_by_key(|t| t.task.id);
        for t in lost {
            let env = self
                .shared
                .config
                .env_names
                .get(t.task.env)
                .cloned()
                .unwrap_or_default();
            out.push(lost_report(t.task, env));
        }
        for entry in state.actors.values() {
            if let Some(tx) = &entry.tx {
                let _ = tx.send(Ok(CoordinatorMessage {
                    body: Some(coordinator_message::Body::Shutdown(proto::Shutdown {
                        reason: "the job is over".into(),
                    })),
                }));
            }
        }
        state.actors.clear();
        drop(state);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Give the server a moment to flush the shutdown messages, then stop.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        out
    }
}

/// The coordinator's weight stream ([`Coordinator::weights`]): each publish is encoded once
/// (one buffer, checksummed) and streamed in chunks to every actor process.
pub struct CoordinatorWeights {
    shared: Arc<Shared>,
}

impl WeightSink for CoordinatorWeights {
    fn publish(&self, model: Llama) -> Result<WeightsVersion, Error> {
        let version = WeightsVersion(self.shared.newest_version()).next();
        let encoded = EncodedWeights::encode(&model, version)?;
        // Group members get it first (a header, then the broadcast); their streams' tasks
        // then skip it. Everyone else gets chunks when the version is announced.
        if let Some(hub) = &self.shared.hub {
            hub.deliver(&self.shared.runtime, &encoded);
        }
        self.shared.weights.send_replace(Some(Arc::new(encoded)));
        self.shared.lock().stats.published += 1;
        Ok(version)
    }

    fn version(&self) -> WeightsVersion {
        WeightsVersion(self.shared.newest_version())
    }
}

/// The report of a task no actor finished before the job ended.
fn lost_report(task: EpisodeTask, env: String) -> EpisodeReport {
    let fault = Fault {
        kind: FaultKind::ActorLost,
        message: "no actor process finished this episode before the job ended".into(),
    };
    EpisodeReport::faulted(task, env, fault)
}

/// Declares actors dead after `peer_timeout` of silence, and keeps the live ones' streams warm
/// with heartbeats (so an actor can tell a quiet coordinator from a dead one).
async fn reaper(shared: Arc<Shared>) {
    let timeout = shared.config.peer_timeout;
    let mut tick = tokio::time::interval((timeout / 3).max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let version = shared.newest_version();
        let mut state = shared.lock();
        if state.closed {
            return;
        }
        let silent: Vec<(u64, f64)> = state
            .actors
            .iter()
            .map(|(id, a)| (*id, a.last_seen.elapsed().as_secs_f64()))
            .filter(|(_, s)| *s > timeout.as_secs_f64())
            .collect();
        for (id, silent_s) in silent {
            if let Some(entry) = state.actors.get(&id) {
                tracing::warn!(
                    actor = %entry.name,
                    silent_s,
                    peer_timeout_s = timeout.as_secs_f64(),
                    "actor process stopped answering: declared dead"
                );
                if let Some(tx) = &entry.tx {
                    let _ = tx.send(Err(Status::unavailable(format!(
                        "no message for {silent_s:.1} s (peer_timeout_s = {:.1}): declared dead",
                        timeout.as_secs_f64()
                    ))));
                }
            }
            state.depart(id, version, "silent");
        }
        for entry in state.actors.values() {
            if let Some(tx) = &entry.tx {
                let _ = tx.send(Ok(CoordinatorMessage {
                    body: Some(coordinator_message::Body::Heartbeat(proto::Heartbeat {
                        generated_tokens: 0,
                        weights_version: version,
                    })),
                }));
            }
        }
    }
}

struct Service {
    shared: Arc<Shared>,
}

type EpisodesStream = UnboundedReceiverStream<Result<CoordinatorMessage, Status>>;
type WeightsStream = Pin<Box<dyn Stream<Item = Result<WeightsChunk, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorService for Service {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let join = request.into_inner();
        let name = if join.name.is_empty() {
            peer.clone()
        } else {
            format!("{} ({peer})", join.name)
        };
        // Refusals are logged here too: the learner's operator must see who was turned away.
        let refuse = |message: String| {
            tracing::warn!(%message, "refused an actor");
            Status::failed_precondition(message)
        };
        if join.protocol_version != PROTOCOL_VERSION {
            return Err(refuse(format!(
                "{name} speaks kaizen protocol version {} but the coordinator speaks {}: run the \
                 same kaizen build on every process",
                join.protocol_version, PROTOCOL_VERSION
            )));
        }
        if join.job_fingerprint != self.shared.config.job_fingerprint {
            return Err(refuse(format!(
                "{name} runs another job (config fingerprint {} != the learner's {}): start every \
                 process with the same config file and overrides",
                join.job_fingerprint, self.shared.config.job_fingerprint
            )));
        }
        let mut state = self.shared.lock();
        if state.closed {
            return Err(Status::unavailable("the job is over"));
        }
        let rejoin = join.previous_incarnation == self.shared.incarnation
            && state.actors.contains_key(&join.previous_actor_id);
        let id = if rejoin {
            join.previous_actor_id
        } else {
            let id = state.next_actor;
            state.next_actor += 1;
            state.actors.insert(
                id,
                ActorEntry {
                    name: name.clone(),
                    tx: None,
                    stream: 0,
                    assigned: BTreeSet::new(),
                    last_seen: Instant::now(),
                    generated_tokens: 0,
                },
            );
            id
        };
        state.stats.joined += 1;
        tracing::info!(actor = %name, id, "actor process joined");
        Ok(Response::new(JoinReply {
            protocol_version: PROTOCOL_VERSION,
            actor_id: id,
            weights_version: self.shared.newest_version(),
            peer_timeout_s: self.shared.config.peer_timeout.as_secs_f64(),
            incarnation: self.shared.incarnation,
            max_message_bytes: self.shared.config.max_message_bytes as u64,
        }))
    }

    type EpisodesStream = EpisodesStream;

    async fn episodes(
        &self,
        request: Request<Streaming<ActorMessage>>,
    ) -> Result<Response<Self::EpisodesStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.shared.config.peer_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the peer timeout"))??;
        let Some(ActorMessage {
            body: Some(actor_message::Body::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the episode stream must start with Hello { actor_id }",
            ));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let version = self.shared.newest_version();
        let (stream, name) = {
            let mut state = self.shared.lock();
            let Some(entry) = state.actors.get_mut(&hello.actor_id) else {
                return Err(Status::not_found(format!(
                    "actor id {} has not joined this coordinator (it restarted, or declared the \
                     actor dead): join again",
                    hello.actor_id
                )));
            };
            entry.tx = Some(tx);
            entry.stream += 1;
            entry.last_seen = Instant::now();
            let stream = entry.stream;
            let name = entry.name.clone();
            // Tasks that waited for an actor go out now.
            let waiting = std::mem::take(&mut state.waiting);
            state.dispatch(waiting, version);
            (stream, name)
        };
        let shared = self.shared.clone();
        let actor = hello.actor_id;
        tokio::spawn(async move {
            let why = read_actor(&shared, actor, &name, &mut inbound).await;
            let version = shared.newest_version();
            let mut state = shared.lock();
            if state.actors.get(&actor).is_some_and(|a| a.stream == stream) && !state.closed {
                state.depart(actor, version, &why);
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    type WeightsStream = WeightsStream;

    async fn weights(
        &self,
        request: Request<WeightsRequest>,
    ) -> Result<Response<Self::WeightsStream>, Status> {
        let request = request.into_inner();
        let mut have = request.have_version;
        let mut latest = self.shared.weights.subscribe();
        let chunk_bytes = self.shared.config.weights_chunk_bytes.max(1);
        let (tx, rx) = mpsc::channel(4);
        let subscriber = Subscriber::new(tx);
        // A group-capable subscriber joins the hub: the next publish forms a group with it.
        let shared = self.shared.clone();
        let key = match &shared.hub {
            Some(hub) if request.group_capable => {
                Some(hub.register(request.actor_id, subscriber.clone()))
            }
            _ => None,
        };
        tokio::spawn(async move {
            loop {
                let newest = latest.borrow_and_update().clone();
                if let Some(w) = newest
                    && (have == u64::MAX || w.version().0 > have)
                {
                    let version = w.version().0;
                    let _writer = subscriber.writer.lock().await;
                    if !subscriber.was_delivered(version) {
                        for chunk in w.chunks(chunk_bytes) {
                            if subscriber.tx.send(Ok(chunk)).await.is_err() {
                                break;
                            }
                        }
                    }
                    have = version;
                    continue;
                }
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { break },
                    () = subscriber.tx.closed() => break,
                }
            }
            if let (Some(hub), Some(key)) = (&shared.hub, key) {
                hub.remove(key);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads one actor's episode stream until it ends; returns why it ended.
async fn read_actor(
    shared: &Shared,
    actor: u64,
    name: &str,
    inbound: &mut Streaming<ActorMessage>,
) -> String {
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "stream closed".into(),
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::OutOfRange
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Internal
                ) {
                    shared.lock().stats.refused += 1;
                    tracing::error!(actor = %name, error = %status.message(), "refused a message");
                }
                return format!("stream broken: {}", status.message());
            }
        };
        let tx = {
            let mut state = shared.lock();
            let Some(entry) = state.actors.get_mut(&actor) else {
                return "removed".into();
            };
            entry.last_seen = Instant::now();
            entry.tx.clone()
        };
        match message.body {
            Some(actor_message::Body::Heartbeat(h)) => {
                if let Some(entry) = shared.lock().actors.get_mut(&actor) {
                    entry.generated_tokens = entry.generated_tokens.max(h.generated_tokens);
                }
            }
            Some(actor_message::Body::Report(report)) => {
                let tokens = report.generated_tokens;
                let report = match report_from_proto(report, name) {
                    Ok(r) => r,
                    Err(e) => {
                        shared.lock().stats.refused += 1;
                        tracing::error!(actor = %name, error = %e, "refused a malformed report");
                        if let Some(tx) = &tx {
                            let _ = tx.send(Err(Status::invalid_argument(e.to_string())));
                        }
                        return format!("malformed report: {e}");
                    }
                };
                let id = report.task.id;
                let claimed = {
                    let mut state = shared.lock();
                    if let Some(entry) = state.actors.get_mut(&actor) {
                        entry.generated_tokens = entry.generated_tokens.max(tokens);
                        entry.assigned.remove(&id);
                    }
                    match state.tasks.remove(&id) {
                        Some(t) => {
                            if let Some(other) = t.actor.filter(|a| *a != actor)
                                && let Some(entry) = state.actors.get_mut(&other)
                            {
                                entry.assigned.remove(&id);
                            }
                            true
                        }
                        None => {
                            state.stats.duplicates += 1;
                            false
                        }
                    }
                };
                if claimed && shared.results.send_async(report).await.is_err() {
                    return "the learner stopped".into();
                }
                if let Some(tx) = &tx {
                    let _ = tx.send(Ok(CoordinatorMessage {
                        body: Some(coordinator_message::Body::Ack(proto::Ack { task_id: id })),
                    }));
                }
            }
            Some(actor_message::Body::Hello(_)) | None => {
                shared.lock().stats.refused += 1;
                tracing::error!(actor = %name, "refused a message: expected Report or Heartbeat");
                if let Some(tx) = &tx {
                    let _ = tx.send(Err(Status::invalid_argument(
                        "expected Report or Heartbeat after Hello",
                    )));
                }
                return "protocol violation".into();
            }
        }
    }
}
