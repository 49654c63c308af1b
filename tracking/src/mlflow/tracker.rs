//! `MlflowTracker`: a [`Tracker`] that mirrors a run to an MLflow tracking server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::MlflowClient;
use super::credentials::{Credentials, TrackingUri};
use super::mirror::{Mirror, MirrorHealth, MirrorOptions};
use super::spool::{MirrorState, Origin, Spool};
use crate::queue::{DEFAULT_QUEUE_CAPACITY, Queue, Queued};
use crate::store::MLFLOW_DIR;
use crate::{Error, RunSpec};

/// Where and how to reach the MLflow server.
///
/// `Debug` never shows credentials.
#[derive(Clone, Debug)]
pub struct MlflowConfig {
    /// The server (no credentials inside).
    pub uri: TrackingUri,
    /// Authentication.
    pub credentials: Credentials,
    /// Limit for one JSON request.
    pub request_timeout: Duration,
    /// How long `finish` (and `kaizen runs sync`) keeps trying to deliver before giving up and
    /// leaving the rest spooled.
    pub shutdown_timeout: Duration,
    /// How long a tracker dropped without `finish` keeps trying.
    pub drop_timeout: Duration,
    /// How long a lone entry waits for more before it is sent (bigger batches, fewer requests).
    pub linger: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Queue capacity in logging calls.
    pub queue_capacity: usize,
}

impl MlflowConfig {
    /// Settings for the server at `uri`, with credentials from the URI's user-info if present,
    /// else from `MLFLOW_TRACKING_USERNAME`/`PASSWORD`/`TOKEN`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URI that is not `http(s)://`.
    pub fn new(uri: &str) -> Result<Self, Error> {
        Self::with_env(uri, |name| std::env::var(name).ok())
    }

    /// [`MlflowConfig::new`] with a custom environment lookup.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URI that is not `http(s)://`.
    pub fn with_env(uri: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let (uri, from_uri) = TrackingUri::parse(uri)?;
        Ok(Self {
            uri,
            credentials: from_uri.unwrap_or_else(|| Credentials::from_lookup(env)),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            drop_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(200),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        })
    }

    /// The server named by `MLFLOW_TRACKING_URI`, if set and not empty.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URI that is not `http(s)://`.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match std::env::var("MLFLOW_TRACKING_URI") {
            Ok(uri) if !uri.trim().is_empty() => Self::new(&uri).map(Some),
            _ => Ok(None),
        }
    }

    pub(crate) fn client(&self) -> Result<MlflowClient, Error> {
        MlflowClient::new(
            self.uri.clone(),
            self.credentials.clone(),
            self.request_timeout,
        )
    }

    pub(crate) fn mirror_options(&self) -> MirrorOptions {
        MirrorOptions {
            linger: self.linger,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            shutdown_timeout: self.shutdown_timeout,
            drop_timeout: self.drop_timeout,
        }
    }

    /// The credential strings (token, password, basic-auth value) to scrub from anything written.
    pub fn secrets(&self) -> Vec<String> {
        self.credentials.secrets()
    }
}

/// Mirrors a run to an MLflow server through its REST API, without ever blocking the caller.
///
/// Everything logged is appended to a write-ahead spool in `<run dir>/mlflow/` by the
/// `kaizen-mlflow` background thread, then delivered in order: `runs/log-batch` within MLflow's
/// limits, artifact uploads through the server's proxy, `runs/update` for the final status.
/// While the server is unreachable, entries wait in the spool and are retried with backoff; a
/// later start on the same run directory (resume) or `kaizen runs sync` delivers what is left,
/// each entry once. See [`crate::mlflow`] for the full policy.
pub struct MlflowTracker {
    queue: Queue,
    health: Arc<Mutex<MirrorHealth>>,
    uri: TrackingUri,
    run_dir: PathBuf,
    finish_wait: Duration,
}

impl std::fmt::Debug for MlflowTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowTracker")
            .field("uri", &self.uri)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl MlflowTracker {
    /// Starts mirroring the run `spec` whose files live in `run_dir` (normally the local store's
    /// run directory; the spool goes to `run_dir/mlflow/`). Returns at once: the experiment and
    /// run are created on the server by the background thread, when it is reachable. If
    /// `run_dir/mlflow/` holds a previous mirror of this run (a resumed job), the same MLflow
    /// run continues and what was left in the spool is delivered first.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad experiment name or when `run_dir` is already mirrored to a
    /// different server; [`Error::Io`] / [`Error::Corrupt`] for the spool;
    /// [`Error::WorkerGone`] when no thread can be started.
    pub fn start(config: &MlflowConfig, spec: &RunSpec, run_dir: &Path) -> Result<Self, Error> {
        spec.validate()?;
        let spool_dir = run_dir.join(MLFLOW_DIR);
        let tags = crate::params::redact_tags(&spec.tags);
        let mut spool = Spool::open(&spool_dir, || {
            let (experiment, name) = (spec.experiment.clone(), spec.run_name.clone());
            let start = crate::metric::now_ms();
            MirrorState::new(
                config.uri.to_string(),
                experiment,
                name,
                tags,
                start,
                Origin::Live,
            )
        })?;
        check_same_server(&mut spool, config, run_dir)?;
        let health = Arc::new(Mutex::new(MirrorHealth::default()));
        let mirror = Mirror::new(
            config.client()?,
            spool,
            config.mirror_options(),
            config.secrets(),
            Arc::clone(&health),
            run_dir.to_owned(),
        );
        let label = format!("{} (MLflow {})", spec.run_name, config.uri);
        let queue = Queue::spawn(label, "kaizen-mlflow", config.queue_capacity, move |rx| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => drop(runtime.block_on(mirror.run(Some(rx), None))),
                Err(e) => tracing::error!("cannot start the MLflow mirror's runtime: {e}"),
            }
        })?;
        Ok(Self {
            queue,
            health,
            uri: config.uri.clone(),
            run_dir: run_dir.to_owned(),
            finish_wait: config.shutdown_timeout + Duration::from_secs(10),
        })
    }

    /// A snapshot of delivery progress and problems.
    pub fn health(&self) -> MirrorHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The MLflow run id, once the run exists on the server.
    pub fn mlflow_run_id(&self) -> Option<String> {
        self.health().run_id
    }
}

/// A spool whose run already exists on another server must not be continued against this one.
/// One whose run was never created there (wrong URI, server never reached) is re-targeted.
pub(crate) fn check_same_server(
    spool: &mut Spool,
    config: &MlflowConfig,
    run_dir: &Path,
) -> Result<(), Error> {
    let wanted = config.uri.to_string();
    if spool.state.uri == wanted {
        return Ok(());
    }
    let Some(run_id) = &spool.state.run_id else {
        tracing::info!(
            "run {} now mirrors to {wanted} (was {})",
            run_dir.display(),
            spool.state.uri
        );
        spool.state.uri = wanted;
        spool.state.experiment_id = None;
        return spool.save_state();
    };
    Err(Error::Invalid {
        field: "MLflow server for run",
        value: run_dir.display().to_string(),
        expected: format!(
            "{} (this run is already mirrored there as MLflow run {run_id}); a run mirrors to one \
             server — copy the run directory without its mlflow/ folder to sync it to {wanted}",
            spool.state.uri
        ),
    })
}

impl Queued for MlflowTracker {
    fn queue(&self) -> &Queue {
        &self.queue
    }

    fn finish_wait(&self) -> Duration {
        self.finish_wait
    }

    fn background_error(&self) -> Option<String> {
        let health = self.health();
        health.stopped.or(health.last_error)
    }
}
