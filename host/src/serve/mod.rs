//! The HTTP front door (`wasi-nn-llm serve`): a guest component answers
//! every request, on the same engine, models and policy as `run`. It is
//! told apart by its export, as `wasmtime serve` tells them:
//! - `wasi:http/handler@0.3.x` (WASI 0.3's `service` world): one instance
//!   serves many requests, several at once ([`p3`]);
//! - `wasi:http/incoming-handler@0.2.x` (WASI 0.2's `proxy`): a fresh
//!   instance per request ([`p2`]).
//!
//! hyper (through wasmtime-wasi-http, the crate behind `wasmtime serve`)
//! owns the socket; the guest is linked once and only instantiated after.
//! What must outlive a request — a conversation's KV cache — is kept by the
//! engine's prefix cache, which the guest opts into with `open-cached`.
//!
//! A client that goes away mid-stream makes the guest's next body write
//! fail; the guest drops the body, and with it the generations behind it,
//! which cancels them.
//!
//! `GET /metrics` is the host's own ([`crate::metrics`]), behind the API
//! keys as every path but `/health` is.
//!
//! With `--api-key`, a request without one of the operator's keys is
//! answered 401 here, before any guest runs ([`auth`]). A guest that fails
//! is the guest's (or its client's) doing, not the operator's: those
//! warnings are rate-limited ([`Throttle`]), so no client can flood the log.

mod auth;
mod p2;
mod p3;

pub use auth::{ApiKeys, Refusal};
pub use p3::Reuse;

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
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::metrics;
use crate::runner::{Guest, Runtime};

/// How long a shutdown waits for requests in flight before it gives up.
const GRACE: Duration = Duration::from_secs(30);

/// A request's response, or why the guest gave none (a 500 says it).
type Answer = Result<Response<HyperOutgoingBody>, String>;

/// One guest component serving HTTP.
pub struct Server {
    guest: Arc<Guest>,
    front: Front,
    keys: ApiKeys,
    failures: Throttle,
}

/// How the guest serves.
enum Front {
    /// WASI 0.2: a fresh instance per request.
    P2(Arc<p2::Proxy>),
    /// WASI 0.3: instances reused as `Reuse` says.
    P3(p3::Service),
}

impl Server {
    /// Link `guest` for serving: it must export WASI 0.3's
    /// `wasi:http/handler` or WASI 0.2's `wasi:http/incoming-handler`.
    /// With `keys`, only requests naming one of them reach it.
    pub fn new(runtime: Arc<Runtime>, guest: Guest, keys: ApiKeys, reuse: Reuse) -> anyhow::Result<Arc<Self>> {
        let guest = Arc::new(guest);
        let failures = Throttle::default();
        let front = if runtime.is_p3_service(&guest) {
            Front::P3(p3::Service::new(runtime, guest.clone(), reuse, failures.clone())?)
        } else {
            Front::P2(Arc::new(p2::Proxy::new(runtime, guest.clone()).context(
                "the component exports neither wasi:http/handler@0.3 nor wasi:http/incoming-handler@0.2 \
                 (build it as an HTTP handler)",
            )?))
        };
        Ok(Arc::new(Self { guest, front, keys, failures }))
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
        let instances = match &self.front {
            Front::P2(_) => "WASI 0.2, an instance per request".to_owned(),
            Front::P3(service) => {
                let r = service.reuse();
                format!("WASI 0.3, an instance serves up to {} requests, {} at once", r.requests, r.concurrent)
            }
        };
        eprintln!(
            "serving {} on http://{}/ ({instances}; {access}; Ctrl-C stops)",
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

    /// Answer one request: its response (headers first, then the body as
    /// the guest writes it), or a 500 if the guest failed before answering.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<HyperOutgoingBody>, Infallible> {
        let (mut parts, body) = request.into_parts();
        if let Err(refusal) = self.keys.admit(&parts.method, parts.uri.path(), &mut parts.headers) {
            tracing::debug!(path = parts.uri.path(), "refused without running the guest: {refusal:?} API key");
            return Ok(unauthorized(refusal));
        }
        let metrics = metrics::get();
        let route = metrics::route(parts.uri.path());
        let response = if route == "/metrics" && parts.method == hyper::Method::GET {
            metrics_response(metrics)
        } else {
            let request = Request::from_parts(parts, body);
            metrics.requests_in_flight.inc();
            let answer = match &self.front {
                Front::P2(proxy) => proxy.clone().handle(request, self.failures.clone()).await,
                Front::P3(service) => service.handle(request).await,
            };
            metrics.requests_in_flight.dec();
            answer.unwrap_or_else(|why| {
                self.failures.warn(format_args!("{why}"));
                server_error(&why)
            })
        };
        let status = response.status().as_u16();
        metrics.requests.get_or_create(&metrics::RequestLabels { route, status }).inc();
        Ok(response)
    }
}

/// `GET /metrics`: the host's own answer (no guest runs), in the
/// OpenMetrics text format Prometheus scrapes.
fn metrics_response(metrics: &metrics::Metrics) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(metrics.encode()))
        .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
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

impl Default for Throttle {
    /// Ten warnings a minute.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60))
    }
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
