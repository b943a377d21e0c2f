//! The extension's sessions and token streams.

use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi_nn::Graph;

use super::bindings::wasi_nn_llm::llm::{session, types};
use super::{LlmView, constrained};
use crate::engine::{self, Session, TokenStream};

impl session::Host for LlmView<'_> {}

impl session::HostSession for LlmView<'_> {
    fn open(
        &mut self,
        graph: Resource<Graph>,
        options: types::SessionOptions,
    ) -> wasmtime::Result<Result<Resource<Session>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let options: engine::SessionOptions = options.into();
        tracing::trace!(model = engine.name(), ?options, "session.open");
        let session = try_llm!(engine.open_session(&options, self.ctx.access.quota()));
        Ok(Ok(self.table.push(session)?))
    }

    fn open_cached(
        &mut self,
        graph: Resource<Graph>,
        options: types::SessionOptions,
        prompt: Vec<u32>,
    ) -> wasmtime::Result<Result<Resource<Session>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let options: engine::SessionOptions = options.into();
        tracing::trace!(model = engine.name(), ?options, tokens = prompt.len(), "session.open-cached");
        let access = &self.ctx.access;
        let session = try_llm!(engine.open_cached(&options, &prompt, access.namespace(), access.quota()));
        Ok(Ok(self.table.push(session)?))
    }

    fn keep_note(
        &mut self,
        session: Resource<Session>,
        key: String,
        note: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.table.get(&session)?.keep_note(&key, note).map_err(Into::into))
    }

    fn cached_note(
        &mut self,
        graph: Resource<Graph>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(Ok(engine.cached_note(self.ctx.access.namespace(), &key)))
    }

    fn append(&mut self, session: Resource<Session>, text: String) -> wasmtime::Result<Result<u32, types::Error>> {
        tracing::trace!(bytes = text.len(), "session.append");
        Ok(self.table.get(&session)?.append(&text).map_err(Into::into))
    }

    fn generate(
        &mut self,
        session: Resource<Session>,
        params: types::GenerateParams,
    ) -> wasmtime::Result<Result<Resource<TokenStream>, types::Error>> {
        let params: engine::GenerateParams = params.into();
        tracing::trace!(?params, "session.generate");
        let stream = try_llm!(self.table.get(&session)?.generate(&params));
        Ok(Ok(self.table.push(stream)?))
    }

    fn generate_constrained(
        &mut self,
        session: Resource<Session>,
        params: types::GenerateParams,
        constraint: types::PortableConstraint,
    ) -> wasmtime::Result<Result<Resource<TokenStream>, types::Error>> {
        let params = try_llm!(constrained(params, constraint));
        tracing::trace!(?params, "session.generate-constrained");
        let stream = try_llm!(self.table.get(&session)?.generate(&params));
        Ok(Ok(self.table.push(stream)?))
    }

    fn append_tokens(
        &mut self,
        session: Resource<Session>,
        tokens: Vec<u32>,
    ) -> wasmtime::Result<Result<u32, types::Error>> {
        tracing::trace!(tokens = tokens.len(), "session.append-tokens");
        Ok(self.table.get(&session)?.append_tokens(&tokens).map_err(Into::into))
    }

    fn len(&mut self, session: Resource<Session>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&session)?.tokens().map_or(0, |t| t.len() as u32))
    }

    fn tokens(&mut self, session: Resource<Session>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&session)?.tokens().unwrap_or_default())
    }

    fn context_limit(&mut self, session: Resource<Session>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&session)?.context_limit())
    }

    fn rewind(&mut self, session: Resource<Session>, n: u32) -> wasmtime::Result<Result<u32, types::Error>> {
        Ok(self.table.get(&session)?.rewind(n).map_err(Into::into))
    }

    fn reset(&mut self, session: Resource<Session>) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.table.get(&session)?.reset().map_err(Into::into))
    }

    fn fork(&mut self, session: Resource<Session>) -> wasmtime::Result<Result<Resource<Session>, types::Error>> {
        tracing::trace!("session.fork");
        let forked = try_llm!(self.table.get(&session)?.fork());
        Ok(Ok(self.table.push(forked)?))
    }

    fn save(&mut self, session: Resource<Session>) -> wasmtime::Result<Result<Vec<u8>, types::Error>> {
        Ok(self.table.get(&session)?.save().map_err(Into::into))
    }

    fn restore(
        &mut self,
        graph: Resource<Graph>,
        snapshot: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<Session>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        tracing::trace!(model = engine.name(), bytes = snapshot.len(), "session.restore");
        let session = try_llm!(engine.restore_session(&snapshot, self.ctx.access.quota()));
        Ok(Ok(self.table.push(session)?))
    }

    fn drop(&mut self, session: Resource<Session>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        Ok(())
    }
}

impl session::HostTokenStream for LlmView<'_> {
    fn next(&mut self, stream: Resource<TokenStream>) -> wasmtime::Result<Result<Option<types::Chunk>, types::Error>> {
        let chunk = try_llm!(self.table.get_mut(&stream)?.next_chunk());
        Ok(Ok(chunk.map(Into::into)))
    }

    fn finish(&mut self, stream: Resource<TokenStream>) -> wasmtime::Result<Option<types::Finish>> {
        Ok(self.table.get(&stream)?.finish().cloned().map(Into::into))
    }

    fn next_chunk(
        &mut self,
        stream: Resource<TokenStream>,
        max_tokens: u32,
    ) -> wasmtime::Result<Result<Option<types::Chunk>, types::Error>> {
        if max_tokens == 0 {
            return Ok(Err(types::Error::InvalidArgument("max-tokens must be at least 1".into())));
        }
        let chunk = try_llm!(self.table.get_mut(&stream)?.read(max_tokens as usize));
        Ok(Ok(chunk.map(Into::into)))
    }

    fn cancel(&mut self, stream: Resource<TokenStream>) -> wasmtime::Result<()> {
        // Only a stopped scheduler fails a cancel; then there is nothing left to stop.
        let _ = self.table.get_mut(&stream)?.cancel();
        Ok(())
    }

    fn subscribe(&mut self, stream: Resource<TokenStream>) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, stream)
    }

    fn try_next(
        &mut self,
        stream: Resource<TokenStream>,
    ) -> wasmtime::Result<Result<Option<types::Chunk>, types::Error>> {
        let chunk = try_llm!(self.table.get_mut(&stream)?.try_read(1));
        Ok(Ok(chunk.map(Into::into)))
    }

    fn drop(&mut self, stream: Resource<TokenStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}
