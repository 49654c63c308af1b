//! The mirror loop: spools what is logged and delivers it to the MLflow server in order.
//!
//! One loop runs on the tracker's background thread (inside a current-thread tokio runtime) and,
//! for `kaizen runs sync`, on the caller's thread. It drains the queue every
//! `queue::POLL_INTERVAL` even while a request is in flight (`select!` between the request and
//! a timer), so a slow or dead server cannot stall logging.
//!
//! Delivery policy:
//! - transport errors, HTTP 408/429/5xx: retry the same request after an exponential backoff
//!   with jitter (`backoff_min` doubling up to `backoff_max`), forever while the run lasts;
//! - HTTP 400 on a batch: halve the batch until the refused entry is alone, then set it aside in
//!   `rejected.jsonl` with the server's message and go on (the batch size grows back after);
//! - HTTP 4xx on an artifact upload or the final status: set that entry aside;
//! - any other 4xx (401, 403, 404 ...) or a non-MLflow answer: stop delivering, keep spooling,
//!   and tell the user (logs, [`MirrorHealth::stopped`], `finish`) to fix it and run
//!   `kaizen runs sync`.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::batch::{self, MAX_METRICS, Plan};
use super::client::{KeyValue, MlflowClient, RunInfo};
use super::spool::{Entry, MirrorState, Spool};
use crate::Error;
use crate::queue::{Command, Drained, POLL_INTERVAL, drain};

/// What a tracker's owner can see of its mirror, e.g. to show in a progress line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorHealth {
    /// The MLflow run id, once the run exists on the server.
    pub run_id: Option<String>,
    /// Entries spooled and not yet delivered.
    pub pending: usize,
    /// Entries delivered (over the run's life).
    pub delivered: u64,
    /// Entries the server refused (over the run's life).
    pub rejected: u64,
    /// The last delivery error (cleared by nothing: it is the last one seen).
    pub last_error: Option<String>,
    /// Why delivery stopped for good (bad credentials, not an MLflow server ...), if it did.
    pub stopped: Option<String>,
}

/// Timing knobs of the loop (from [`super::MlflowConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct MirrorOptions {
    /// How long a lone entry may wait for company before it is sent.
    pub linger: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// How long `finish` keeps trying.
    pub shutdown_timeout: Duration,
    /// How long a dropped (not finished) tracker keeps trying.
    pub drop_timeout: Duration,
}

/// When the loop must end, and whom to tell.
pub(crate) struct Closing {
    pub deadline: Instant,
    pub reply: Option<flume::Sender<Result<(), Error>>>,
}

/// One request to make, with what it needs from the state.
enum Job {
    EnsureRun {
        state: Box<MirrorState>,
        local_run: String,
    },
    Plan {
        run_id: String,
        artifact_uri: String,
        plan: Plan,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    EnsureRun,
    Batch,
    Artifact,
    Status,
}

enum Done {
    Run {
        experiment_id: String,
        info: RunInfo,
    },
    Delivered,
}

struct Attempt {
    kind: Kind,
    /// Positions of the pending entries the request settles.
    taken: Vec<usize>,
    result: Result<Done, Error>,
}

type InFlight = Pin<Box<dyn Future<Output = Attempt>>>;

/// The loop's state (see the module docs).
pub(crate) struct Mirror {
    client: MlflowClient,
    spool: Spool,
    options: MirrorOptions,
    secrets: Vec<String>,
    health: Arc<Mutex<MirrorHealth>>,
    run_dir: PathBuf,
    failures: u32,
    next_attempt: Instant,
    /// Largest batch to try (shrinks while bisecting a refused batch).
    cap: usize,
    stopped: Option<String>,
    last_error: Option<String>,
    /// Refused during this process: count and first message.
    refused_now: usize,
    first_refusal: Option<String>,
    warned_keys: HashSet<String>,
}

impl Mirror {
    pub(crate) fn new(
        client: MlflowClient,
        spool: Spool,
        options: MirrorOptions,
        secrets: Vec<String>,
        health: Arc<Mutex<MirrorHealth>>,
        run_dir: PathBuf,
    ) -> Self {
        let mirror = Self {
            client,
            spool,
            options,
            secrets,
            health,
            run_dir,
            failures: 0,
            next_attempt: Instant::now(),
            cap: usize::MAX,
            stopped: None,
            last_error: None,
            refused_now: 0,
            first_refusal: None,
            warned_keys: HashSet::new(),
        };
        mirror.publish_health();
        mirror
    }

