/// Errors raised when kaizen-core data is inconsistent.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// A segment's behaviour log-probs do not line up with its completion tokens.
    #[error(
        "trajectory {trajectory}: segment {segment} has {completion} completion tokens but {logprobs} behaviour log-probs"
    )]
    LogprobLength {
        /// Trajectory id.
        trajectory: u64,
        /// Index of the segment in the trajectory.
        segment: usize,
        /// Number of completion tokens.
        completion: usize,
        /// Number of behaviour log-probs.
        logprobs: usize,
    },
    /// The rewards of an agent do not have one entry per turn the agent took.
    #[error(
        "trajectory {trajectory}: agent `{agent}` took {turns} turns but has {rewards} rewards (expected one per turn)"
    )]
    RewardCount {
        /// Trajectory id.
        trajectory: u64,
        /// The agent whose rewards are wrong.
        agent: String,
        /// Number of turns (segments) of the agent.
        turns: usize,
        /// Number of rewards given.
        rewards: usize,
    },
    /// A reward is NaN or infinite.
    #[error("trajectory {trajectory}: agent `{agent}` turn {turn} has a non-finite reward {value}")]
    NonFiniteReward {
        /// Trajectory id.
        trajectory: u64,
        /// The agent.
        agent: String,
        /// Turn index within the agent's turns.
        turn: usize,
        /// The offending value.
        value: f32,
    },
}
