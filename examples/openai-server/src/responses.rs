//! `POST /v1/responses`, OpenAI's newer API, on the same chat machinery:
//! text or message input, `instructions`, tools and function calls,
//! reasoning, streaming events, and `previous_response_id`.
//!
//! A response is continued through the host's prefix cache: the request's
//! conversation (its messages and the answer) is kept as a note with the
//! session that generated it (`keep-note`), under the response's id, and
//! `previous_response_id` reads it back (`cached-note`). The continued
//! prompt then finds that session's KV cache by its tokens and prefills
//! only the new input. A response lives exactly as long as the cache keeps
//! its conversation: once evicted, its id is a 404.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};
use wasi_nn_llm::{ChatMessage, Params, ToolCall};

use crate::completion::{Job, Out};
use crate::error::ApiError;
use crate::host::Host;
use crate::request::{check_range, effort_argument};
use crate::tools::{FunctionSpec, NamedFunction, ToolChoiceSpec, ToolSpec, Tools};
use crate::{Conversation, load, start_chat};

/// The request. Fields this server does not serve are refused by name
/// (serde's `unknown field`), rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    model: String,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    reasoning: Option<ReasoningSpec>,
    #[serde(default)]
    text: Option<TextSpec>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    truncation: Option<String>,
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    background: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasoningSpec {
    #[serde(default)]
    effort: Option<String>,
    #[serde(default)]
    summary: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextSpec {
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    verbosity: Option<String>,
}

/// What a response keeps with its conversation: the messages (without
/// `instructions`, which OpenAI does not carry over) and the answer.
fn note(messages: &[ChatMessage]) -> Vec<u8> {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            let calls: Vec<Value> =
                m.tool_calls.iter().map(|c| json!({ "id": c.id, "name": c.name, "arguments": c.arguments })).collect();
            json!({ "role": m.role, "content": m.content, "reasoning": m.reasoning, "tool_calls": calls,
                    "tool_call_id": m.tool_call_id, "name": m.name })
        })
        .collect();
    serde_json::to_vec(&json!({ "messages": messages })).unwrap_or_default()
}

/// The messages a note holds.
fn from_note(bytes: &[u8]) -> Option<Vec<ChatMessage>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    value["messages"]
        .as_array()?
        .iter()
        .map(|m| {
            let tool_calls = m["tool_calls"]
                .as_array()?
                .iter()
                .map(|c| {
                    Some(ToolCall { id: text(c, "id")?, name: text(c, "name")?, arguments: text(c, "arguments")? })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(ChatMessage {
                role: text(m, "role")?,
                content: text(m, "content"),
                reasoning: text(m, "reasoning"),
                tool_calls,
                tool_call_id: text(m, "tool_call_id"),
                name: text(m, "name"),
            })
        })
        .collect()
}

fn message(role: &str, content: Option<String>) -> ChatMessage {
    ChatMessage { role: role.into(), content, reasoning: None, tool_calls: vec![], tool_call_id: None, name: None }
}

/// `input` as messages after `earlier` ones: text is a user turn; items are
/// messages, function calls (an assistant turn's, consecutive ones
/// together) and their outputs, which must answer a call made before.
fn input_messages(input: Option<Input>, earlier: &[ChatMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    let invalid = |what: String| ApiError::invalid(what, Some("input"));
    let items = match input {
        None => return Err(invalid("input is required".into())),
        Some(Input::Text(text)) => return Ok(vec![message("user", Some(text))]),
        Some(Input::Items(items)) => items,
    };
    let mut calls: HashMap<String, String> =
        earlier.iter().flat_map(|m| m.tool_calls.iter()).map(|c| (c.id.clone(), c.name.clone())).collect();
    let text_of = |i: usize, content: &Value| -> Result<String, ApiError> {
        match content {
            Value::String(s) => Ok(s.clone()),
            Value::Array(parts) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "input[{i}].content[{j}] of type {} is not supported: only text",
                                kind.unwrap_or("(none)")
                            )));
                        }
                    }
                }
                Ok(text)
            }
            _ => Err(invalid(format!("input[{i}].content must be a string or a list of text parts"))),
        }
    };
    let mut out: Vec<ChatMessage> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item["type"].as_str().unwrap_or(if item.get("role").is_some() { "message" } else { "" });
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or_default();
                let role = match role {
                    "user" | "assistant" | "system" => role,
                    "developer" => "system",
                    other => {
                        return Err(invalid(format!(
                            "input[{i}].role {other:?} is not user, assistant, system or developer"
                        )));
                    }
                };
                out.push(message(role, Some(text_of(i, &item["content"])?)));
            }
            "function_call" => {
                let field = |key: &str| {
                    item[key].as_str().map(str::to_owned).ok_or_else(|| invalid(format!("input[{i}] needs {key}")))
                };
                let (id, name, arguments) = (field("call_id")?, field("name")?, field("arguments")?);
                if !serde_json::from_str::<Value>(&arguments).is_ok_and(|v| v.is_object()) {
                    return Err(invalid(format!("input[{i}].arguments is not a JSON object")));
                }
                calls.insert(id.clone(), name.clone());
                let call = ToolCall { id, name, arguments };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" && last.content.is_none() => last.tool_calls.push(call),
                    _ => out.push(ChatMessage { tool_calls: vec![call], ..message("assistant", None) }),
                }
            }
            "function_call_output" => {
                let id = item["call_id"].as_str().ok_or_else(|| invalid(format!("input[{i}] needs call_id")))?;
                let Some(name) = calls.get(id) else {
                    return Err(invalid(format!("input[{i}].call_id {id:?} answers no function call made before it")));
                };
                let output = text_of(i, &item["output"])?;
                out.push(ChatMessage {
                    tool_call_id: Some(id.to_owned()),
                    name: Some(name.clone()),
                    ..message("tool", Some(output))
                });
            }
            // An earlier answer's reasoning: not sent to the model again.
            "reasoning" => {}
            other => return Err(invalid(format!("input[{i}] of type {other:?} is not supported"))),
        }
    }
    Ok(out)
}

