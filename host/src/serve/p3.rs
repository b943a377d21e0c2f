//! WASI 0.3 HTTP guests (`wasi:http/handler@0.3.x`, the `service` world):
//! one instance serves many requests, several at once, through
//! wasmtime-wasi-http's [`ProxyHandler`] (what `wasmtime serve` runs on).
//! Each request is an async task of the instance; a task waiting on the
//! model (its `stream<chunk>`, an async `append`) leaves the instance to
//! the others.
//!
//! What reuse means for the operator's fences:
//! - The policy's `instance-*` limits (sessions, KV bytes) and
//!   `guest-memory-bytes` bound one instance, so the requests it serves at
//!   once share them. One tenant (a component) runs at most
//!   ⌈requests in flight / `concurrent`⌉ instances where WASI 0.2 ran one per
//!   request: reuse holds a tenant to less, never more.
//! - `guest-seconds` bounds each request, not the instance: a request that
//!   has not answered (sent its response's head) within it expires (the
//!   client gets a 500), the instance takes no new requests and goes once
//!   the others have finished; a guest spinning in its own code is stopped
//!   by the epoch check below. Bodies still streaming after every request
//!   has answered get as long again; while requests keep arriving, a
//!   body's length is bounded by the generation's own quota
//!   (`generate-tokens`, `generate-seconds`) instead.
//! - The prefix cache is per component, as before; reuse changes nothing
//!   there. What one request holds (its sessions, its streams) are values
//!   of its own task in the guest: the host gives a request nothing of
//!   another's.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpView, handler};

use super::{Answer, Throttle};
use crate::runner::{Guest, HostState, Runtime};

/// What wasmtime-wasi-http 48 reports for an instance whose worker future
/// was dropped before it finished.
const WORKER_DROPPED: &str = "worker panicked";

/// How far one instance is reused.
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// Requests one instance serves before a fresh one takes over (what a
    /// guest may leak, or grow its memory by, stays bounded).
    pub requests: u32,
    /// Requests one instance serves at once; more start another instance.
    pub concurrent: u32,
    /// How long an idle instance is kept for the next request.
    pub idle: Duration,
}

impl Default for Reuse {
    /// `wasmtime serve`'s bounds (128 requests, 16 at once), and instances
    /// kept 10 s idle, so a chat's next turn usually finds one warm.
    fn default() -> Self {
        Self { requests: 128, concurrent: 16, idle: Duration::from_secs(10) }
    }
}

/// A linked WASI 0.3 service and its instances.
pub(super) struct Service {
    handler: ProxyHandler<Workers>,
}

impl Service {
    pub(super) fn new(
        runtime: Arc<Runtime>,
        guest: Arc<Guest>,
        reuse: Reuse,
        failures: Throttle,
    ) -> anyhow::Result<Self> {
        let pre = ServicePre::new(runtime.instance_pre_p3(&guest)?)?;
        let workers = Workers { runtime, guest, pre: ProxyPre::P3(pre), reuse, failures };
        Ok(Self { handler: ProxyHandler::new(workers) })
    }

    pub(super) fn reuse(&self) -> Reuse {
        self.handler.state().reuse
    }

    /// Answer `request` on a reused instance (or a fresh one when none can
    /// take it).
    pub(super) async fn handle(&self, request: Request<Incoming>) -> Answer {
        let request = request.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
        self.handler.handle((), request).await.map_err(|e| {
            if e.is::<handler::ExpirationError>() {
                let secs = self.handler.state().runtime.guest_seconds().unwrap_or_default();
                format!("the guest did not answer within limits.guest-seconds ({secs} s)")
            } else {
                format!("the guest failed the request: {e:#}")
            }
        })
    }
}

/// What [`ProxyHandler`] makes instances with.
struct Workers {
    runtime: Arc<Runtime>,
    guest: Arc<Guest>,
    pre: ProxyPre<HostState>,
    reuse: Reuse,
    failures: Throttle,
}

