//! # kaizen-core
//!
//! The vocabulary every other kaizen crate speaks. Nothing here touches tensors, files or the
//! network; every type is plain data and `serde`-serializable, so it can cross a channel, a
//! process boundary or a JSON protocol unchanged.
//!
//! How the parts fit:
//!
//! - A [`Message`] is one chat turn (`role`, `content`).
//! - An environment answers `reset(seed)` and `step(agent, text)` with a [`Step`]: either the
//!   next [`Request`] (which agent must speak, the conversation it sees, whether that turn is
//!   trained on, sampling overrides) or [`Step::Done`] with an [`Outcome`] (rewards per agent and
//!   turn, metrics).
//! - An actor answers requests with the policy and records each model turn as a [`Segment`]:
//!   token ids exactly as sampled, behaviour log-probs, the [`WeightsVersion`] that produced
//!   them. A finished episode is a [`Trajectory`], which travels to the learner.
#![warn(missing_docs)]

mod error;
mod message;
pub mod openai_chat;
mod step;
mod trajectory;

pub use error::Error;
pub use message::{Message, Role};
pub use step::{AgentId, Outcome, Request, SamplingOverrides, Step};
pub use trajectory::{FinishReason, Segment, Trajectory, WeightsVersion};
