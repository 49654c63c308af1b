//! Answering one episode's requests with the policy, keeping every model turn as tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Request, SamplingOverrides, Segment};
use kaizen_envs::Responder;
use kaizen_envs::search::Branching;
use kaizen_model::{ChatTemplate, ChatThread, GenerationRequest, Tokenizer};
use tokio::sync::oneshot;

use crate::engine::{BusyGuard, EngineHandle, Job, Msg, Sink};
use crate::{SamplingConfig, derive_seed};

/// Marks an episode as busy outside the engine; shared by the branches of a searched episode,
/// which take turns (one answers at a time).
pub(crate) type BusySlot = Arc<Mutex<Option<BusyGuard>>>;

/// The policy side of one episode: renders requests into token threads, asks the engine,
/// records each model turn as a [`Segment`]. A searched episode has one per branch
/// ([`Branching::branch`]), each with its own kept keys and values (`session`).
pub(crate) struct PolicyResponder {
    pub engine: EngineHandle,
    pub busy: BusySlot,
    /// The engine session its keys and values are kept under between turns (the episode id
    /// for an ordinary episode).
    pub session: u64,
    /// Sessions made for branches of this episode so far (shared by its branches).
    pub branches: Arc<AtomicU64>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub sampling: SamplingConfig,
    pub task_sampling: SamplingOverrides,
    pub episode: u64,
    pub sampling_seed: u64,
    /// The episode's own sampling seed (rollouts of a search derive theirs from it).
    pub root_seed: u64,
    pub threads: HashMap<AgentId, (u32, ChatThread)>,
    pub next_thread: u32,
    pub segments: Vec<Segment>,
}

#[async_trait]
impl Responder for PolicyResponder {
    async fn respond(&mut self, request: &Request) -> Result<String, String> {
        let turn = self.segments.len() as u32;
        let tok = self.tokenizer.clone();
        // Rationalisation: the policy samples with the hint, the thread records the turn
        // without it.
        let hinted_prompt = match &request.hint {
            Some(hint) => Some(self.hinted_prompt(request, hint)?),
            None => None,
        };
        // Continue the agent's thread when the request extends it; start a new one otherwise.
        let continued = match self.threads.get_mut(&request.agent) {
            Some((_, thread)) => thread
                .continue_with(&tok, &request.messages)
                .map_err(|e| e.to_string())?,
            None => None,
        };
        let prompt_delta = match continued {
            Some(delta) => delta,
            None => {
                let thread = ChatThread::start(self.template.clone(), &tok, &request.messages)
                    .map_err(|e| e.to_string())?;
                let tokens = thread.tokens().to_vec();
                self.threads
                    .insert(request.agent.clone(), (self.next_thread, thread));
                self.next_thread += 1;
                tokens
            }
        };
        let (thread_id, thread) = self
            .threads
            .get_mut(&request.agent)
            .ok_or("internal: thread missing")?;
        let hinted = hinted_prompt.is_some();
        let prompt = hinted_prompt.unwrap_or_else(|| thread.tokens().to_vec());
        if prompt.len() > self.sampling.max_prompt_length {
            return Err(format!(
                "prompt of {} tokens exceeds max_prompt_length {}",
                prompt.len(),
                self.sampling.max_prompt_length
            ));
        }
        let mut params = self.sampling.resolve(
            &self.task_sampling,
            &request.sampling,
            derive_seed(self.sampling_seed, turn as u64),
        );
        if !request.sampling.choices.is_empty() {
            params.choices = encode_choices(&tok, &request.sampling.choices)?;
            let longest = params.choices.iter().map(Vec::len).max().unwrap_or(0);
            // Room for the longest choice and its end-of-turn id.
            params.max_new_tokens = params.max_new_tokens.max(longest + 1);
        }
        let temperature = params.temperature;
        let (reply, answer) = oneshot::channel();
        // Queue the request, then stop counting this episode as busy: in that order the engine,
        // which admits requests once no episode is busy, always finds it queued (the other
        // order let a request miss the batch it belongs to, so batches depended on timing).
        // The channel is unbounded: the send never waits.
        let sent = self.engine.tx.send(Msg::Generate(Job {
            key: (self.episode, turn),
            request: GenerationRequest {
                prompt,
                params,
                // The engine keeps this thread's keys and values for its next turn (not
                // those of a hinted prompt, which the thread does not continue).
                session: (!hinted).then_some(self.session),
            },
            reply: Sink::Reply(reply),
        }));
        set_busy(&self.busy, None);
        let result = match sent {
            Ok(()) => answer
                .await
                .map_err(|_| "the decode engine stopped".to_string())
                .and_then(|r| r),
            Err(_) => Err("the decode engine stopped".to_string()),
        };
        let (completion, busy) = match result {
            Ok(answer) => answer,
            Err(e) => {
                set_busy(&self.busy, Some(self.engine.gate.busy()));
                return Err(e);
            }
        };
        set_busy(&self.busy, Some(busy));
        let g = completion.generation;
        let text = g.text.clone().unwrap_or_default();
        thread
            .push_completion(&tok, &g.tokens, &text)
            .map_err(|e| e.to_string())?;
        self.segments.push(Segment {
            agent: request.agent.clone(),
            thread: *thread_id,
            prompt_tokens: prompt_delta,
            completion_tokens: g.tokens,
            behavior_logprobs: g.logprobs,
            trainable: request.trainable,
            temperature,
            weights_version: completion.version,
            finish_reason: g.finish_reason,
            self_certainty: g.self_certainty,
        });
        Ok(text)
    }
}

