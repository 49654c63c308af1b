//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while tracking, reading runs or plotting.
///
/// Messages name the file, field, URI or value involved. They never contain credentials: URIs are
/// shown without their user-info part, and tokens/passwords are never formatted anywhere.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the run store could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("creating run directory", "reading").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A JSON file of the run store (or a line of it) is not what kaizen wrote.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line, for JSON-lines files.
        line: Option<usize>,
        /// What was wrong.
        message: String,
    },

    /// A name, URI or option given by the user is not valid.
    #[error("invalid {field} {value:?}: {expected}")]
    Invalid {
        /// The field or argument (`experiment name`, `MLflow tracking URI`, ...).
        field: &'static str,
        /// The value that was given (credentials already removed).
        value: String,
        /// What was expected instead.
        expected: String,
    },

    /// A run named on the command line matches no run, or more than one.
    #[error("run {query:?}: {problem}")]
    RunNotFound {
        /// What the user asked for.
        query: String,
        /// "no run matches under runs/" or the list of candidates.
        problem: String,
    },

    /// The MLflow server could not be reached (connection refused, DNS, timeout).
    #[error("MLflow server {uri} unreachable ({endpoint}): {message}")]
    Unreachable {
        /// Tracking URI without credentials.
        uri: String,
        /// The REST endpoint, e.g. `runs/log-batch`.
        endpoint: String,
        /// The transport error.
        message: String,
    },

    /// The MLflow server answered with an error status; `message` is the server's own message.
    #[error("MLflow server {uri} rejected {endpoint} with HTTP {status} {error_code}: {message}")]
    Rejected {
        /// Tracking URI without credentials.
        uri: String,
        /// The REST endpoint, e.g. `runs/log-batch`.
        endpoint: String,
        /// HTTP status code.
        status: u16,
        /// MLflow's `error_code` (`INVALID_PARAMETER_VALUE`, ...), or empty for non-JSON bodies.
        error_code: String,
        /// MLflow's `message`, or the start of the body.
        message: String,
    },

    /// The MLflow server answered 2xx with a body kaizen does not understand.
    #[error("MLflow server {uri} answered {endpoint} with an unexpected body: {message}")]
    Protocol {
        /// Tracking URI without credentials.
        uri: String,
        /// The REST endpoint.
        endpoint: String,
        /// What was wrong with the body.
        message: String,
    },

    /// When a tracker finished, some entries had not reached the MLflow server. They are spooled
    /// on disk; `kaizen runs sync` delivers them later.
    #[error(
        "{pending} entries not delivered to MLflow server {uri} (last error: {last_error}); they \
         are spooled in {} — run `kaizen runs sync {}` when the server is back",
        spool.display(), run_dir.display()
    )]
    NotDelivered {
        /// Tracking URI without credentials.
        uri: String,
        /// Entries still waiting in the spool.
        pending: usize,
        /// The last error seen while delivering.
        last_error: String,
        /// The spool directory.
        spool: PathBuf,
        /// The run directory to pass to `kaizen runs sync`.
        run_dir: PathBuf,
    },

    /// The server refused some entries for good (HTTP 400); they were set aside.
    #[error(
        "MLflow server {uri} refused {rejected} entries (first: {first}); they are listed in {}",
        file.display()
    )]
    EntriesRefused {
        /// Tracking URI without credentials.
        uri: String,
        /// How many entries were refused.
        rejected: usize,
        /// The server's message for the first one.
        first: String,
        /// `rejected.jsonl` in the spool directory.
        file: PathBuf,
    },

    /// `finish` was called on a tracker whose run has already finished.
    #[error("run {run} already finished")]
    AlreadyFinished {
        /// The run (local id or MLflow run name).
        run: String,
    },

    /// A tracker's background thread ended unexpectedly (it panicked or could not start).
    #[error("tracker background thread for run {run} is gone: {message}")]
    WorkerGone {
        /// The run.
        run: String,
        /// What is known about why.
        message: String,
    },

    /// Rendering a plot failed.
    #[error("plotting {path}: {message}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// The plotting backend's message.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
