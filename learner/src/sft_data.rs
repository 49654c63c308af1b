//! Supervised warm-start data: expert demonstrations of the configured environments, or a JSONL
//! file of chat conversations.

use std::path::Path;

use kaizen_core::{Role, WeightsVersion};
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

/// Chat conversations from a JSONL file in OpenAI's chat fine-tuning format
/// (`{"messages": [{"role", "content"}, ...], "tools": [...]}` per line, `tools` optional):
/// one sequence per conversation, loss on every assistant message (and its EOS) whose optional
/// `"weight"` is not 0. `"weight": 0` keeps an assistant message as context only — e.g. a first
/// attempt that a trained correction answers. Assistant `tool_calls`, `tool` messages and the
/// offered `tools` are rendered by [`kaizen_core::openai_chat::to_messages`], the conversion
/// `kaizen serve` applies to requests, so a tool-calling turn is trained on the exact text the
/// served model writes and is shown.
///
/// # Errors
/// [`Error::Io`]; [`Error::Config`] naming the file, line and field for malformed lines, a
/// `weight` other than 0 or 1 or on a non-assistant message, or conversations without a trained
/// assistant message. Message fields other than `role`, `content`, `weight`, `name`,
/// `tool_calls` and `tool_call_id` are errors (a misspelt `weight` must not silently train a
/// context message).
pub fn chat_samples(
    path: &Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<Sample>, Error> {
    use kaizen_core::openai_chat::{self, ChatMessage, Tool};
    const FIELDS: [&str; 6] = [
        "role",
        "content",
        "weight",
        "name",
        "tool_calls",
        "tool_call_id",
    ];
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fail = |line: usize, message: String| Error::Config {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    #[derive(serde::Deserialize)]
    struct Conversation {
        messages: Vec<serde_json::Map<String, serde_json::Value>>,
        #[serde(default)]
        tools: Option<Vec<Tool>>,
    }
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let conv: Conversation =
            serde_json::from_str(line).map_err(|e| fail(i + 1, e.to_string()))?;
        // (index among assistant messages in order, trained) of every assistant message.
        let mut assistants = Vec::new();
        let mut chat = Vec::with_capacity(conv.messages.len());
        for (j, mut m) in conv.messages.into_iter().enumerate() {
            if let Some(key) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return Err(fail(
                    i + 1,
                    format!(
                        "messages[{j}]: unknown field `{key}` (expected one of {})",
                        FIELDS.join(", ")
                    ),
                ));
            }
            let weight = m.remove("weight");
            let message: ChatMessage = serde_json::from_value(serde_json::Value::Object(m))
                .map_err(|e| fail(i + 1, format!("messages[{j}]: {e}")))?;
            let assistant = message.role == "assistant";
            match (assistant, weight.as_ref().map(serde_json::Value::as_u64)) {
                (true, None | Some(Some(1))) => assistants.push(true),
                (true, Some(Some(0))) => assistants.push(false),
                (false, None) => {}
                (true, Some(_)) => {
                    return Err(fail(
                        i + 1,
                        format!(
                            "messages[{j}].weight must be 0 or 1, got {}",
                            weight.unwrap_or_default()
                        ),
                    ));
                }
                (false, Some(_)) => {
                    return Err(fail(
                        i + 1,
                        format!("messages[{j}].weight is only allowed on assistant messages"),
                    ));
                }
            }
            chat.push(message);
        }
        if !assistants.iter().any(|&trained| trained) {
            return Err(fail(i + 1, "no assistant message to train on".into()));
        }
        let messages = openai_chat::to_messages(&chat, conv.tools.as_deref())
            .map_err(|e| fail(i + 1, e.message))?;
        // Assistant messages keep their order through the conversion.
        let assistants: Vec<(usize, bool)> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Assistant)
            .map(|(a, _)| a)
            .zip(assistants)
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
            (
                r#","weight":2"#,
                "",
                "messages[1].weight must be 0 or 1, got 2",
            ),
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

    #[test]
    fn tool_calls_train_on_the_text_the_server_shows_and_parses() {
        use kaizen_core::openai_chat;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tools.jsonl");
        let conversation = serde_json::json!({
            "tools": [{"type": "function", "function": {"name": "calc",
                       "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "user", "content": "12*34?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c0",
                 "type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"12*34\"}"}}]},
                {"role": "tool", "tool_call_id": "c0", "content": "408"},
                {"role": "assistant", "content": "408"},
            ]
        });
        std::fs::write(&path, conversation.to_string()).unwrap();
        let tok = Tokenizer::byte_level();
        let s = &chat_samples(&path, &tok, &ChatTemplate::chatml()).unwrap()[0];
        let text = |ids: &[u32]| tok.decode(ids, true).unwrap();
        let call =
            "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expr\": \"12*34\"}}\n</tool_call>";
        // Loss on the call and the answer (each with its EOS), nothing else.
        assert_eq!(text(&s.trained_ids()), format!("{call}408"));
        assert_eq!(s.trained_ids().iter().filter(|&&t| t == 258).count(), 2);
        // The trained call parses back into the call, as the server returns it.
        let (content, calls) = openai_chat::parse_calls(call, "c");
        assert_eq!(
            (content, calls[0].function.arguments.as_str()),
            (None, r#"{"expr":"12*34"}"#)
        );
        // The context holds the tools block and the tool's answer as a user turn.
        let all = text(&s.tokens);
        assert!(
            all.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"calc\""),
            "{all}"
        );
        assert!(
            all.contains("<tool_response>\n408\n</tool_response>"),
            "{all}"
        );
        // A misspelt field is refused by name.
        std::fs::write(
            &path,
            r#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y","wieght":0}]}"#,
        )
        .unwrap();
        let err = chat_samples(&path, &tok, &ChatTemplate::chatml())
            .unwrap_err()
            .to_string();
        assert!(err.contains("messages[1]: unknown field `wieght`"), "{err}");
    }
}