/// `tools` in the Responses API's flat shape, as the chat API's.
fn tool_specs(tools: &[Value]) -> Result<Vec<ToolSpec>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| match t["type"].as_str() {
            Some("function") => Ok(ToolSpec {
                kind: "function".into(),
                function: Some(FunctionSpec {
                    name: t["name"].as_str().unwrap_or_default().to_owned(),
                    description: t["description"].as_str().map(str::to_owned),
                    parameters: t.get("parameters").filter(|p| !p.is_null()).cloned(),
                }),
            }),
            kind => Err(ApiError::invalid(
                format!("tools[{i}] of type {} is not supported: only function tools", kind.unwrap_or("(none)")),
                Some("tools"),
            )),
        })
        .collect()
}

fn tool_choice(choice: &Value) -> Result<ToolChoiceSpec, ApiError> {
    match choice {
        Value::String(mode) => Ok(ToolChoiceSpec::Mode(mode.clone())),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            Ok(ToolChoiceSpec::Named { kind: "function".into(), function: NamedFunction { name } })
        }
        _ => Err(ApiError::invalid(
            "tool_choice must be none, auto, required or a function by name",
            Some("tool_choice"),
        )),
    }
}

/// Answer a `POST /v1/responses`.
pub async fn respond<H: Host>(body: &[u8]) -> Result<http::Response<crate::Reply>, ApiError> {
    let request: ResponsesRequest = crate::request::parse(body)?;
    if request.background == Some(true) {
        return Err(ApiError::invalid("background responses are not supported", Some("background")));
    }
    if request.include.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid("include is not supported", Some("include")));
    }
    if request.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return Err(ApiError::invalid("truncation other than \"disabled\" is not supported", Some("truncation")));
    }
    if request.reasoning.as_ref().and_then(|r| r.summary.as_ref()).is_some_and(|s| !s.is_null()) {
        return Err(ApiError::invalid("reasoning.summary is not supported: reasoning comes whole", Some("reasoning")));
    }
    if request.text.as_ref().and_then(|t| t.verbosity.as_deref()).is_some_and(|v| v != "medium") {
        return Err(ApiError::invalid("text.verbosity other than \"medium\" is not supported", Some("text")));
    }
    let model = load(&request.model)?;
    let earlier = match &request.previous_response_id {
        None => Vec::new(),
        Some(id) => {
            let note = H::cached_note(&model, id).map_err(ApiError::from)?.ok_or_else(|| {
                let mut e = ApiError::invalid(
                    format!(
                        "previous response {id:?} is not found: this server keeps a response only while its prefix \
                         cache keeps the conversation"
                    ),
                    Some("previous_response_id"),
                );
                e.status = http::StatusCode::NOT_FOUND;
                e
            })?;
            from_note(&note).ok_or_else(|| ApiError::invalid("the previous response's record is damaged", None))?
        }
    };
    let new = input_messages(request.input, &earlier)?;
    let mut conversation: Vec<ChatMessage> = earlier;
    conversation.extend(new);
    let mut messages = Vec::new();
    if let Some(instructions) = &request.instructions {
        messages.push(message("system", Some(instructions.clone())));
    }
    messages.extend(conversation.iter().cloned());

    let specs = request.tools.as_deref().map(tool_specs).transpose()?;
    let choice = request.tool_choice.as_ref().map(tool_choice).transpose()?;
    let tools = Tools::check(specs.as_deref(), choice.as_ref(), request.parallel_tool_calls)?;
    let mut params = Params::new();
    if let Some(max) = request.max_output_tokens {
        if max == 0 {
            return Err(ApiError::invalid("max_output_tokens must be at least 1", Some("max_output_tokens")));
        }
        params = params.max_tokens(max);
    }
    if let Some(t) = request.temperature {
        check_range("temperature", t, 0.0, 2.0)?;
        params = params.temperature(t);
    }
    if let Some(p) = request.top_p {
        check_range("top_p", p, 0.0, 1.0)?;
        params = params.top_p(p);
    }
    match request.text.as_ref().and_then(|t| t.format.as_ref()) {
        None => {}
        Some(format) => match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => params = params.json_schema(r#"{"type":"object"}"#),
            Some("json_schema") => match format.get("schema") {
                Some(schema) => params = params.json_schema(schema.to_string()),
                None => return Err(ApiError::invalid("text.format json_schema needs a schema", Some("text"))),
            },
            _ => return Err(ApiError::invalid("text.format must be text, json_object or json_schema", Some("text"))),
        },
    }
    if tools.is_some() && params.as_raw().constraint.is_some() {
        return Err(ApiError::invalid("a JSON text.format cannot be combined with tools", Some("text")));
    }
    let effort = request.reasoning.as_ref().and_then(|r| r.effort.as_deref());
    let arguments = effort
        .map(|e| effort_argument(e, "reasoning.effort", "reasoning"))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let id = format!("resp_{:x}", created.as_nanos());
    let echo = json!({
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata.unwrap_or_default(),
        "model": request.model,
        "parallel_tool_calls": request.parallel_tool_calls.unwrap_or(false),
        "previous_response_id": request.previous_response_id,
        "reasoning": { "effort": request.reasoning.as_ref().and_then(|r| r.effort.clone()), "summary": null },
        "temperature": request.temperature.unwrap_or(1.0),
        "text": { "format": request.text.as_ref().and_then(|t| t.format.clone()).unwrap_or(json!({ "type": "text" })) },
        "tool_choice": request.tool_choice.clone().unwrap_or(json!("auto")),
        "tools": request.tools.clone().unwrap_or_default(),
        "top_p": request.top_p.unwrap_or(1.0),
        "truncation": "disabled",
        "user": request.user,
    });
    let chat = Conversation {
        name: request.model.clone(),
        model,
        messages,
        tools,
        arguments,
        params,
        choices: 1,
        reasoning_budget: None,
    };
    let job = start_chat::<H>(chat, "input").await?;
    let answer = Answer {
        id,
        created: created.as_secs(),
        echo,
        conversation,
        store: request.store.unwrap_or(true),
        job,
        output: Vec::new(),
        open: None,
        reasoning: String::new(),
        text: String::new(),
        sequence: 0,
    };
    if !request.stream {
        return answer.collect().await.map(|response| crate::json_response(&response));
    }
    let events = Events { answer, step: Step::Start, queued: VecDeque::new() };
    let events =
        futures_lite::stream::unfold(events, |mut events| async move { events.next().await.map(|e| (e, events)) });
    Ok(crate::event_stream(events))
}

