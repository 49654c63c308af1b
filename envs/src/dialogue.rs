use std::collections::BTreeMap;

use kaizen_core::{AgentId, Message, Request};

use crate::{Error, Result};

/// Per-agent conversation threads that only grow, so that every follow-up request of an agent
/// continues its previous one (see [`Request::continues`]).
///
/// An environment calls [`Dialogue::ask`] to append new messages to an agent's thread and get
/// the request to return, and [`Dialogue::answer`] when the agent's text comes back; the
/// answer is appended verbatim as an assistant message. [`Dialogue::turns`] counts answered
/// requests per agent, the length the agent's reward list must have.
#[derive(Debug, Clone, Default)]
pub struct Dialogue {
    threads: BTreeMap<AgentId, Vec<Message>>,
    turns: BTreeMap<AgentId, usize>,
    pending: Option<AgentId>,
}

impl Dialogue {
    /// An empty dialogue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `messages` to `agent`'s thread and returns the (trainable) request that asks it
    /// to speak next.
    pub fn ask(
        &mut self,
        agent: impl Into<AgentId>,
        messages: impl IntoIterator<Item = Message>,
    ) -> Request {
        let agent = agent.into();
        let thread = self.threads.entry(agent.clone()).or_default();
        thread.extend(messages);
        self.pending = Some(agent.clone());
        Request::new(agent, thread.clone())
    }

    /// Starts `agent`'s thread afresh (its next request will not continue the old one).
    pub fn restart(&mut self, agent: &AgentId) {
        self.threads.remove(agent);
    }

    /// Records `agent`'s answer to the pending request.
    ///
    /// # Errors
    /// [`Error::NoEpisode`] when nothing is pending, [`Error::WrongAgent`] when another agent
    /// was asked.
    pub fn answer(&mut self, agent: &AgentId, text: &str) -> Result<()> {
        let expected = self.pending.take().ok_or(Error::NoEpisode)?;
        if &expected != agent {
            let err = Error::WrongAgent {
                expected: expected.clone(),
                got: agent.clone(),
            };
            self.pending = Some(expected);
            return Err(err);
        }
        self.threads
            .entry(agent.clone())
            .or_default()
            .push(Message::assistant(text));
        *self.turns.entry(agent.clone()).or_default() += 1;
        Ok(())
    }

    /// The agent whose answer is awaited, if any.
    pub fn pending(&self) -> Option<&AgentId> {
        self.pending.as_ref()
    }

    /// Marks the episode finished: nothing is pending any more.
    pub fn finish(&mut self) {
        self.pending = None;
    }

    /// How many requests `agent` has answered.
    pub fn turns(&self, agent: &AgentId) -> usize {
        self.turns.get(agent).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_up_requests_continue_the_thread() {
        let mut d = Dialogue::new();
        let a = AgentId::new("solver");
        let first = d.ask("solver", [Message::user("2+2?")]);
        d.answer(&a, " 4\n").unwrap();
        let second = d.ask("solver", [Message::user("Are you sure?")]);
        assert!(second.continues(&first, " 4\n"));
        assert_eq!(second.messages.len(), 3);
        assert_eq!(d.turns(&a), 1);
    }

    #[test]
    fn answer_from_the_wrong_agent_is_refused_and_keeps_the_pending_request() {
        let mut d = Dialogue::new();
        d.ask("critic", [Message::user("judge")]);
        let err = d.answer(&AgentId::new("sneaky"), "x").unwrap_err();
        assert!(err.to_string().contains("`critic`"), "{err}");
        assert_eq!(d.pending(), Some(&AgentId::new("critic")));
        d.answer(&AgentId::new("critic"), "ok").unwrap();
        assert!(matches!(
            d.answer(&AgentId::new("critic"), "again"),
            Err(Error::NoEpisode)
        ));
    }

    #[test]
    fn restart_begins_a_new_thread() {
        let mut d = Dialogue::new();
        let a = AgentId::new("judge");
        let first = d.ask("judge", [Message::user("one")]);
        d.answer(&a, "x").unwrap();
        d.restart(&a);
        let second = d.ask("judge", [Message::user("two")]);
        assert!(!second.continues(&first, "x"));
        assert_eq!(second.messages.len(), 1);
    }
}
