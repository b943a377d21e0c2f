//! The WASIp3 front door: the `wasi-nn-llm:llm@0.2.0-rc-2026-12-06`
//! session interface, whose generations are component-model `stream<chunk>`s
//! and whose waiting calls are `async func`s, on the same engine, [`Access`]
//! and quotas as [`crate::wit`]'s 0.1.x interfaces (which this world also
//! imports for models and embeddings).
//!
//! A token's way: the guest reads the stream → wasmtime calls
//! [`ChunkStream::poll_produce`] → it takes what the engine's
//! [`TokenStream`] has buffered, at most as many chunks as the guest's read
//! has room for, so a chunk joins the session only once the guest holds it →
//! when nothing is buffered it parks on the scheduler's next push. The
//! scheduler runs ahead of the reader by its small bounded buffer
//! (`engine/buffer.rs`) and no further: that is the stream's back-pressure.
//! Dropping the stream drops the producer, which cancels the generation and
//! resolves the finish future with `cancelled` and the usage of what was
//! read.
//!
//! The async calls wait for the scheduler's answer without holding the
//! instance: `append`, `append-tokens`, `save` and `fork` queue their
//! command and await its [`Pending`] answer (a resource the guest lends
//! stays in the store's table, so the call starts there and awaits outside);
//! `open-cached` and `restore`, which need no guest resource, run on tokio's
//! blocking pool. The one exception is a fork into another lane (when the
//! session's own lane is full): its state copy is done before the await.
//!
//! [`Access`]: crate::registry::Access

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Access, Accessor, Destination, FutureReader, Resource, StreamProducer, StreamReader, StreamResult, VecBuffer,
};
use wasmtime_wasi_nn::Graph;

use crate::engine::{self, Engine, Pending, Session, TokenStream};
use crate::error::LlmError;
use crate::wit::{HasLlmView, try_llm};

/// The `wasi-nn-llm:llm@0.2.0-rc-2026-12-06` world's bindings. Its 0.1.7 interfaces
/// and types are [`crate::wit`]'s (one implementation serves both worlds),
/// and its session is the engine's [`Session`], as 0.1.x's is.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/p3",
        world: "wasi-nn-llm:llm/llm@0.2.0-rc-2026-12-06",
        with: {
            "wasi:nn/graph.graph": wasmtime_wasi_nn::Graph,
            "wasi-nn-llm:llm/types@0.1.7": crate::wit::bindings::wasi_nn_llm::llm::types,
            "wasi-nn-llm:llm/model@0.1.7": crate::wit::bindings::wasi_nn_llm::llm::model,
            "wasi-nn-llm:llm/embeddings@0.1.7": crate::wit::bindings::wasi_nn_llm::llm::embeddings,
            "wasi-nn-llm:llm/chat@0.1.7": crate::wit::bindings::wasi_nn_llm::llm::chat,
            "wasi-nn-llm:llm/session@0.2.0-rc-2026-12-06.session": crate::engine::Session,
        },
        imports: {
            // `generate` is a plain function that creates a stream: it needs the store.
            "wasi-nn-llm:llm/session@0.2.0-rc-2026-12-06.[method]session.generate": store | trappable,
            "wasi-nn-llm:llm/session@0.2.0-rc-2026-12-06.[method]session.generate-constrained": store | trappable,
            default: trappable,
        },
        require_store_data_send: true,
    });
}

use crate::wit::bindings::wasi_nn_llm::llm::types;
use bindings::wasi_nn_llm::llm0_2_0_rc_2026_12_06::session;

/// What a WASI 0.3 command exports (any 0.3 patch release): how the runner
/// tells it from a WASI 0.2 command.
pub const RUN_EXPORT: &str = "wasi:cli/run@0.3.";

/// What a WASI 0.3 HTTP service exports: how `serve` tells it from a
/// WASI 0.2 proxy.
pub const HANDLER_EXPORT: &str = "wasi:http/handler@0.3.";

/// Add the draft session interface to a linker whose store data `T` gives
/// the extension's view; the 0.1.7 interfaces come from
/// [`crate::wit::add_to_linker`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    f: fn(&mut T) -> crate::wit::LlmView<'_>,
) -> wasmtime::Result<()> {
    session::add_to_linker::<T, HasLlmView>(linker, f)
}

type Answer<T> = wasmtime::Result<Result<T, types::Error>>;

impl session::Host for crate::wit::LlmView<'_> {}

