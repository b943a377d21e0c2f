//! How a generation ends: its reason (never an error) and its token
//! accounting.

/// Why a generation ended (none of these is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    EndOfSequence,
    /// The generation reached its `max-tokens`.
    MaxTokens,
    /// A stop string matched (the string).
    Stop(String),
    /// The reader cancelled or dropped the stream.
    Cancelled,
    /// The session's context filled up (and it does not shift).
    ContextFull,
}

/// Token accounting for one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the session when the generation began.
    pub prompt_tokens: u32,
    /// Of those, how many were reused from the KV cache rather than evaluated for this turn.
    pub cached_tokens: u32,
    /// Tokens delivered in chunks.
    pub generated_tokens: u32,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Its token accounting.
    pub usage: Usage,
}
