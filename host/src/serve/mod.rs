//! The HTTP front door (`wasi-nn-llm serve`): a guest component exporting
//! `wasi:http/incoming-handler` answers every request, in a fresh instance
//! on the same engine, models and policy as `run`.
//!
//! hyper (through wasmtime-wasi-http, the crate behind `wasmtime serve`)
//! owns the socket; the guest is linked once ([`ProxyPre`]) and only
//! instantiated per request. The extension's host calls block (a guest
//! waiting for a token waits on its stream), so each request's guest runs
//! on tokio's blocking pool, never on the threads that drive connections.
//! What must outlive a request — a conversation's KV cache — is kept by the
//! engine's prefix cache, which the guest opts into with
//! `session.open-cached`; instance state itself ends with the request.
//!
//! A client that goes away mid-stream makes the guest's next body write
//! fail; the guest stops (or traps), its store is dropped, and that drops
//! its streams, which cancels their generations.
//!
//! With `--api-key`, a request without one of the operator's keys is
//! answered 401 here, before any guest runs ([`auth`]). A guest that fails
//! is the guest's (or its client's) doing, not the operator's: those
//! warnings are rate-limited ([`Throttle`]), so no client can flood the log.

mod auth;

pub use auth::{ApiKeys, Refusal};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::oneshot;
use wasmtime::Trap;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::runner::{Guest, HostState, Runtime};

/// How long a shutdown waits for requests in flight before it gives up.
const GRACE: Duration = Duration::from_secs(30);

/// One guest component serving HTTP.
pub struct Server {
    runtime: Arc<Runtime>,
    guest: Guest,
    pre: ProxyPre<HostState>,
    keys: ApiKeys,
    failures: Throttle,
}

impl Server {
    /// Link `guest` for serving: it must export `wasi:http/incoming-handler`.
    /// With `keys`, only requests naming one of them reach it.
    pub fn new(runtime: Arc<Runtime>, guest: Guest, keys: ApiKeys) -> anyhow::Result<Arc<Self>> {
        let pre = ProxyPre::new(runtime.instance_pre(&guest)?)
            .map_err(anyhow::Error::from)
            .context("the component does not export wasi:http/incoming-handler (build it as an HTTP handler)")?;
        Ok(Arc::new(Self { runtime, guest, pre, keys, failures: Throttle::new(10, Duration::from_secs(60)) }))
    }

    /// Serve on `addr` until SIGINT or SIGTERM, then finish the requests in
    /// flight (for up to 30 s). Prints the address it listens on.
    pub fn serve(self: Arc<Self>, addr: SocketAddr) -> anyhow::Result<()> {
        let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        tokio.block_on(self.listen(addr))
    }

    async fn listen(self: Arc<Self>, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        let access = match self.keys.len() {
            0 => "open to every client".to_owned(),
            n => format!("{n} API key(s) admit clients"),
        };
        eprintln!(
            "serving {} on http://{}/ ({access}; Ctrl-C stops)",
            self.guest.identity.name,
            listener.local_addr()?
        );
        let graceful = GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop_signal());
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}");
                        continue;
                    }
                },
                signal = &mut stop => {
                    signal?;
                    break;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = service_fn(move |request| server.clone().handle(request));
            let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
        drop(listener);
        eprintln!("stopping: finishing {} open connection(s)", graceful.count());
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(GRACE) => eprintln!("stopping: requests still running after {GRACE:?}; dropped"),
        }
        Ok(())
    }

    /// Answer one request: a fresh guest instance on the blocking pool; its
    /// response (headers first, then the body as the guest writes it), or a
    /// 500 if it failed before answering.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<HyperOutgoingBody>, Infallible> {
        let (mut parts, body) = request.into_parts();
        if let Err(refusal) = self.keys.admit(parts.uri.path(), &mut parts.headers) {
            tracing::debug!(path = parts.uri.path(), "refused without running the guest: {refusal:?} API key");
            return Ok(unauthorized(refusal));
        }
        let request = Request::from_parts(parts, body);
        let failures = self.failures.clone();
        let (sender, receiver) = oneshot::channel();
        let guest = tokio::task::spawn_blocking(move || self.run_guest(request, sender));
        let response = match receiver.await {
            Ok(Ok(response)) => {
                // The body may still be streaming; the guest's end is logged.
                tokio::spawn(async move {
                    match guest.await {
                        Ok(Ok(())) => tracing::debug!("the guest finished its response"),
                        Ok(Err(e)) => failures.warn(format_args!("the guest trapped after answering: {e:#}")),
                        Err(e) => failures.warn(format_args!("the guest's thread failed after answering: {e}")),
                    }
                });
                return Ok(response);
            }
            Ok(Err(code)) => format!("the guest failed the request: {}", describe(&code)),
            Err(_) => match guest.await {
                Ok(Err(e)) => format!("the guest failed before answering: {e:#}"),
                Ok(Ok(())) => "the guest returned without answering".to_owned(),
                Err(e) => format!("the guest's thread failed: {e}"),
            },
        };
        failures.warn(format_args!("{response}"));
        Ok(server_error(&response))
    }

    /// Instantiate the guest and let it handle `request`; blocks this
    /// (blocking-pool) thread until the guest returns.
    fn run_guest(
        &self,
        request: Request<Incoming>,
        sender: oneshot::Sender<Result<Response<HyperOutgoingBody>, ErrorCode>>,
    ) -> anyhow::Result<()> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        let mut store = self.runtime.store(&self.guest, wasi.build());
        let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let proxy = self.pre.instantiate(&mut store)?;
        let handled = proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out);
        // Dropping the store drops the instance's sessions and streams (a
        // session from `open-cached` then goes into the prefix cache).
        drop(store);
        handled.map_err(|e| match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => anyhow::anyhow!(
                "the guest ran past limits.guest-seconds ({} s) and was stopped",
                self.runtime.guest_seconds().unwrap_or_default()
            ),
            _ => anyhow::Error::from(e),
        })
    }
}

/// A 500 in the shape OpenAI-style clients parse (`{"error": {...}}`).
fn server_error(message: &str) -> Response<HyperOutgoingBody> {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, message, "server_error", None)
}

/// A 401 as OpenAI answers a missing or wrong key.
fn unauthorized(refusal: Refusal) -> Response<HyperOutgoingBody> {
    let mut response =
        error_response(StatusCode::UNAUTHORIZED, refusal.message(), "invalid_request_error", refusal.code());
    response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    response
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// At most `burst` warnings per `window` (the rest at debug level); the
/// first warning of a later window says how many were not shown.
#[derive(Clone)]
struct Throttle(Arc<Mutex<ThrottleState>>);

struct ThrottleState {
    burst: u32,
    window: Duration,
    started: Instant,
    shown: u32,
    hidden: u32,
}

impl Throttle {
    fn new(burst: u32, window: Duration) -> Self {
        Self(Arc::new(Mutex::new(ThrottleState { burst, window, started: Instant::now(), shown: 0, hidden: 0 })))
    }

    fn warn(&self, message: std::fmt::Arguments<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if s.started.elapsed() >= s.window {
            if s.hidden > 0 {
                tracing::warn!("{} more guest failure(s) in the last {:?} were not logged", s.hidden, s.window);
            }
            (s.started, s.shown, s.hidden) = (Instant::now(), 0, 0);
        }
        if s.shown < s.burst {
            s.shown += 1;
            tracing::warn!("{message}");
        } else {
            s.hidden += 1;
            tracing::debug!("{message}");
        }
    }
}

fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::InternalError(Some(message)) => message.clone(),
        other => format!("{other:?}"),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
