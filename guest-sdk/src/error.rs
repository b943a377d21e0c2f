//! One error type for everything a guest can get back.

use std::fmt;

use crate::ModelIdentity;
use crate::raw::wasi::nn::errors::{Error as NnError, ErrorCode};
use crate::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};

/// An error from the extension (typed) or from base wasi-nn (a code and text).
///
/// ```no_run
/// use wasi_nn_llm::{Error, Model, Session};
/// use wasi_nn_llm::raw::wasi_nn_llm::llm::types::Error as LlmError;
/// let session = Session::open(&Model::load("smollm2")?)?;
/// match session.append(&"word ".repeat(100_000)) {
///     Err(Error::Llm(LlmError::PromptTooLong(o))) => eprintln!("{} tokens do not fit in {}", o.requested, o.limit),
///     other => { other?; }
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Error {
    /// The extension's typed error.
    Llm(LlmError),
    /// A base wasi-nn error.
    Nn {
        /// The wasi-nn error code.
        code: ErrorCode,
        /// The host's explanation.
        message: String,
    },
    /// The model's chat template re-renders earlier turns differently, so the
    /// new turn cannot be sent as an append.
    TemplateNotIncremental,
    /// The bytes given to [`Chat::restore`](crate::Chat::restore) are not a
    /// saved conversation at all.
    NotSavedChat,
    /// [`Model::load_verified`](crate::Model::load_verified): the model
    /// behind the name is not the one expected.
    UnexpectedModel {
        /// The name it was loaded by.
        name: String,
        /// The SHA-256 expected.
        expected: String,
        /// What the host says serves the name.
        identity: ModelIdentity,
    },
}

impl From<LlmError> for Error {
    fn from(e: LlmError) -> Self {
        Self::Llm(e)
    }
}

impl From<NnError> for Error {
    fn from(e: NnError) -> Self {
        Self::Nn { code: e.code(), message: e.data() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Llm(e) => match e {
                LlmError::UnsupportedGraph(why) => write!(f, "this graph is not an LLM of this host: {why}"),
                LlmError::NotPermitted(why) => write!(f, "not permitted: {why}"),
                LlmError::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
                LlmError::InvalidToken(t) => {
                    write!(f, "token {} is not in the model's vocabulary of {} tokens", t.token, t.vocab_size)
                }
                LlmError::PromptTooLong(o) => write!(
                    f,
                    "prompt too long: the session would hold {} tokens ({} used), its limit is {}",
                    o.requested, o.used, o.limit
                ),
                LlmError::ContextFull(o) => write!(f, "context full: {} of {} tokens used", o.used, o.limit),
                LlmError::InvalidGrammar(why) => write!(f, "invalid grammar: {why}"),
                LlmError::InvalidSnapshot(kind) => f.write_str(match kind {
                    SnapshotError::Truncated => "not a saved conversation, or one cut short",
                    SnapshotError::Corrupted => {
                        "a saved conversation whose seal this host does not accept: damaged, forged, or saved by \
                         a host with another snapshot key"
                    }
                    SnapshotError::WrongModel => "a conversation saved from another model",
                    SnapshotError::WrongVersion => {
                        "a conversation saved in another snapshot format (an older, unkeyed one, or a newer one)"
                    }
                    SnapshotError::TooLarge => "larger than any saved conversation can be",
                }),
                LlmError::LimitExceeded(l) => write!(f, "the host's limit {} ({}) is reached", l.name, l.max),
                LlmError::SessionBusy => f.write_str("the session is busy: finish or drop its reply first"),
                LlmError::Unsupported(why) => write!(f, "unsupported: {why}"),
                LlmError::EngineFailure(why) => write!(f, "the host's engine failed: {why}"),
            },
            Self::Nn { code, message } => write!(f, "wasi-nn {code:?}: {message}"),
            Self::TemplateNotIncremental => {
                f.write_str("the chat template re-renders earlier turns; the turn cannot be appended")
            }
            Self::NotSavedChat => f.write_str("not a saved conversation"),
            Self::UnexpectedModel { name, expected, identity } => write!(
                f,
                "model {name:?} is not the one expected: its file has SHA-256 {}, not {expected} ({} {} on {})",
                identity.digest, identity.backend, identity.backend_version, identity.device
            ),
        }
    }
}

impl std::error::Error for Error {}
