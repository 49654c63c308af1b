//! The coordinator's side of weights groups ([`super::group`]): the group-capable
//! subscribers, the group formed with them, and the delivery of each published version to
//! them — a header naming the group, then one broadcast — with the fallback to chunks.
//!
//! Each subscriber's weights stream has one writer at a time: its own task (sending whole
//! versions as chunks, the fallback's included) or a publish (sending an invite or a header)
//! takes the stream's `writer` lock for a whole sequence, so sequences never interleave. A
//! publish marks a member's `delivered` version before the version is announced to the
//! subscriber tasks, which then skip it. When the group fails, the publish puts the marks back,
//! so each member's own task sends the version as chunks once it is announced: whole, however
//! long the member is still busy in its part of the failed join or broadcast.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

use super::EncodedWeights;
use super::group::{
    BACKOFF_PUBLISHES, MAX_BACKOFF_PUBLISHES, MAX_GROUP_FAILURES, WeightsGroup, WeightsGroups,
    bounded,
};
use super::proto::{GroupInvite, WeightsChunk, weights_chunk};
use crate::Error;

/// A subscriber's outgoing weights stream.
pub(super) type ChunkSender = mpsc::Sender<Result<WeightsChunk, Status>>;

/// One subscriber's stream, shared by its task and the publishing side.
#[derive(Clone)]
pub(super) struct Subscriber {
    /// The actor's id from its join (0: none given).
    pub actor_id: u64,
    pub tx: ChunkSender,
    /// Held for a whole sequence of messages (see the module docs).
    pub writer: Arc<tokio::sync::Mutex<()>>,
    /// The newest version a publish delivered to it (`u64::MAX`: none).
    pub delivered: Arc<AtomicU64>,
}