    /// Runs until closed: by `Finish`/`Close` from `rx`, by `rx` disconnecting, or by the given
    /// `closing` (sync). The result goes to the closing reply if there is one, else is returned;
    /// the final state is returned too.
    pub(crate) async fn run(
        mut self,
        rx: Option<flume::Receiver<Command>>,
        mut closing: Option<Closing>,
    ) -> (Result<(), Error>, MirrorState) {
        let mut inflight: Option<InFlight> = None;
        let mut open = rx.is_some();
        loop {
            if let Some(rx) = rx.as_ref().filter(|_| open) {
                // Stop taking commands after `Finish`: the run is over.
                let (drained, took) = drain(rx, |command| {
                    let finish = matches!(command, Command::Finish { .. });
                    self.apply(command, &mut closing);
                    !finish
                });
                if took {
                    let flushed = self.spool.flush();
                    self.note_io(flushed);
                }
                if closing.as_ref().is_some_and(|c| c.reply.is_some()) {
                    open = false;
                }
                if drained == Drained::Disconnected {
                    open = false;
                    closing.get_or_insert(Closing {
                        deadline: Instant::now() + self.options.drop_timeout,
                        reply: None,
                    });
                }
            }
            let now = Instant::now();
            if let Some(deadline) = closing.as_ref().map(|c| c.deadline) {
                let settled = inflight.is_none() && (!self.owes_work() || self.stopped.is_some());
                if settled || now >= deadline {
                    let result = self.outcome();
                    self.publish_health();
                    let state = self.spool.state.clone();
                    return match closing.and_then(|c| c.reply) {
                        Some(reply) => {
                            // Err = the caller stopped waiting; the spool keeps what is owed.
                            let _ = reply.send(result);
                            (Ok(()), state)
                        }
                        None => (result, state),
                    };
                }
            }
            if inflight.is_none()
                && let Some(job) = self.next_job(now, closing.is_some())
            {
                inflight = Some(Box::pin(perform(self.client.clone(), job)));
            }
            let mut wake = self.wake_at(
                now,
                inflight.is_some(),
                closing.as_ref().map(|c| c.deadline),
            );
            if open {
                // Look at the queue again soon (see queue::POLL_INTERVAL), also while a request
                // is in flight.
                wake = wake.min(now + POLL_INTERVAL);
            }
            tokio::select! {
                attempt = async { inflight.as_mut().expect("polled only while in flight").await },
                    if inflight.is_some() => {
                    inflight = None;
                    self.settle(attempt);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            self.publish_health();
        }
    }

    fn owes_work(&self) -> bool {
        self.spool.state.run_id.is_none() || !self.spool.pending().is_empty()
    }

    fn apply(&mut self, command: Command, closing: &mut Option<Closing>) {
        match command {
            Command::Metrics(metrics) => {
                for metric in metrics.iter() {
                    self.push_named(Entry::Metric(metric.clone()));
                }
            }
            Command::Params(params) => {
                for (key, value) in params.iter() {
                    let value = self.scrub(value);
                    self.push_named(Entry::Param {
                        key: key.to_owned(),
                        value,
                    });
                }
            }
            Command::Tags(tags) => {
                for (key, value) in crate::params::redact_tags(&tags) {
                    let value = self.scrub(&value);
                    self.push_named(Entry::Tag { key, value });
                }
            }
            Command::Artifact { path, dir } => {
                let entry = Entry::Artifact {
                    path: path.as_ref().clone(),
                    dir: dir.map(|d| d.to_string()),
                };
                let pushed = self.spool.push(entry);
                self.note_io(pushed);
            }
            Command::Finish {
                status,
                end_time,
                done,
            } => {
                let pushed = self.spool.push(Entry::Status { status, end_time });
                self.note_io(pushed);
                let now = Instant::now();
                *closing = Some(Closing {
                    deadline: now + self.options.shutdown_timeout,
                    reply: Some(done),
                });
                // One immediate try, whatever the backoff said.
                self.next_attempt = now;
            }
            Command::Flush(done) => {
                let flushed = self.spool.flush();
                self.note_io(flushed);
                let _ = done.send(());
            }
            Command::Close => {
                closing.get_or_insert(Closing {
                    deadline: Instant::now() + self.options.drop_timeout,
                    reply: None,
                });
            }
        }
    }

    /// Spools an entry whose name MLflow must accept; sets it aside at once otherwise.
    fn push_named(&mut self, entry: Entry) {
        match self.spool.push_checked(entry) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                if self.warned_keys.insert(reason.clone()) {
                    tracing::error!("{reason}; such entries stay in the local run store only");
                }
                self.note_refusal(reason);
            }
            Err(e) => self.note_io(Err(e)),
        }
    }

