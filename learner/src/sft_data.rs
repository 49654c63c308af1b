//! Supervised warm-start data: expert demonstrations of the configured environments, or a JSONL
//! file of chat conversations.

use std::path::Path;

use kaizen_core::{Message, Role, WeightsVersion};
use kaizen_envs::EnvSlot;
use kaizen_envs::{EpisodeLimits, demonstrate};
use kaizen_model::{ChatTemplate, ChatThread, Tokenizer};

use crate::Error;
use crate::samples::Sample;

/// A supervised sequence: `tokens` with the loss on the ones after the first `prompt_len`.
pub(crate) fn sample(tokens: Vec<u32>, prompt_len: usize, index: usize) -> Sample {
    let n = tokens.len();
    let mut loss_mask = vec![false; prompt_len];
    loss_mask.extend(std::iter::repeat_n(true, n - prompt_len));
    masked_sample(tokens, loss_mask, index)
}

/// A supervised sequence with the loss where `loss_mask` is true (one turn, temperature 1, no
/// advantages), the `index`-th of its data.
fn masked_sample(tokens: Vec<u32>, loss_mask: Vec<bool>, index: usize) -> Sample {
    let n = tokens.len();
    Sample {
        tokens,
        loss_mask,
        advantages: vec![0.0; n],
        behavior_logprobs: vec![0.0; n],
        turns: vec![0; n],
        temperature: 1.0,
        trajectory: index,
        trained_segments: vec![0],
        version: WeightsVersion(0),
    }
}

/// The answer as trained tokens: its encoding followed by the tokenizer's first EOS id, so the
/// model learns to stop.
pub(crate) fn answer_tokens(tokenizer: &Tokenizer, answer: &str) -> Result<Vec<u32>, Error> {
    let mut ids = tokenizer.encode_text(answer)?;
    ids.extend(tokenizer.eos_token_ids().first());
    Ok(ids)
}

