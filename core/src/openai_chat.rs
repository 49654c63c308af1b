//! OpenAI-format chat messages and tool calls, as kaizen [`Message`]s.
//!
//! One conversion serves both places that read this format, so they cannot drift apart:
//! `kaizen serve` (request bodies of `/v1/chat/completions`) and the supervised warm start
//! (`[sft] source = "<file>.jsonl"` in OpenAI's chat fine-tuning format, `tools` included). A
//! model fine-tuned on a conversation therefore sees exactly the text it sees when an agent
//! sends the same conversation to the server.
//!
//! Tool calls follow the Hermes / Qwen ChatML convention. The tools a conversation offers are
//! written into the system message inside `<tools>…</tools>` (one JSON schema per line); the
//! model calls one by writing `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
//! a tool's answer comes back as a user turn wrapped in `<tool_response>…</tool_response>`.
//! This is the format Qwen2.5's and Hermes' chat templates use (SmolLM2's template has no tool
//! section), so a model trained with kaizen on tool use speaks the same format to vLLM's
//! `hermes` tool parser.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Message, Role};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A chat message's `content`: a string, or text parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": ...}, ...]`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// A tool call, as the assistant made it and the client sends it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_...`).
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function and its JSON-encoded arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// A function call's name and arguments (a JSON object encoded as a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// One message of a chat conversation. Fields kaizen does not use (`name`, `refusal`, ...) are
/// ignored here; readers that must refuse them check the keys themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (may be null for an assistant message with tool calls).
    #[serde(default)]
    pub content: Option<Content>,
    /// The assistant's tool calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A tool the model may call: `{"type": "function", "function": {name, description, parameters}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function's schema, passed to the model as is.
    pub function: Value,
}

/// A conversation that cannot be read: the field at fault (`messages[2].role`) and what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ChatFormatError {
    /// The field at fault, as a JSON path (`messages[2].content[0]`).
    pub field: String,
    /// What went wrong and what was expected.
    pub message: String,
}

impl ChatFormatError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The system-message block that offers `tools` to the model.
pub fn tools_block(tools: &[Tool]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        out.push('\n');
        out.push_str(&format!(
            r#"{{"type": {}, "function": {}}}"#,
            dumps(&Value::String(tool.kind.clone())),
            dumps(&tool.function)
        ));
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// `value` on one line as Hugging Face chat templates' `tojson` writes it (Python's
/// `json.dumps(..., ensure_ascii=False)`): `", "` between items, `": "` after keys — the
/// spacing of the Qwen2.5/Hermes templates. Object keys come in serde_json's (sorted) order.
pub fn dumps(value: &Value) -> String {
    /// serde_json's compact output with Python's item and key separators.
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            self.begin_array_value(writer, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Writing a `Value` into memory cannot fail, and serde_json writes UTF-8.
    match serde::Serialize::serialize(value, &mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => value.to_string(),
    }
}

/// An assistant turn's text: its content followed by its tool calls, each in `<tool_call>`
/// tags — what the model wrote when it made them.
pub fn render_calls(content: &str, calls: &[ToolCall]) -> String {
    let mut out = content.to_string();
    for call in calls {
        let arguments: Value = serde_json::from_str(&call.function.arguments)
            .unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(OPEN);
        out.push('\n');
        out.push_str(&format!(
            r#"{{"name": {}, "arguments": {}}}"#,
            dumps(&Value::String(call.function.name.clone())),
            dumps(&arguments)
        ));
        out.push('\n');
        out.push_str(CLOSE);
    }
    out
}

/// Splits a completion into its content (the text outside `<tool_call>` blocks, trimmed;
/// `None` when empty) and the calls it makes. Blocks whose body is not a JSON object with a
/// string `name` are left in the content as text. Call ids are `{id_prefix}_{k}`.
pub fn parse_calls(text: &str, id_prefix: &str) -> (Option<String>, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            break;
        };
        content.push_str(&rest[..start]);
        let body = after[..end].trim();
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(call)) if call.get("name").is_some_and(Value::is_string) => {
                let name = call["name"].as_str().unwrap_or_default().to_string();
                let arguments = call
                    .get("arguments")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                let arguments = match arguments {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                calls.push(ToolCall {
                    id: format!("{id_prefix}_{}", calls.len()),
                    kind: "function".into(),
                    function: FunctionCall { name, arguments },
                });
            }
            _ => content.push_str(&rest[start..start + OPEN.len() + end + CLOSE.len()]),
        }
        rest = &after[end + CLOSE.len()..];
    }
    content.push_str(rest);
    let content = content.trim();
    ((!content.is_empty()).then(|| content.to_string()), calls)
}

