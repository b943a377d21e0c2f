//! WASI 0.3 (feature `p3`): generations are component-model streams a
//! guest awaits, and the calls that wait on the host are `async`, so one
//! guest instance runs several generations (and anything else it awaits,
//! several HTTP requests among them) at once with no pollables and no
//! polling loop. Everything else — [`Model`], [`Params`], [`Chunk`],
//! [`Finish`], [`Error`] — is the 0.1.x SDK's.
//!
//! A p3 guest is a `cdylib` that exports WASI 0.3's own entry point, a
//! command's `wasi:cli/run@0.3.0` with [`export!`] (or an HTTP service's
//! `wasi:http/handler@0.3.0` with [`wasip3::http::service::export!`]); the
//! host runs it inside its async runtime (a synchronous `fn main` cannot
//! wait on a stream). No `#[main]` attribute exists for an async `run` in
//! the ecosystem yet (the `wasip3` crate's `export!` is the entry):
//!
//! ```ignore
//! use futures::StreamExt;
//! use wasi_nn_llm::{Model, Params, p3::Session};
//!
//! struct Guest;
//! impl wasi_nn_llm::p3::Run for Guest {
//!     async fn run() -> Result<(), ()> {
//!         let model = Model::load("smollm2").map_err(|_| ())?;
//!         let session = Session::open(&model).map_err(|_| ())?;
//!         session.append("The capital of France is").await.map_err(|_| ())?;
//!         let mut reply = session.generate(&Params::greedy().max_tokens(8)).map_err(|_| ())?;
//!         while let Some(chunk) = reply.next().await {
//!             print!("{}", chunk.text);
//!         }
//!         let finish = reply.finish().await.map_err(|_| ())?;
//!         eprintln!("{:?}", finish.reason);
//!         Ok(())
//!     }
//! }
//! wasi_nn_llm::p3::export!(Guest);
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use wit_bindgen::FutureReader;

use crate::raw::wasi_nn_llm::llm::types::Error as LlmError;
use crate::{Chunk, Error, Finish, Model, Params, SessionOptions};

/// The raw bindings of the `wasi-nn-llm:llm/llm@0.2.0-rc-2026-12-06` world; its
/// wasi-nn and 0.1.7 interfaces are [`crate::raw`]'s, so a [`Model`]'s graph
/// and every record are the same types in both.
#[allow(missing_docs)]
pub mod raw {
    wit_bindgen::generate!({
        path: "../wit/p3",
        world: "wasi-nn-llm:llm/llm@0.2.0-rc-2026-12-06",
        with: {
            "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::raw::wasi::nn::errors,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::raw::wasi::nn::tensor,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::raw::wasi::nn::inference,
            "wasi:nn/graph@0.2.0-rc-2024-10-28": crate::raw::wasi::nn::graph,
            "wasi-nn-llm:llm/types@0.1.7": crate::raw::wasi_nn_llm::llm::types,
            "wasi-nn-llm:llm/model@0.1.7": crate::raw::wasi_nn_llm::llm::model,
            "wasi-nn-llm:llm/embeddings@0.1.7": crate::raw::wasi_nn_llm::llm::embeddings,
            "wasi-nn-llm:llm/chat@0.1.7": crate::raw::wasi_nn_llm::llm::chat,
        },
    });
}

/// WASI 0.3's bindings (the `wasip3` crate): stdio, clocks, wasi:http's
/// types and the `export!` macros, for what a guest does besides the model.
pub use wasip3;
/// Export a command's entry point, `wasi:cli/run@0.3.0`: `export!(T)` for a
/// `T` implementing [`Run`] (the `wasip3` crate's macro).
pub use wasip3::cli::command::export;
/// A WASI 0.3 command's entry point: `async fn run() -> Result<(), ()>` (an
/// error is exit status 1).
pub use wasip3::exports::cli::run::Guest as Run;

/// Where a continued session's prefix came from: this host's own prefix
/// cache, or a store it shares with other hosts.
pub use draft::CacheTier;
use raw::wasi_nn_llm::llm0_2_0_rc_2026_12_06::session as draft;

/// A conversation held in the host's KV cache, as [`crate::Session`], with
/// the calls that wait on the host `async`.
pub struct Session {
    raw: draft::Session,
}

impl Session {
    /// Open an empty session with the host's defaults.
    pub fn open(model: &Model) -> Result<Self, Error> {
        Self::open_with(model, SessionOptions { context_length: None, seed: None, overflow: None })
    }

    /// Open an empty session with options (context length, default seed).
    pub fn open_with(model: &Model, options: SessionOptions) -> Result<Self, Error> {
        Ok(Self { raw: draft::Session::open(model.graph(), options)? })
    }

