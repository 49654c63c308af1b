//! Preference pairs from a JSONL file, for the offline DPO / IPO stage (`[preference]`).
//!
//! One pair per line, in either of TRL's preference formats:
//!
//! - conversational: `{"prompt": [{"role": "system"|"user"|"assistant", "content": …}, …],
//!   "chosen": [{"role": "assistant", "content": …}], "rejected": [{"role": "assistant", …}]}`
//! - standard: `{"prompt": "…", "chosen": "…", "rejected": "…"}`, read as one user message and
//!   one assistant reply each.
//!
//! The prompt is rendered with the job's chat template; each response becomes one sample:
//! prompt tokens (context) followed by the reply's tokens and the tokenizer's EOS (trained), as
//! the warm start's chat data (`crate::sft_data`).

use std::path::Path;

use kaizen_core::{Message, Role};
use kaizen_model::{ChatTemplate, ChatThread, Tokenizer};
use serde::Deserialize;

use crate::Error;
use crate::samples::Sample;
use crate::sft_data::{answer_tokens, sample};

/// A message of a conversational pair.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    role: Role,
    content: String,
}

/// A prompt or a response: text (standard format) or messages (conversational).
#[derive(Deserialize)]
#[serde(untagged)]
enum Part {
    Text(String),
    Messages(Vec<Line>),
}

/// A line; other columns (`id`, `score_chosen`, … of TRL datasets) are ignored.
#[derive(Deserialize)]
struct Pair {
    prompt: Part,
    chosen: Part,
    rejected: Part,
}

/// The (chosen, rejected) samples of every line of `path` (module docs).
///
/// # Errors
/// [`Error::Io`]; [`Error::Config`] naming the file and line for a malformed line, a response
/// that is not exactly one assistant message, a prompt that is empty or ends with an assistant
/// message; tokenizer errors.
pub fn preference_pairs(
    path: &Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<(Sample, Sample)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fail = |line: usize, message: String| Error::Config {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let pair: Pair = serde_json::from_str(line).map_err(|e| {
            fail(
                i + 1,
                format!("{e}; expected {{\"prompt\", \"chosen\", \"rejected\"}} as strings or message lists"),
            )
        })?;
        let prompt: Vec<Message> = match pair.prompt {
            Part::Text(t) => vec![Message::new(Role::User, t)],
            Part::Messages(m) => m
                .into_iter()
                .map(|l| Message::new(l.role, l.content))
                .collect(),
        };
        match prompt.last() {
            None => return Err(fail(i + 1, "`prompt` is empty".into())),
            Some(m) if m.role == Role::Assistant => {
                return Err(fail(
                    i + 1,
                    "`prompt` ends with an assistant message; the responses are the assistant's"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        let thread = ChatThread::start(template.clone(), tokenizer, &prompt)?;
        let context = thread.tokens().to_vec();
        let response = |field: &str, part: Part| -> Result<Sample, Error> {
            let reply = match part {
                Part::Text(t) => t,
                Part::Messages(mut m) if m.len() == 1 && m[0].role == Role::Assistant => {
                    m.remove(0).content
                }
                Part::Messages(_) => {
                    return Err(fail(
                        i + 1,
                        format!("`{field}` must be one assistant message (or a string)"),
                    ));
                }
            };
            let reply = answer_tokens(tokenizer, &reply)?;
            if reply.is_empty() {
                return Err(fail(i + 1, format!("`{field}` has no tokens to train on")));
            }
            let mut tokens = context.clone();
            tokens.extend(reply);
            Ok(sample(tokens, context.len(), out.len()))
        };
        let chosen = response("chosen", pair.chosen)?;
        let rejected = response("rejected", pair.rejected)?;
        out.push((chosen, rejected));
    }
    if out.is_empty() {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: "no preference pairs".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both formats give the same samples: the prompt as context, the reply and EOS trained;
    /// other columns of a TRL dataset (`id`) are ignored.
    #[test]
    fn standard_and_conversational_pairs_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 7}"#,
                "\n\n",
                r#"{"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let tok = Tokenizer::byte_level();
        let pairs = preference_pairs(&path, &tok, &ChatTemplate::chatml()).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0.tokens, pairs[1].0.tokens);
        assert_eq!(pairs[0].1.loss_mask, pairs[1].1.loss_mask);
        assert_eq!(pairs[0].0.trained_ids(), vec![u32::from(b'4'), 258]);
        assert_eq!(pairs[0].1.trained_ids(), vec![u32::from(b'5'), 258]);
        // Chosen and rejected share the prompt exactly.
        let prompt = pairs[0].0.loss_mask.iter().position(|&m| m).unwrap();
        assert_eq!(pairs[0].0.tokens[..prompt], pairs[0].1.tokens[..prompt]);
    }

    #[test]
    fn malformed_pairs_name_the_line_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        let tok = Tokenizer::byte_level();
        let template = ChatTemplate::chatml();
        for (line, needle) in [
            (r#"{"prompt": "x", "chosen": "a"}"#, "rejected"),
            (
                r#"{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}"#,
                "`chosen` must be one assistant message",
            ),
            (
                r#"{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}"#,
                "ends with an assistant message",
            ),
            (
                r#"{"prompt": [], "chosen": "a", "rejected": "b"}"#,
                "`prompt` is empty",
            ),
        ] {
            std::fs::write(&path, format!("\n{line}\n")).unwrap();
            let err = preference_pairs(&path, &tok, &template)
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2") && err.contains(needle), "{err}");
        }
        std::fs::write(&path, "\n").unwrap();
        let err = preference_pairs(&path, &tok, &template)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no preference pairs"), "{err}");
    }
}
