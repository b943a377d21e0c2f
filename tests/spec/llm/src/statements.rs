//! Every normative statement of the suite: its id, RFC 2119 level and
//! words. One list, so the 0.1.x suite and the WASIp3 suite check the very
//! same words, and a file of its own, with nothing but these types, so that
//! the runner (`tests/conformance.rs`) includes it too and checks
//! `STATEMENTS.md` against it.

/// Requirement levels of RFC 2119.
#[derive(Clone, Copy, PartialEq)]
pub enum Level {
    Must,
    Should,
}

impl Level {
    /// As RFC 2119 writes it, and as a check's report and `STATEMENTS.md` do.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Must => "MUST",
            Self::Should => "SHOULD",
        }
    }
}

/// One normative statement: its id, level and words.
pub struct Statement {
    pub id: &'static str,
    pub level: Level,
    pub text: &'static str,
}

pub const GENERATE_GREEDY_DETERMINISM: Statement = Statement {
    id: "generate.greedy-determinism",
    level: Level::Must,
    text: "generate with temperature 0 MUST produce the same tokens for sessions holding the same tokens",
};
pub const GENERATE_SEED_DETERMINISM: Statement = Statement {
    id: "generate.seed-determinism",
    level: Level::Must,
    text: "generate with the same seed and sampling parameters MUST produce the same tokens",
};
pub const STREAM_UTF8: Statement = Statement {
    id: "stream.utf8",
    level: Level::Must,
    text: "the concatenated chunk texts MUST equal detokenize of the chunk tokens",
};
pub const FINISH_MAX_TOKENS: Statement = Statement {
    id: "finish.max-tokens",
    level: Level::Must,
    text: "a generation that produces max-tokens tokens MUST finish with max-tokens and report them as generated",
};
pub const FINISH_END_OF_SEQUENCE: Statement = Statement {
    id: "finish.end-of-sequence",
    level: Level::Must,
    text: "a generation that ends with an end-of-generation token MUST finish with end-of-sequence, not an error, and MUST NOT deliver that token's text",
};
pub const FINISH_STOP: Statement = Statement {
    id: "finish.stop",
    level: Level::Must,
    text: "a generation that produces a stop string MUST finish with stop(that string) and MUST NOT deliver the stop string or anything after it",
};
pub const FINISH_CANCELLED: Statement = Statement {
    id: "finish.cancelled",
    level: Level::Must,
    text: "cancel MUST end the stream with finish cancelled, and the session MUST keep exactly the delivered tokens",
};
pub const FINISH_CONTEXT_FULL: Statement = Statement {
    id: "finish.context-full",
    level: Level::Must,
    text: "under the refuse policy a generation that fills the context MUST finish with context-full and leave the session at its limit",
};
pub const USAGE_CACHED: Statement = Statement {
    id: "usage.cached",
    level: Level::Must,
    text: "usage cached-tokens MUST count the prompt tokens that were already in the KV cache before the turn's appends",
};
pub const STREAM_NEXT_CHUNK: Statement = Statement {
    id: "stream.next-chunk",
    level: Level::Must,
    text: "next-chunk(max) MUST return at most max tokens per chunk once the first chunk is taken",
};
pub const STREAM_POLLABLE: Statement = Statement {
    id: "stream.pollable",
    level: Level::Must,
    text: "a stream's pollable MUST become ready when try-next has a chunk or the end, and try-next MUST NOT block",
};
pub const STREAM_OUTLIVES_SESSION: Statement = Statement {
    id: "stream.outlives-session",
    level: Level::Must,
    text: "a stream MUST stay readable to its end after its session is dropped",
};
pub const SESSION_FORK_ISOLATION: Statement = Statement {
    id: "session.fork-isolation",
    level: Level::Must,
    text: "a fork and its parent MUST each produce what they would alone: generating in one MUST NOT change the other",
};
pub const SESSION_REWIND: Statement = Statement {
    id: "session.rewind",
    level: Level::Must,
    text: "rewind(n) MUST drop exactly the last n tokens, and generation afterwards MUST equal generation before",
};
pub const SESSION_SAVE_RESTORE: Statement = Statement {
    id: "session.save-restore",
    level: Level::Must,
    text: "a restored session MUST hold the saved tokens and continue exactly as the saved one would have",
};
pub const SESSION_EXACTLY_WHAT_WAS_SEEN: Statement = Statement {
    id: "session.exactly-what-was-seen",
    level: Level::Should,
    text: "after a generation that ended at end-of-sequence, the session SHOULD hold the prompt plus the delivered tokens only",
};
pub const MODEL_TOKENIZE_ROUNDTRIP: Statement = Statement {
    id: "model.tokenize-roundtrip",
    level: Level::Must,
    text: "detokenize(tokenize(text)) MUST return text for plain text, and count-tokens MUST equal what append adds to an empty session",
};
pub const MODEL_INFO: Statement = Statement {
    id: "model.info",
    level: Level::Must,
    text: "model-info MUST report a non-empty vocabulary and a per-session context no larger than the trained one",
};
pub const MODEL_LIST_MODELS: Statement = Statement {
    id: "model.list-models",
    level: Level::Must,
    text: "list-models MUST name the models this component may load, so it MUST include the one it loaded",
};
pub const SESSION_OPEN_CACHED: Statement = Statement {
    id: "session.open-cached",
    level: Level::Must,
    text: "a session from open-cached MUST hold exactly its prompt and continue as a session that appended it",
};
pub const SESSION_OPEN_CACHED_REUSE: Statement = Statement {
    id: "session.open-cached-reuse",
    level: Level::Should,
    text: "after a session from open-cached is dropped with no stream left, open-cached of its tokens plus more \
     SHOULD evaluate only the new ones: usage cached-tokens counts the rest (all but a reply's last token, \
     which was sampled and never evaluated)",
};
pub const EMBEDDINGS_SHAPE: Statement = Statement {
    id: "embeddings.shape",
    level: Level::Must,
    text: "embed MUST return one embedding per input, in order, each of dimensions floats, its tokens the input's \
     token count as append would evaluate it",
};
pub const EMBEDDINGS_TEXT_IS_ITS_TOKENS: Statement = Statement {
    id: "embeddings.text-is-its-tokens",
    level: Level::Must,
    text: "a text input MUST embed as the token ids that append evaluates for it in an empty session",
};
pub const EMBEDDINGS_NORMALIZE: Statement = Statement {
    id: "embeddings.normalize",
    level: Level::Must,
    text: "with normalize, every vector MUST have unit Euclidean length",
};
pub const IDENTITY_DIGEST: Statement = Statement {
    id: "model.identity-digest",
    level: Level::Must,
    text: "model-identity's digest MUST be 64 lowercase hex digits (the model file's SHA-256), the same on every \
           call and for every graph loaded by the same name",
};
pub const IDENTITY_FACTS: Statement = Statement {
    id: "model.identity-facts",
    level: Level::Must,
    text: "model-identity MUST name the format, backend, backend version, host and device, and give the file's \
           non-zero size",
};
pub const CHAT_RENDER_OWN: Statement = Statement {
    id: "chat.render-own-template",
    level: Level::Must,
    text: "chat.render MUST render with the model's own template, and say so (source jinja), exactly when \
           model-info gives one, else with a built-in format it names; the text holds each message's content, \
           and add-generation-prompt extends the same text",
};
pub const CHAT_RENDER_REFUSALS: Statement = Statement {
    id: "chat.render-refusals",
    level: Level::Must,
    text: "chat.render MUST refuse a tool whose parameters are not JSON and a template argument named \
           messages: invalid-argument under the model's own template, unsupported under a built-in format",
};
pub const CHAT_SCHEMA_GRAMMAR: Statement = Statement {
    id: "chat.json-schema-grammar",
    level: Level::Must,
    text: "chat.json-schema-grammar MUST give a grammar whose root rule, as a generate constraint, holds the \
           output to the schema where the host claims gbnf (else the constraint MUST be refused as unsupported), \
           and refuse a schema that is not JSON with invalid-grammar",
};
pub const SESSION_NOTES: Statement = Statement {
    id: "session.notes",
    level: Level::Must,
    text: "a note kept with a session from open-cached MUST come back from cached-note by its key once the \
           session is dropped into the prefix cache, an unknown key gives none, and keep-note on a session not \
           from open-cached MUST be unsupported",
};
pub const EMBEDDINGS_ERRORS: Statement = Statement {
    id: "embeddings.errors",
    level: Level::Must,
    text: "embed MUST refuse an empty list and an empty input with invalid-argument, and an input longer than \
     the model's session context with prompt-too-long",
};
pub const ERROR_INVALID_ARGUMENT: Statement = Statement {
    id: "error.invalid-argument",
    level: Level::Must,
    text: "max-tokens 0 and a NaN temperature MUST be refused with invalid-argument",
};
pub const ERROR_INVALID_TOKEN: Statement = Statement {
    id: "error.invalid-token",
    level: Level::Must,
    text: "append-tokens with an id outside the vocabulary MUST be refused with invalid-token and change nothing",
};
pub const ERROR_PROMPT_TOO_LONG: Statement = Statement {
    id: "error.prompt-too-long",
    level: Level::Must,
    text: "an append that does not fit MUST be refused with prompt-too-long{requested, used, limit} and change nothing",
};
pub const ERROR_CONTEXT_FULL: Statement = Statement {
    id: "error.context-full",
    level: Level::Must,
    text: "generate on a full session under the refuse policy MUST be refused with context-full",
};
pub const MODEL_FEATURES: Statement = Statement {
    id: "model.features",
    level: Level::Must,
    text: "features MUST list each optional feature at most once, and a call that needs a feature it does not \
           list MUST be refused with unsupported, never trap (checked: gbnf, context-shift, fork, save-restore, \
           logprobs, embeddings)",
};
pub const ERROR_INVALID_GRAMMAR: Statement = Statement {
    id: "error.invalid-grammar",
    level: Level::Must,
    text: "a malformed Lark grammar or JSON schema MUST be refused with invalid-grammar, and so MUST a \
           malformed GBNF grammar where the host claims gbnf",
};
pub const ERROR_INVALID_SNAPSHOT: Statement = Statement {
    id: "error.invalid-snapshot",
    level: Level::Must,
    text: "restore MUST refuse a truncated blob (truncated) and a modified one (corrupted or wrong-version) without loading it",
};
pub const ERROR_LIMIT_EXCEEDED: Statement = Statement {
    id: "error.limit-exceeded",
    level: Level::Must,
    text: "a context-length above the host's maximum MUST be refused with limit-exceeded",
};
pub const ERROR_SESSION_BUSY: Statement = Statement {
    id: "error.session-busy",
    level: Level::Must,
    text: "append on a session whose stream is still running MUST be refused with session-busy",
};

