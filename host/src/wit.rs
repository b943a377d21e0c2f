//! The extension's host side: `bindgen!` for the `wasi-nn-llm:llm` world and
//! the host implementations of its interfaces, on an [`LlmCtx`]/[`LlmView`]
//! pair in the style of wasmtime's own WASI crates.
//!
//! Base wasi-nn itself is served by wasmtime-wasi-nn (see [`crate::backend`]);
//! the extension shares its resource table, so the `graph` a guest got from
//! `load-by-name` is the very resource it passes to `session.open`.

use std::sync::Arc;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi_nn::Graph;

use crate::engine::{self, Engine, Session, TokenStream};
use crate::error::{LlmError, SnapshotError};
use crate::registry::Access;

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi-nn-llm:llm/llm",
        with: {
            // The graph must be wasmtime-wasi-nn's own resource type, or
            // instantiation fails with a resource type mismatch.
            "wasi:nn/graph.graph": wasmtime_wasi_nn::Graph,
            "wasi-nn-llm:llm/session.session": crate::engine::Session,
            "wasi-nn-llm:llm/session.token-stream": crate::engine::TokenStream,
            // Pollables are wasmtime-wasi's, so wasi:io/poll can wait on them.
            "wasi:io": wasmtime_wasi::p2::bindings::sync::io,
        },
        imports: { default: trappable },
        require_store_data_send: true,
    });
}

use bindings::wasi_nn_llm::llm::{model, session, types};

/// Per-instance state of the extension: what the instance may reach.
pub struct LlmCtx {
    access: Arc<Access>,
}

impl LlmCtx {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

/// What the extension's host functions borrow from the store.
pub struct LlmView<'a> {
    ctx: &'a mut LlmCtx,
    table: &'a mut ResourceTable,
}

impl<'a> LlmView<'a> {
    pub fn new(table: &'a mut ResourceTable, ctx: &'a mut LlmCtx) -> Self {
        Self { ctx, table }
    }

    /// The engine behind a graph the guest holds, if the policy lets it.
    fn engine(&self, graph: &Resource<Graph>) -> wasmtime::Result<Result<Engine, types::Error>> {
        let graph = self.table.get(graph)?;
        Ok(self.ctx.access.engine_for(graph).cloned().map_err(Into::into))
    }
}

/// Add the extension's interfaces to a linker; `f` projects the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    f: fn(&mut T) -> LlmView<'_>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, HasLlmView>(linker, f)?;
    model::add_to_linker::<T, HasLlmView>(linker, f)?;
    session::add_to_linker::<T, HasLlmView>(linker, f)?;
    Ok(())
}

struct HasLlmView;

impl HasData for HasLlmView {
    type Data<'a> = LlmView<'a>;
}

macro_rules! try_llm {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        }
    };
}

impl types::Host for LlmView<'_> {}

impl model::Host for LlmView<'_> {
    fn tokenize(
        &mut self,
        graph: Resource<Graph>,
        text: String,
        add_special: bool,
        parse_special: bool,
    ) -> wasmtime::Result<Result<Vec<u32>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.tokenize(&text, add_special, parse_special).map_err(Into::into))
    }

    fn detokenize(
        &mut self,
        graph: Resource<Graph>,
        tokens: Vec<u32>,
        render_special: bool,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.detokenize(&tokens, render_special).map_err(Into::into))
    }

    fn count_tokens(&mut self, graph: Resource<Graph>, text: String) -> wasmtime::Result<Result<u32, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.count_tokens(&text).map_err(Into::into))
    }

    fn model_info(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<types::ModelMetadata, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let i = engine.info();
        Ok(Ok(types::ModelMetadata {
            name: i.name,
            architecture: i.architecture,
            trained_context: i.trained_context,
            max_session_context: i.max_session_context,
            vocab_size: i.vocab_size,
            bos: i.bos,
            eos: i.eos,
            eot: i.eot,
            parameters: i.parameters,
            size_bytes: i.size_bytes,
            chat_template: i.chat_template,
            quantization: i.quantization,
        }))
    }

    fn apply_chat_template(
        &mut self,
        graph: Resource<Graph>,
        messages: Vec<types::Message>,
        add_assistant_turn: bool,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let messages: Vec<_> = messages.into_iter().map(|m| (m.role, m.content)).collect();
        Ok(engine.apply_chat_template(&messages, add_assistant_turn).map_err(Into::into))
    }
}

impl session::Host for LlmView<'_> {}

