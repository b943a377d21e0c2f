//! The host's typed error, shared by both front doors.
//!
//! The extension maps it one-to-one onto the WIT `error` variant. Base wasi-nn
//! cannot carry it (see [`crate::wasi_nn`]); its `Display`, which starts
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

/// Why a saved session was refused (used from 0.1.1 on). The WIT fixes its
/// set at five; `WrongKey` and `Unsealed` say more on the host side and
/// reach a guest as `corrupted` and `wrong-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than its header says.
    Truncated,
    /// Its seal does not verify under this host's key (damaged or forged),
    /// or its sealed contents are inconsistent.
    Corrupted,
    /// Sealed by a host with another snapshot key.
    WrongKey,
    /// Written in an unkeyed format (1 or 2) of an earlier host.
    Unsealed,
    /// Saved from another model file.
    WrongModel,
    /// Written in a format version this host does not read.
    WrongVersion,
    /// Larger than any session's state can be.
    TooLarge,
    /// Saved by another backend (named), whose state format this model's
    /// backend does not read.
    OtherBackend(&'static str),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "the snapshot is cut short",
            Self::Corrupted => {
                "the snapshot is damaged or forged: its seal does not verify under this host's key, or what it \
                 holds is inconsistent"
            }
            Self::WrongKey => {
                "the snapshot was sealed by a host with another snapshot key (hosts accept each other's \
                 snapshots only when their operators give them the same --snapshot-key)"
            }
            Self::Unsealed => {
                "the snapshot was written in an unkeyed format (1 or 2) of an earlier host, which this host \
                 no longer accepts: save the session again on this host"
            }
            Self::WrongModel => "the snapshot was saved from another model",
            Self::WrongVersion => "the snapshot was written in a format this host does not read",
            Self::TooLarge => "the snapshot is larger than any session's state",
            Self::OtherBackend(backend) => {
                return write!(
                    f,
                    "the snapshot was saved by the {backend} backend, and this model is served by another, \
                     which cannot read {backend}'s state: restore it where the model runs on {backend}"
                );
            }
        })
    }
}

/// Every way an LLM request can fail. End-of-sequence is not here: it is a
/// finish reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The graph is not one of this host's LLM engines.
    #[error("unsupported-graph: {0}")]
    UnsupportedGraph(String),
    /// The operator's policy forbids it (the reason names model and component).
    #[error("not-permitted: {0}")]
    NotPermitted(String),
    /// A parameter is out of range or malformed.
    #[error("invalid-argument: {0}")]
    InvalidArgument(String),
    /// A token id outside the vocabulary.
    #[error("invalid-token: token {token} is not in the vocabulary of {vocab_size} tokens")]
    InvalidToken {
        /// The id given.
        token: u32,
        /// Ids are below this.
        vocab_size: u32,
    },
    /// An append would not fit in the session's context.
    #[error(
        "prompt-too-long: the session would hold {} tokens ({} already used), its context limit is {}",
        .0.requested, .0.used, .0.limit
    )]
    PromptTooLong(ContextOverflow),
    /// The session is full and cannot generate.
    #[error("context-full: the session holds {} of {} tokens", .0.used, .0.limit)]
    ContextFull(ContextOverflow),
    /// The grammar or JSON schema does not parse.
    #[error("invalid-grammar: {0}")]
    InvalidGrammar(String),
    /// A snapshot was refused.
    #[error("invalid-snapshot: {0}")]
    InvalidSnapshot(SnapshotError),
    /// A policy limit, named by its key.
    #[error("limit-exceeded: {name} (max {max})")]
    LimitExceeded {
        /// The policy key (or `sessions`, `context-length`).
        name: String,
        /// The limit.
        max: u64,
    },
    /// The session has a generation or prefill in flight.
    #[error("session-busy: the session has a generation in progress; finish or drop its stream first")]
    SessionBusy,
    /// The model cannot do it (the reason says what).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The engine failed; the host's fault, not the guest's.
    #[error("engine-failure: {0}")]
    EngineFailure(String),
}

impl LlmError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}
