//! Remote environments: any program that speaks kaizen's HTTP/JSON protocol
//! ([`protocol`]) is an environment. [`RemoteFactory`] is the client, registered as `remote`
//! with `url = "http://..."`; it gives every call a timeout, retries the idempotent ones
//! (`/info`, `/reset`), limits reply sizes and names the endpoint in every error. A remote
//! failure ends only its episode (see [`crate::run_episode`]).
//!
//! The Python package in `python/` serves such environments without dependencies.

mod client;
pub mod protocol;

pub use client::{RemoteConfig, RemoteFactory};
