//! The OpenAI-compatible API (this package's library) as a WASI 0.2
//! `wasi:http/proxy` component, on the 0.1.x session: `wasi-nn-llm serve`
//! runs one fresh instance per request. Its WASI 0.3 sibling, reused across
//! requests, is `examples/openai-server-p3`.
//!
//! Usage: `wasi-nn-llm serve --model smollm2 openai-server.wasm`.

#![no_main]

use std::time::Duration;

use futures_lite::StreamExt;
use openai_server::{ApiError, Host, MAX_BODY, Reply};
use wasi_nn_llm::{Chunk, Error, Finish, Model, Params, Session, SessionOptions, TokenStream};
use wstd::__internal::wasip2;
use wstd::__internal::wasip2::exports::http::incoming_handler;
use wstd::__internal::wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wstd::__internal::wasip2::io::streams::OutputStream;
use wstd::http::{Body, Request};

/// The component's `wasi:http/incoming-handler`. wstd reads the request;
/// the response is written here, not by wstd's `Responder`, whose body
/// must be `Send` (the API's event stream, generic over its sessions, is
/// not) and which unwraps the result of sending, so a client that goes away
/// mid-stream would panic the guest. Here a failed write ends the request
/// quietly: the generation behind the body is dropped with it, which
/// cancels it, and no one is left to answer.
struct Server;

impl incoming_handler::Guest for Server {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        wstd::runtime::block_on(async move {
            let (method, path, body) = match wstd::http::request::try_from_incoming(request) {
                Ok(mut request) => {
                    let body = body(&mut request).await;
                    (request.method().as_str().to_owned(), request.uri().path().to_owned(), body)
                }
                Err(e) => {
                    let error = ApiError::invalid(format!("the request cannot be read: {e}"), None);
                    (String::new(), String::new(), Err(error))
                }
            };
            let response = match body {
                Err(e) if method.is_empty() => e.response(),
                body => openai_server::route::<Pull>(&method, &path, body).await,
            };
            send(out, response).await;
        })
    }
}

wasip2::http::proxy::export!(Server with_types_in wasip2);

/// Send `response`: its head at once, then its body as it is made.
async fn send(out: ResponseOutparam, response: http::Response<Reply>) {
    let (head, reply) = response.into_parts();
    let fields: Vec<(String, Vec<u8>)> =
        head.headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())).collect();
    let Ok(headers) = Fields::from_list(&fields) else { return };
    let outgoing = OutgoingResponse::new(headers);
    // A `StatusCode` is always a valid status.
    let _ = outgoing.set_status_code(head.status.as_u16());
    let Ok(body) = outgoing.body() else { return };
    ResponseOutparam::set(out, Ok(outgoing));
    let Ok(stream) = body.write() else { return };
    let sent = match reply {
        Reply::Full(bytes) => write(&stream, &bytes),
        Reply::Events(mut events) => loop {
            match events.next().await {
                Some(event) => {
                    if !write(&stream, event.as_bytes()) {
                        break false;
                    }
                }
                None => break true,
            }
        },
    };
    drop(stream);
    if sent {
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Write all of `bytes`; false once the client has gone.
fn write(stream: &OutputStream, bytes: &[u8]) -> bool {
    // `blocking-write-and-flush` takes at most 4096 bytes a call.
    bytes.chunks(4096).all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn body(request: &mut Request<Body>) -> Result<Vec<u8>, ApiError> {
    if request.body().content_length().is_some_and(|n| n > MAX_BODY) {
        return Err(openai_server::body_too_large());
    }
    let bytes = request
        .body_mut()
        .contents()
        .await
        .map_err(|e| ApiError::invalid(format!("reading the request body failed: {e}"), None))?;
    if bytes.len() as u64 > MAX_BODY {
        return Err(openai_server::body_too_large());
    }
    Ok(bytes.to_vec())
}

/// The 0.1.x pull session. Its calls block the instance, which serves
/// only this request; the futures are ready when first polled.
struct Pull;

impl Host for Pull {
    type Session = Session;
    type Generation = TokenStream;

    async fn open_cached(model: &Model, prompt: &[u32]) -> Result<Session, Error> {
        Session::open_cached(model, SessionOptions { context_length: None, seed: None, overflow: None }, prompt)
    }

    async fn fork(session: &Session) -> Result<Session, Error> {
        session.fork()
    }

    async fn append(session: &Session, text: &str) -> Result<u32, Error> {
        session.append(text)
    }

    fn generate(session: &Session, params: &Params) -> Result<TokenStream, Error> {
        session.generate(params)
    }

    async fn next(stream: &mut TokenStream) -> Option<Result<Chunk, Error>> {
        stream.next()
    }

    async fn end(stream: TokenStream) -> Result<Option<Finish>, Error> {
        Ok(stream.finish().cloned())
    }

    async fn cancel(mut stream: TokenStream) -> Option<Finish> {
        stream.cancel();
        while stream.next().is_some() {}
        stream.finish().cloned()
    }

    fn keep_note(session: &Session, key: &str, note: &[u8]) -> Result<(), Error> {
        session.keep_note(key, note)
    }

    fn cached_note(model: &Model, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Session::cached_note(model, key)
    }

    /// The 0.1.x session does not say (`wasi-nn-llm:llm@0.2.0-rc` does).
    fn cached_from(_: &Session) -> Option<&'static str> {
        None
    }

    async fn sleep(duration: Duration) {
        std::thread::sleep(duration);
    }
}