/// A response being generated: its output items as they complete.
struct Answer<H: Host> {
    id: String,
    created: u64,
    /// The request's settings, as the response object repeats them.
    echo: Value,
    /// The conversation without instructions, kept with the answer.
    conversation: Vec<ChatMessage>,
    store: bool,
    job: Job<H>,
    /// Finished output items.
    output: Vec<Value>,
    /// The item being streamed: `reasoning` or `message`, and its id.
    open: Option<(&'static str, String)>,
    reasoning: String,
    text: String,
    sequence: u64,
}

impl<H: Host> Answer<H> {
    fn item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", &self.id["resp_".len()..], self.output.len())
    }

    /// The response object; `status` `in_progress`, `completed` or `incomplete`.
    fn object(&self, status: &str, finish: Option<&str>) -> Value {
        let mut response = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": if finish == Some("length") { json!({ "reason": "max_output_tokens" }) } else { Value::Null },
            "output": self.output,
            "store": self.store,
        });
        if let (Some(r), Some(echo)) = (response.as_object_mut(), self.echo.as_object()) {
            r.extend(echo.clone());
        }
        if status != "in_progress" {
            let usage = self.job.usage();
            response["usage"] = json!({
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": { "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"] },
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": { "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"] },
                "total_tokens": usage["total_tokens"],
            });
        }
        response
    }

    fn reasoning_item(&self, id: &str, text: &str) -> Value {
        json!({ "type": "reasoning", "id": id, "summary": [], "content": [{ "type": "reasoning_text", "text": text }] })
    }

    fn message_item(&self, id: &str, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" {
            json!([])
        } else {
            json!([{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }])
        };
        json!({ "type": "message", "id": id, "status": status, "role": "assistant", "content": content })
    }

    /// Keep the conversation and its answer with the session, under the
    /// response's id (when `store`): whether the host keeps it.
    fn keep(&mut self, calls: &[ToolCall]) {
        if !self.store {
            return;
        }
        let mut conversation = std::mem::take(&mut self.conversation);
        conversation.push(ChatMessage {
            content: (!self.text.is_empty() || calls.is_empty()).then(|| self.text.clone()),
            reasoning: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls: calls.to_vec(),
            ..message("assistant", None)
        });
        self.store = self.job.keep_note(&self.id, &note(&conversation));
    }

    /// Generate to the end: the whole response object.
    async fn collect(mut self) -> Result<Value, ApiError> {
        let answer = self.job.collect().await?;
        let choice = &answer["choices"][0];
        let message = &choice["message"];
        if let Some(reasoning) = message["reasoning_content"].as_str() {
            self.reasoning = reasoning.to_owned();
            let id = self.item_id("rs");
            self.output.push(self.reasoning_item(&id, reasoning));
        }
        let calls: Vec<ToolCall> = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| ToolCall {
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                name: c["function"]["name"].as_str().unwrap_or_default().to_owned(),
                arguments: c["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty() || calls.is_empty()) {
            self.text = text.to_owned();
            let id = self.item_id("msg");
            self.output.push(self.message_item(&id, text, "completed"));
        }
        for call in &calls {
            let id = self.item_id("fc");
            self.output.push(function_call(&id, call));
        }
        self.keep(&calls);
        let finish = choice["finish_reason"].as_str();
        let status = if finish == Some("length") { "incomplete" } else { "completed" };
        Ok(self.object(status, finish))
    }

    /// One SSE event of type `kind`.
    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// Close the item being streamed, if any.
    fn close_open(&mut self, events: &mut Vec<String>) {
        let Some((kind, id)) = self.open.take() else { return };
        let index = self.output.len();
        let item = if kind == "reasoning" {
            let text = self.reasoning.clone();
            events.push(self.event(
                "response.reasoning_text.done",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text }),
            ));
            self.reasoning_item(&id, &text)
        } else {
            let text = self.text.clone();
            let part = json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] });
            events.push(self.event(
                "response.output_text.done",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [] }),
            ));
            events.push(self.event(
                "response.content_part.done",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
            ));
            self.message_item(&id, &text, "completed")
        };
        events.push(self.event("response.output_item.done", json!({ "output_index": index, "item": item })));
        self.output.push(item);
    }

    /// Open an item of `kind` unless it is the one being streamed.
    fn open_item(&mut self, kind: &'static str, events: &mut Vec<String>) -> String {
        if let Some((open, id)) = &self.open
            && *open == kind
        {
            return id.clone();
        }
        self.close_open(events);
        let index = self.output.len();
        let (id, item) = if kind == "reasoning" {
            let id = self.item_id("rs");
            let item = json!({ "type": "reasoning", "id": id, "summary": [], "content": [] });
            (id, item)
        } else {
            let id = self.item_id("msg");
            let item = self.message_item(&id, "", "in_progress");
            (id, item)
        };
        events.push(self.event("response.output_item.added", json!({ "output_index": index, "item": item })));
        if kind == "message" {
            let part = json!({ "type": "output_text", "text": "", "annotations": [], "logprobs": [] });
            events.push(self.event(
                "response.content_part.added",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
            ));
        }
        self.open = Some((kind, id.clone()));
        id
    }

    /// The events of one output of the generation.
    fn out_events(&mut self, out: Out) -> Vec<String> {
        let mut events = Vec::new();
        let (reasoning, content, end) = match out {
            Out::Piece { reasoning, content, .. } => (reasoning, content, None),
            Out::End { end, finish } => {
                let (reasoning, content, calls) = match end {
                    Some(end) => (end.reasoning, end.content.unwrap_or_default(), end.calls),
                    None => (String::new(), String::new(), Vec::new()),
                };
                (reasoning, content, Some((calls, finish)))
            }
        };
        if !reasoning.is_empty() {
            let id = self.open_item("reasoning", &mut events);
            self.reasoning.push_str(&reasoning);
            let index = self.output.len();
            events.push(self.event(
                "response.reasoning_text.delta",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": reasoning }),
            ));
        }
        if !content.is_empty() {
            let id = self.open_item("message", &mut events);
            self.text.push_str(&content);
            let index = self.output.len();
            events.push(self.event(
                "response.output_text.delta",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": content, "logprobs": [] }),
            ));
        }
        if let Some((calls, finish)) = end {
            if calls.is_empty() && self.text.is_empty() {
                self.open_item("message", &mut events);
            }
            self.close_open(&mut events);
            let calls: Vec<ToolCall> =
                calls.into_iter().map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments }).collect();
            for call in &calls {
                let index = self.output.len();
                let id = self.item_id("fc");
                let mut item = function_call(&id, call);
                item["arguments"] = json!("");
                item["status"] = json!("in_progress");
                events.push(self.event("response.output_item.added", json!({ "output_index": index, "item": item })));
                events.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({ "item_id": id, "output_index": index, "delta": call.arguments }),
                ));
                events.push(self.event(
                    "response.function_call_arguments.done",
                    json!({ "item_id": id, "output_index": index, "arguments": call.arguments }),
                ));
                let item = function_call(&id, call);
                events.push(self.event("response.output_item.done", json!({ "output_index": index, "item": item })));
                self.output.push(item);
            }
            self.keep(&calls);
            let (kind, status) = if finish == "length" {
                ("response.incomplete", "incomplete")
            } else {
                ("response.completed", "completed")
            };
            let response = self.object(status, Some(finish));
            events.push(self.event(kind, json!({ "response": response })));
            // Before the last event goes out (see `Job::release`).
            self.job.release();
        }
        events
    }
}

