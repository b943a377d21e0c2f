//! The OpenAI-compatible API (`examples/openai-server`'s library) as a
//! WASI 0.3 component exporting `wasi:http/handler@0.3.0` (the `service`
//! world), on the extension's async session (`0.2.0-rc-2026-12-06`).
//!
//! `wasi-nn-llm serve` reuses one instance of it for many requests, several
//! at once: each request is an async task of the instance, its generations
//! are `stream<chunk>`s it awaits, and a request waiting on the model
//! leaves the instance to the others. Nothing of one request is kept where
//! another can reach it: its sessions and generations are its task's own
//! values, dropped with the task. What outlives a request is the host's
//! prefix cache, keyed by the conversation's tokens, as for the WASI 0.2
//! server (`openai-server`, a fresh instance per request).
//!
//! Usage: `wasi-nn-llm serve --model smollm2 openai_server_p3.wasm`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::StreamExt;
use http_body::{Body, Frame};
use openai_server::{ApiError, Host, MAX_BODY, Reply};
use wasi_nn_llm::p3::wasip3::http::types::{ErrorCode, Request, Response};
use wasi_nn_llm::p3::wasip3::http_compat::{IncomingRequestBody, http_from_wasi_request, http_into_wasi_response};
use wasi_nn_llm::p3::{CacheTier, Generation, Session, wasip3};
use wasi_nn_llm::{Chunk, Error, Finish, Model, Params, SessionOptions};

struct Service;

impl wasip3::exports::http::handler::Guest for Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let (head, body) = http_from_wasi_request(request)?.into_parts();
        let body = read(&head.headers, body).await;
        let response = openai_server::route::<Streams>(head.method.as_str(), head.uri.path(), body).await;
        // The body goes out from a task of its own, after the response's head.
        http_into_wasi_response(response.map(ReplyBody))
    }
}

wasip3::http::service::export!(Service);

/// The request body, at most [`MAX_BODY`] bytes.
async fn read(headers: &http::HeaderMap, body: IncomingRequestBody) -> Result<Vec<u8>, ApiError> {
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(openai_server::body_too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("reading the request body failed: {e}"), None))?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() as u64 > MAX_BODY {
                return Err(openai_server::body_too_large());
            }
        }
    }
    Ok(bytes)
}

/// A [`Reply`] as an HTTP body: a whole body in one frame, or each event
/// as it is made. Dropped when the client goes (the write fails), which
/// drops the generations behind it and so cancels them.
struct ReplyBody(Reply);

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Reply::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            Reply::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(std::mem::take(bytes)))))),
            Reply::Events(events) => {
                events.as_mut().poll_next(cx).map(|event| event.map(|e| Ok(Frame::data(Bytes::from(e)))))
            }
        }
    }
}

/// The async session: every wait is a future of this request's task, so
/// the instance's other requests go on meanwhile.
struct Streams;

impl Host for Streams {
    type Session = Session;
    type Generation = Generation;

    async fn open_cached(model: &Model, prompt: &[u32]) -> Result<Session, Error> {
        Session::open_cached(model, SessionOptions { context_length: None, seed: None, overflow: None }, prompt).await
    }

    async fn fork(session: &Session) -> Result<Session, Error> {
        session.fork().await
    }

    async fn append(session: &Session, text: &str) -> Result<u32, Error> {
        session.append(text).await
    }

    fn generate(session: &Session, params: &Params) -> Result<Generation, Error> {
        session.generate(params)
    }

    async fn next(generation: &mut Generation) -> Option<Result<Chunk, Error>> {
        generation.next().await.map(Ok)
    }

    async fn end(generation: Generation) -> Result<Option<Finish>, Error> {
        generation.finish().await.map(Some)
    }

    async fn cancel(generation: Generation) -> Option<Finish> {
        generation.finish().await.ok()
    }

    fn keep_note(session: &Session, key: &str, note: &[u8]) -> Result<(), Error> {
        session.keep_note(key, note)
    }

    fn cached_note(model: &Model, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Session::cached_note(model, key)
    }

    fn cached_from(session: &Session) -> Option<&'static str> {
        session.cached_from().map(|tier| match tier {
            CacheTier::Local => "local",
            CacheTier::Shared => "shared",
        })
    }

    async fn sleep(duration: Duration) {
        wasip3::clocks::monotonic_clock::wait_for(duration.as_nanos().try_into().unwrap_or(u64::MAX)).await;
    }
}
