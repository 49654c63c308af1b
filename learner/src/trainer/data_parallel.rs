//! Data-parallel learner ranks in a job. Rank 0 runs the job (actors, tracking, checkpoints,
//! evaluation, warm-start phases); ranks 1..N follow ([`follow`]): at the start of RL rank 0
//! sends them its learner state (weights, optimizer moments and step, the KL reference), then
//! each RL step's trajectories; every rank steps its share of the micro-batches and the
//! gradients are summed across the group (`Learner::set_collective`). Rank 0 alone publishes
//! weights and writes checkpoints; a resumed rank 0 sends the resumed state.
//!
//! Messages travel over the group's own collective (a broadcast from rank 0) as a tag byte and a
//! body: `Step` is JSON (trajectories with their exact token ids and f32 log-probs: serde_json
//! writes the shortest representation that reads back to the same f32); `Sync` is a JSON
//! header followed by raw little-endian f32 tensors.

use std::collections::HashMap;

use burn::tensor::Device;
use kaizen_algorithms::{AdvantageConfig, GrpoLossConfig};
use kaizen_core::{Trajectory, WeightsVersion};
use kaizen_model::{HostTensor, Llama, LlamaConfig};
use kaizen_transport::wire::{extend_le, read_le};
use serde::{Deserialize, Serialize};

use super::setup::rl_schedule;
use crate::Error;
use crate::collective::Collective;
use crate::config::JobConfig;
use crate::learner::Learner;
use crate::optimizer::AdamW;

const STOP: u8 = 0;
const STEP: u8 = 1;
const SYNC: u8 = 2;

#[derive(Serialize, Deserialize)]
struct StepBody {
    trajectories: Vec<Trajectory>,
    newest: u64,
    loss: GrpoLossConfig,
    advantage: AdvantageConfig,
}

#[derive(Serialize, Deserialize)]
struct SyncHeader {
    model: LlamaConfig,
    /// Names and shapes, in payload order: the policy, then the moments, then the reference.
    weights: Vec<(String, Vec<usize>)>,
    moments: Vec<(String, Vec<usize>)>,
    optimizer_step: u64,
    reference: Option<Vec<(String, Vec<usize>)>>,
}

/// Rank 0's bytes on every rank (the group's broadcast, built on its all-gather).
fn broadcast(collective: &dyn Collective, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mine = if collective.rank() == 0 {
        bytes
    } else {
        Vec::new()
    };
    collective
        .all_gather_bytes(&mine)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Collective("an empty group".into()))
}

fn push_tensors(
    named: Vec<(String, HostTensor)>,
    index: &mut Vec<(String, Vec<usize>)>,
    payload: &mut Vec<u8>,
) {
    for (name, t) in named {
        extend_le(payload, &t.data);
        index.push((name, t.shape));
    }
}

fn take_tensors(
    index: &[(String, Vec<usize>)],
    payload: &mut &[u8],
) -> Result<HashMap<String, HostTensor>, Error> {
    let mut out = HashMap::with_capacity(index.len());
    for (name, shape) in index {
        let n: usize = shape.iter().product();
        if payload.len() < n * 4 {
            return Err(Error::Collective(format!(
                "rank 0's state ends inside tensor `{name}`"
            )));
        }
        let (bytes, rest) = payload.split_at(n * 4);
        *payload = rest;
        out.insert(name.clone(), HostTensor::new(shape.clone(), read_le(bytes)));
    }
    Ok(out)
}

impl super::Run {
    /// Whether this run's learner is rank 0 of a data-parallel group of several.
    pub(super) fn data_parallel(&self) -> bool {
        self.learner.collective().world_size() > 1
    }

    /// Sends the learner's state to the follower ranks (the start of RL).
    pub(super) fn sync_followers(&self) -> Result<(), Error> {
        if !self.data_parallel() {
            return Ok(());
        }
        let mut payload = Vec::new();
        let mut weights = Vec::new();
        push_tensors(self.learner.policy().to_named(), &mut weights, &mut payload);
        // With a backend its moments, read back: each follower's backend gets them.
        let (optimizer_step, moments_named) = self.learner.optimizer_state()?;
        let mut moments = Vec::new();
        push_tensors(moments_named, &mut moments, &mut payload);
        let reference = self.learner.reference().map(|r| {
            let mut index = Vec::new();
            push_tensors(r.to_named(), &mut index, &mut payload);
            index
        });
        let header = SyncHeader {
            model: self.learner.model().config().clone(),
            weights,
            moments,
            optimizer_step,
            reference,
        };
        let header = serde_json::to_vec(&header)
            .map_err(|e| Error::Collective(format!("encoding the learner state: {e}")))?;
        let mut message = vec![SYNC];
        message.extend_from_slice(&(header.len() as u64).to_le_bytes());
        message.extend_from_slice(&header);
        message.extend_from_slice(&payload);
        broadcast(self.learner.collective(), message)?;
        Ok(())
    }