/// The calls that return at once: as 0.1.x's.
impl session::HostSession for crate::wit::LlmView<'_> {
    fn open(&mut self, graph: Resource<Graph>, options: types::SessionOptions) -> Answer<Resource<Session>> {
        let engine = try_llm!(self.engine(&graph)?);
        let session = try_llm!(engine.open_session(&options.into(), self.access().quota()));
        Ok(Ok(self.table().push(session)?))
    }

    fn len(&mut self, session: Resource<Session>) -> wasmtime::Result<u32> {
        Ok(self.table().get(&session)?.tokens().map_or(0, |t| t.len() as u32))
    }

    fn tokens(&mut self, session: Resource<Session>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table().get(&session)?.tokens().unwrap_or_default())
    }

    fn context_limit(&mut self, session: Resource<Session>) -> wasmtime::Result<u32> {
        Ok(self.table().get(&session)?.context_limit())
    }

    fn rewind(&mut self, session: Resource<Session>, n: u32) -> Answer<u32> {
        Ok(self.table().get(&session)?.rewind(n).map_err(Into::into))
    }

    fn reset(&mut self, session: Resource<Session>) -> Answer<()> {
        Ok(self.table().get(&session)?.reset().map_err(Into::into))
    }

    fn cached_from(&mut self, session: Resource<Session>) -> wasmtime::Result<Option<session::CacheTier>> {
        Ok(self.table().get(&session)?.cached_from().map(|tier| match tier {
            engine::CacheTier::Local => session::CacheTier::Local,
            engine::CacheTier::Shared => session::CacheTier::Shared,
        }))
    }

    fn keep_note(&mut self, session: Resource<Session>, key: String, note: Vec<u8>) -> Answer<()> {
        Ok(self.table().get(&session)?.keep_note(&key, note).map_err(Into::into))
    }

    fn cached_note(&mut self, graph: Resource<Graph>, key: String) -> Answer<Option<Vec<u8>>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(Ok(engine.cached_note(self.access().namespace(), &key)))
    }

    fn drop(&mut self, session: Resource<Session>) -> wasmtime::Result<()> {
        self.table().delete(session)?;
        Ok(())
    }
}

impl<T: Send> session::HostSessionWithStore<T> for HasLlmView {
    async fn open_cached(
        accessor: &Accessor<T, Self>,
        graph: Resource<Graph>,
        options: types::SessionOptions,
        prompt: Vec<u32>,
    ) -> Answer<Resource<Session>> {
        let (engine, access) = try_llm!(engine_of(accessor, &graph)?);
        tracing::trace!(model = engine.name(), ?options, tokens = prompt.len(), "session.open-cached (p3)");
        let options: engine::SessionOptions = options.into();
        let opened = blocking(move || engine.open_cached(&options, &prompt, access.namespace(), access.quota())).await;
        let session = try_llm!(opened);
        Ok(Ok(accessor.with(|mut a| a.get().table().push(session))?))
    }

    async fn restore(
        accessor: &Accessor<T, Self>,
        graph: Resource<Graph>,
        snapshot: Vec<u8>,
    ) -> Answer<Resource<Session>> {
        let (engine, access) = try_llm!(engine_of(accessor, &graph)?);
        let session = try_llm!(blocking(move || engine.restore_session(&snapshot, access.quota())).await);
        Ok(Ok(accessor.with(|mut a| a.get().table().push(session))?))
    }

    async fn append(accessor: &Accessor<T, Self>, session: Resource<Session>, text: String) -> Answer<u32> {
        tracing::trace!(bytes = text.len(), "session.append (p3)");
        let pending = with_session(accessor, &session, |s| s.start_append(&text))?;
        Ok(answer(pending).await)
    }

    async fn append_tokens(accessor: &Accessor<T, Self>, session: Resource<Session>, tokens: Vec<u32>) -> Answer<u32> {
        tracing::trace!(tokens = tokens.len(), "session.append-tokens (p3)");
        let pending = with_session(accessor, &session, |s| s.start_append_tokens(&tokens))?;
        Ok(answer(pending).await)
    }

    fn generate(
        store: Access<T, Self>,
        session: Resource<Session>,
        params: types::GenerateParams,
    ) -> Answer<(StreamReader<types::Chunk>, FutureReader<Result<types::Finish, types::Error>>)> {
        let params: engine::GenerateParams = params.into();
        tracing::trace!(?params, "session.generate (p3)");
        start(store, session, params)
    }

    fn generate_constrained(
        store: Access<T, Self>,
        session: Resource<Session>,
        params: types::GenerateParams,
        constraint: types::PortableConstraint,
    ) -> Answer<(StreamReader<types::Chunk>, FutureReader<Result<types::Finish, types::Error>>)> {
        let params = try_llm!(crate::wit::constrained(params, constraint));
        tracing::trace!(?params, "session.generate-constrained (p3)");
        start(store, session, params)
    }

    async fn fork(accessor: &Accessor<T, Self>, session: Resource<Session>) -> Answer<Resource<Session>> {
        tracing::trace!("session.fork (p3)");
        let forking = try_llm!(with_session(accessor, &session, Session::start_fork)?);
        let forked = try_llm!(forking.ready().await);
        Ok(Ok(accessor.with(|mut a| a.get().table().push(forked))?))
    }

    async fn save(accessor: &Accessor<T, Self>, session: Resource<Session>) -> Answer<Vec<u8>> {
        let pending = with_session(accessor, &session, |s| Ok((s.start_save()?, s.engine().clone())))?;
        let (pending, engine) = try_llm!(pending);
        Ok(answer(Ok(pending)).await.map(|snapshot| engine.seal(&snapshot)))
    }
}

