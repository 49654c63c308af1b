//! The bounded queue between a tracker's callers and its background thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Error, Metric, Params, RunStatus, Tracker};

/// What callers hand to a tracker's background thread. Payloads sit behind `Arc` so that
/// [`crate::Trackers`] shares one copy between all its trackers.
pub(crate) enum Command {
    Params(Arc<Params>),
    Metrics(Arc<[Metric]>),
    Tags(Arc<BTreeMap<String, String>>),
    Artifact {
        path: Arc<PathBuf>,
        dir: Option<Arc<str>>,
    },
    /// End the run; the background thread answers once everything is written/delivered.
    Finish {
        status: RunStatus,
        end_time: i64,
        done: flume::Sender<Result<(), Error>>,
    },
    /// The tracker was dropped without `finish`: write out what is queued and stop.
    Close,
    /// A barrier: answer once everything queued before it is durable on disk (the local
    /// store's files; the MLflow mirror's spool), without ending the run.
    Flush(flume::Sender<()>),
}

/// How long [`Queue::flush`] waits for the background thread.
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// Default capacity, in commands (one logging call = one command).
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// How often an idle background thread looks at its queue. Background threads poll instead of
/// blocking on the queue so that a logging call never has to wake a sleeping thread (a system
/// call costing more than the rest of the call); the price is up to this much latency before
/// logged data reaches the disk or the server.
pub(crate) const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a logging call sleeps before trying a full queue again.
const FULL_QUEUE_PAUSE: std::time::Duration = std::time::Duration::from_micros(200);

/// Why [`drain`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The queue is empty for now.
    Empty,
    /// Every sender is gone (the tracker was dropped).
    Disconnected,
}

/// Hands every queued command to `each` without waiting; `each` returns false to stop early
/// (after `Finish`/`Close`). Returns how draining ended and whether anything was taken.
pub(crate) fn drain(
    rx: &flume::Receiver<Command>,
    mut each: impl FnMut(Command) -> bool,
) -> (Drained, bool) {
    let mut took = false;
    loop {
        match rx.try_recv() {
            Ok(command) => {
                took = true;
                if !each(command) {
                    return (Drained::Empty, took);
                }
            }
            Err(flume::TryRecvError::Empty) => return (Drained::Empty, took),
            Err(flume::TryRecvError::Disconnected) => return (Drained::Disconnected, took),
        }
    }
}

/// A tracker's queue and background thread. Dropping it closes the queue and waits for the
/// thread to write out what is queued.
pub(crate) struct Queue {
    tx: flume::Sender<Command>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Names the run in warnings and errors.
    label: String,
    warned_full: AtomicBool,
    warned_closed: AtomicBool,
}

