//! An OpenAI-compatible HTTP API on the LLM extension, written once for two
//! front doors: a chat page for browsers at `GET /` (`page.rs`),
//! `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/responses` and `POST /v1/completions` (streamed as SSE with
//! `"stream": true`), and `POST /v1/embeddings`.
//!
//! This library is the API: requests in, [`Reply`]s out, generic over
//! [`Host`], the session calls. Two components serve it:
//! - `openai-server` (`src/main.rs`): a WASI 0.2 `wasi:http/proxy`, on the
//!   0.1.x session, one fresh instance per request;
//! - `openai-server-p3` (`examples/openai-server-p3`): a WASI 0.3
//!   `wasi:http/service`, on the 0.2.0-rc async session, one instance
//!   reused for many requests, several at once.
//!
//! Either way a conversation sent again with one more turn prefills only
//! that turn: the prompt's session comes from the host's prefix cache
//! (`open-cached`), which outlives any instance and is kept per component.

#![allow(async_fn_in_trait)]

mod completion;
mod embeddings;
mod error;
mod host;
mod page;
mod reply;
mod request;
mod responses;
mod tools;

use std::pin::Pin;

use futures_lite::Stream;
use http::{Response, StatusCode};
use serde_json::json;
use wasi_nn_llm::tool_calls::Format;
use wasi_nn_llm::{Feature, Model, RenderOptions};

use completion::{Job, Kind, Reading};
pub use error::ApiError;
pub use host::Host;
use request::{ChatRequest, CompletionRequest};
use tools::{Choice, Constrain, Constraint};

/// Largest request body read (a prompt far past any context still fits).
pub const MAX_BODY: u64 = 16 << 20;

/// A response's body as the API makes it; each front door writes it out.
pub enum Reply {
    /// A whole body (JSON).
    Full(Vec<u8>),
    /// Server-sent events, each made as the one before it has gone out
    /// (each may wait for the model's next token).
    Events(Pin<Box<dyn Stream<Item = String>>>),
}

/// Answer one request: `method` on `path`, with its body as the front door
/// read it (at most [`MAX_BODY`] bytes; what went wrong reading it, for a
/// route that needs it). `H` is the front door's session calls.
pub async fn route<H: Host>(method: &str, path: &str, body: Result<Vec<u8>, ApiError>) -> Response<Reply> {
    let path = path.trim_end_matches('/');
    let answer = match (method, path) {
        ("GET", p) if p.is_empty() || p.starts_with("/ui/") => {
            page::file(p).ok_or_else(|| ApiError::no_route(method, p))
        }
        ("GET", "/health") => Ok(json_response(&json!({ "status": "ok" }))),
        ("GET", "/v1/models") => Ok(json_response(&json!({ "object": "list", "data": models() }))),
        ("GET", p) if p.starts_with("/v1/models/") => model(&p["/v1/models/".len()..]),
        ("POST", "/v1/chat/completions") => match body {
            Ok(body) => chat::<H>(&body).await,
            Err(e) => Err(e),
        },
        ("POST", "/v1/completions") => match body {
            Ok(body) => complete::<H>(&body).await,
            Err(e) => Err(e),
        },
        ("POST", "/v1/responses") => match body {
            Ok(body) => responses::respond::<H>(&body).await,
            Err(e) => Err(e),
        },
        ("POST", "/v1/embeddings") => match body {
            Ok(body) => embeddings::embed(&body).map(|answer| json_response(&answer)),
            Err(e) => Err(e),
        },
        _ => Err(ApiError::no_route(method, path)),
    };
    answer.unwrap_or_else(|e| e.response())
}

/// The error for a body past [`MAX_BODY`].
pub fn body_too_large() -> ApiError {
    ApiError::invalid(format!("the request body is larger than {MAX_BODY} bytes"), None)
}

fn models() -> Vec<serde_json::Value> {
    Model::list().iter().map(|name| model_object(name)).collect()
}

fn model_object(name: &str) -> serde_json::Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "wasi-nn-llm" })
}

fn model(name: &str) -> Result<Response<Reply>, ApiError> {
    if Model::list().iter().any(|m| m == name) {
        Ok(json_response(&model_object(name)))
    } else {
        Err(ApiError::unknown_model(name))
    }
}

/// A model by name: an unknown one is wasi:nn's `not-found` (404); one the
/// policy denies loads, and its first use answers `not-permitted` (403).
fn load(name: &str) -> Result<Model, ApiError> {
    Model::load(name).map_err(|e| ApiError::from_model(name, e))
}

