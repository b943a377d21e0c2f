//! Tool calls as a model writes them: which format a chat template asks
//! for, and a reply read back in it, as the assistant's content and the
//! calls it made (extension 0.1.5's templates render the tools; reading the
//! answer is the guest's, which knows what its own API promises).
//!
//! Streamed, content can go out as it is generated, while a call is held
//! until the model has finished writing it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::Model;
use crate::raw::wasi_nn_llm::llm::chat::{ChatMessage, RenderOptions, Tool};

/// How a template asks for tool calls and how the model writes them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>` (Hermes,
    /// Qwen 2.5 and 3).
    Hermes,
    /// `[TOOL_CALLS][{"name": …, "arguments": …, "id": …}]` (Mistral).
    Mistral,
    /// `{"name": …, "parameters": …}` (Llama 3.x).
    Llama3,
    /// Any other template: the answer is JSON, a `tool_call` (or
    /// `tool_calls`) or a `response` (llama-server's generic format).
    Generic,
}

impl Format {
    /// The format `model`'s template (`template`, its text) writes calls
    /// in: a native one where its text has the format's markers and it
    /// shows the model the tools it is given (checked by rendering a probe
    /// tool, as llama.cpp probes a template's abilities), else generic.
    pub fn of(model: &Model, template: Option<&str>) -> Self {
        let Some(template) = template else { return Self::Generic };
        let native = if template.contains("<tool_call>") {
            Self::Hermes
        } else if template.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if template.contains("<|start_header_id|>") && template.contains("parameters") {
            Self::Llama3
        } else {
            return Self::Generic;
        };
        if renders_tools(model) { native } else { Self::Generic }
    }
}

/// Whether the model's template shows the model the tools it is given.
fn renders_tools(model: &Model) -> bool {
    const PROBE: &str = "probe_tool_8c1f";
    let user = ChatMessage {
        role: "user".into(),
        content: Some("hi".into()),
        reasoning: None,
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
    };
    let tool = Tool { name: PROBE.into(), description: Some(PROBE.into()), parameters: "{\"type\":\"object\"}".into() };
    let options =
        RenderOptions { add_generation_prompt: true, tools: vec![tool], documents: vec![], arguments: vec![] };
    model.render_chat(&[user], &options).is_ok_and(|r| r.text.contains(PROBE))
}

/// A tool call read from a reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The model's id where its format writes one, else a fresh one.
    pub id: String,
    /// The function called.
    pub name: String,
    /// JSON text of the arguments, as OpenAI's API carries them.
    pub arguments: String,
}

impl Call {
    /// The call in a message's `tool_calls`.
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "type": "function", "function": { "name": self.name, "arguments": self.arguments } })
    }
}

/// A whole reply, read.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// The assistant's text, if any.
    pub content: Option<String>,
    /// The calls it made, in order.
    pub calls: Vec<Call>,
}

/// Read a whole reply in `format`. A reply that is not a call in that
/// format is content, as it is.
pub fn parse(format: Format, text: &str) -> Parsed {
    let read = match format {
        Format::Generic => generic(text),
        Format::Hermes => hermes(text),
        Format::Mistral => text.trim_start().strip_prefix("[TOOL_CALLS]").and_then(|rest| {
            let list: Vec<Value> = serde_json::from_str(rest.trim()).ok()?;
            let calls = list.iter().map(|v| call(v, "arguments")).collect::<Option<Vec<_>>>()?;
            Some((None, calls))
        }),
        Format::Llama3 => serde_json::from_str::<Value>(text.trim())
            .ok()
            .and_then(|v| call(&v, "parameters"))
            .map(|c| (None, vec![c])),
    };
    match read {
        Some((content, calls)) => Parsed { content, calls },
        None => Parsed { content: Some(text.to_owned()), calls: Vec::new() },
    }
}

