//! An actor process's end of one weights stream: data chunks, and — when the actor can join
//! weights groups (`cluster.weights_transport = "nccl"`) — group invites and versions whose
//! payload comes by the group's broadcast ([`super::group`]).

use std::sync::Arc;
use std::time::Duration;

use super::group::{WeightsGroup, WeightsGroups, bounded};
use super::proto::{WeightsChunk, weights_chunk};
use super::{AssembledWeights, WeightsAssembler};
use crate::Error as TransportError;

/// Reassembles the versions of one weights stream (a [`WeightsAssembler`]), taking part in
/// its weights group when given [`WeightsGroups`]: joins on an invite, and receives a version
/// whose header names the group by the group's broadcast.
pub struct WeightsReceiver {
    assembler: WeightsAssembler,
    groups: Option<Arc<dyn WeightsGroups>>,
    /// The group joined last: its generation and this rank's handle (`None` while a
    /// broadcast runs, or after one failed).
    group: Option<(u64, Box<dyn WeightsGroup>)>,
    /// The version the last broadcast delivered: the coordinator sends it again as chunks when
    /// the broadcast failed for another member, and that copy is dropped.
    by_group: Option<u64>,
    timeout: Duration,
}

impl WeightsReceiver {
    /// A receiver for a stream from `peer`; `groups` when this actor joins weights groups;
    /// joins and broadcasts wait at most `timeout`.
    pub fn new(
        peer: impl Into<String>,
        groups: Option<Arc<dyn WeightsGroups>>,
        timeout: Duration,
    ) -> Self {
        Self {
            assembler: WeightsAssembler::new(u64::MAX, peer),
            groups,
            group: None,
            by_group: None,
            timeout,
        }
    }

    /// Takes the stream's next message; returns a version when its last byte arrived. A
    /// failed join or broadcast is logged and leaves the version to the chunks the
    /// coordinator sends after it. Joins and broadcasts run on blocking threads (call from a
    /// tokio runtime).
    ///
    /// # Errors
    /// [`TransportError::Protocol`] for chunks the assembler refuses (the stream is to be
    /// dropped).
    pub async fn push(
        &mut self,
        chunk: WeightsChunk,
    ) -> Result<Option<AssembledWeights>, TransportError> {
        match chunk.body {
            Some(weights_chunk::Body::Invite(invite)) => {
                self.drop_group();
                let Some(groups) = self.groups.clone() else {
                    tracing::warn!(
                        generation = invite.generation,
                        "invited to a weights group this actor cannot join; ignored"
                    );
                    return Ok(None);
                };
                let (generation, timeout) = (invite.generation, self.timeout);
                let joined = blocking(move || {
                    bounded(
                        &format!("joining weights group {generation}"),
                        timeout,
                        move || {
                            groups.join(
                                &invite.id,
                                invite.rank as usize,
                                invite.world_size as usize,
                            )
                        },
                    )
                })
                .await;
                match joined {
                    Ok(handle) => {
                        tracing::info!(
                            generation,
                            rank = handle.rank(),
                            world_size = handle.world_size(),
                            "joined the weights group"
                        );
                        self.group = Some((generation, handle));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not join the weights group"),
                }
                Ok(None)
            }
            Some(weights_chunk::Body::Header(header)) if header.group_generation != 0 => {
                let (generation, version) = (header.group_generation, header.version);
                let done = self.assembler.push(WeightsChunk {
                    body: Some(weights_chunk::Body::Header(header)),
                })?;
                let values = self.assembler.awaiting_group().map_or(0, |(_, _, n)| n);
                match self.receive(generation, version, values).await {
                    Ok(payload) if done.is_none() => {
                        let assembled = self.assembler.push_payload(&payload)?;
                        self.by_group = assembled.as_ref().map(|w| w.version.0);
                        Ok(assembled)
                    }
                    Ok(_) => Ok(done),
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            version,
                            "weights group broadcast failed; waiting for the version as chunks"
                        );
                        self.assembler.abandon();
                        Ok(None)
                    }
                }
            }
            _ => match self.assembler.push(chunk)? {
                Some(w) if self.by_group == Some(w.version.0) => {
                    tracing::debug!(
                        version = w.version.0,
                        "weights version already received by the group's broadcast; dropped"
                    );
                    Ok(None)
                }
                done => Ok(done),
            },
        }
    }

    /// This rank's part of group `generation`'s broadcast of `values` floats.
    async fn receive(
        &mut self,
        generation: u64,
        version: u64,
        values: usize,
    ) -> Result<Vec<f32>, TransportError> {
        let handle = match self.group.take() {
            Some((g, handle)) if g == generation => handle,
            other => {
                let held = other.as_ref().map(|(g, _)| *g);
                if let Some((_, stale)) = other {
                    // Releasing a communicator may block (NCCL): not on an async worker.
                    tokio::task::spawn_blocking(move || drop(stale));
                }
                return Err(TransportError::Weights(format!(
                    "version {version} comes by weights group {generation}, but this actor holds \
                     {}",
                    held.map_or_else(|| "no group".to_string(), |g| format!("group {g}"))
                )));
            }
        };
        // Longer than the coordinator can take to start and finish the broadcast (the headers
        // go to all members within one peer timeout, the broadcast within one more): a member
        // never gives up on a broadcast the coordinator then counts as delivered.
        let timeout = self.timeout * 3;
        let what = format!("receiving weights version {version} from weights group {generation}");
        let (handle, payload) = blocking(move || {
            bounded(&what, timeout, move || {
                let mut handle = handle;
                let mut payload = vec![0.0f32; values];
                handle.broadcast(&mut payload)?;
                Ok((handle, payload))
            })
        })
        .await?;
        self.group = Some((generation, handle));
        Ok(payload)
    }
}

impl WeightsReceiver {
    /// Leaves the group held, releasing it off the async workers (releasing an NCCL
    /// communicator may block).
    fn drop_group(&mut self) {
        if let Some((_, handle)) = self.group.take() {
            tokio::task::spawn_blocking(move || drop(handle));
        }
    }
}

/// Runs a blocking call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransportError::Weights(format!("a weights-group call panicked: {e}")))?
}