impl HandlerState for Workers {
    type StoreData = HostState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiry, Worker>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        let mut store = self.runtime.store(&self.guest, wasi.build());
        let in_flight = InFlight::default();
        let per_request = self.runtime.guest_seconds().map(Duration::from_secs_f64);
        if let Some(limit) = per_request {
            // Epochs reach only running guest code: a request spinning in it
            // past its budget is stopped here (with the instance, as a trap
            // must); one that waits on the host is expired by the handler.
            let requests = in_flight.clone();
            store.epoch_deadline_callback(move |_| match requests.oldest() {
                Some(start) if start.elapsed() > limit => Err(Trap::Interrupt.into()),
                _ => Ok(UpdateDeadline::Continue(1)),
            });
        }
        let proxy = self.pre.instantiate_async(&mut store).await?;
        tracing::debug!("a fresh instance of {} for requests", self.guest.identity.name);
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiry { reuse: self.reuse, per_request, timer: None },
            state: Worker { reuse: self.reuse, per_request, in_flight, failures: self.failures.clone() },
        })
    }
}

/// The requests an instance is serving: when each started.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<BTreeMap<u64, Instant>>>);

impl InFlight {
    fn oldest(&self) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().min().copied()
    }

    /// Note a request; it is forgotten when the guard goes.
    fn start(&self) -> Started {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
        Started { requests: self.clone(), id }
    }
}

struct Started {
    requests: InFlight,
    id: u64,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.requests.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// One instance's accounting.
struct Worker {
    reuse: Reuse,
    per_request: Option<Duration>,
    in_flight: InFlight,
    failures: Throttle,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse.requests as usize {
            ShouldAccept::Never
        } else if concurrent >= self.reuse.concurrent as usize {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    /// The request's budget: the future resolves (the request expires) at
    /// `guest-seconds`, and is dropped, with its note in [`InFlight`], once
    /// the guest has answered.
    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        (): (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let started = self.in_flight.start();
        let limit = self.per_request;
        Box::pin(async move {
            let _started = started;
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        })
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => self.failures.warn(format_args!(
                    "an instance was stopped: a request ran past limits.guest-seconds in guest code"
                )),
                // wasmtime-wasi-http hands over this error whenever the
                // instance's worker future is dropped unfinished (its
                // handler.rs `Dropper`), which is also how the runtime
                // cancels an idle instance as the server stops: a panic
                // only while this thread unwinds. Not worth a warning on
                // every clean stop.
                None if !std::thread::panicking() && e.to_string() == WORKER_DROPPED => {
                    tracing::debug!("an instance's worker was dropped unfinished (the server stopping)")
                }
                _ => self.failures.warn(format_args!("an instance trapped: {e:#}")),
            }
        }
        // Its sessions and streams go with it (into the prefix cache where
        // they came from it).
        drop(store);
    }
}

/// When an instance goes: idle past [`Reuse::idle`], or (a second line of
/// defence, polled outside the instance's event loop) its newest request
/// past `guest-seconds`.
struct Expiry {
    reuse: Reuse,
    per_request: Option<Duration>,
    /// The deadline for the state last seen, and that state.
    timer: Option<(WorkerStatus, Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl WorkerExpiration for Expiry {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, state: WorkerStatus, start: Instant) -> Poll<()> {
        let this = self.get_mut();
        let budget = match state {
            WorkerStatus::Idle => Some(this.reuse.idle),
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.per_request,
        };
        let Some(budget) = budget else {
            this.timer = None;
            return Poll::Pending;
        };
        let current = matches!(&this.timer, Some((s, t, _)) if *s == state && *t == start);
        if !current {
            let sleep = Box::pin(tokio::time::sleep_until((start + budget).into()));
            this.timer = Some((state, start, sleep));
        }
        match &mut this.timer {
            Some((_, _, sleep)) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
