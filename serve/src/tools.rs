//! Tool calls in the Hermes / Qwen ChatML convention.
//!
//! The tools a request offers are written into the system message inside `<tools>…</tools>`
//! (one JSON schema per line); the model calls one by writing
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`; a tool's answer comes back
//! as a user turn wrapped in `<tool_response>…</tool_response>`. This is the format Qwen2.5's
//! and Hermes' chat templates use (SmolLM2's template has no tool section), so a model trained
//! with kaizen on tool use speaks the same format to vLLM's `hermes` tool parser.

use serde_json::Value;

use crate::api::{FunctionCall, Tool, ToolCall};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// The system-message block that offers `tools` to the model.
pub fn tools_block(tools: &[Tool]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        out.push('\n');
        out.push_str(
            &serde_json::json!({"type": tool.kind, "function": tool.function}).to_string(),
        );
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
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
        out.push_str(
            &serde_json::json!({"name": call.function.name, "arguments": arguments}).to_string(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_through_their_rendering() {
        let calls = vec![ToolCall {
            id: "call_7_0".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            },
        }];
        let text = render_calls("Let me check.", &calls);
        let call = serde_json::json!({"name": "get_weather", "arguments": {"city": "Oslo"}});
        assert_eq!(
            text,
            format!("Let me check.\n<tool_call>\n{call}\n</tool_call>")
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
}