/// `count` expert demonstrations: episodes of `envs` (picked round-robin) from seeds
/// `first_seed..`, answered by each environment's expert; every answered turn becomes one
/// sequence (prompt rendered with `template`, loss on the answer and EOS).
///
/// # Errors
/// [`Error::Config`] when an environment has no expert (naming it); tokenizer errors.
pub fn demonstration_samples(
    runtime: &tokio::runtime::Runtime,
    envs: &[EnvSlot],
    count: usize,
    first_seed: u64,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<Sample>, Error> {
    let mut out = Vec::new();
    for i in 0..count {
        let slot = &envs[i % envs.len()];
        let seed = first_seed + i as u64;
        let episode = runtime.block_on(demonstrate(
            slot.factory.make(),
            seed,
            EpisodeLimits::default(),
        ));
        if let Err(fault) = &episode.end {
            return Err(Error::Config {
                path: "[sft]".into(),
                message: format!(
                    "`source = \"demonstrations\"` needs environments with an expert; `{}` seed {seed}: {fault}",
                    slot.name
                ),
            });
        }
        for turn in &episode.turns {
            if !turn.request.trainable {
                continue;
            }
            let thread = ChatThread::start(template.clone(), tokenizer, &turn.request.messages)?;
            let mut tokens = thread.tokens().to_vec();
            let prompt_len = tokens.len();
            tokens.extend(answer_tokens(tokenizer, &turn.answer)?);
            out.push(sample(tokens, prompt_len, out.len()));
        }
    }
    Ok(out)
}

/// Chat conversations from a JSONL file (`{"messages": [{"role", "content"}, ...]}` per line):
/// one sequence per conversation, loss on every assistant message (and its EOS) whose optional
/// `"weight"` is not 0. `"weight": 0` keeps an assistant message as context only, as in OpenAI's
/// chat fine-tuning format — e.g. a first attempt that a trained correction answers.
///
/// # Errors
/// [`Error::Io`]; [`Error::Config`] naming the file and line for malformed lines, a `weight`
/// other than 0 or 1 or on a non-assistant message, or conversations without a trained
/// assistant message. Other message fields than `role`, `content`, `weight` and `name` are
/// errors (a misspelt `weight` must not silently train a context message).
pub fn chat_samples(
    path: &Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<Sample>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fail = |line: usize, message: String| Error::Config {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        role: Role,
        content: String,
        #[serde(default)]
        weight: Option<u8>,
        /// OpenAI's optional speaker name: accepted, not rendered.
        #[serde(default, rename = "name")]
        _name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Conversation {
        messages: Vec<Line>,
    }
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let conv: Conversation =
            serde_json::from_str(line).map_err(|e| fail(i + 1, e.to_string()))?;
        // (index, trained) of every assistant message.
        let mut assistants = Vec::new();
        for (j, m) in conv.messages.iter().enumerate() {
            match (m.role == Role::Assistant, m.weight) {
                (true, None | Some(1)) => assistants.push((j, true)),
                (true, Some(0)) => assistants.push((j, false)),
                (false, None) => {}
                (true, Some(w)) => {
                    return Err(fail(
                        i + 1,
                        format!("message {j}: `weight` must be 0 or 1, got {w}"),
                    ));
                }
                (false, Some(_)) => {
                    return Err(fail(
                        i + 1,
                        format!("message {j}: `weight` is only allowed on assistant messages"),
                    ));
                }
            }
        }
        if !assistants.iter().any(|&(_, trained)| trained) {
            return Err(fail(i + 1, "no assistant message to train on".into()));
        }
        let messages: Vec<Message> = conv
            .messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect();
        let first = assistants[0].0;
        if first == 0 {
            return Err(fail(
                i + 1,
                "the conversation starts with an assistant message".into(),
            ));
        }
        let mut thread = ChatThread::start(template.clone(), tokenizer, &messages[..first])?;
        let mut mask = vec![false; thread.tokens().len()];
        for (k, &(a, trained)) in assistants.iter().enumerate() {
            if k > 0 {
                let Some(new) = thread.continue_with(tokenizer, &messages[..a])? else {
                    return Err(fail(
                        i + 1,
                        "assistant messages must follow other messages".into(),
                    ));
                };
                mask.extend(std::iter::repeat_n(false, new.len()));
            }
            let ids = answer_tokens(tokenizer, &messages[a].content)?;
            mask.extend(std::iter::repeat_n(trained, ids.len()));
            thread.push_completion(tokenizer, &ids, &messages[a].content)?;
        }
        out.push(masked_sample(thread.tokens().to_vec(), mask, out.len()));
    }
    if out.is_empty() {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: "no conversations".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_jsonl_masks_exactly_the_assistant_turns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.jsonl");
        std::fs::write(
            &path,
            r#"{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"sure?"},{"role":"assistant","content":"yes"}]}"#,
        )
        .unwrap();
        let tok = Tokenizer::byte_level();
        let samples = chat_samples(&path, &tok, &ChatTemplate::chatml()).unwrap();
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        let trained = s.trained_ids();
        let mut expected: Vec<u32> = b"4".iter().map(|&b| b as u32).collect();
        expected.push(258);
        expected.extend(b"yes".iter().map(|&b| b as u32));
        expected.push(258);
        assert_eq!(trained, expected);
        std::fs::write(
            &path,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n",
        )
        .unwrap();
        let err = chat_samples(&path, &tok, &ChatTemplate::chatml())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("assistant"), "{err}");
    }

    #[test]
    fn weight_zero_keeps_an_assistant_message_as_context_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.jsonl");
        let line = |w0: &str, w1: &str| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"2+2?"}},{{"role":"assistant","content":"5"{w0}}},{{"role":"user","content":"sure?"}},{{"role":"assistant","content":"4"{w1}}}]}}"#
            )
        };
        std::fs::write(&path, line(r#","weight":0"#, r#","weight":1"#)).unwrap();
        let tok = Tokenizer::byte_level();
        let template = ChatTemplate::chatml();
        let s = &chat_samples(&path, &tok, &template).unwrap()[0];
        let trained = s.trained_ids();
        assert_eq!(trained, [u32::from(b'4'), 258]);
        // The context is the same sequence as without weights.
        std::fs::write(&path, line("", "")).unwrap();
        let plain = &chat_samples(&path, &tok, &template).unwrap()[0];
        assert_eq!(plain.tokens, s.tokens);
        assert_eq!(plain.loss_mask.iter().filter(|m| **m).count(), 4);

        for (w0, w1, needle) in [
            (
                r#","weight":0"#,
                r#","weight":0"#,
                "no assistant message to train on",
            ),
            (r#","weight":2"#, "", "`weight` must be 0 or 1, got 2"),
        ] {
            std::fs::write(&path, line(w0, w1)).unwrap();
            let err = chat_samples(&path, &tok, &template)
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 1") && err.contains(needle), "{err}");
        }
        std::fs::write(
            &path,
            r#"{"messages":[{"role":"user","content":"x","weight":1},{"role":"assistant","content":"y"}]}"#,
        )
        .unwrap();
        let err = chat_samples(&path, &tok, &template)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only allowed on assistant"), "{err}");
    }
}