    /// A session holding `prompt`, continued from the host's prefix cache
    /// (see [`crate::Session::open_cached`]).
    pub async fn open_cached(model: &Model, options: SessionOptions, prompt: &[u32]) -> Result<Self, Error> {
        Ok(Self { raw: draft::Session::open_cached(model.graph(), options, prompt.to_vec()).await? })
    }

    /// A session from a [`save`](Self::save) blob (0.1.x's blobs too).
    pub async fn restore(model: &Model, snapshot: &[u8]) -> Result<Self, Error> {
        Ok(Self { raw: draft::Session::restore(model.graph(), snapshot.to_vec()).await? })
    }

    /// Evaluate `text` into the session (special tokens parsed); returns how
    /// many tokens were added. The guest's other tasks run meanwhile.
    pub async fn append(&self, text: &str) -> Result<u32, Error> {
        Ok(self.raw.append(text.to_owned()).await?)
    }

    /// Evaluate token ids (each checked against the vocabulary); returns how
    /// many were added.
    pub async fn append_tokens(&self, tokens: &[u32]) -> Result<u32, Error> {
        Ok(self.raw.append_tokens(tokens.to_vec()).await?)
    }

    /// Start generating from the end of the session: a [`Generation`],
    /// which is a [`Stream`] of chunks. Bad parameters fail here, before
    /// anything is generated.
    pub fn generate(&self, params: &Params) -> Result<Generation, Error> {
        let (chunks, finish) = match params.portable() {
            Some(constraint) => self.raw.generate_constrained(params.as_raw(), constraint)?,
            None => self.raw.generate(params.as_raw())?,
        };
        Ok(Generation { chunks: Box::pin(chunks.into_stream()), finish })
    }

    /// Tokens the session holds.
    pub fn len(&self) -> u32 {
        self.raw.len()
    }

    /// Whether the session holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokens the session holds.
    pub fn tokens(&self) -> Vec<u32> {
        self.raw.tokens()
    }

    /// Most tokens the session may hold.
    pub fn context_limit(&self) -> u32 {
        self.raw.context_limit()
    }

    /// Drop the last `n` tokens; returns the new length.
    pub fn rewind(&self, n: u32) -> Result<u32, Error> {
        Ok(self.raw.rewind(n)?)
    }

    /// Drop every token.
    pub fn reset(&self) -> Result<(), Error> {
        Ok(self.raw.reset()?)
    }

    /// A new session with the same tokens and KV cache.
    pub async fn fork(&self) -> Result<Session, Error> {
        Ok(Self { raw: self.raw.fork().await? })
    }

    /// The session as a versioned blob bound to this model.
    pub async fn save(&self) -> Result<Vec<u8>, Error> {
        Ok(self.raw.save().await?)
    }

    /// Keep `note` under `key` with this conversation while the prefix
    /// cache holds it (see [`crate::Session::keep_note`]).
    pub fn keep_note(&self, key: &str, note: &[u8]) -> Result<(), Error> {
        Ok(self.raw.keep_note(key, note)?)
    }

    /// The note kept under `key` with a conversation the prefix cache of
    /// `model` still holds (see [`crate::Session::cached_note`]).
    pub fn cached_note(model: &Model, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(draft::Session::cached_note(model.graph(), key)?)
    }

    /// Which tier of the host's prefix cache gave this session its prefix
    /// (a session from [`open_cached`](Self::open_cached)): none if it was
    /// not continued from the cache.
    pub fn cached_from(&self) -> Option<CacheTier> {
        self.raw.cached_from()
    }

    /// The underlying resource, for calls the SDK does not wrap.
    pub fn as_raw(&self) -> &draft::Session {
        &self.raw
    }
}

/// A generation in progress: a [`Stream`] of whole-character [`Chunk`]s.
/// Each chunk joins the session as it is read; dropping the generation
/// early cancels it, and the session keeps what was read.
pub struct Generation {
    chunks: Pin<Box<dyn Stream<Item = Chunk>>>,
    finish: FutureReader<Result<Finish, LlmError>>,
}

impl Generation {
    /// How the generation ended: what is left unread is dropped first
    /// (which cancels the generation if it was still running), then this
    /// waits for the host's report. An error is what ended it early.
    pub async fn finish(self) -> Result<Finish, Error> {
        let Self { chunks, finish } = self;
        drop(chunks);
        Ok(finish.await?)
    }

    /// Read the whole generation: its text and how it ended.
    pub async fn collect_text(mut self) -> Result<(String, Finish), Error> {
        let mut text = String::new();
        while let Some(chunk) = futures::StreamExt::next(&mut self).await {
            text.push_str(&chunk.text);
        }
        Ok((text, self.finish().await?))
    }
}

impl Stream for Generation {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.chunks.as_mut().poll_next(cx)
    }
}
