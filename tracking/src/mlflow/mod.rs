//! Mirroring runs to an MLflow tracking server through its REST API 2.0.
//!
//! - [`MlflowClient`] (`client.rs`): typed calls (`experiments/get-by-name`/`create`,
//!   `runs/create`/`log-batch`/`update`/`get`/`search`, `metrics/get-history`,
//!   `artifacts/list`, proxied artifact upload), errors carrying the server's own message.
//! - [`MlflowTracker`] (`tracker.rs`): the [`crate::Tracker`] whose background thread spools
//!   (`spool.rs`) and delivers (`mirror.rs`) in batches cut to MLflow's limits (`batch.rs`).
//! - [`sync_run`] (`sync.rs`): `kaizen runs sync`, delivering a local run afterwards.
//! - [`Credentials`] and [`TrackingUri`] (`credentials.rs`): authentication as MLflow's clients
//!   read it, never printed.

mod batch;
mod client;
mod credentials;
mod mirror;
pub(crate) mod spool;
mod sync;
mod tracker;

pub use client::{FileInfo, KeyValue, LogBatch, MlflowClient, Run, RunData, RunInfo};
pub use credentials::{Credentials, Secret, TrackingUri};
pub use mirror::MirrorHealth;
pub use sync::{SyncReport, sync_run};
pub use tracker::{MlflowConfig, MlflowTracker};