/// Start a generation on a session the guest holds: its chunks as a
/// stream, how it ended as a future.
fn start<T: Send>(
    mut store: Access<T, HasLlmView>,
    session: Resource<Session>,
    params: engine::GenerateParams,
) -> Answer<(StreamReader<types::Chunk>, FutureReader<Result<types::Finish, types::Error>>)> {
    let stream = try_llm!(store.get().table().get(&session)?.generate(&params));
    let (finished, finish) = oneshot::channel();
    let chunks = StreamReader::new(&mut store, ChunkStream { stream, finished: Some(finished) })?;
    let finish = FutureReader::new(&mut store, async move {
        // The producer always reports before it goes; a lost report is
        // the host's failure, never a silent end.
        let finish = finish.await.unwrap_or_else(|_| {
            Err(types::Error::EngineFailure("the generation's stream was lost before it ended".into()))
        });
        Ok::<_, wasmtime::Error>(finish)
    })?;
    Ok(Ok((chunks, finish)))
}

/// Start a command on a session the guest holds (its answer comes later).
fn with_session<T, R>(
    accessor: &Accessor<T, HasLlmView>,
    session: &Resource<Session>,
    start: impl FnOnce(&Session) -> Result<R, LlmError>,
) -> wasmtime::Result<Result<R, LlmError>> {
    accessor.with(|mut a| Ok(start(a.get().table().get(session)?)))
}

/// The engine behind a graph the guest holds, if the policy lets it, and
/// the instance's access, both owned so a blocking call can take them.
fn engine_of<T>(
    accessor: &Accessor<T, HasLlmView>,
    graph: &Resource<Graph>,
) -> wasmtime::Result<Result<(Engine, Arc<crate::registry::Access>), types::Error>> {
    accessor.with(|mut a| {
        let view = a.get();
        Ok(view.engine(graph)?.map(|engine| (engine, view.access().clone())))
    })
}

/// Await a started command's answer, as the guest sees it.
async fn answer<R: Send + 'static>(pending: Result<Pending<R>, LlmError>) -> Result<R, types::Error> {
    Ok(pending?.answer().await?)
}

/// Run a blocking engine call on tokio's blocking pool.
async fn blocking<R: Send + 'static>(
    call: impl FnOnce() -> Result<R, LlmError> + Send + 'static,
) -> Result<R, LlmError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|_| Err(LlmError::EngineFailure("an engine call panicked".into())))
}

/// The producer behind a guest's `stream<chunk>`: the engine's reader of one
/// generation, and where its end is reported (the finish future).
struct ChunkStream {
    stream: TokenStream,
    /// Taken when the end has been reported.
    finished: Option<oneshot::Sender<Result<types::Finish, types::Error>>>,
}

impl ChunkStream {
    fn report(&mut self, end: Result<types::Finish, types::Error>) {
        if let Some(finished) = self.finished.take() {
            // The guest may have dropped the future: then nobody asks.
            let _ = finished.send(end);
        }
    }
}

impl<D> StreamProducer<D> for ChunkStream {
    type Item = types::Chunk;
    type Buffer = VecBuffer<types::Chunk>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut dst: Destination<'a, Self::Item, Self::Buffer>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        if this.stream.poll_ready(cx).is_pending() {
            // Nothing to give; a cancelled read gives nothing.
            return if finish { Poll::Ready(Ok(StreamResult::Cancelled)) } else { Poll::Pending };
        }
        // A zero-length read asks only whether a read would wait.
        let room = match dst.remaining(&mut store) {
            Some(0) => return Poll::Ready(Ok(StreamResult::Completed)),
            Some(room) => room,
            None => usize::MAX,
        };
        // Never more than the read has room for: what is written is what the
        // guest holds, so the session keeps exactly what was seen.
        let mut chunks = Vec::new();
        let ended = loop {
            if chunks.len() == room {
                break None;
            }
            match this.stream.try_read(1) {
                Ok(Some(chunk)) => chunks.push(chunk.into()),
                Ok(None) => break this.stream.finish().cloned().map(|f| Ok(f.into())),
                Err(e) => break Some(Err(e.into())),
            }
        };
        dst.set_buffer(chunks.into());
        match ended {
            Some(end) => {
                this.report(end);
                Poll::Ready(Ok(StreamResult::Dropped))
            }
            None => Poll::Ready(Ok(StreamResult::Completed)),
        }
    }
}

impl Drop for ChunkStream {
    /// The guest dropped the stream before its end (or the instance went):
    /// stop the generation; the finish future says `cancelled`, with the
    /// usage of what was read.
    fn drop(&mut self) {
        if self.finished.is_none() {
            return;
        }
        let end = match self.stream.cancel() {
            Ok(()) => self.stream.finish().cloned().map(|f| Ok(f.into())),
            Err(e) => Some(Err(e.into())),
        };
        self.report(end.unwrap_or_else(|| Err(types::Error::EngineFailure("a cancelled stream has no finish".into()))));
    }
}