/// Every statement, in the order of `STATEMENTS.md`.
pub const ALL: &[&Statement] = &[
    &GENERATE_GREEDY_DETERMINISM,
    &GENERATE_SEED_DETERMINISM,
    &STREAM_UTF8,
    &FINISH_MAX_TOKENS,
    &FINISH_END_OF_SEQUENCE,
    &FINISH_STOP,
    &FINISH_CANCELLED,
    &FINISH_CONTEXT_FULL,
    &USAGE_CACHED,
    &STREAM_NEXT_CHUNK,
    &STREAM_POLLABLE,
    &STREAM_OUTLIVES_SESSION,
    &SESSION_FORK_ISOLATION,
    &SESSION_REWIND,
    &SESSION_SAVE_RESTORE,
    &SESSION_EXACTLY_WHAT_WAS_SEEN,
    &MODEL_TOKENIZE_ROUNDTRIP,
    &MODEL_INFO,
    &MODEL_LIST_MODELS,
    &SESSION_OPEN_CACHED,
    &SESSION_OPEN_CACHED_REUSE,
    &EMBEDDINGS_SHAPE,
    &EMBEDDINGS_TEXT_IS_ITS_TOKENS,
    &EMBEDDINGS_NORMALIZE,
    &IDENTITY_DIGEST,
    &IDENTITY_FACTS,
    &CHAT_RENDER_OWN,
    &CHAT_RENDER_REFUSALS,
    &CHAT_SCHEMA_GRAMMAR,
    &SESSION_NOTES,
    &EMBEDDINGS_ERRORS,
    &ERROR_INVALID_ARGUMENT,
    &ERROR_INVALID_TOKEN,
    &ERROR_PROMPT_TOO_LONG,
    &ERROR_CONTEXT_FULL,
    &MODEL_FEATURES,
    &ERROR_INVALID_GRAMMAR,
    &ERROR_INVALID_SNAPSHOT,
    &ERROR_LIMIT_EXCEEDED,
    &ERROR_SESSION_BUSY,
];
