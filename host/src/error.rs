//! The host's typed error, shared by both front doors.
//!
//! The extension maps it one-to-one onto the WIT `error` variant. Base wasi-nn
//! cannot carry it (see [`crate::backend::ggml`]); its `Display`, which starts
//! with the WIT case name, is for host-side logs and errors.

/// Which limit a context overflow hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOverflow {
    /// Tokens the request needed in the session (existing plus new).
    pub requested: u32,
    /// Tokens already in the session.
    pub used: u32,
    /// The session's context limit.
    pub limit: u32,
}

/// Why a saved session was refused (used from 0.1.1 on; the WIT fixes the set now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotError {
    Truncated,
    Corrupted,
    WrongModel,
    WrongVersion,
    TooLarge,
}

/// Every way an LLM request can fail. End-of-sequence is not here: it is a
/// finish reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("unsupported-graph: {0}")]
    UnsupportedGraph(String),
    #[error("not-permitted: {0}")]
    NotPermitted(String),
    #[error("invalid-argument: {0}")]
    InvalidArgument(String),
    #[error("invalid-token: token {token} is not in the vocabulary of {vocab_size} tokens")]
    InvalidToken { token: u32, vocab_size: u32 },
    #[error(
        "prompt-too-long: the session would hold {} tokens ({} already used), its context limit is {}",
        .0.requested, .0.used, .0.limit
    )]
    PromptTooLong(ContextOverflow),
    #[error("context-full: the session holds {} of {} tokens", .0.used, .0.limit)]
    ContextFull(ContextOverflow),
    #[error("invalid-grammar: {0}")]
    InvalidGrammar(String),
    #[error("invalid-snapshot: {0:?}")]
    InvalidSnapshot(SnapshotError),
    #[error("limit-exceeded: {name} (max {max})")]
    LimitExceeded { name: String, max: u64 },
    #[error("session-busy: the session has a generation in progress; finish or drop its stream first")]
    SessionBusy,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("engine-failure: {0}")]
    EngineFailure(String),
}

impl LlmError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}
