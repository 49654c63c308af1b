//! Weights groups: a collective broadcast (NCCL on GPU nodes) that carries each weights
//! version's payload from the learner to the actor processes, while the gRPC weights stream
//! stays the control path (invites, headers, the fallback).
//!
//! **Why.** The gRPC stream unicasts every version to every actor process out of the
//! learner's NIC (SmolLM2-135M: 538 MB × processes per version). A collective broadcast is
//! pipelined through the members (NCCL's ring/tree over NVLink, InfiniBand or sockets), so the
//! learner sends each byte about once, whatever the number of actors. This is what
//! PyTorch-based RL stacks do to feed their inference engines (a process group of the trainer's
//! rank 0 and the engines, weights broadcast from rank 0).
//!
//! **Protocol** (`proto/kaizen.proto`: `WeightsRequest.group_capable`, `GroupInvite`,
//! `WeightsHeader.group_generation`). An actor that can join a group says so when it opens
//! its weights stream; its first version always comes as data chunks. At the next publish
//! whose group-capable subscribers differ from the current group's members, the coordinator
//! forms a new group — a new id from [`WeightsGroups::new_id`], generation + 1, the learner rank
//! 0, the members ranks `1..=n` in subscription order — by sending each member a `GroupInvite`
//! and joining itself; then each version goes to the members as a header naming the group's
//! generation (no data chunks) followed by one broadcast of the payload, which each member
//! checks against the header's CRC-32C exactly as chunks are checked. Subscribers that cannot
//! join keep receiving chunks.
//!
//! **Failures.** Every join and broadcast is bounded by the peer timeout. When one fails (a member
//! died, NCCL could not connect) the coordinator drops the group, sends the version to every member
//! again as chunks (its header with generation 0) and forms a new group at a later publish; after
//! [`MAX_GROUP_FAILURES`] failures in a row it backs off — chunks only for the next
//! [`BACKOFF_PUBLISHES`] publishes, doubling with each further failure up to
//! [`MAX_BACKOFF_PUBLISHES`] — and says so in the log. A member whose join or broadcast fails drops
//! the group and waits for the chunks. A member waits for a broadcast longer than the coordinator
//! can take to start and finish it (three peer timeouts: the invites, and then the headers, go to
//! all members at once within one), so it never gives up on a broadcast the coordinator then counts
//! as delivered. A subscriber that opens a new weights stream under the same actor id (a reconnect)
//! replaces its old one among the members. A collective stuck in the library (a peer that died
//! mid-broadcast) is left to its thread: the run goes on without it, the way the coordinator goes
//! on without the dead member.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Error;

/// Failures in a row after which a coordinator sends weights as chunks only, for the rest of
/// the run.
pub const MAX_GROUP_FAILURES: u32 = 2;

/// Publishes that go as chunks only after [`MAX_GROUP_FAILURES`] failures in a row; doubled with
/// each further failure, up to [`MAX_BACKOFF_PUBLISHES`].
pub const BACKOFF_PUBLISHES: u64 = 8;

/// The longest back-off, publishes.
pub const MAX_BACKOFF_PUBLISHES: u64 = 128;

/// Makes and joins weights groups: NCCL communicators in a GPU build (the root crate's
/// `NcclWeightsGroups`), [`InProcessGroups`] for threads of one process.
pub trait WeightsGroups: Send + Sync + std::fmt::Debug {
    /// A new group id (the learner, which is rank 0 of every group it forms).
    ///
    /// # Errors
    /// [`Error::Weights`] when the library cannot make one.
    fn new_id(&self) -> Result<Vec<u8>, Error>;

    /// Joins the group `id` names as `rank` of `world_size`; returns once every rank has
    /// joined. The caller bounds the wait (it runs this on a thread of its own).
    ///
    /// # Errors
    /// [`Error::Weights`] naming the group when the id is malformed or the library fails.
    fn join(
        &self,
        id: &[u8],
        rank: usize,
        world_size: usize,
    ) -> Result<Box<dyn WeightsGroup>, Error>;
}

/// One joined weights group.
pub trait WeightsGroup: Send + std::fmt::Debug {
    /// Broadcasts rank 0's `values` into every other rank's `values` (the same length on every
    /// rank: the header's `payload_bytes / 4`). Blocks until this rank's part is done.
    ///
    /// # Errors
    /// [`Error::Weights`] when the library fails.
    fn broadcast(&mut self, values: &mut [f32]) -> Result<(), Error>;

    /// This rank.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world_size(&self) -> usize;
}

/// Runs `f` on a thread of its own and waits at most `timeout` for it; `what` names the
/// operation in the timeout's error. A call still running at the deadline is left to finish
/// (or not) on its own thread.
///
/// # Errors
/// `f`'s error, or [`Error::Weights`] at the deadline.
pub fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kaizen-weights-group".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Error::Weights(format!("{what}: starting a thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(Error::Weights(format!(
            "{what}: no result within {:.1} s (cluster.peer_timeout_s)",
            timeout.as_secs_f64()
        ))),
    }
}

