//! # kaizen-envs
//!
//! Where a model meets the world: environments that ask a model for text and answer with
//! rewards. Environments see text only (no tensors), so they are easy to write, to test and to
//! run many at once.
//!
//! How the parts fit:
//!
//! - [`Env`] is one multi-turn, multi-agent episode at a time: `reset(seed)` returns the first
//!   [`Step`](kaizen_core::Step) (a [`Request`](kaizen_core::Request) for some agent, or
//!   `Done`), `step(agent, text)` the next. [`Dialogue`] keeps each agent's conversation so that
//!   follow-up requests continue the previous ones (the actor then keeps its sampled token ids).
//! - [`EnvFactory`] makes one fresh [`Env`] per episode from shared data; the [`Registry`] maps
//!   an environment name to a builder taking the environment's TOML parameters.
//! - [`run_episode`] drives one episode with a [`Responder`] (the policy, a person, a script)
//!   and isolates faults: an environment that errors, panics or hangs ends only its episode,
//!   with the cause in [`Episode::end`] and the `fault/*` metrics. [`demonstrate`] plays the
//!   environment's own expert, for demonstrations. [`search::search_episode`] searches an
//!   episode as a tree (MCTS) on environments that can fork ([`Env::fork`]).
//! - [`rewards`] holds the pluggable reward parts: exact-answer verification with numeric and
//!   symbolic normalisation, model-judged scores, majority vote, and the [`rewards::Verifier`]
//!   hook for user rewards. [`metrics`] holds reference metrics (chrF, BLEU).
//! - [`problems`] reads problem sets (JSONL) and generates arithmetic and word problems.
//! - [`worlds`] holds the built-in environments: `self_correct`, `self_verify`, `spc`, `household`,
//!   `translate`, `code`; [`sandbox`] runs model-written Python against tests under limits. [`remote`] speaks the HTTP/JSON protocol to environments written in any
//!   language (see `docs/environments.md`).
#![warn(missing_docs)]

mod dialogue;
mod env;
mod error;
pub mod metrics;
pub mod problems;
mod registry;
pub mod remote;
pub mod rewards;
mod runner;
pub mod sandbox;
pub mod search;
pub mod worlds;

pub use dialogue::Dialogue;
pub use env::{Env, EnvFactory, EnvSlot};
pub use error::{Error, Result};
pub use registry::{Builder, Registry, parse_params};
pub use runner::{
    Episode, EpisodeLimits, Fault, FaultKind, Responder, Turn, demonstrate, run_episode,
    run_episode_with_hints,
};