    fn scrub(&self, value: &str) -> String {
        let mut value = value.to_owned();
        for secret in self.secrets.iter().filter(|s| s.len() >= 4) {
            if value.contains(secret.as_str()) {
                value = value.replace(secret.as_str(), crate::params::REDACTED);
            }
        }
        value
    }

    fn next_job(&self, now: Instant, closing: bool) -> Option<Job> {
        if self.stopped.is_some() || now < self.next_attempt {
            return None;
        }
        let state = &self.spool.state;
        let Some(run_id) = &state.run_id else {
            return Some(Job::EnsureRun {
                state: Box::new(state.clone()),
                local_run: self
                    .run_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        };
        let pending = self.spool.pending();
        let lingered = self
            .spool
            .pending_since()
            .is_some_and(|since| now >= Instant::from_std(since) + self.options.linger);
        if pending.is_empty() || !(closing || lingered || pending.len() >= MAX_METRICS) {
            return None;
        }
        Some(Job::Plan {
            run_id: run_id.clone(),
            artifact_uri: state.artifact_uri.clone().unwrap_or_default(),
            plan: batch::plan(pending, self.cap)?,
        })
    }

    fn wake_at(&self, now: Instant, in_flight: bool, deadline: Option<Instant>) -> Instant {
        let mut wake = now + Duration::from_secs(3600);
        if !in_flight && self.stopped.is_none() {
            if self.spool.state.run_id.is_none() {
                wake = wake.min(self.next_attempt.max(now));
            } else if let Some(since) = self.spool.pending_since() {
                let due = if deadline.is_some() {
                    now
                } else {
                    Instant::from_std(since) + self.options.linger
                };
                wake = wake.min(self.next_attempt.max(due));
            }
        }
        deadline.map_or(wake, |d| wake.min(d))
    }

    fn settle(&mut self, attempt: Attempt) {
        match attempt.result {
            Ok(Done::Run {
                experiment_id,
                info,
            }) => {
                tracing::info!(
                    uri = %self.client.uri(),
                    run_id = %info.run_id,
                    "mirroring run {} to MLflow",
                    self.spool.state.run_name
                );
                let state = &mut self.spool.state;
                state.experiment_id = Some(experiment_id);
                state.run_id = Some(info.run_id);
                state.artifact_uri = Some(info.artifact_uri);
                let saved = self.spool.save_state();
                self.note_io(saved);
                self.succeeded();
            }
            Ok(Done::Delivered) => {
                let acked = self.spool.ack(&attempt.taken);
                self.note_io(acked);
                self.cap = self.cap.saturating_mul(2);
                self.succeeded();
            }
            Err(error) => self.failed(attempt.kind, attempt.taken.len(), error),
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                uri = %self.client.uri(),
                "MLflow server reachable again; delivering {} spooled entries",
                self.spool.pending().len()
            );
        }
        self.failures = 0;
        self.next_attempt = Instant::now();
    }

    fn failed(&mut self, kind: Kind, consumed: usize, error: Error) {
        let message = error.to_string();
        self.last_error = Some(message.clone());
        if MlflowClient::is_retryable(&error) {
            self.failures += 1;
            let delay = self.backoff();
            self.next_attempt = Instant::now() + delay;
            if self.failures == 1 {
                tracing::warn!(
                    "{message}; spooling to {} and retrying (backoff up to {:?})",
                    self.spool.dir().display(),
                    self.options.backoff_max
                );
            } else {
                tracing::debug!(failures = self.failures, ?delay, "{message}");
            }
            return;
        }
        let status = match &error {
            Error::Rejected { status, .. } => Some(*status),
            _ => None,
        };
        let local_problem = matches!(error, Error::Io { .. } | Error::Invalid { .. });
        match (kind, status) {
            (Kind::Batch, Some(400)) if consumed > 1 => {
                self.cap = (consumed / 2).max(1);
                tracing::debug!(
                    cap = self.cap,
                    "MLflow refused a batch; narrowing it down: {message}"
                );
            }
            (Kind::Batch | Kind::Status, Some(400)) => self.set_aside(message),
            (Kind::Artifact, Some(s)) if s != 401 && s != 403 => self.set_aside(message),
            (Kind::Artifact, None) if local_problem => self.set_aside(message),
            _ => {
                tracing::error!(
                    "MLflow delivery stopped: {message}. Everything stays spooled in {}; fix the \
                     problem and run `kaizen runs sync {}`",
                    self.spool.dir().display(),
                    self.run_dir.display()
                );
                self.stopped = Some(message);
            }
        }
    }

    /// Sets the front entry aside as refused.
    fn set_aside(&mut self, message: String) {
        tracing::error!("{message}; entry set aside in rejected.jsonl, delivery goes on");
        let rejected = self.spool.reject(&[0], &message);
        self.note_io(rejected);
        self.cap = usize::MAX;
        self.note_refusal(message);
    }

    fn note_refusal(&mut self, message: String) {
        self.refused_now += 1;
        self.first_refusal.get_or_insert(message.clone());
        self.last_error = Some(message);
    }

    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(20);
        let full = self
            .options
            .backoff_min
            .saturating_mul(1 << exponent)
            .min(self.options.backoff_max);
        // Jitter in [50%, 100%] so that many clients do not retry in lockstep.
        full.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }

