//! An OpenAI-compatible HTTP API as a wasi:http guest of `wasi-nn-llm serve`,
//! on the LLM extension: `GET /health`, `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions` (streamed as SSE
//! with `"stream": true`).
//!
//! Every request runs in a fresh instance, yet a conversation sent again
//! with one more turn prefills only that turn: the prompt's session comes
//! from the host's prefix cache (`session.open-cached`), which outlives the
//! instance and is kept per component.
//!
//! Usage: `wasi-nn-llm serve --model smollm2 openai-server.wasm`.

mod completion;
mod error;
mod request;

use serde_json::json;
use wasi_nn_llm::Model;
use wstd::http::{Body, Error, Request, Response};

use completion::{Job, Kind};
use error::ApiError;
use request::{ChatRequest, CompletionRequest};

/// Largest request body read (a prompt far past any context still fits).
const MAX_BODY: u64 = 16 << 20;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let mut request = request;
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let answer = match (method.as_str(), path.as_str()) {
        ("GET", "/health") => Ok(json_response(&json!({ "status": "ok" }))),
        ("GET", "/v1/models") => Ok(json_response(&json!({ "object": "list", "data": models() }))),
        ("GET", p) if p.starts_with("/v1/models/") => model(&p["/v1/models/".len()..]),
        ("POST", "/v1/chat/completions") => match body(&mut request).await {
            Ok(body) => chat(&body),
            Err(e) => Err(e),
        },
        ("POST", "/v1/completions") => match body(&mut request).await {
            Ok(body) => complete(&body),
            Err(e) => Err(e),
        },
        _ => Err(ApiError::no_route(&method, &path)),
    };
    Ok(answer.unwrap_or_else(|e| e.response()))
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn body(request: &mut Request<Body>) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::invalid(format!("the request body is larger than {MAX_BODY} bytes"), None);
    if request.body().content_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let bytes = request
        .body_mut()
        .contents()
        .await
        .map_err(|e| ApiError::invalid(format!("reading the request body failed: {e}"), None))?;
    if bytes.len() as u64 > MAX_BODY {
        return Err(too_large());
    }
    Ok(bytes.to_vec())
}

fn models() -> Vec<serde_json::Value> {
    Model::list().iter().map(|name| model_object(name)).collect()
}

fn model_object(name: &str) -> serde_json::Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "wasi-nn-llm" })
}

fn model(name: &str) -> Result<Response<Body>, ApiError> {
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

fn chat(body: &[u8]) -> Result<Response<Body>, ApiError> {
    let request: ChatRequest = request::parse(body)?;
    let messages = request.messages()?;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let model = load(&request.model)?;
    let prompt = model.apply_chat_template(&messages, true)?;
    let tokens = model.tokenize(&prompt, true, true)?;
    let job = Job::start(Kind::Chat, request.model.clone(), model, &tokens, &params, n)?;
    answer(job, request.sampling.stream, request.sampling.include_usage())
}

fn complete(body: &[u8]) -> Result<Response<Body>, ApiError> {
    let request: CompletionRequest = request::parse(body)?;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let model = load(&request.model)?;
    let tokens = model.tokenize(request.prompt()?, true, true)?;
    if tokens.is_empty() {
        return Err(ApiError::invalid("prompt must not be empty", Some("prompt")));
    }
    let job = Job::start(Kind::Text, request.model.clone(), model, &tokens, &params, n)?;
    answer(job, request.sampling.stream, request.sampling.include_usage())
}

fn answer(job: Job, stream: bool, include_usage: bool) -> Result<Response<Body>, ApiError> {
    if !stream {
        return Ok(json_response(&job.collect()?));
    }
    let body = Body::from_stream(futures_lite::stream::iter(job.events(include_usage)));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("content-type", "text/event-stream".parse().expect("a valid header"));
    headers.insert("cache-control", "no-cache".parse().expect("a valid header"));
    Ok(response)
}

fn json_response(value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    response.headers_mut().insert("content-type", "application/json".parse().expect("a valid header"));
    response
}