impl session::HostSession for LlmView<'_> {
    fn open(
        &mut self,
        graph: Resource<Graph>,
        options: types::SessionOptions,
    ) -> wasmtime::Result<Result<Resource<Session>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let shift_keep = match options.overflow {
            Some(types::OverflowPolicy::Shift(keep)) => Some(keep),
            Some(types::OverflowPolicy::Refuse) | None => None,
        };
        let options = engine::SessionOptions { context_length: options.context_length, seed: options.seed, shift_keep };
        tracing::trace!(model = engine.name(), ?options, "session.open");
        let session = try_llm!(engine.open_session(&options, self.ctx.access.quota()));
        Ok(Ok(self.table.push(session)?))
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

impl From<types::GenerateParams> for engine::GenerateParams {
    fn from(p: types::GenerateParams) -> Self {
        Self {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            penalty_last_n: p.penalty_last_n,
            seed: p.seed,
            logit_bias: p.logit_bias,
            stop: p.stop,
            constraint: p.constraint.map(|c| match c {
                types::Constraint::Grammar(g) => engine::Constraint::Grammar(g),
                types::Constraint::JsonSchema(s) => engine::Constraint::JsonSchema(s),
            }),
            logprobs: p.logprobs,
        }
    }
}

impl From<engine::Chunk> for types::Chunk {
    fn from(c: engine::Chunk) -> Self {
        Self {
            text: c.text,
            tokens: c.tokens,
            logprobs: c
                .logprobs
                .into_iter()
                .map(|l| types::TokenLogprob { token: l.token, logprob: l.logprob, top: l.top })
                .collect(),
        }
    }
}

impl From<engine::Finish> for types::Finish {
    fn from(f: engine::Finish) -> Self {
        let reason = match f.reason {
            engine::FinishReason::EndOfSequence => types::FinishReason::EndOfSequence,
            engine::FinishReason::MaxTokens => types::FinishReason::MaxTokens,
            engine::FinishReason::Stop(s) => types::FinishReason::Stop(s),
            engine::FinishReason::Cancelled => types::FinishReason::Cancelled,
            engine::FinishReason::ContextFull => types::FinishReason::ContextFull,
        };
        let u = f.usage;
        Self {
            reason,
            usage: types::Usage {
                prompt_tokens: u.prompt_tokens,
                cached_tokens: u.cached_tokens,
                generated_tokens: u.generated_tokens,
            },
        }
    }
}

/// Every error a host call returns to the guest passes here, so this is
/// where they are logged (an engine failure is the host's fault, the rest
/// the guest's).
impl From<LlmError> for types::Error {
    fn from(e: LlmError) -> Self {
        match &e {
            LlmError::EngineFailure(_) => tracing::warn!(error = %e, "a host call fails"),
            _ => tracing::debug!(error = %e, "a host call returns an error to the guest"),
        }
        let overflow = |o: crate::error::ContextOverflow| types::ContextOverflow {
            requested: o.requested,
            used: o.used,
            limit: o.limit,
        };
        match e {
            LlmError::UnsupportedGraph(s) => Self::UnsupportedGraph(s),
            LlmError::NotPermitted(s) => Self::NotPermitted(s),
            LlmError::InvalidArgument(s) => Self::InvalidArgument(s),
            LlmError::InvalidToken { token, vocab_size } => {
                Self::InvalidToken(types::InvalidToken { token, vocab_size })
            }
            LlmError::PromptTooLong(o) => Self::PromptTooLong(overflow(o)),
            LlmError::ContextFull(o) => Self::ContextFull(overflow(o)),
            LlmError::InvalidGrammar(s) => Self::InvalidGrammar(s),
            LlmError::InvalidSnapshot(s) => Self::InvalidSnapshot(match s {
                SnapshotError::Truncated => types::SnapshotError::Truncated,
                SnapshotError::Corrupted => types::SnapshotError::Corrupted,
                SnapshotError::WrongModel => types::SnapshotError::WrongModel,
                SnapshotError::WrongVersion => types::SnapshotError::WrongVersion,
                SnapshotError::TooLarge => types::SnapshotError::TooLarge,
            }),
            LlmError::LimitExceeded { name, max } => Self::LimitExceeded(types::Limit { name, max }),
            LlmError::SessionBusy => Self::SessionBusy,
            LlmError::Unsupported(s) => Self::Unsupported(s),
            LlmError::EngineFailure(s) => Self::EngineFailure(s),
        }
    }
}