impl PolicyResponder {
    /// Takes the busy guard out (the episode is over).
    pub(crate) fn take_busy(&self) -> Option<BusyGuard> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The prompt of `request` with `hint` as a last user message: the agent's thread
    /// continued with it when the request continues the thread (earlier completions keep their
    /// sampled ids), a fresh rendering otherwise. The thread itself is not changed.
    fn hinted_prompt(&self, request: &Request, hint: &str) -> Result<Vec<u32>, String> {
        let mut messages = request.messages.clone();
        messages.push(Message::user(hint));
        if let Some((_, thread)) = self.threads.get(&request.agent) {
            let mut copy = thread.clone();
            if copy
                .continue_with(&self.tokenizer, &messages)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Ok(copy.tokens().to_vec());
            }
        }
        ChatThread::start(self.template.clone(), &self.tokenizer, &messages)
            .map(|t| t.tokens().to_vec())
            .map_err(|e| e.to_string())
    }
}

impl Branching for PolicyResponder {
    /// A branch in its own engine session, which starts as a copy of this one's kept keys and
    /// values (`Msg::Fork`, sent before any request of the branch, so the engine applies it
    /// first), sampling from the stream of `rollout` (0: the episode's own).
    fn branch(&self, rollout: u32) -> Self {
        let n = self.branches.fetch_add(1, Ordering::Relaxed);
        let session = derive_seed(self.episode ^ BRANCH_SESSIONS, n);
        let _ = self.engine.tx.send(Msg::Fork {
            from: self.session,
            to: session,
        });
        Self {
            engine: self.engine.clone(),
            busy: self.busy.clone(),
            session,
            branches: self.branches.clone(),
            tokenizer: self.tokenizer.clone(),
            template: self.template.clone(),
            sampling: self.sampling.clone(),
            task_sampling: self.task_sampling.clone(),
            episode: self.episode,
            sampling_seed: rollout_seed(self.root_seed, rollout),
            root_seed: self.root_seed,
            threads: self.threads.clone(),
            next_thread: self.next_thread,
            segments: self.segments.clone(),
        }
    }
}

/// The token ids of each of a request's `choices` as a reply's completion (plain text: a
/// special-token string in a choice stays text).
///
/// # Errors
/// A choice that is empty or encodes to no ids, naming it.
fn encode_choices(tok: &Tokenizer, choices: &[String]) -> Result<Vec<Vec<u32>>, String> {
    choices
        .iter()
        .enumerate()
        .map(|(i, text)| match tok.encode_text(text) {
            Ok(ids) if !ids.is_empty() => Ok(ids),
            Ok(_) => Err(format!(
                "sampling.choices[{i}] is empty: each choice needs text"
            )),
            Err(e) => Err(format!("sampling.choices[{i}] ({text:?}): {e}")),
        })
        .collect()
}

fn set_busy(busy: &BusySlot, guard: Option<BusyGuard>) {
    // A poisoned slot only means another branch panicked holding it; the guard is still the
    // episode's.
    *busy.lock().unwrap_or_else(|e| e.into_inner()) = guard;
}

/// Mixed into branch session ids so they do not meet episode ids.
const BRANCH_SESSIONS: u64 = 0x5EA2_C4B2_A4C4_0000;

/// The sampling seed of rollout `rollout` of a searched episode whose own seed is `root`
/// (rollout 0 samples as the ordinary episode does).
fn rollout_seed(root: u64, rollout: u32) -> u64 {
    if rollout == 0 {
        root
    } else {
        derive_seed(root ^ BRANCH_SESSIONS, u64::from(rollout))
    }
}

impl Drop for PolicyResponder {
    /// The episode (or branch) is over: its engine drops what it kept for the next turn.
    fn drop(&mut self) {
        let _ = self.engine.tx.try_send(Msg::Forget(self.session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_overrides_win_over_task_overrides_and_defaults() {
        let config = SamplingConfig {
            temperature: 0.9,
            max_completion_length: 100,
            ..SamplingConfig::default()
        };
        let task = SamplingOverrides {
            temperature: Some(0.0),
            max_new_tokens: Some(50),
            ..SamplingOverrides::default()
        };
        let request = SamplingOverrides {
            max_new_tokens: Some(8),
            stop: vec!["\n".into()],
            ..SamplingOverrides::default()
        };
        let p = config.resolve(&task, &request, 7);
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.max_new_tokens, 8);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.seed, 7);
        let p = config.resolve(
            &SamplingOverrides::default(),
            &SamplingOverrides::default(),
            1,
        );
        assert_eq!((p.temperature, p.max_new_tokens), (0.9, 100));
    }

    #[test]
    fn mixed_seeds_differ_per_salt() {
        assert_ne!(derive_seed(1, 0), derive_seed(1, 1));
        assert_ne!(derive_seed(1, 0), derive_seed(2, 0));
        assert_eq!(derive_seed(5, 3), derive_seed(5, 3));
    }
}
