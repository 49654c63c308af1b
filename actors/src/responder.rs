//! Answering one episode's requests with the policy, keeping every model turn as tokens.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Request, SamplingOverrides, Segment};
use kaizen_envs::Responder;
use kaizen_model::{ChatTemplate, ChatThread, GenerationRequest, Tokenizer};
use tokio::sync::oneshot;

use crate::engine::{BusyGuard, EngineHandle, Job, Msg, Sink};
use crate::{SamplingConfig, derive_seed};

/// The policy side of one episode: renders requests into token threads, asks the engine,
/// records each model turn as a [`Segment`].
pub(crate) struct PolicyResponder {
    pub engine: EngineHandle,
    pub busy: Option<BusyGuard>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub sampling: SamplingConfig,
    pub task_sampling: SamplingOverrides,
    pub episode: u64,
    pub sampling_seed: u64,
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
        let params = self.sampling.resolve(
            &self.task_sampling,
            &request.sampling,
            derive_seed(self.sampling_seed, turn as u64),
        );
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
                session: (!hinted).then_some(self.episode),
            },
            reply: Sink::Reply(reply),
        }));
        self.busy = None;
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
                self.busy = Some(self.engine.gate.busy());
                return Err(e);
            }
        };
        self.busy = Some(busy);
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

impl Drop for PolicyResponder {
    /// The episode is over: its engine drops what it kept for the next turn.
    fn drop(&mut self) {
        let _ = self.engine.tx.try_send(Msg::Forget(self.episode));
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
