//! Guest SDK for the wasi-nn LLM extension (`wasm32-wasip2`).
//!
//! Models come from the host operator's registry through wasi:nn
//! `load-by-name`; a [`Session`] keeps a conversation in the host's KV cache,
//! and a [`TokenStream`] yields whole-character [`Chunk`]s as they are
//! generated. [`Chat`] turns that into a multi-turn chat that only ever sends
//! the new turn.
//!
//! ```no_run
//! use wasi_nn_llm::{Chat, Model, Params};
//! let model = Model::load("smollm2")?;
//! let mut chat = Chat::new(&model)?;
//! let mut reply = chat.send("What is the capital of France?", &Params::greedy().max_tokens(64))?;
//! for chunk in &mut reply {
//!     print!("{}", chunk?.text);
//! }
//! # Ok::<(), wasi_nn_llm::Error>(())
//! ```
//!
//! With the `p3` feature, the `p3` module offers the session on WASI 0.3
//! (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`): `async` calls and generations
//! that are a `futures::Stream`, for guests exporting WASI 0.3's
//! `wasi:cli/run` or `wasi:http/handler`.

#![warn(missing_docs)]

mod chat;
mod error;
mod model;
#[cfg(feature = "p3")]
pub mod p3;
mod params;
pub mod reasoning;
mod session;
pub mod tool_calls;

/// The raw bindings of the `wasi-nn-llm:llm/llm` world (base wasi-nn and
/// `wasi:io` included), for what the idiomatic types do not cover; the WIT
/// (`wit/llm.wit`) documents every item.
#[allow(missing_docs)]
pub mod raw {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasi-nn-llm:llm/llm",
        generate_all,
        additional_derives: [PartialEq],
    });
}

pub use chat::{Chat, Reply, turn_delta};
pub use error::Error;
pub use model::Model;
pub use params::Params;
/// Wait on several pollables (e.g. [`TokenStream::subscribe`]); returns the
/// indices of those that are ready.
pub use raw::wasi::io::poll::{Pollable, poll};
/// Chat templates with tools and reasoning ([`Model::render_chat`]).
pub use raw::wasi_nn_llm::llm::chat::{
    ChatMessage, RenderOptions, Rendered, TemplateSource, TemplateValue, Tool, ToolCall,
};
pub use raw::wasi_nn_llm::llm::embeddings::{EmbedInput, EmbedOptions, Embedding, Pooling};
/// Which model file and engine serve a model ([`Model::identity`]).
pub use raw::wasi_nn_llm::llm::model::{Decoding, Identity as ModelIdentity};
pub use raw::wasi_nn_llm::llm::types::{
    Chunk, Feature, Finish, FinishReason, Message, ModelMetadata, OverflowPolicy, PortableConstraint, SessionOptions,
    TokenLogprob, Usage,
};
pub use session::{Session, TokenStream};

/// The GBNF grammar (start rule `root`) of a JSON schema, as the host's
/// `json-schema` constraint would use it, to compose into a grammar of
/// one's own: a tool call inside a template's markers, say (extension 0.1.5).
pub fn json_schema_grammar(schema: &str) -> Result<String, Error> {
    Ok(raw::wasi_nn_llm::llm::chat::json_schema_grammar(schema)?)
}
