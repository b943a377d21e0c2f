//! Session and embedding parameters in host terms, shared by the extension
//! (converted from the WIT records) and base wasi-nn (parsed from the
//! `params` JSON tensor). A generation's are the seam's
//! ([`crate::backend::sampling`]): every backend takes them.

use serde::Deserialize;

/// Options fixed when a session is opened.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SessionOptions {
    /// Context wanted, in tokens; the engine's per-session maximum if absent.
    pub context_length: Option<u32>,
    /// Default seed for generations that give none.
    pub seed: Option<u64>,
    /// When the context fills, keep this many first tokens and drop the
    /// oldest after them (llama-server's context shift); refuse if absent.
    pub shift_keep: Option<u32>,
}

/// A feature beyond the core that a model may offer (the extension's
/// `feature`, 0.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Sessions fork.
    Fork,
    /// Sessions save and restore.
    SaveRestore,
    /// Generations report log-probabilities.
    Logprobs,
    /// GBNF grammars (llama.cpp's syntax) constrain sampling.
    Gbnf,
    /// The model embeds text.
    Embeddings,
    /// open-cached continues from what earlier sessions evaluated.
    PrefixCache,
    /// Sessions may shift their context when it fills.
    ContextShift,
}

/// How an input's per-token vectors become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the input's tokens.
    Mean,
    /// The first token's.
    Cls,
    /// The last token's.
    Last,
}
