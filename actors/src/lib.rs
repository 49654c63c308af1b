//! # kaizen-actors
//!
//! Actors play environments with the current policy and stream what happened to the learner.
//!
//! - The learner (or an evaluator) queues [`EpisodeTask`]s on an [`ActorPool`]; tasks of one
//!   GRPO group go to the same actor.
//! - Each actor is a tokio task running up to `episodes_in_flight` episodes at once; each episode
//!   is driven by `kaizen_envs::run_episode`, so a failing environment ends only its episode.
//! - An episode's requests are rendered with the chat template into token threads (the model's
//!   earlier turns kept as sampled ids) and sent to the actor's decode engine — a thread that
//!   batches the pending requests of all the actor's episodes (continuous batching: rows leave
//!   when they finish, new ones join between steps) and prefills identical prompts once. It
//!   samples on the CPU ([`kaizen_model::DecodeBatch`]) unless [`EngineConfig::device`] names
//!   another [`DecodeDevice`] (`kaizen_gpu::actor_rows` for a GPU), reached through the
//!   [`DecodeRows`] seam.
//! - New weights ([`WeightPublisher::publish`]) are picked up between decode steps: rows
//!   already decoding finish with the weights they started with, new rows use the new ones, and
//!   every [`kaizen_core::Segment`] is stamped with its version.
//! - Each finished episode becomes an [`EpisodeReport`] (the [`kaizen_core::Trajectory`] or its
//!   fault) on a bounded channel: when the learner falls behind, actors wait; nothing is dropped.
#![warn(missing_docs)]

mod actor;
mod engine;
mod error;
mod local;
mod responder;
mod rows;
mod serving;
mod weights;

pub use actor::{ActorConfig, ActorPool, Submitter};
pub use engine::{Completion, EngineConfig, EngineCounters, KvAcrossVersions, StreamEvent};
pub use error::Error;
pub use kaizen_envs::EnvSlot;
pub use kaizen_transport::{EpisodeReport, EpisodeTask, SamplingConfig, derive_seed};
pub use local::LocalActors;
pub use rows::{DecodeDevice, DecodeRows};
pub use serving::ServingEngine;
pub use weights::{
    Published, WeightPublisher, WeightSubscriber, weight_broadcast, weight_broadcast_at,
};