/// `{"tool_call": …}`, `{"tool_calls": […]}` or `{"response": "…"}`.
fn generic(text: &str) -> Option<(Option<String>, Vec<Call>)> {
    let Ok(value) = serde_json::from_str::<Value>(text.trim()) else {
        // Cut short (`max_tokens`) inside its response: the text so far.
        return match generic_start(text) {
            Some(State::Response { at }) => Some((Some(decode_json_string(&text[at..]).0), Vec::new())),
            _ => None,
        };
    };
    if let Some(one) = value.get("tool_call") {
        return Some((None, vec![call(one, "arguments")?]));
    }
    if let Some(list) = value.get("tool_calls").and_then(Value::as_array) {
        return Some((None, list.iter().map(|v| call(v, "arguments")).collect::<Option<_>>()?));
    }
    match value.get("response")? {
        Value::String(s) => Some((Some(s.clone()), Vec::new())),
        other => Some((Some(serde_json::to_string_pretty(other).ok()?), Vec::new())),
    }
}

/// Text, then `<tool_call>\n{…}\n</tool_call>` blocks.
fn hermes(text: &str) -> Option<(Option<String>, Vec<Call>)> {
    let start = text.find("<tool_call>")?;
    let content = text[..start].trim();
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(body) = rest.trim_start().strip_prefix("<tool_call>") {
        let end = body.find("</tool_call>")?;
        calls.push(call(&serde_json::from_str(body[..end].trim()).ok()?, "arguments")?);
        rest = &body[end + "</tool_call>".len()..];
    }
    Some(((!content.is_empty()).then(|| content.to_owned()), calls))
}

/// `{"name": …, <arguments>: {…}, "id"?: …}` as a call; the id is the
/// model's where its format has one, else a fresh one.
fn call(value: &Value, arguments: &str) -> Option<Call> {
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments = match value.get(arguments)? {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let id = value.get("id").and_then(Value::as_str).map_or_else(fresh_id, str::to_owned);
    Some(Call { id, name, arguments })
}

/// A call id no other call of this instance has: `call_` and 24 hex digits
/// of the clock and a counter.
fn fresh_id() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("call_{:016x}{:08x}", now.as_nanos() as u64, COUNT.fetch_add(1, Ordering::Relaxed) as u32)
}

/// A reply read as it streams: what of it can go out as content now.
pub struct Streamer {
    format: Format,
    text: String,
    state: State,
    /// Whether any content went out (then the end sends none again).
    sent: bool,
}

enum State {
    /// Not yet known whether this is text or a call.
    Undecided,
    /// Text: everything goes out as it comes.
    Text,
    /// Generic `{"response": "…`: the string's characters go out, decoded;
    /// `at` is where the undecoded rest of the string starts.
    Response { at: usize },
    /// A call, or a response string that has ended: nothing more goes out
    /// before the end.
    Held,
}

impl Streamer {
    /// A reply in `format`, nothing of it read yet.
    pub fn new(format: Format) -> Self {
        Self { format, text: String::new(), state: State::Undecided, sent: false }
    }

    /// Take a chunk of the reply; returns the content to send now.
    pub fn push(&mut self, chunk: &str) -> Option<String> {
        self.text.push_str(chunk);
        let out = loop {
            match self.state {
                State::Undecided => match self.decide() {
                    Some(state) => self.state = state,
                    None => break None,
                },
                State::Text => {
                    // Text held while undecided goes out at once; then each chunk.
                    let out = if self.sent { chunk.to_owned() } else { self.text.clone() };
                    break (!out.is_empty()).then_some(out);
                }
                State::Response { at } => {
                    let (decoded, used, ended) = decode_json_string(&self.text[at..]);
                    self.state = if ended { State::Held } else { State::Response { at: at + used } };
                    break (!decoded.is_empty()).then_some(decoded);
                }
                State::Held => break None,
            }
        };
        self.sent |= out.is_some();
        out
    }

    /// The whole reply, read; its content is none if it went out already.
    pub fn finish(self) -> Parsed {
        let mut parsed = parse(self.format, &self.text);
        if self.sent {
            parsed.content = None;
        }
        parsed
    }

