//! WASI 0.2 HTTP guests (`wasi:http/proxy`): a fresh instance per request,
//! on tokio's blocking pool. The extension's 0.1.x host calls block (a
//! guest waiting for a token waits on its stream), so a request's guest
//! never runs on the threads that drive connections. Instance state ends
//! with the request; what must outlive it (a conversation's KV cache) is
//! kept by the engine's prefix cache.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::oneshot;
use wasmtime::Trap;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::Answer;
use crate::runner::{Guest, HostState, Runtime};

/// A linked WASI 0.2 proxy, instantiated once per request.
pub(super) struct Proxy {
    runtime: Arc<Runtime>,
    guest: Arc<Guest>,
    pre: ProxyPre<HostState>,
}

impl Proxy {
    pub(super) fn new(runtime: Arc<Runtime>, guest: Arc<Guest>) -> anyhow::Result<Self> {
        let pre = ProxyPre::new(runtime.instance_pre(&guest)?)?;
        Ok(Self { runtime, guest, pre })
    }

    /// Answer `request` in a fresh instance on the blocking pool: the
    /// response once the guest sets it (its body may still be streaming),
    /// or why there is none.
    pub(super) async fn handle(self: Arc<Self>, request: Request<Incoming>, failures: super::Throttle) -> Answer {
        let (sender, receiver) = oneshot::channel();
        let guest = tokio::task::spawn_blocking(move || self.run(request, sender));
        match receiver.await {
            Ok(Ok(response)) => {
                // The body may still be streaming; the guest's end is logged.
                tokio::spawn(async move {
                    match guest.await {
                        Ok(Ok(())) => tracing::debug!("the guest finished its response"),
                        Ok(Err(e)) => failures.warn(format_args!("the guest trapped after answering: {e:#}")),
                        Err(e) => failures.warn(format_args!("the guest's thread failed after answering: {e}")),
                    }
                });
                Ok(response)
            }
            Ok(Err(code)) => Err(format!("the guest failed the request: {}", describe(&code))),
            Err(_) => Err(match guest.await {
                Ok(Err(e)) => format!("the guest failed before answering: {e:#}"),
                Ok(Ok(())) => "the guest returned without answering".to_owned(),
                Err(e) => format!("the guest's thread failed: {e}"),
            }),
        }
    }

    /// Instantiate the guest and let it handle `request`; blocks this
    /// (blocking-pool) thread until the guest returns.
    fn run(
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

fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::InternalError(Some(message)) => message.clone(),
        other => format!("{other:?}"),
    }
}