/// `POST /v1/chat/completions`.
async fn chat<H: Host>(body: &[u8]) -> Result<Response<Reply>, ApiError> {
    let request: ChatRequest = request::parse(body)?;
    if request.response_format.is_some() && request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("response_format cannot be combined with tools", Some("response_format")));
    }
    let (messages, tools) = (request.messages()?, request.tools()?);
    let (arguments, params, choices) = (request.template_arguments()?, request.params()?, request.sampling.choices()?);
    let conversation = Conversation {
        name: request.model.clone(),
        model: load(&request.model)?,
        messages,
        tools,
        arguments,
        params,
        choices,
        reasoning_budget: request.reasoning_budget,
    };
    let job = start_chat::<H>(conversation, "messages").await?;
    answer(job, request.sampling.stream, request.sampling.include_usage()).await
}

/// A chat to answer, checked: what both chat endpoints start.
pub struct Conversation {
    /// The model's name, as the request gave it and answers repeat it.
    pub name: String,
    pub model: Model,
    pub messages: Vec<wasi_nn_llm::ChatMessage>,
    pub tools: Option<tools::Tools>,
    pub arguments: Vec<(String, wasi_nn_llm::TemplateValue)>,
    pub params: wasi_nn_llm::Params,
    pub choices: u32,
    pub reasoning_budget: Option<u32>,
}

/// Start a chat: its messages rendered with the model's own template, and
/// with tools, the template's tool format, a grammar that holds a call to
/// the tools' schemas, and the reply read back for the calls it makes.
/// `messages_param` names the request field a refused conversation blames.
async fn start_chat<H: Host>(chat: Conversation, messages_param: &'static str) -> Result<Job<H>, ApiError> {
    let Conversation { name, model, mut messages, tools, arguments, mut params, choices, reasoning_budget } = chat;
    let mut options = RenderOptions { add_generation_prompt: true, tools: vec![], documents: vec![], arguments };
    let mut format = None;
    if let Some(tools) = &tools {
        let template = model.info().map_err(|e| ApiError::from_model(&name, e))?.chat_template;
        let native = Format::of(&model, template.as_deref());
        if native == Format::Generic {
            messages = tools::generic_messages(messages, tools);
        } else {
            options.tools = tools.list.clone();
        }
        let gbnf = model.features().map_err(|e| ApiError::from_model(&name, e))?.contains(&Feature::Gbnf);
        match native.constraint(tools, gbnf)? {
            Some(Constraint::Grammar(gbnf)) => params = params.grammar(gbnf),
            Some(Constraint::JsonSchema(schema)) => params = params.json_schema(schema),
            Some(Constraint::Lark(grammar)) => params = params.lark(grammar),
            None => {}
        }
        format = (tools.choice != Choice::None).then_some(native);
    }
    let prompt = model.render_chat(&messages, &options).map_err(|e| {
        // The template refused or failed on the conversation: the messages' fault.
        let mut e = ApiError::from(e);
        if e.status == 400 {
            e.param = Some(messages_param);
        }
        e
    })?;
    let prompt = prompt.text;
    let tokens = model.tokenize(&prompt, true, true)?;
    let reading = Reading { tools: format, open: wasi_nn_llm::reasoning::opened_by(&prompt), budget: reasoning_budget };
    Job::start(Kind::Chat, name, model, &tokens, &params, choices, Some(reading))
        .await
        .map_err(|e| if tools.is_some() { e.at("tools") } else { e })
}

async fn complete<H: Host>(body: &[u8]) -> Result<Response<Reply>, ApiError> {
    let request: CompletionRequest = request::parse(body)?;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let model = load(&request.model)?;
    let tokens = model.tokenize(request.prompt()?, true, true)?;
    if tokens.is_empty() {
        return Err(ApiError::invalid("prompt must not be empty", Some("prompt")));
    }
    let job = Job::<H>::start(Kind::Text, request.model.clone(), model, &tokens, &params, n, None).await?;
    answer(job, request.sampling.stream, request.sampling.include_usage()).await
}

async fn answer<H: Host>(mut job: Job<H>, stream: bool, include_usage: bool) -> Result<Response<Reply>, ApiError> {
    if !stream {
        return Ok(json_response(&job.collect().await?));
    }
    Ok(event_stream(job.events(include_usage)))
}

/// A 200 whose body is `events`, as SSE.
fn event_stream(events: impl Stream<Item = String> + 'static) -> Response<Reply> {
    let mut response = Response::new(Reply::Events(Box::pin(events)));
    let headers = response.headers_mut();
    headers.insert("content-type", http::HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", http::HeaderValue::from_static("no-cache"));
    response
}

fn json_response(value: &serde_json::Value) -> Response<Reply> {
    json_reply(StatusCode::OK, value)
}

/// `value` as a JSON body with `status`.
fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response<Reply> {
    let mut response = Response::new(Reply::Full(value.to_string().into_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    response
}
