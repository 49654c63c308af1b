use std::path::PathBuf;

/// Errors of kaizen-learner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job configuration is invalid (names the file and key).
    #[error("config {path}: {message}")]
    Config {
        /// The config file (or `--set` for command-line overrides).
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A model operation failed.
    #[error(transparent)]
    Model(#[from] kaizen_model::Error),
    /// A loss or advantage computation rejected its input.
    #[error(transparent)]
    Algorithm(#[from] kaizen_algorithms::Error),
    /// An environment could not be built.
    #[error(transparent)]
    Env(#[from] kaizen_envs::Error),
    /// The transport to the actors failed (submitting, receiving, publishing weights).
    #[error(transparent)]
    Transport(#[from] kaizen_transport::Error),
    /// Tracking failed.
    #[error(transparent)]
    Tracking(#[from] kaizen_tracking::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint is missing, incomplete or does not match the job.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A collective operation of the data-parallel group failed, or the group cannot run this
    /// step.
    #[error("data-parallel learner: {0}")]
    Collective(String),
    /// The injected training backend (`TrainBackend`, e.g. the CUDA pass) failed or cannot
    /// run this job's options.
    #[error("learner backend: {0}")]
    Backend(String),
    /// The actors stopped before the step's episodes came back.
    #[error("the actors stopped: {0}")]
    ActorsStopped(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
