//! The engine seam: what an inference backend must do for the engine
//! (`crate::engine`) to run sessions on it, and the backends there are.
//!
//! A backend is a model it has loaded ([`Model`]: tokenizer, metadata,
//! sampling) and the contexts it makes of it ([`Context`]: decode a batch
//! of tokens of several sequences, give the logits, and keep each
//! sequence's KV cache, which the engine rewinds, forks, shifts, saves and
//! restores by sequence id). Everything above the seam is the engine's and
//! is the same whichever backend runs: the lanes and their scheduler (which
//! batches sessions into decodes), sessions, streams and their
//! whole-character chunks, stop strings, logprobs, the prefix cache,
//! quotas, snapshots' sealed envelope, chat templates, and every front
//! door. The engine never sees a backend's types: tokens are `u32`, logits
//! `&[f32]`, saved state opaque bytes in the backend's own format.
//!
//! One folder per backend: [`llama_cpp`] (llama.cpp, through llama-cpp-2)
//! and [`candle`] (Hugging Face's pure-Rust tensor library).

pub mod candle;
pub mod info;
pub mod llama_cpp;
pub mod sampling;

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::LlmError;
pub use info::ModelInfo;
pub use llama_cpp::{Attention, Chosen, FlashAttention};
pub use sampling::{Constraint, GenerateParams};

/// Which backend serves a model (the operator's `--model NAME=PATH,backend=…`
/// and the policy's `backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// llama.cpp (the default).
    #[default]
    LlamaCpp,
    /// candle.
    Candle,
}

impl BackendKind {
    /// The name the operator writes and a guest reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::LlamaCpp => "llama.cpp",
            Self::Candle => "candle",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "llama.cpp" | "llama-cpp" | "llamacpp" => Ok(Self::LlamaCpp),
            "candle" => Ok(Self::Candle),
            other => Err(format!("{other:?} is not a backend this host has (llama.cpp, candle)")),
        }
    }
}

/// How the operator runs a model, as far as its backend is concerned.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// CPU threads for decoding and prefill.
    pub threads: u32,
    /// Most tokens one session may hold (before the model's own limit).
    pub ctx_size: u32,
    /// Layers offloaded to a GPU; `None`: all where a GPU is usable.
    pub gpu_layers: Option<u32>,
    /// Flash attention on, off, or measured at load (llama.cpp's).
    pub flash_attn: FlashAttention,
}

impl LoadConfig {
    /// Tokens one session may hold on a model trained for `trained`: the
    /// operator's `ctx_size`, at least 16 and at most the trained context.
    pub fn session_context(&self, trained: u32) -> u32 {
        self.ctx_size.clamp(16, trained.max(16))
    }
}

/// Load the GGUF at `path` with `kind`.
pub fn load(kind: BackendKind, name: &str, path: &Path, config: &LoadConfig) -> anyhow::Result<Arc<dyn Model>> {
    match kind {
        BackendKind::LlamaCpp => Ok(Arc::new(llama_cpp::LlamaCpp::load(name, path, config)?)),
        BackendKind::Candle => Ok(Arc::new(candle::Candle::load(name, path, config)?)),
    }
}

/// One context's shape: `sequences` sequences of `ctx_size` tokens each,
/// decoded on `threads` threads, in batches of at most `batch` tokens.
#[derive(Debug, Clone, Copy)]
pub struct ContextSetup {
    /// Tokens per sequence.
    pub ctx_size: u32,
    /// Sequences (sessions) the context holds.
    pub sequences: u32,
    /// Threads it decodes on when it has them all.
    pub threads: u32,
    /// Most tokens in one decode.
    pub batch: u32,
}

/// One token of a batch: its id, its position in its sequence, the
/// sequence, and whether the decode must give its logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchToken {
    /// A token id the engine has checked against the vocabulary.
    pub token: u32,
    /// Its position, below the sequence's limit.
    pub pos: u32,
    /// The sequence, below the context's sequence count.
    pub seq: u32,
    /// Whether [`Context::logits`] must answer for it.
    pub logits: bool,
}

/// The tokens of one decode, in the order the engine added them; a
/// sequence's tokens come in position order, each right after those the
/// sequence already holds.
#[derive(Debug, Default)]
pub struct Batch(Vec<BatchToken>);