    /// Sends a step's trajectories to the follower ranks, before rank 0 steps on them.
    pub(super) fn step_followers(
        &self,
        trajectories: &[Trajectory],
        newest: WeightsVersion,
    ) -> Result<(), Error> {
        if !self.data_parallel() {
            return Ok(());
        }
        let objective = self.config.objective_at(self.state.step);
        let body = StepBody {
            trajectories: trajectories.to_vec(),
            newest: newest.0,
            loss: objective.loss,
            advantage: objective.advantage,
        };
        let mut message = vec![STEP];
        serde_json::to_writer(&mut message, &body)
            .map_err(|e| Error::Collective(format!("encoding a step: {e}")))?;
        broadcast(self.learner.collective(), message)?;
        Ok(())
    }

    /// Tells the follower ranks that RL is over.
    pub(super) fn stop_followers(&self) -> Result<(), Error> {
        if self.data_parallel() {
            broadcast(self.learner.collective(), vec![STOP])?;
        }
        Ok(())
    }
}

/// Runs a follower rank (1..N) of a data-parallel learner until rank 0 ends RL; returns the
/// steps taken. Rank 0 runs [`super::train`] with the same collective in
/// [`super::TrainOptions::collective`].
///
/// `backend` builds the training backend `learner.device` asks for (as
/// [`super::TrainOptions::backend`]); `None` trains on the CPU.
///
/// # Errors
/// Collective failures, malformed messages from rank 0, learner errors; `learner.device`
/// other than `"cpu"` without a `backend`.
pub fn follow(
    config: &JobConfig,
    collective: Box<dyn Collective>,
    device: &Device,
    backend: Option<&crate::BackendFactory>,
) -> Result<u64, Error> {
    let train_device = device.clone().autodiff();
    let mut collective = Some(collective);
    let mut learner: Option<Learner> = None;
    let mut steps = 0;
    loop {
        let group: &dyn Collective = match (&learner, &collective) {
            (Some(l), _) => l.collective(),
            (None, Some(c)) => c.as_ref(),
            (None, None) => return Err(Error::Collective("no collective".into())),
        };
        let message = broadcast(group, Vec::new())?;
        let Some((&tag, body)) = message.split_first() else {
            return Err(Error::Collective("an empty message from rank 0".into()));
        };
        match tag {
            STOP => return Ok(steps),
            SYNC => {
                let (len, rest) = body
                    .split_at_checked(8)
                    .ok_or_else(|| Error::Collective("a truncated state from rank 0".into()))?;
                let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8])) as usize;
                let (header, mut payload) = rest
                    .split_at_checked(len)
                    .ok_or_else(|| Error::Collective("a truncated state header".into()))?;
                let header: SyncHeader = serde_json::from_slice(header)
                    .map_err(|e| Error::Collective(format!("rank 0's state header: {e}")))?;
                let mut weights = take_tensors(&header.weights, &mut payload)?;
                let moments = take_tensors(&header.moments, &mut payload)?;
                let reference = match &header.reference {
                    Some(index) => Some(take_tensors(index, &mut payload)?),
                    None => None,
                };
                let path = std::path::Path::new("rank 0's state");
                let model = Llama::from_named(&header.model, &mut weights, path, &train_device)?;
                let optimizer =
                    AdamW::restore(config.optim.adamw(), header.optimizer_step, moments)
                        .map_err(Error::Collective)?;
                let mut next = Learner::with_objective(
                    model,
                    optimizer,
                    rl_schedule(config),
                    config.learner.clone(),
                    config.objective_at(0),
                );
                if let Some(mut r) = reference {
                    next.set_reference(Llama::from_named(
                        &header.model,
                        &mut r,
                        path,
                        &train_device,
                    )?);
                }
                let group = match (learner.take(), collective.take()) {
                    (Some(mut old), _) => old.take_collective(),
                    (None, Some(c)) => c,
                    (None, None) => return Err(Error::Collective("no collective".into())),
                };
                next.set_collective(group);
                super::attach_backend(&mut next, config, backend)?;
                learner = Some(next);
            }
            STEP => {
                let Some(l) = learner.as_mut() else {
                    return Err(Error::Collective(
                        "rank 0 sent a step before the learner state".into(),
                    ));
                };
                let body: StepBody = serde_json::from_slice(body)
                    .map_err(|e| Error::Collective(format!("a step from rank 0: {e}")))?;
                l.set_objective(body.loss, body.advantage);
                l.rl_step(&body.trajectories, WeightsVersion(body.newest))?;
                steps += 1;
            }
            other => {
                return Err(Error::Collective(format!(
                    "an unknown message {other} from rank 0"
                )));
            }
        }
    }
}
