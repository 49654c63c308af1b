//! The actor role: a process that joins a job's coordinator, follows its weights, plays the
//! episodes it is handed with a local [`ActorPool`] and streams the reports back.
//!
//! Delivery is at-least-once from here and exactly-once at the learner: every report stays in
//! `unacked` until the coordinator acknowledges it and is sent again after a reconnect; the
//! coordinator keeps the first copy of each task's report and drops the rest. When the
//! coordinator restarts (a new incarnation: the learner resumed from its checkpoint), reports of
//! the old one are dropped here, since the new learner never asked for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_actors::{ActorPool, WeightPublisher, weight_broadcast_at};
use kaizen_core::WeightsVersion;
use kaizen_envs::Registry;
use kaizen_learner::{JobConfig, build_envs, load_policy};
use kaizen_transport::wire::proto::coordinator_client::CoordinatorClient;
use kaizen_transport::wire::proto::{
    self, ActorMessage, JoinRequest, WeightsChunk, WeightsRequest, actor_message,
    coordinator_message,
};
use kaizen_transport::wire::{
    AssembledWeights, PROTOCOL_VERSION, WeightsReceiver, report_message, task_from_proto,
};
use kaizen_transport::{EpisodeTask, Error as TransportError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{ClusterError, actor_config};

/// How an actor process reaches its coordinator.
#[derive(Debug, Clone)]
pub struct ActorOptions {
    /// The coordinator, `host:port`.
    pub coordinator: String,
    /// A name for the coordinator's logs (`host:pid` by default).
    pub name: String,
    /// The job's configuration fingerprint (`crate::job_fingerprint`).
    pub fingerprint: String,
    /// Device the actor decodes on.
    pub device: Device,
    /// Where the actor's engines sample (`actors.device`; the binary builds it): `None` on
    /// the CPU.
    pub decode: Option<Arc<dyn kaizen_actors::DecodeDevice>>,
    /// Environments by name.
    pub registry: Registry,
    /// Weights groups this actor joins (`cluster.weights_transport = "nccl"`: NCCL on the
    /// actor's GPU; the binary builds it): versions then arrive by the group's broadcast.
    /// `None`: chunks over the weights stream only.
    pub weights_groups: Option<Arc<dyn kaizen_transport::wire::WeightsGroups>>,
}

/// What an actor process did, when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActorSummary {
    /// Reports sent (first sends; resends after a reconnect are not counted again).
    pub reports: u64,
    /// Times it (re)connected to a coordinator.
    pub sessions: u64,
    /// Weight versions loaded.
    pub weight_versions: u64,
    /// Reports too large for the transport, sent as `report_too_large` faults instead.
    pub too_large: u64,
}

/// Runs the actor role until the coordinator says the job is over.
///
/// # Errors
/// [`ClusterError::Transport`] when the coordinator refuses this process (another protocol
/// version or job), or cannot be reached for `cluster.reconnect_timeout_s`; job-building errors.
pub fn run_actor(config: &JobConfig, options: ActorOptions) -> Result<ActorSummary, ClusterError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kaizen-actor")
        .enable_all()
        .build()
        .map_err(|e| TransportError::Network(format!("tokio runtime: {e}")))?;
    let (slots, _) = build_envs(config, &options.registry)?;
    let policy = load_policy(config, &options.device)?;
    if config.actors.device == kaizen_learner::ActorsDevice::Cuda && options.decode.is_none() {
        return Err(ClusterError::Launch(
            "`actors.device = \"cuda\"`: this actor process was given no GPU to sample on \
             (the `kaizen` binary builds it with `--features gpu`)"
                .into(),
        ));
    }
    let mut actors = actor_config(config, &policy.tokenizer);
    actors.engine.device = options.decode.clone();
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
        let mut link = Link::new(config, &options);
        let mut client = None;
        // One local pool per coordinator incarnation: when the learner restarts (from its
        // checkpoint), episodes its previous incarnation handed out are abandoned with the pool,
        // so none of them is reported to the new one.
        loop {
            let (first, stream, joined, receiver) = link.first_weights(client.take()).await?;
            let version = first.version;
            let model = to_model(first, &options.device).await?;
            let (publisher, _) = weight_broadcast_at(model, version);
            let pool = ActorPool::spawn(
                &handle,
                slots.clone(),
                Arc::new(policy.tokenizer.clone()),
                policy.template.clone(),
                &publisher,
                actors.clone(),
            )?;
            tracing::info!(
                coordinator = %options.coordinator,
                version = version.0,
                "actor process playing"
            );
            let outcome = link
                .serve(&pool, &publisher, joined, (stream, receiver))
                .await;
            let abandoned = pool.shutdown().await.len();
            match outcome? {
                Served::Ended => {
                    let mut summary = link.summary;
                    summary.weight_versions = link.loaded.load(Ordering::Relaxed);
                    return Ok(summary);
                }
                Served::Restarted(c) => {
                    tracing::warn!(
                        abandoned,
                        "the learner restarted: starting over with its weights"
                    );
                    client = Some(c);
                }
            }
        }
    })
}