impl Queue {
    /// Spawns thread `thread_name` running `body` on the receiving end.
    ///
    /// # Errors
    /// [`Error::WorkerGone`] when the OS refuses a new thread.
    pub(crate) fn spawn(
        label: String,
        thread_name: &str,
        capacity: usize,
        body: impl FnOnce(flume::Receiver<Command>) + Send + 'static,
    ) -> Result<Self, Error> {
        let (tx, rx) = flume::bounded(capacity.max(1));
        let worker = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || body(rx))
            .map_err(|e| Error::WorkerGone {
                run: label.clone(),
                message: format!("cannot start thread {thread_name}: {e}"),
            })?;
        Ok(Self {
            tx,
            worker: Mutex::new(Some(worker)),
            label,
            warned_full: AtomicBool::new(false),
            warned_closed: AtomicBool::new(false),
        })
    }

    /// Enqueues without waiting unless the queue is full; after `finish`, warns once and drops.
    ///
    /// When the queue is full, the call waits for room by sleeping in short steps rather than
    /// blocking on the channel: a blocked sender would be woken (a system call) for every single
    /// command the background thread takes, and the two threads would take turns command by
    /// command; sleeping lets the background thread drain in bulk.
    pub(crate) fn send(&self, command: Command) {
        let mut command = match self.tx.try_send(command) {
            Ok(()) => return,
            Err(flume::TrySendError::Full(command)) => command,
            Err(flume::TrySendError::Disconnected(_)) => return self.warn_closed(),
        };
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                run = %self.label,
                capacity = self.tx.capacity().unwrap_or(0),
                "tracker queue full: logging calls wait for the background thread (is the disk stalled?)"
            );
        }
        loop {
            std::thread::sleep(FULL_QUEUE_PAUSE);
            match self.tx.try_send(command) {
                Ok(()) => return,
                Err(flume::TrySendError::Full(back)) => command = back,
                Err(flume::TrySendError::Disconnected(_)) => return self.warn_closed(),
            }
        }
    }

    fn warn_closed(&self) {
        if !self.warned_closed.swap(true, Ordering::Relaxed) {
            tracing::warn!(run = %self.label, "logging to a finished run is ignored");
        }
    }

    /// Waits until everything sent before is durable on disk (see [`Command::Flush`]).
    ///
    /// # Errors
    /// [`Error::WorkerGone`] when the background thread does not answer within a minute or has
    /// stopped (after `finish` there is nothing left to flush: `Ok`).
    pub(crate) fn flush(&self) -> Result<(), Error> {
        let (done, answer) = flume::bounded(1);
        if self.tx.send(Command::Flush(done)).is_err() {
            return Ok(());
        }
        answer
            .recv_timeout(FLUSH_WAIT)
            .map_err(|e| Error::WorkerGone {
                run: self.label.clone(),
                message: format!("no answer to flush: {e}"),
            })
    }

    /// Sends `Finish` and waits up to `wait` for the background thread's answer.
    ///
    /// # Errors
    /// What the background thread answers; [`Error::AlreadyFinished`] on a second call;
    /// [`Error::WorkerGone`] when it does not answer in time or has died.
    pub(crate) fn finish(&self, status: RunStatus, wait: Duration) -> Result<(), Error> {
        let (done, answer) = flume::bounded(1);
        let command = Command::Finish {
            status,
            end_time: crate::metric::now_ms(),
            done,
        };
        if self.tx.send(command).is_err() {
            return Err(Error::AlreadyFinished {
                run: self.label.clone(),
            });
        }
        match answer.recv_timeout(wait) {
            Ok(result) => {
                self.join();
                result
            }
            // Not joined: the thread may still be busy; it exits on its own.
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::WorkerGone {
                run: self.label.clone(),
                message: format!("no answer to finish within {wait:?}"),
            }),
            Err(flume::RecvTimeoutError::Disconnected) => {
                self.join();
                Err(Error::WorkerGone {
                    run: self.label.clone(),
                    message: "it stopped before answering finish (see the log)".into(),
                })
            }
        }
    }

    fn join(&self) {
        let handle = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(run = %self.label, "tracker background thread panicked");
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let running = self.worker.lock().map(|w| w.is_some()).unwrap_or(false);
        if running {
            // Err = the thread already stopped; join reports how.
            let _ = self.tx.send(Command::Close);
            self.join();
        }
    }
}

/// A tracker whose work all happens on a [`Queue`]'s background thread ([`crate::LocalTracker`],
/// [`crate::MlflowTracker`]): it gets [`Tracker`] from the blanket impl below.
pub(crate) trait Queued: Send + Sync {
    /// The queue to the background thread.
    fn queue(&self) -> &Queue;
    /// How long `finish` waits for the background thread.
    fn finish_wait(&self) -> Duration;
    /// The background thread's last problem.
    fn background_error(&self) -> Option<String>;
}

impl<T: Queued> Tracker for T {
    fn log_params(&self, params: &Params) {
        self.queue().send(Command::Params(Arc::new(params.clone())));
    }

    fn log_metrics(&self, metrics: &[Metric]) {
        self.queue().send(Command::Metrics(metrics.into()));
    }

    fn log_metrics_shared(&self, metrics: Arc<[Metric]>) {
        self.queue().send(Command::Metrics(metrics));
    }

    fn set_tags(&self, tags: &BTreeMap<String, String>) {
        self.queue().send(Command::Tags(Arc::new(tags.clone())));
    }

    fn log_artifact(&self, path: &Path, artifact_dir: Option<&str>) {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        self.queue().send(Command::Artifact {
            path: Arc::new(path),
            dir: artifact_dir.map(Arc::from),
        });
    }

    fn flush(&self) -> Result<(), Error> {
        self.queue().flush()
    }

    fn finish(&self, status: RunStatus) -> Result<(), Error> {
        self.queue().finish(status, self.finish_wait())
    }

    fn last_error(&self) -> Option<String> {
        self.background_error()
    }
}
