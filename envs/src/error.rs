use std::path::PathBuf;

use kaizen_core::AgentId;

/// Everything that can go wrong in kaizen-envs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry has no environment of that name.
    #[error("unknown environment `{name}`; registered environments: {known}")]
    UnknownEnv {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// An environment of that name is already registered.
    #[error("environment `{0}` is already registered")]
    DuplicateEnv(String),
    /// The registry has no group reward of that name.
    #[error("unknown group reward `{name}`; registered group rewards: {known}")]
    UnknownGroupReward {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated (may be empty).
        known: String,
    },
    /// A group reward of that name is already registered.
    #[error("group reward `{0}` is already registered")]
    DuplicateGroupReward(String),
    /// The parameters (TOML table) of an environment are invalid.
    #[error("environment `{env}`: invalid parameters: {message}")]
    Params {
        /// The environment's registered name.
        env: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A data file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a data file is malformed.
    #[error("{path}:{line}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// `step` was called with another agent than the one the environment asked.
    #[error("the environment asked agent `{expected}` but `{got}` answered")]
    WrongAgent {
        /// The agent of the pending request.
        expected: AgentId,
        /// The agent that answered.
        got: AgentId,
    },
    /// A sandboxed execution of model-written code broke a limit or did something forbidden
    /// (the episode ends as a `fault/sandbox` fault).
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// `step` was called with no episode in progress (before `reset`, or after `Done`).
    #[error("no episode in progress: call reset first")]
    NoEpisode,
    /// A remote environment failed: connection, HTTP status, reply too large or malformed.
    #[error("remote environment {url}: {message}")]
    Remote {
        /// The endpoint called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A failure inside a (user) environment, described in its own words.
    #[error("{0}")]
    Env(String),
}

/// `Result` with kaizen-envs' [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