impl Batch {
    /// An empty batch with room for `capacity` tokens.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Empty it for the next decode.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Add a token (see [`BatchToken`]).
    pub fn add(&mut self, token: u32, pos: usize, seq: u32, logits: bool) {
        self.0.push(BatchToken { token, pos: pos as u32, seq, logits });
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> &[BatchToken] {
        &self.0
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A model as a backend loaded it: read-only and shared by every lane and
/// guest thread.
pub trait Model: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The backend library and its version as this host is built with it
    /// (what a guest reads in `model-identity`).
    fn version(&self) -> (&'static str, &'static str);

    /// Token ids are below this.
    fn n_vocab(&self) -> u32;

    /// Token ids for `text` (UTF-8, except where a stop string cut a
    /// character: see `engine/text.rs`); `add_special` adds BOS where the
    /// model uses one, `parse_special` turns marker text into special
    /// tokens. The text's size is checked by the engine first.
    fn tokenize(&self, text: &[u8], add_special: bool, parse_special: bool) -> Vec<u32>;

    /// The bytes of checked tokens, special ones written out when
    /// `render_special`.
    fn detokenize(&self, tokens: &[u32], render_special: bool) -> Vec<u8>;

    /// The bytes a generated token adds to the text (control tokens add none).
    fn piece(&self, token: u32) -> Vec<u8>;

    /// Whether generating `token` ends the generation (end of sequence or of turn).
    fn is_end_of_generation(&self, token: u32) -> bool;

    /// The token a sequence starts with, where the model wants one.
    fn bos(&self) -> Option<u32>;

    /// A GGUF metadata value, as text.
    fn meta(&self, key: &str) -> Option<String>;

    /// The model's metadata (the engine fills in its name and limits).
    fn info(&self) -> ModelInfo;

    /// The context length the model was trained with.
    fn trained_context(&self) -> u32;

    /// Bytes of KV cache one token of one sequence holds (what a quota reserves).
    fn kv_bytes_per_token(&self) -> u64;

    /// Width of the hidden states [`Embedder::hidden`] gives.
    fn embedding_size(&self) -> u32;

    /// Why sessions of this model cannot shift their context, if they cannot.
    fn cannot_shift(&self) -> Option<String>;

    /// Where the layers run: `cpu`, or the GPU and how many layers.
    fn device(&self) -> &str;

    /// Whether the backend applies GBNF grammars (llama.cpp's own syntax).
    fn gbnf(&self) -> bool {
        false
    }

    /// The attention kernel, where the backend chooses one (llama.cpp).
    fn attention(&self) -> Option<&Attention> {
        None
    }

    /// A context holding `setup.sequences` sessions, ready to decode.
    fn new_context(&self, setup: &ContextSetup) -> Result<Box<dyn Context + '_>, String>;

    /// A context giving every token's last hidden state, one sequence of up
    /// to `setup.ctx_size` tokens at a time.
    fn new_embedder(&self, setup: &ContextSetup) -> Result<Box<dyn Embedder + '_>, String>;

    /// A sampler for `params` (already validated), its repetition window
    /// primed with `history`; `seed` is the session's default and `context`
    /// its limit.
    fn sampler(
        &self,
        params: &GenerateParams,
        seed: Option<u64>,
        history: &[u32],
        context: usize,
    ) -> Result<Box<dyn Sampler>, LlmError>;

    /// llama.cpp's chat formats: `template` (the operator's, else the
    /// model's own) matched to one it knows, else its built-in format of
    /// the model's family; `None` where the backend has no such formats.
    fn apply_known_template(
        &self,
        template: Option<&str>,
        messages: &[(String, String)],
        add_assistant: bool,
    ) -> Option<Result<String, LlmError>> {
        let _ = (template, messages, add_assistant);
        None
    }

    /// The built-in format of the model's family, for a model without a
    /// template: its name and the rendered text.
    fn apply_family_template(
        &self,
        messages: &[(String, String)],
        add_assistant: bool,
    ) -> Result<(&'static str, String), LlmError> {
        let _ = (messages, add_assistant);
        Err(LlmError::Unsupported(format!("the {} backend has no built-in chat formats", self.kind())))
    }

    /// The backend's own model type, for tests that check it against the
    /// backend library directly.
    fn as_any(&self) -> &dyn Any;
}

/// One context of a model: the KV caches of its sequences and the last
/// decode's logits. It lives on one lane's thread; sequence ids and
/// positions are the engine's, already checked against the setup.
pub trait Context {
    /// Evaluate the batch; afterwards [`Context::logits`] answers for its
    /// tokens marked `logits`. On failure the sequences hold what they held.
    fn decode(&mut self, batch: &Batch) -> Result<(), String>;

    /// The logits of the token at `index` in the last decode's batch.
    fn logits(&self, index: usize) -> &[f32];

    /// Drop `seq`'s whole cache.
    fn clear(&mut self, seq: u32) -> Result<(), String>;

    /// Drop `seq`'s cells at positions `from..to` (`to`: to the end). An
    /// error means the model cannot drop them (recurrent state), and the
    /// sequence is then cleared and evaluated again by the engine.
    fn remove(&mut self, seq: u32, from: u32, to: Option<u32>) -> Result<(), String>;

    /// Move `seq`'s cells from position `from` on by `delta` (context shift).
    fn shift(&mut self, seq: u32, from: u32, delta: i32) -> Result<(), String>;

    /// Make `to` (cleared) a copy of `from`'s cache. A backend may apply it
    /// at the next decode (llama.cpp does).
    fn copy(&mut self, from: u32, to: u32) -> Result<(), String>;

    /// `seq`'s cache holding `tokens`, in the backend's own format.
    fn save(&mut self, seq: u32, tokens: &[u32]) -> Result<Vec<u8>, String>;

    /// Load a [`Context::save`] result into the cleared `seq`; returns the
    /// tokens it holds (the engine checks them against the snapshot's).
    fn load(&mut self, seq: u32, state: &[u8], tokens: usize) -> Result<Vec<u32>, StateError>;

    /// Run the next decodes on `threads` threads.
    fn use_threads(&mut self, threads: u32);

    /// Nothing to decode for now: let the context's workers sleep.
    fn rest(&mut self);
}

/// Why a saved state did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Written by another backend (named) in its own format.
    OtherBackend(&'static str),
    /// Not a state this backend wrote, or damaged.
    Corrupted,
}

impl StateError {
    /// Why a state that does not start with the loading backend's own
    /// marker is refused: another backend's, by its marker, or damage.
    pub(crate) fn foreign(state: &[u8]) -> Self {
        if state.starts_with(&llama_cpp::STATE_MAGIC) {
            Self::OtherBackend(BackendKind::LlamaCpp.name())
        } else if state.starts_with(&candle::STATE_MAGIC) {
            Self::OtherBackend(BackendKind::Candle.name())
        } else {
            Self::Corrupted
        }
    }
}

/// A context that gives hidden states instead of logits (embeddings).
pub trait Embedder {
    /// Evaluate `tokens` at positions from `start` in its one sequence.
    fn decode(&mut self, tokens: &[u32], start: usize) -> Result<(), String>;

    /// The last hidden state of the token at `index` of the last decode.
    fn hidden(&self, index: usize) -> Result<&[f32], String>;

    /// Forget the sequence, for the next input.
    fn clear(&mut self);

    /// Run the next decodes on `threads` threads.
    fn use_threads(&mut self, threads: u32);

    /// Nothing to decode for now: let the context's workers sleep.
    fn rest(&mut self);
}

/// Picks each next token of one generation from the logits.
pub trait Sampler: Send {
    /// The next token from `logits` (the vocabulary's width); the sampler
    /// then counts it as accepted (penalties, grammar state).
    fn sample(&mut self, logits: &[f32]) -> u32;
}

#[cfg(test)]
mod tests {
    /// What `model-identity` names as each backend's version is the crate
    /// Cargo.lock pins.
    #[test]
    fn the_backend_versions_are_the_ones_cargo_lock_pins() {
        let lock = include_str!("../../../Cargo.lock");
        for (backend, pinned) in [super::llama_cpp::BACKEND, super::candle::VERSION] {
            let (crate_name, version) = pinned.split_once(' ').expect("crate and version");
            assert!(
                lock.contains(&format!("name = \"{crate_name}\"\nversion = \"{version}\"")),
                "Cargo.lock pins another {crate_name}: update {backend}'s version"
            );
        }
    }
}
