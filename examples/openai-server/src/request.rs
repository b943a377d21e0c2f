//! The request bodies of the API, parsed and checked before anything
//! reaches the host: each wrong field is a 400 naming it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use wasi_nn_llm::{ChatMessage as Message, Params, TemplateValue, ToolCall};

use crate::error::ApiError;
use crate::tools::{ToolChoiceSpec, ToolSpec, Tools};

/// Most completions one request may ask for (`n`).
const MAX_CHOICES: u32 = 8;
/// Most alternatives per token (`top_logprobs`), as OpenAI allows.
const MAX_TOP_LOGPROBS: u32 = 20;

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceSpec>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Extra keyword arguments of the chat template (llama-server's).
    #[serde(default)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Most tokens the reply's reasoning block may take (llama-server's
    /// `--reasoning-budget`, per request); then the block is closed for the
    /// model and it answers.
    #[serde(default)]
    pub reasoning_budget: Option<u32>,
    /// A GBNF grammar for the reply (llama-server's extension).
    #[serde(default)]
    pub grammar: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Unlike chat, a number: how many alternatives per token.
    #[serde(default)]
    pub logprobs: Option<u32>,
}

/// A completion prompt: a string, or a list holding one.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// What both endpoints share.
#[derive(Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub n: Option<u32>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One chat message; `content` is a string or a list of text parts.
#[derive(Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<CallSpec>>,
    /// A `tool` message's call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant turn's reasoning, as llama-server returns it.
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

/// A call in an assistant message.
#[derive(Deserialize)]
pub struct CallSpec {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: CalledFunction,
}

#[derive(Deserialize)]
pub struct CalledFunction {
    pub name: String,
    /// JSON text, as OpenAI's API sends it (an object is taken too).
    pub arguments: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Deserialize)]
pub struct JsonSchema {
    #[serde(default)]
    pub schema: Option<Value>,
}

/// Parse a body as `T`: malformed JSON and a wrong or missing field are
/// both 400s, the message saying which.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("invalid request: {e}"), None))
}

impl ChatRequest {
    /// The messages as the host's template takes them: roles it knows,
    /// text content, calls whose arguments are JSON, and tool results that
    /// answer a call made before them.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must hold at least one message", Some("messages")));
        }
        let invalid = |i: usize, what: String| ApiError::invalid(format!("messages[{i}]: {what}"), Some("messages"));
        // The calls made so far, by id: a tool result must answer one.
        let mut calls: HashMap<String, String> = HashMap::new();
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(invalid(
                    i,
                    format!("role {:?} is not one of system, developer, user, assistant, tool", m.role),
                ));
            }
            let content = match &m.content {
                None => None,
                Some(Content::Text(text)) => Some(text.clone()),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (&*part.kind, &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(invalid(
                                    i,
                                    format!("content parts of type {kind:?} are not supported: only text"),
                                ));
                            }
                        }
                    }
                    Some(text)
                }
            };
            let mut tool_calls = Vec::new();
            for (k, call) in m.tool_calls.iter().flatten().enumerate() {
                if m.role != "assistant" {
                    return Err(invalid(i, "only assistant messages carry tool_calls".into()));
                }
                if call.kind.as_deref().is_some_and(|k| k != "function") {
                    return Err(invalid(i, format!("tool_calls[{k}] is not of type \"function\"")));
                }
                let arguments = match &call.function.arguments {
                    Value::String(text) => match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(_)) => text.clone(),
                        _ => {
                            return Err(invalid(i, format!("tool_calls[{k}].function.arguments is not a JSON object")));
                        }
                    },
                    Value::Object(_) => call.function.arguments.to_string(),
                    _ => return Err(invalid(i, format!("tool_calls[{k}].function.arguments is not a JSON object"))),
                };
                calls.insert(call.id.clone(), call.function.name.clone());
                tool_calls.push(ToolCall { id: call.id.clone(), name: call.function.name.clone(), arguments });
            }
            let (tool_call_id, name) = if m.role == "tool" {
                let Some(id) = &m.tool_call_id else {
                    return Err(invalid(i, "a tool message needs the tool_call_id of the call it answers".into()));
                };
                let Some(name) = calls.get(id) else {
                    return Err(invalid(i, format!("tool_call_id {id:?} answers no tool call made before it")));
                };
                (Some(id.clone()), Some(m.name.clone().unwrap_or_else(|| name.clone())))
            } else {
                (None, m.name.clone())
            };
            // The templates know system, user and assistant.
            let role = if m.role == "developer" { "system".into() } else { m.role.clone() };
            let reasoning = m.reasoning_content.clone().filter(|_| m.role == "assistant");
            out.push(Message { role, content, reasoning, tool_calls, tool_call_id, name });
        }
        Ok(out)
    }

    /// The request's tools, checked; none without `tools`.
    pub fn tools(&self) -> Result<Option<Tools>, ApiError> {
        Tools::check(self.tools.as_deref(), self.tool_choice.as_ref(), self.parallel_tool_calls)
    }

    /// `chat_template_kwargs` and `reasoning_effort` as typed template
    /// arguments.
    pub fn template_arguments(&self) -> Result<Vec<(String, TemplateValue)>, ApiError> {
        let mut arguments = Vec::new();
        for (name, value) in self.chat_template_kwargs.iter().flatten() {
            let value = match value {
                Value::Bool(b) => TemplateValue::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => TemplateValue::Integer(i),
                    None => TemplateValue::Float(n.as_f64().unwrap_or_default()),
                },
                Value::String(s) => TemplateValue::Text(s.clone()),
                other => TemplateValue::Json(other.to_string()),
            };
            arguments.push((name.clone(), value));
        }
        if let Some(effort) = &self.reasoning_effort {
            arguments.push(effort_argument(effort, "reasoning_effort", "reasoning_effort")?);
        }
        Ok(arguments)
    }

    /// The sampling parameters, with `logprobs`/`top_logprobs` and the
    /// response format.
    pub fn params(&self) -> Result<Params, ApiError> {
        let mut params = self.sampling.params()?;
        if let Some(n) = self.top_logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(ApiError::invalid(
                format!("top_logprobs must be 0 to {MAX_TOP_LOGPROBS}"),
                Some("top_logprobs"),
            ));
        }
        if self.logprobs == Some(true) {
            params = params.logprobs(self.top_logprobs.unwrap_or(0));
        } else if self.top_logprobs.is_some() {
            return Err(ApiError::invalid("top_logprobs needs logprobs: true", Some("top_logprobs")));
        }
        if let Some(grammar) = &self.grammar {
            if self.response_format.is_some() || self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
                return Err(ApiError::invalid(
                    "grammar cannot be combined with response_format or tools",
                    Some("grammar"),
                ));
            }
            params = params.grammar(grammar.clone());
        }
        match &self.response_format {
            None | Some(ResponseFormat::Text) => {}
            Some(ResponseFormat::JsonObject) => params = params.json_schema(r#"{"type":"object"}"#),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let Some(schema) = &json_schema.schema else {
                    return Err(ApiError::invalid("json_schema needs a schema", Some("response_format")));
                };
                params = params.json_schema(schema.to_string());
            }
        }
        Ok(params)
    }
}