/// How [`Link::serve`] ended.
enum Served {
    /// The coordinator ended the job.
    Ended,
    /// The coordinator restarted (a new incarnation); the client has joined it.
    Restarted(CoordinatorClient<Channel>),
}

async fn to_model(
    w: AssembledWeights,
    device: &Device,
) -> Result<kaizen_model::Llama, ClusterError> {
    let device = device.clone();
    tokio::task::spawn_blocking(move || w.into_model(&device))
        .await
        .map_err(|e| TransportError::Weights(format!("rebuilding the model: {e}")))?
        .map_err(ClusterError::from)
}

struct Link<'a> {
    options: &'a ActorOptions,
    peer_timeout: Duration,
    reconnect_timeout: Duration,
    max_message: usize,
    /// The largest report message both ends accept: the smaller of `max_message` and the
    /// coordinator's limit (from its join reply).
    max_report: usize,
    actor_id: u64,
    incarnation: u64,
    /// Reports sent and not acknowledged, by task id.
    unacked: BTreeMap<u64, proto::Report>,
    summary: ActorSummary,
    /// Weight versions loaded (the weights follower counts too).
    loaded: Arc<AtomicU64>,
}

impl<'a> Link<'a> {
    fn new(config: &JobConfig, options: &'a ActorOptions) -> Self {
        let cluster = &config.cluster;
        Self {
            options,
            peer_timeout: Duration::from_secs_f64(cluster.peer_timeout_s),
            reconnect_timeout: Duration::from_secs_f64(cluster.reconnect_timeout_s),
            max_message: (cluster.max_message_mib * 1024.0 * 1024.0) as usize,
            max_report: (cluster.max_message_mib * 1024.0 * 1024.0) as usize,
            actor_id: 0,
            incarnation: 0,
            unacked: BTreeMap::new(),
            summary: ActorSummary::default(),
            loaded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Connects and joins, retrying until `reconnect_timeout` (a refusal is final). Returns the
    /// client and whether the coordinator is a new incarnation (a restarted learner).
    async fn join(&mut self) -> Result<(CoordinatorClient<Channel>, bool), ClusterError> {
        let deadline = Instant::now() + self.reconnect_timeout;
        let endpoint =
            kaizen_transport::wire::endpoint(&self.options.coordinator, self.peer_timeout)?;
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt = async {
                let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
                let mut client = CoordinatorClient::new(channel)
                    .max_decoding_message_size(self.max_message.max(64 << 20))
                    .max_encoding_message_size(self.max_message);
                // A peer that accepts the connection but never answers must not hang the join.
                let join = client.join(JoinRequest {
                    protocol_version: PROTOCOL_VERSION,
                    job_fingerprint: self.options.fingerprint.clone(),
                    name: self.options.name.clone(),
                    previous_actor_id: self.actor_id,
                    previous_incarnation: self.incarnation,
                });
                let reply = match tokio::time::timeout(self.peer_timeout, join).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        return Err(format!(
                            "no answer to join within {:.1} s (cluster.peer_timeout_s)",
                            self.peer_timeout.as_secs_f64()
                        ));
                    }
                };
                Ok::<_, String>((client, reply))
            };
            match attempt.await {
                Ok((client, Ok(reply))) => {
                    let reply = reply.into_inner();
                    let restarted = self.incarnation != 0 && reply.incarnation != self.incarnation;
                    if reply.incarnation != self.incarnation {
                        if restarted && !self.unacked.is_empty() {
                            tracing::warn!(
                                dropped = self.unacked.len(),
                                "the coordinator restarted: reports it never asked for are dropped"
                            );
                        }
                        self.unacked.clear();
                        self.incarnation = reply.incarnation;
                    }
                    self.actor_id = reply.actor_id;
                    self.max_report = match usize::try_from(reply.max_message_bytes) {
                        Ok(0) | Err(_) => self.max_message,
                        Ok(limit) => limit.min(self.max_message),
                    };
                    self.peer_timeout = Duration::from_secs_f64(reply.peer_timeout_s.max(0.01));
                    self.summary.sessions += 1;
                    tracing::info!(
                        id = self.actor_id,
                        coordinator = %self.options.coordinator,
                        "joined"
                    );
                    return Ok((client, restarted));
                }
                Ok((_, Err(status))) if status.code() == tonic::Code::FailedPrecondition => {
                    return Err(TransportError::Incompatible {
                        peer: self.options.coordinator.clone(),
                        message: status.message().to_string(),
                    }
                    .into());
                }
                Ok((_, Err(status))) => {
                    tracing::warn!(error = %status.message(), "join refused; retrying");
                }
                Err(e) => tracing::info!(error = %e, "coordinator not reachable yet; retrying"),
            }
            if Instant::now() >= deadline {
                return Err(TransportError::Network(format!(
                    "coordinator {} not reachable for {:.0} s (cluster.reconnect_timeout_s)",
                    self.options.coordinator,
                    self.reconnect_timeout.as_secs_f64()
                ))
                .into());
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Joins (unless `client` already has) and waits for the current weights; returns them, the
    /// open weights stream and the joined client.
    async fn first_weights(
        &mut self,
        client: Option<CoordinatorClient<Channel>>,
    ) -> Result<
        (
            AssembledWeights,
            tonic::Streaming<WeightsChunk>,
            CoordinatorClient<Channel>,
            WeightsReceiver,
        ),
        ClusterError,
    > {
        let deadline = Instant::now() + self.reconnect_timeout;
        let mut client = client;
        loop {
            let mut c = match client.take() {
                Some(c) => c,
                None => self.join().await?.0,
            };
            match self.receive_weights(&mut c).await {
                Ok((w, stream, receiver)) => {
                    self.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok((w, stream, c, receiver));
                }
                // A checksum or format error is the peer's fault, not the link's: final.
                Err(e @ TransportError::Protocol { .. }) => return Err(e.into()),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "no weights from the coordinator; joining again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens the weights stream and receives the newest version; every wait is bounded by the
    /// peer timeout.
    async fn receive_weights(
        &self,
        client: &mut CoordinatorClient<Channel>,
    ) -> Result<
        (
            AssembledWeights,
            tonic::Streaming<WeightsChunk>,
            WeightsReceiver,
        ),
        TransportError,
    > {
        let silent = || {
            TransportError::Network(format!(
                "the coordinator sent no weights for {:.1} s (cluster.peer_timeout_s)",
                self.peer_timeout.as_secs_f64()
            ))
        };
        let request = client.weights(WeightsRequest {
            actor_id: self.actor_id,
            have_version: u64::MAX,
            // The first version comes as chunks on a stream that joins no group: the actor is not
            // ready to answer an invite before its pool runs (`serve` opens the one that does).
            group_capable: false,
        });
        let mut stream = tokio::time::timeout(self.peer_timeout, request)
            .await
            .map_err(|_| silent())?
            .map_err(|s| TransportError::Network(s.message().to_string()))?
            .into_inner();
        let mut receiver = self.receiver();
        loop {
            let chunk = tokio::time::timeout(self.peer_timeout, stream.message())
                .await
                .map_err(|_| silent())?
                .map_err(|s| TransportError::Network(s.message().to_string()))?
                .ok_or_else(|| TransportError::Network("weights stream ended".into()))?;
            if let Some(w) = receiver.push(chunk).await? {
                return Ok((w, stream, receiver));
            }
        }
    }

    /// A receiver for a new weights stream.
    fn receiver(&self) -> WeightsReceiver {
        WeightsReceiver::new(
            self.options.coordinator.clone(),
            self.options.weights_groups.clone(),
            self.peer_timeout,
        )
    }

    /// Sessions until the coordinator says the job is over or restarts.
    async fn serve(
        &mut self,
        pool: &ActorPool,
        publisher: &WeightPublisher,
        joined: CoordinatorClient<Channel>,
        weights: (tonic::Streaming<WeightsChunk>, WeightsReceiver),
    ) -> Result<Served, ClusterError> {
        // The first session continues the join and weights stream of `first_weights`; an actor
        // that joins weights groups opens a new stream instead, now that its pool runs.
        let mut client = Some(joined);
        let mut weights = self.options.weights_groups.is_none().then_some(weights);
        // Tasks wait here until the actor holds the weights they were submitted with.
        let (feed_tx, feed_rx) = mpsc::unbounded_channel::<(u64, Vec<EpisodeTask>)>();
        let feeder = tokio::spawn(feed(feed_rx, pool_submitter(pool), publisher.clone()));
        let results = pool.results().clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut c = match client.take() {
                Some(c) => c,
                None => {
                    let (c, restarted) = self.join().await?;
                    if restarted {
                        feeder.abort();
                        return Ok(Served::Restarted(c));
                    }
                    c
                }
            };
            let stream = match weights.take() {
                Some(s) => Some(s),
                None => {
                    let request = c.weights(WeightsRequest {
                        actor_id: self.actor_id,
                        have_version: publisher.version().0,
                        group_capable: self.options.weights_groups.is_some(),
                    });
                    match tokio::time::timeout(self.peer_timeout, request).await {
                        Ok(Ok(r)) => Some((r.into_inner(), self.receiver())),
                        Ok(Err(status)) => {
                            tracing::warn!(error = %status.message(), "weights stream refused");
                            None
                        }
                        Err(_) => {
                            tracing::warn!(
                                "the coordinator did not open the weights stream in time"
                            );
                            None
                        }
                    }
                }
            };
            let started = Instant::now();
            let done = match stream {
                Some((stream, receiver)) => {
                    let mut follower = tokio::spawn(follow_weights(
                        stream,
                        receiver,
                        publisher.clone(),
                        self.options.device.clone(),
                        self.loaded.clone(),
                    ));
                    // A weights stream that fails (refused, broken, a version that cannot be
                    // loaded) ends the session: without it the actor would never hold the
                    // versions later tasks are stamped with, and they would wait forever. The
                    // reconnect opens a new stream, which starts with the newest version. A
                    // stream the coordinator closes is left to the session (the job's end).
                    let failed = async {
                        match (&mut follower).await {
                            Ok(Some(why)) => why,
                            _ => std::future::pending().await,
                        }
                    };
                    let done = tokio::select! {
                        done = self.session(&mut c, pool, publisher, &results, &feed_tx) => done,
                        why = failed => {
                            tracing::warn!(reason = %why, "the weights stream failed; reconnecting");
                            Ok(false)
                        }
                    };
                    follower.abort();
                    done
                }
                None => Ok(false),
            };
            match done {
                Ok(true) => {
                    feeder.abort();
                    return Ok(Served::Ended);
                }
                Ok(false) => {
                    // A link that breaks right away (a peer refusing what it is sent, a
                    // coordinator shutting down) is retried with a growing pause.
                    if started.elapsed() < Duration::from_secs(5) {
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    } else {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(
                        coordinator = %self.options.coordinator,
                        retry_in_s = backoff.as_secs_f64(),
                        "lost the coordinator; reconnecting"
                    );
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    feeder.abort();
                    return Err(e);
                }
            }
        }
    }

    /// One connected session; `Ok(true)` when the job is over, `Ok(false)` on a lost link.
    async fn session(
        &mut self,
        client: &mut CoordinatorClient<Channel>,
        pool: &ActorPool,
        publisher: &WeightPublisher,
        results: &flume::Receiver<kaizen_transport::EpisodeReport>,
        feed_tx: &mpsc::UnboundedSender<(u64, Vec<EpisodeTask>)>,
    ) -> Result<bool, ClusterError> {
        let (out, out_rx) = mpsc::channel::<ActorMessage>(64);
        let hello = ActorMessage {
            body: Some(actor_message::Body::Hello(proto::Hello {
                actor_id: self.actor_id,
            })),
        };
        // Room for the hello and every unacked report, so none of these sends can block.
        let (out, out_rx) = if self.unacked.len() + 1 > 64 {
            drop((out, out_rx));
            mpsc::channel::<ActorMessage>(self.unacked.len() + 65)
        } else {
            (out, out_rx)
        };
        let _ = out.try_send(hello);
        for report in self.unacked.values() {
            let _ = out.try_send(ActorMessage {
                body: Some(actor_message::Body::Report(report.clone())),
            });
        }
        let opened = tokio::time::timeout(
            self.peer_timeout,
            client.episodes(ReceiverStream::new(out_rx)),
        )
        .await;
        let mut inbound = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "episode stream refused");
                return Ok(false);
            }
            Err(_) => {
                tracing::warn!("the coordinator did not open the episode stream in time");
                return Ok(false);
            }
        };
        let mut heartbeat = tokio::time::interval(self.peer_timeout / 3);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => return Ok(false),
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "episode stream broken");
                            return Ok(false);
                        }
                    };
                    heard = Instant::now();
                    match message.body {
                        Some(coordinator_message::Body::Tasks(t)) => {
                            let peer = &self.options.coordinator;
                            let tasks = t
                                .tasks
                                .into_iter()
                                .map(|task| task_from_proto(task, peer))
                                .collect::<Result<Vec<_>, _>>()?;
                            let _ = feed_tx.send((t.weights_version, tasks));
                        }
                        Some(coordinator_message::Body::Ack(a)) => {
                            self.unacked.remove(&a.task_id);
                        }
                        Some(coordinator_message::Body::Heartbeat(_)) | None => {}
                        Some(coordinator_message::Body::Shutdown(s)) => {
                            tracing::info!(reason = %s.reason, "the coordinator ended the job");
                            return Ok(true);
                        }
                    }
                }
                report = results.recv_async() => {
                    let Ok(report) = report else { return Ok(true) };
                    let (message, too_large) =
                        report_message(&report, pool.generated_tokens(), self.max_report);
                    if let Some(bytes) = too_large {
                        // Sent as is, the peer would refuse it and the link would break on
                        // every resend.
                        tracing::warn!(
                            task = report.task.id,
                            bytes,
                            limit = self.max_report,
                            "report larger than the transport carries; sending a \
                             report_too_large fault in its place"
                        );
                        self.summary.too_large += 1;
                    }
                    if let Some(actor_message::Body::Report(p)) = &message.body {
                        self.unacked.insert(report.task.id, p.clone());
                    }
                    self.summary.reports += 1;
                    if out.send(message).await.is_err() {
                        return Ok(false);
                    }
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() > self.peer_timeout {
                        tracing::warn!(
                            coordinator = %self.options.coordinator,
                            silent_s = heard.elapsed().as_secs_f64(),
                            "the coordinator stopped answering"
                        );
                        return Ok(false);
                    }
                    let beat = ActorMessage {
                        body: Some(actor_message::Body::Heartbeat(proto::Heartbeat {
                            generated_tokens: pool.generated_tokens(),
                            weights_version: publisher.version().0,
                        })),
                    };
                    if out.send(beat).await.is_err() {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Something that queues tasks on the local pool (a clone-able closure over its senders).
type Submit = Box<dyn Fn(Vec<EpisodeTask>) -> Result<(), kaizen_actors::Error> + Send>;

fn pool_submitter(pool: &ActorPool) -> Submit {
    let pool = pool.submitter();
    Box::new(move |tasks| pool.submit_all(tasks))
}

/// Starts each batch of tasks once the actor holds the weights version it was submitted with,
/// in arrival order.
async fn feed(
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<EpisodeTask>)>,
    submit: Submit,
    publisher: WeightPublisher,
) {
    while let Some((version, tasks)) = rx.recv().await {
        while publisher.version().0 < version {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Err(e) = submit(tasks) {
            tracing::error!(error = %e, "cannot queue tasks on the local actors");
        }
    }
}

/// Loads every weights version the stream delivers into the local broadcast, until the stream
/// ends (`None`: the coordinator closed it) or fails (why: broken, refused, or a version that
/// cannot be loaded).
async fn follow_weights(
    mut stream: tonic::Streaming<WeightsChunk>,
    mut receiver: WeightsReceiver,
    publisher: WeightPublisher,
    device: Device,
    loaded: Arc<AtomicU64>,
) -> Option<String> {
    loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(status) => {
                tracing::warn!(error = %status.message(), "weights stream broken");
                return Some(format!("weights stream broken: {}", status.message()));
            }
        };
        match receiver.push(chunk).await {
            Ok(Some(w)) => {
                let version: WeightsVersion = w.version;
                match to_model(w, &device).await {
                    Ok(model) => {
                        publisher.publish_version(model, version);
                        loaded.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(version = version.0, "new weights");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "refused a weights version");
                        return Some(format!("weights version {}: {e}", version.0));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "refused a weights stream");
                return Some(format!("refused the weights stream: {e}"));
            }
        }
    }
}
