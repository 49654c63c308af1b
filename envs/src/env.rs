use async_trait::async_trait;
use kaizen_core::{AgentId, Step};

use crate::Result;

/// A multi-turn, multi-agent text environment.
///
/// One instance plays one episode at a time: [`Env::reset`] starts an episode from a seed and
/// returns the first [`Step`]; every [`Env::step`] gives the text of the agent that was asked and
/// returns the next step, until [`Step::Done`]. The same seed must give the same episode.
///
/// Conversations follow the rule documented on [`kaizen_core::Request::messages`]: when the
/// same agent is asked again in the same thread, the new request starts with the previous
/// request's messages unchanged, then the agent's answer verbatim, then the new messages
/// ([`crate::Dialogue`] does this bookkeeping). `Outcome.rewards[agent][k]` is the reward of
/// the agent's `k`-th answered request.
///
/// Errors end the episode (the runner reports them); they never end the run.
#[async_trait]
pub trait Env: Send {
    /// Starts a new episode from `seed` and returns its first step.
    ///
    /// # Errors
    /// When the episode cannot start (e.g. a remote environment is unreachable).
    async fn reset(&mut self, seed: u64) -> Result<Step>;

    /// Gives `agent`'s answer `text` to the pending request and returns the next step.
    ///
    /// # Errors
    /// [`crate::Error::WrongAgent`] when `agent` was not asked, [`crate::Error::NoEpisode`]
    /// outside an episode, or the environment's own failures.
    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step>;

    /// What an expert would answer to the pending request, when the environment knows one
    /// (used to make demonstrations for supervised warm starts and to test that episodes can
    /// be won). `None` by default.
    fn expert_answer(&self) -> Option<String> {
        None
    }

    /// A hint for the pending request that lets the policy reach the right answer (the gold
    /// answer), for STaR's rationalisation (Zelikman et al. 2022, §3.2): the policy is shown
    /// it for one turn and trained on what it wrote without it. Asked only at the turns an
    /// episode task names (`EpisodeTask::hint_turns`). `None` by default.
    fn hint(&self) -> Option<String> {
        None
    }

    /// An independent copy of this environment in its current state, for tree search
    /// (`kaizen_transport::TreeSearch`): stepping the copy with the same texts gives exactly the
    /// steps the original would give, and neither copy sees the other's steps afterwards.
    /// Environments that can fork say so with [`EnvFactory::can_fork`]; `None` (the default)
    /// means this one cannot (a remote process, a sandbox with files).
    fn fork(&self) -> Option<Box<dyn Env>> {
        None
    }
}

/// Makes fresh environment instances, one per episode.
///
/// A factory is built once from an environment's parameters (see [`crate::Registry`]) and
/// holds what episodes share (a problem set, an HTTP client); [`EnvFactory::make`] is cheap.
pub trait EnvFactory: Send + Sync {
    /// A new environment instance, ready for [`Env::reset`].
    fn make(&self) -> Box<dyn Env>;

    /// Whether this factory's environments implement [`Env::fork`] (tree search is refused
    /// before a job starts on environments that do not). `false` by default.
    fn can_fork(&self) -> bool {
        false
    }
}

impl<F> EnvFactory for F
where
    F: Fn() -> Box<dyn Env> + Send + Sync,
{
    fn make(&self) -> Box<dyn Env> {
        self()
    }
}

/// An environment a job's actors can play: its name (used in trajectories and metrics) and its
/// factory. A job's environment list is the same on every process of the job (built from the
/// same config), so tasks name environments by their index in it.
#[derive(Clone)]
pub struct EnvSlot {
    /// Name used in trajectories and metrics.
    pub name: String,
    /// Makes one environment instance per episode.
    pub factory: std::sync::Arc<dyn EnvFactory>,
}