impl CompletionRequest {
    /// The prompt text: a string, or a list of exactly one.
    pub fn prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Prompt::One(text) => Ok(text),
            Prompt::Many(list) if list.len() == 1 => Ok(&list[0]),
            Prompt::Many(_) => {
                Err(ApiError::invalid("prompt must be one string (batches are not supported)", Some("prompt")))
            }
        }
    }

    pub fn params(&self) -> Result<Params, ApiError> {
        let mut params = self.sampling.params()?;
        if let Some(n) = self.logprobs {
            if n > 5 {
                return Err(ApiError::invalid("logprobs must be 0 to 5", Some("logprobs")));
            }
            params = params.logprobs(n);
        }
        Ok(params)
    }
}

impl Sampling {
    /// Completions wanted (`n`), 1 to 8.
    pub fn choices(&self) -> Result<u32, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_CHOICES => Ok(n),
            _ => Err(ApiError::invalid(format!("n must be 1 to {MAX_CHOICES}"), Some("n"))),
        }
    }

    /// Whether the final stream chunk reports usage.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    fn params(&self) -> Result<Params, ApiError> {
        let mut params = Params::new();
        let max = self.max_completion_tokens.or(self.max_tokens);
        if let Some(max) = max {
            if max == 0 {
                let param = if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
                return Err(ApiError::invalid(format!("{param} must be at least 1"), Some(param)));
            }
            params = params.max_tokens(max);
        }
        if let Some(t) = self.temperature {
            check_range("temperature", t, 0.0, 2.0)?;
            params = params.temperature(t);
        }
        if let Some(p) = self.top_p {
            check_range("top_p", p, 0.0, 1.0)?;
            params = params.top_p(p);
        }
        if let Some(p) = self.presence_penalty {
            check_range("presence_penalty", p, -2.0, 2.0)?;
            params = params.presence_penalty(p);
        }
        if let Some(p) = self.frequency_penalty {
            check_range("frequency_penalty", p, -2.0, 2.0)?;
            params = params.frequency_penalty(p);
        }
        if let Some(seed) = self.seed {
            params = params.seed(seed);
        }
        match &self.stop {
            None => {}
            Some(Stop::One(s)) => params = params.stop(stop_string(s)?),
            Some(Stop::Many(list)) => {
                if list.len() > 4 {
                    return Err(ApiError::invalid("stop holds at most 4 strings", Some("stop")));
                }
                for s in list {
                    params = params.stop(stop_string(s)?);
                }
            }
        }
        for (token, bias) in self.logit_bias.iter().flatten() {
            let token: u32 = token.parse().map_err(|_| {
                ApiError::invalid(format!("logit_bias key {token:?} is not a token id"), Some("logit_bias"))
            })?;
            let bias = bias.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| {
                ApiError::invalid("logit_bias values must be numbers from -100 to 100", Some("logit_bias"))
            })?;
            params = params.logit_bias(token, bias as f32);
        }
        Ok(params)
    }
}

fn stop_string(s: &str) -> Result<&str, ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid("a stop string must not be empty", Some("stop")));
    }
    Ok(s)
}

/// A reasoning effort as the template argument `reasoning_effort`; `field`
/// names where the request held it, in the request's parameter `param`.
pub fn effort_argument(effort: &str, field: &str, param: &'static str) -> Result<(String, TemplateValue), ApiError> {
    if !matches!(effort, "low" | "medium" | "high") {
        return Err(ApiError::invalid(format!("{field} must be low, medium or high"), Some(param)));
    }
    Ok(("reasoning_effort".into(), TemplateValue::Text(effort.to_owned())))
}

pub fn check_range(param: &'static str, value: f32, min: f32, max: f32) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("{param} must be from {min} to {max}, not {value}"), Some(param)))
    }
}