/// Weights groups among threads of one process: the same protocol as NCCL's (an opaque id
/// made by rank 0, a join that waits for every rank, a broadcast that every rank enters),
/// used by the tests of the coordinator and the actor role and by anyone wiring actors
/// in-process. Joins and broadcasts wait at most `timeout`.
#[derive(Debug, Clone)]
pub struct InProcessGroups {
    shared: Arc<Registry>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Registry {
    groups: Mutex<HashMap<Vec<u8>, Arc<Rendezvous>>>,
    next: Mutex<u64>,
}

#[derive(Debug, Default)]
struct Rendezvous {
    state: Mutex<RendezvousState>,
    changed: Condvar,
}

impl Rendezvous {
    /// Waits at most `left` for another rank to change the state.
    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, RendezvousState>,
        left: Duration,
    ) -> std::sync::MutexGuard<'a, RendezvousState> {
        self.changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

#[derive(Debug, Default)]
struct RendezvousState {
    world_size: usize,
    joined: usize,
    /// Broadcast round → rank 0's values, and how many ranks have copied them.
    rounds: HashMap<u64, (Arc<Vec<f32>>, usize)>,
}

impl Default for InProcessGroups {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl InProcessGroups {
    /// Groups whose joins and broadcasts wait at most `timeout` for the other ranks.
    pub fn new(timeout: Duration) -> Self {
        Self {
            shared: Arc::default(),
            timeout,
        }
    }

    /// Group ids made so far (for tests).
    pub fn groups_made(&self) -> u64 {
        *self.shared.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WeightsGroups for InProcessGroups {
    fn new_id(&self) -> Result<Vec<u8>, Error> {
        let mut next = self.shared.next.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        let id = format!("in-process group {}", *next).into_bytes();
        self.shared
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Arc::default());
        Ok(id)
    }

    fn join(
        &self,
        id: &[u8],
        rank: usize,
        world_size: usize,
    ) -> Result<Box<dyn WeightsGroup>, Error> {
        let name = String::from_utf8_lossy(id).into_owned();
        if rank >= world_size {
            return Err(Error::Weights(format!(
                "{name}: rank {rank} is not below the world size {world_size}"
            )));
        }
        let rendezvous = self
            .shared
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Weights(format!("{name}: no such group")))?;
        {
            let mut state = rendezvous.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.world_size == 0 {
                state.world_size = world_size;
            } else if state.world_size != world_size {
                return Err(Error::Weights(format!(
                    "{name}: joined with world size {world_size}, the group has {}",
                    state.world_size
                )));
            }
            state.joined += 1;
            rendezvous.changed.notify_all();
            let deadline = Instant::now() + self.timeout;
            while state.joined < world_size {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Weights(format!(
                        "{name}: {} of {world_size} ranks joined",
                        state.joined
                    )));
                }
                state = rendezvous.wait(state, left);
            }
        }
        Ok(Box::new(InProcessGroup {
            name,
            rendezvous,
            rank,
            world_size,
            round: 0,
            timeout: self.timeout,
        }))
    }
}

/// A rank of an [`InProcessGroups`] group.
#[derive(Debug)]
struct InProcessGroup {
    name: String,
    rendezvous: Arc<Rendezvous>,
    rank: usize,
    world_size: usize,
    round: u64,
    timeout: Duration,
}

impl WeightsGroup for InProcessGroup {
    fn broadcast(&mut self, values: &mut [f32]) -> Result<(), Error> {
        let round = self.round;
        self.round += 1;
        let deadline = Instant::now() + self.timeout;
        let mut state = self
            .rendezvous
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.rank == 0 {
            state.rounds.insert(round, (Arc::new(values.to_vec()), 1));
            self.rendezvous.changed.notify_all();
            // Rank 0 returns once every rank has its copy, as a synchronous collective would.
            while state
                .rounds
                .get(&round)
                .is_some_and(|r| r.1 < self.world_size)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let copied = state.rounds.get(&round).map_or(0, |r| r.1);
                    return Err(Error::Weights(format!(
                        "{}: broadcast {round}: {copied} of {} ranks took part",
                        self.name, self.world_size
                    )));
                }
                state = self.rendezvous.wait(state, left);
            }
            state.rounds.remove(&round);
            return Ok(());
        }
        loop {
            if let Some((source, copied)) = state.rounds.get_mut(&round) {
                if source.len() != values.len() {
                    return Err(Error::Weights(format!(
                        "{}: broadcast {round}: rank 0 sent {} values, rank {} expected {}",
                        self.name,
                        source.len(),
                        self.rank,
                        values.len()
                    )));
                }
                values.copy_from_slice(source);
                *copied += 1;
                self.rendezvous.changed.notify_all();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Weights(format!(
                    "{}: broadcast {round}: rank 0 did not send within {:.1} s",
                    self.name,
                    self.timeout.as_secs_f64()
                )));
            }
            state = self.rendezvous.wait(state, left);
        }
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_rank_zeros_values_and_a_missing_rank_times_out() {
        let groups = InProcessGroups::new(Duration::from_millis(300));
        let id = groups.new_id().unwrap();
        let members: Vec<_> = (1..3)
            .map(|rank| {
                let (groups, id) = (groups.clone(), id.clone());
                std::thread::spawn(move || {
                    let mut g = groups.join(&id, rank, 3).unwrap();
                    let mut got = vec![0.0; 4];
                    g.broadcast(&mut got).unwrap();
                    g.broadcast(&mut got).unwrap();
                    got
                })
            })
            .collect();
        let mut root = groups.join(&id, 0, 3).unwrap();
        root.broadcast(&mut [1.0, 2.0, 3.0, 4.0]).unwrap();
        root.broadcast(&mut [5.0, 6.0, 7.0, 8.0]).unwrap();
        for m in members {
            assert_eq!(m.join().unwrap(), vec![5.0, 6.0, 7.0, 8.0]);
        }
        // A rank that never comes: the join fails at the deadline, naming the count.
        let id = groups.new_id().unwrap();
        let e = groups.join(&id, 0, 2).unwrap_err().to_string();
        assert!(e.contains("1 of 2 ranks joined"), "{e}");
        // The bounded wrapper gives up on a call that does not return.
        let e = bounded("a stuck join", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(1));
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a stuck join") && e.contains("peer_timeout_s"),
            "{e}"
        );
    }
}