    /// Text, a call or a response string, once the reply's start says.
    fn decide(&self) -> Option<State> {
        let start = self.text.trim_start();
        let marker = match self.format {
            Format::Hermes => "<tool_call>",
            Format::Mistral => "[TOOL_CALLS]",
            Format::Llama3 => "{",
            Format::Generic => return generic_start(&self.text),
        };
        if start.starts_with(marker) {
            Some(State::Held)
        } else if marker.starts_with(start) {
            None
        } else {
            Some(State::Text)
        }
    }
}

/// Where a generic reply stands: `{"response": "` (streamed), a call
/// (held), or not yet known.
fn generic_start(text: &str) -> Option<State> {
    const RESPONSE: [&str; 4] = ["{", "\"response\"", ":", "\""];
    let mut rest = text;
    for part in RESPONSE {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        match rest.strip_prefix(part) {
            Some(after) => rest = after,
            None if part.starts_with(rest) => return None,
            None => return Some(State::Held),
        }
    }
    Some(State::Response { at: text.len() - rest.len() })
}

/// Decode the start of a JSON string body (after its opening quote): the
/// text of its complete characters, the bytes they took, and whether the
/// closing quote was reached. An escape cut short waits for more.
fn decode_json_string(raw: &str) -> (String, usize, bool) {
    let mut out = String::new();
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match bytes[i] {
            b'"' => return (out, i + 1, true),
            b'\\' => {
                // \uXXXX, or a surrogate pair \uXXXX\uXXXX; else two bytes.
                let len = match bytes.get(i + 1) {
                    None => break,
                    Some(b'u')
                        if raw[i..].len() >= 6
                            && matches!(&raw[i + 2..i + 4], "d8" | "d9" | "da" | "db" | "D8" | "D9" | "DA" | "DB") =>
                    {
                        12
                    }
                    Some(b'u') => 6,
                    Some(_) => 2,
                };
                if raw.len() < i + len {
                    break;
                }
                match serde_json::from_str::<String>(&format!("\"{}\"", &raw[i..i + len])) {
                    Ok(s) => out.push_str(&s),
                    Err(_) => out.push('\u{fffd}'),
                }
                i += len;
            }
            _ => {
                let c = raw[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    (out, i, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_replies_read_as_calls_or_content() {
        let p = parse(Format::Generic, r#"{"tool_call": {"name": "f", "arguments": {"a": 2, "b": [1]}}}"#);
        assert_eq!(
            (p.content, p.calls[0].name.as_str(), p.calls[0].arguments.as_str()),
            (None, "f", r#"{"a":2,"b":[1]}"#)
        );
        assert_eq!(parse(Format::Generic, r#"{"response": "hi \u00e9"}"#).content.as_deref(), Some("hi é"));
        assert_eq!(parse(Format::Generic, "plain").content.as_deref(), Some("plain"));
        assert_eq!(parse(Format::Generic, "{\n  \"response\": \"Paris, Fr").content.as_deref(), Some("Paris, Fr"));
    }

    #[test]
    fn hermes_calls_follow_text() {
        let p = parse(
            Format::Hermes,
            "Let me look.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {\"x\": 1}}\n</tool_call>",
        );
        assert_eq!(p.content.as_deref(), Some("Let me look."));
        assert_eq!(p.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
    }

    #[test]
    fn a_streamed_generic_response_goes_out_decoded_as_it_comes() {
        let mut s = Streamer::new(Format::Generic);
        let pieces = ["{", " \"resp", "onse\": \"Hel", "lo \\", "u00e9", "\\n!\"", " }"];
        let out: String = pieces.iter().filter_map(|p| s.push(p)).collect();
        assert_eq!(out, "Hello é\n!");
        assert_eq!(s.finish(), Parsed { content: None, calls: vec![] });
    }

    #[test]
    fn a_streamed_call_is_held_to_the_end() {
        let mut s = Streamer::new(Format::Hermes);
        assert_eq!(s.push("<tool"), None);
        assert_eq!(s.push("_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"), None);
        let p = s.finish();
        assert_eq!((p.content, p.calls.len()), (None, 1));
        let mut s = Streamer::new(Format::Hermes);
        assert_eq!(s.push("Sure"), Some("Sure".into()));
        assert_eq!(s.push(", done."), Some(", done.".into()));
    }
}