fn function_call(id: &str, call: &ToolCall) -> Value {
    json!({ "type": "function_call", "id": id, "call_id": call.id, "name": call.name, "arguments": call.arguments, "status": "completed" })
}

/// The SSE body of a streamed response.
struct Events<H: Host> {
    answer: Answer<H>,
    step: Step,
    queued: VecDeque<String>,
}

enum Step {
    Start,
    Generating,
    Ended,
}

impl<H: Host> Events<H> {
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            match self.step {
                Step::Start => {
                    self.step = Step::Generating;
                    let response = self.answer.object("in_progress", None);
                    let created = self.answer.event("response.created", json!({ "response": response }));
                    let in_progress = self.answer.event("response.in_progress", json!({ "response": response }));
                    self.queued.extend([created, in_progress]);
                }
                Step::Generating => match self.answer.job.advance(0).await {
                    Ok(Some(out)) => {
                        let events = self.answer.out_events(out);
                        self.queued.extend(events);
                    }
                    Ok(None) => self.step = Step::Ended,
                    Err(e) => {
                        self.step = Step::Ended;
                        let mut response = self.answer.object("failed", None);
                        response["error"] = json!({ "code": "server_error", "message": e.message });
                        return Some(self.answer.event("response.failed", json!({ "response": response })));
                    }
                },
                Step::Ended => return None,
            }
        }
    }
}