/// The conversation as kaizen's messages: `developer` is `system`, an assistant's tool calls are
/// written after its content as the model writes them ([`render_calls`]), and consecutive
/// `tool` messages become one user turn of `<tool_response>` blocks. When `tools` are offered
/// their block ([`tools_block`]) is appended to the first system message (or becomes one).
/// Assistant messages keep their number and order.
///
/// # Errors
/// [`ChatFormatError`] for an empty conversation, an unknown role, or a content part that is
/// not text.
pub fn to_messages(
    messages: &[ChatMessage],
    tools: Option<&[Tool]>,
) -> Result<Vec<Message>, ChatFormatError> {
    if messages.is_empty() {
        return Err(ChatFormatError::new(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    let mut previous_tool = false;
    for (i, m) in messages.iter().enumerate() {
        let content = content_text(m.content.as_ref(), i)?;
        let is_tool = m.role == "tool";
        match m.role.as_str() {
            "system" | "developer" => out.push(Message::new(Role::System, content)),
            "user" => out.push(Message::new(Role::User, content)),
            "assistant" => {
                let calls = m.tool_calls.as_deref().unwrap_or_default();
                out.push(Message::new(Role::Assistant, render_calls(&content, calls)));
            }
            "tool" => {
                let block = format!("<tool_response>\n{content}\n</tool_response>");
                match out.last_mut() {
                    Some(last) if previous_tool => {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(Message::new(Role::User, block)),
                }
            }
            other => {
                return Err(ChatFormatError::new(
                    format!("messages[{i}].role"),
                    format!(
                        "`messages[{i}].role` must be system, developer, user, assistant or tool, got `{other}`"
                    ),
                ));
            }
        }
        previous_tool = is_tool;
    }
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let block = tools_block(tools);
        match out.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = format!("{}\n\n{block}", first.content);
            }
            _ => out.insert(0, Message::new(Role::System, block)),
        }
    }
    Ok(out)
}

fn content_text(content: Option<&Content>, i: usize) -> Result<String, ChatFormatError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ChatFormatError::new(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "`messages[{i}].content[{j}]`: only text parts are supported, got `{kind}`"
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "call_7_0".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }

    #[test]
    fn calls_round_trip_through_their_rendering() {
        let calls = vec![call("get_weather", r#"{"city":"Oslo"}"#)];
        let text = render_calls("Let me check.", &calls);
        assert_eq!(
            text,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        );
        let (content, parsed) = parse_calls(&text, "call_7");
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(parsed, calls);
    }

    #[test]
    fn a_malformed_call_stays_text() {
        let text = "<tool_call>\nnot json\n</tool_call> and <tool_call>{\"name\": 3}</tool_call>";
        let (content, calls) = parse_calls(text, "c");
        assert!(calls.is_empty());
        assert_eq!(content.as_deref(), Some(text));
        let (content, calls) = parse_calls("<tool_call>{\"name\":\"f\"}</tool_call>", "c");
        assert_eq!(content, None);
        assert_eq!(calls[0].function.arguments, "{}");
    }

    #[test]
    fn tool_turns_become_chatml_messages() {
        let messages: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "2*3?"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c0", "type": "function",
                 "function": {"name": "calc", "arguments": "{\"expr\":\"2*3\"}"}}]},
            {"role": "tool", "tool_call_id": "c0", "content": "6"},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "assistant", "content": "6"},
        ]))
        .unwrap();
        let tools = [Tool {
            kind: "function".into(),
            function: serde_json::json!({"name": "calc"}),
        }];
        let out = to_messages(&messages, Some(&tools)).unwrap();
        let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
        use Role::*;
        assert_eq!(roles, [System, User, Assistant, User, Assistant]);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(
            out[0]
                .content
                .contains(r#"{"type": "function", "function": {"name": "calc"}}"#)
        );
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expr\": \"2*3\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n6\n</tool_response>\n<tool_response>\nok\n</tool_response>"
        );
        // Without tools, nothing is added.
        assert_eq!(to_messages(&messages, None).unwrap().len(), 5);
    }

    #[test]
    fn dumps_spaces_like_python() {
        let v = serde_json::json!({"b": [1, "x", null], "a": {"c": true}, "s": "é\n"});
        assert_eq!(
            dumps(&v),
            r#"{"a": {"c": true}, "b": [1, "x", null], "s": "é\n"}"#
        );
    }

    #[test]
    fn bad_messages_name_the_field() {
        let bad: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": "x"},
            {"role": "robot", "content": "y"},
        ]))
        .unwrap();
        assert_eq!(
            to_messages(&bad, None).unwrap_err().field,
            "messages[1].role"
        );
        let image: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": [{"type": "image_url"}]},
        ]))
        .unwrap();
        assert_eq!(
            to_messages(&image, None).unwrap_err().field,
            "messages[0].content[0]"
        );
        assert_eq!(to_messages(&[], None).unwrap_err().field, "messages");
    }
}