impl Subscriber {
    pub fn new(tx: ChunkSender) -> Self {
        Self {
            actor_id: 0,
            tx,
            writer: Arc::default(),
            delivered: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Whether `version` was delivered by a publish (so the subscriber's task skips it).
    pub fn was_delivered(&self, version: u64) -> bool {
        let d = self.delivered.load(Ordering::Acquire);
        d != u64::MAX && d >= version
    }
}

/// A group formed with some of the subscribers.
#[derive(Debug)]
struct Formed {
    generation: u64,
    /// The members' subscription keys, in rank order (rank = index + 1).
    members: Vec<u64>,
    /// Rank 0's handle; `None` while a broadcast runs on its own thread.
    handle: Option<Box<dyn WeightsGroup>>,
}

#[derive(Debug, Default)]
struct Delivery {
    group: Option<Formed>,
    generation: u64,
    failures: u32,
    /// Publishes still to go as chunks only (the back-off after repeated failures).
    skip: u64,
}

/// Counters of the group delivery (in `CoordinatorStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct GroupCounts {
    /// Versions delivered by a group broadcast.
    pub by_group: u64,
    /// Groups formed.
    pub formed: u64,
    /// Joins or broadcasts that failed (each followed by chunks).
    pub failures: u64,
    /// Group-capable subscribers connected now.
    pub capable: u64,
}

/// The group-capable subscribers and the group formed with them.
pub(super) struct GroupHub {
    groups: Arc<dyn WeightsGroups>,
    timeout: Duration,
    members: Mutex<(u64, BTreeMap<u64, Subscriber>)>,
    delivery: Mutex<Delivery>,
    counts: Mutex<GroupCounts>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GroupHub {
    /// A hub forming groups with `groups`; every wait is bounded by `timeout`.
    pub fn new(groups: Arc<dyn WeightsGroups>, timeout: Duration) -> Self {
        Self {
            groups,
            timeout,
            members: Mutex::default(),
            delivery: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    /// Adds a group-capable subscriber; returns its key for [`GroupHub::remove`]. An earlier
    /// stream of the same actor (`actor_id` > 0: a reconnect, whose old stream may linger
    /// half-open) leaves the members.
    pub fn register(&self, actor_id: u64, subscriber: Subscriber) -> u64 {
        let mut members = lock(&self.members);
        if actor_id > 0 {
            members.1.retain(|_, s| s.actor_id != actor_id);
        }
        members.0 += 1;
        let key = members.0;
        members.1.insert(
            key,
            Subscriber {
                actor_id,
                ..subscriber
            },
        );
        key
    }

    /// Removes a subscriber whose stream ended (the next publish forms a group without it).
    pub fn remove(&self, key: u64) {
        lock(&self.members).1.remove(&key);
    }

    pub fn counts(&self) -> GroupCounts {
        GroupCounts {
            capable: lock(&self.members).1.len() as u64,
            ..*lock(&self.counts)
        }
    }

    /// Delivers `weights` to the group-capable subscribers through a group (formed or re-formed
    /// first when they changed). On any failure the members get the version as chunks
    /// instead (by the members' own tasks, once the version is announced); versions are never
    /// lost. Blocks the caller (the learner's publish) for the broadcast. Must not run on the
    /// coordinator's runtime (it blocks on it).
    pub fn deliver(&self, runtime: &tokio::runtime::Handle, weights: &EncodedWeights) {
        let mut delivery = lock(&self.delivery);
        if delivery.skip > 0 {
            delivery.skip -= 1;
            return;
        }
        let members: Vec<(u64, Subscriber)> = lock(&self.members)
            .1
            .iter()
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        if members.is_empty() {
            delivery.group = None;
            return;
        }
        let version = weights.version().0;
        // The members' marks before this version, put back if it goes as chunks.
        let before: Vec<u64> = members
            .iter()
            .map(|(_, s)| s.delivered.load(Ordering::Acquire))
            .collect();
        let result = self.form(runtime, &mut delivery, &members).and_then(|()| {
            let group = delivery.group.as_mut().ok_or_else(|| {
                Error::Weights("the weights group is missing after forming it".into())
            })?;
            self.broadcast(runtime, group, &members, weights)
        });
        match result {
            Ok(()) => {
                delivery.failures = 0;
                lock(&self.counts).by_group += 1;
            }
            Err(e) => {
                delivery.group = None;
                delivery.failures += 1;
                lock(&self.counts).failures += 1;
                if delivery.failures >= MAX_GROUP_FAILURES {
                    let doublings = (delivery.failures - MAX_GROUP_FAILURES).min(8);
                    delivery.skip = (BACKOFF_PUBLISHES << doublings).min(MAX_BACKOFF_PUBLISHES);
                    tracing::error!(
                        error = %e,
                        failures = delivery.failures,
                        publishes = delivery.skip,
                        "the weights group failed again: weights go as chunks for the next \
                         publishes, then a new group is tried"
                    );
                } else {
                    tracing::warn!(
                        error = %e,
                        version,
                        "the weights group failed: sending this version as chunks; a new group \
                         is formed at the next publish"
                    );
                }
                Self::fall_back(&members, &before);
            }
        }
    }

    /// Forms a new group when the members differ from the current group's.
    fn form(
        &self,
        runtime: &tokio::runtime::Handle,
        delivery: &mut Delivery,
        members: &[(u64, Subscriber)],
    ) -> Result<(), Error> {
        let keys: Vec<u64> = members.iter().map(|(k, _)| *k).collect();
        if delivery.group.as_ref().is_some_and(|g| g.members == keys) {
            return Ok(());
        }
        // Drop the old group first (NCCL: its communicator is released).
        delivery.group = None;
        delivery.generation += 1;
        let generation = delivery.generation;
        let id = self.groups.new_id()?;
        let world_size = members.len() + 1;
        // Rank 0 joins on its own thread while the invites go out: a join returns only once
        // every rank has joined.
        let (groups, join_id) = (self.groups.clone(), id.clone());
        let joining = std::thread::spawn(move || groups.join(&join_id, 0, world_size));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let _ = tx.send(joining.join());
        });
        let invites = members.iter().enumerate().map(|(rank, (_, subscriber))| {
            let invite = WeightsChunk {
                body: Some(weights_chunk::Body::Invite(GroupInvite {
                    generation,
                    id: id.clone().into(),
                    rank: (rank + 1) as u32,
                    world_size: world_size as u32,
                })),
            };
            (subscriber.clone(), vec![invite])
        });
        self.send_all(runtime, invites.collect(), None)
            .map_err(|e| Error::Weights(format!("weights group {generation}: {e}")))?;
        let handle = match rx.recv_timeout(self.timeout) {
            Ok(Ok(joined)) => joined?,
            Ok(Err(_)) => {
                return Err(Error::Weights(format!(
                    "weights group {generation}: rank 0's join panicked"
                )));
            }
            Err(_) => {
                return Err(Error::Weights(format!(
                    "weights group {generation}: {} members did not all join within {:.1} s \
                     (cluster.peer_timeout_s)",
                    members.len(),
                    self.timeout.as_secs_f64()
                )));
            }
        };
        lock(&self.counts).formed += 1;
        tracing::info!(
            generation,
            members = members.len(),
            "weights group formed: versions go to its members by broadcast"
        );
        delivery.group = Some(Formed {
            generation,
            members: keys,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Sends the group's header to every member, then broadcasts the payload from rank 0.
    fn broadcast(
        &self,
        runtime: &tokio::runtime::Handle,
        group: &mut Formed,
        members: &[(u64, Subscriber)],
        weights: &EncodedWeights,
    ) -> Result<(), Error> {
        let generation = group.generation;
        let version = weights.version().0;
        let headers = members
            .iter()
            .map(|(_, subscriber)| (subscriber.clone(), vec![weights.group_header(generation)]))
            .collect();
        self.send_all(runtime, headers, Some(version))?;
        let mut handle = group.handle.take().ok_or_else(|| {
            Error::Weights(format!(
                "weights group {generation}: no handle (a broadcast is stuck)"
            ))
        })?;
        let mut payload = weights.payload();
        let what = format!("broadcasting weights version {version} to weights group {generation}");
        let handle = bounded(&what, self.timeout, move || {
            handle.broadcast(&mut payload)?;
            Ok(handle)
        })?;
        group.handle = Some(handle);
        Ok(())
    }

    /// Leaves the version to the members' own tasks, as chunks (its header with generation
    /// 0): puts back the `delivered` marks this publish set. A member's task sends the version
    /// when it is announced, without a deadline, as for any subscriber: a member still blocked in
    /// its part of the failed join or broadcast (up to the peer timeout) takes it whole
    /// afterwards, and a member that is gone ends its task. (Sent from here within the peer
    /// timeout, the chunks were cut off mid-version for such a member, whose stream then
    /// refused every later version.)
    fn fall_back(members: &[(u64, Subscriber)], before: &[u64]) {
        for ((_, subscriber), mark) in members.iter().zip(before) {
            subscriber.delivered.store(*mark, Ordering::Release);
        }
    }

    /// Sends each member its messages as one sequence (under its writer lock), all members at
    /// once and within one peer timeout together; marks each one's `delivered` with its lock
    /// held.
    fn send_all(
        &self,
        runtime: &tokio::runtime::Handle,
        sends: Vec<(Subscriber, Vec<WeightsChunk>)>,
        delivered: Option<u64>,
    ) -> Result<(), Error> {
        let timeout = self.timeout;
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (subscriber, messages) in sends {
                tasks.spawn(async move {
                    let _writer = subscriber.writer.lock().await;
                    for m in messages {
                        subscriber.tx.send(Ok(m)).await.map_err(|_| {
                            Error::Network("a member's weights stream closed".into())
                        })?;
                    }
                    if let Some(v) = delivered {
                        subscriber.delivered.store(v, Ordering::Release);
                    }
                    Ok::<(), Error>(())
                });
            }
            let all = async {
                while let Some(done) = tasks.join_next().await {
                    done.map_err(|e| Error::Network(format!("sending to a member: {e}")))??;
                }
                Ok(())
            };
            let result = tokio::time::timeout(timeout, all).await.map_err(|_| {
                Error::Network(format!(
                    "a member did not take its weights messages within {:.1} s",
                    timeout.as_secs_f64()
                ))
            })?;
            // Sends still waiting are dropped with the set (before any was marked delivered).
            tasks.abort_all();
            result
        })
    }
}