    fn note_io(&mut self, result: Result<(), Error>) {
        if let Err(e) = result {
            let message = e.to_string();
            tracing::error!("MLflow spool: {message}");
            self.last_error = Some(message);
        }
    }

    fn outcome(&self) -> Result<(), Error> {
        if self.owes_work() {
            return Err(Error::NotDelivered {
                uri: self.client.uri().to_string(),
                pending: self.spool.pending().len(),
                last_error: self
                    .stopped
                    .clone()
                    .or_else(|| self.last_error.clone())
                    .unwrap_or_else(|| "none; the shutdown timeout ran out first".into()),
                spool: self.spool.dir().to_owned(),
                run_dir: self.run_dir.clone(),
            });
        }
        match &self.first_refusal {
            Some(first) => Err(Error::EntriesRefused {
                uri: self.client.uri().to_string(),
                rejected: self.refused_now,
                first: first.clone(),
                file: self.spool.dir().join(super::spool::REJECTED_FILE),
            }),
            None => Ok(()),
        }
    }

    fn publish_health(&self) {
        if let Ok(mut health) = self.health.lock() {
            let state = &self.spool.state;
            health.run_id.clone_from(&state.run_id);
            health.pending = self.spool.pending().len();
            health.delivered = state.delivered;
            health.rejected = state.rejected;
            health.last_error.clone_from(&self.last_error);
            health.stopped.clone_from(&self.stopped);
        }
    }
}

/// Performs one job against the server.
async fn perform(client: MlflowClient, job: Job) -> Attempt {
    match job {
        Job::EnsureRun { state, local_run } => Attempt {
            kind: Kind::EnsureRun,
            taken: Vec::new(),
            result: ensure_run(&client, &state, &local_run).await,
        },
        Job::Plan {
            run_id,
            artifact_uri,
            plan,
        } => match plan {
            Plan::Batch { batch, taken } => Attempt {
                kind: Kind::Batch,
                taken,
                result: client
                    .log_batch(&run_id, &batch)
                    .await
                    .map(|()| Done::Delivered),
            },
            Plan::Artifact { path, dir } => Attempt {
                kind: Kind::Artifact,
                taken: vec![0],
                result: upload(&client, &artifact_uri, &path, dir.as_deref())
                    .await
                    .map(|()| Done::Delivered),
            },
            Plan::Status { status, end_time } => Attempt {
                kind: Kind::Status,
                taken: vec![0],
                result: client
                    .update_run(&run_id, status.as_mlflow(), end_time)
                    .await
                    .map(|()| Done::Delivered),
            },
        },
    }
}

/// Tag naming the mirror, so a run created just before a crash is found instead of duplicated.
pub(crate) const MIRROR_ID_TAG: &str = "kaizen_mirror_id";

async fn ensure_run(
    client: &MlflowClient,
    state: &MirrorState,
    local_run: &str,
) -> Result<Done, Error> {
    let experiment_id = match &state.experiment_id {
        Some(id) => id.clone(),
        None => client.experiment_id(&state.experiment).await?,
    };
    if let Some(info) = client
        .find_run_by_tag(&experiment_id, MIRROR_ID_TAG, &state.mirror_id)
        .await?
    {
        return Ok(Done::Run {
            experiment_id,
            info,
        });
    }
    let mut tags: Vec<KeyValue> = state
        .tags
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    tags.push(KeyValue {
        key: MIRROR_ID_TAG.into(),
        value: state.mirror_id.clone(),
    });
    tags.push(KeyValue {
        key: "kaizen.run_id".into(),
        value: local_run.to_owned(),
    });
    tags.push(KeyValue {
        key: "mlflow.source.name".into(),
        value: "kaizen".into(),
    });
    let info = client
        .create_run(&experiment_id, &state.run_name, state.start_time, &tags)
        .await?;
    Ok(Done::Run {
        experiment_id,
        info,
    })
}

/// Uploads a file to `<dir>/<name>`, or a directory's files to `<dir>/<name>/<relative path>`
/// (the same place the local store copies them to).
async fn upload(
    client: &MlflowClient,
    artifact_uri: &str,
    path: &Path,
    dir: Option<&str>,
) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid {
            field: "artifact path",
            value: path.display().to_string(),
            expected: "a path to a file or directory".into(),
        })?;
    let base = match dir.map(|d| d.trim_matches('/')).filter(|d| !d.is_empty()) {
        Some(dir) => format!("{dir}/{name}"),
        None => name,
    };
    let meta = tokio::fs::metadata(path).await.map_err(Error::io(
        "reading artifact (it must stay in place until uploaded)",
        path,
    ))?;
    if !meta.is_dir() {
        return client.upload_artifact(artifact_uri, &base, path).await;
    }
    let mut files = Vec::new();
    list_files(path, &base, &mut files)?;
    for (file, dest) in files {
        client.upload_artifact(artifact_uri, &dest, &file).await?;
    }
    Ok(())
}

fn list_files(dir: &Path, dest: &str, out: &mut Vec<(PathBuf, String)>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(Error::io("listing artifact directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing artifact directory", dir))?;
        let child = format!("{dest}/{}", entry.file_name().to_string_lossy());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_files(&entry.path(), &child, out)?;
        } else {
            out.push((entry.path(), child));
        }
    }
    Ok(())
}
