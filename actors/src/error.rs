/// Errors of kaizen-actors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The actors have shut down; the task was not queued (it is returned).
    #[error("the actors have shut down; task {} was not queued", .0.id)]
    Closed(Box<kaizen_transport::EpisodeTask>),
    /// A task names an environment index the actors do not have.
    #[error("task {task}: environment index {env} is out of range ({count} environments)")]
    UnknownEnv {
        /// Task id.
        task: u64,
        /// The index given.
        env: usize,
        /// Number of environments.
        count: usize,
    },
    /// A decode-engine thread could not be started.
    #[error("cannot start a decode engine thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// The pool was configured with zero actors or zero episodes in flight.
    #[error("invalid actor configuration: {0}")]
    Config(String),
}
