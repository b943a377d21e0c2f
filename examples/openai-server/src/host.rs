//! The session calls the API needs, as each front door makes them: the
//! 0.1.x pull session (`src/main.rs`) or WASI 0.3's async session
//! (`openai-server-p3`). Everything else the API uses (models, tokens,
//! templates, embeddings) is 0.1.x's in both.

use std::time::Duration;

use wasi_nn_llm::{Chunk, Error, Finish, Model, Params};

/// One front door's sessions and generations.
pub trait Host: 'static {
    /// A conversation in the host's KV cache.
    type Session;
    /// One generation in progress.
    type Generation;

    /// A session holding `prompt`, continued from the host's prefix cache.
    async fn open_cached(model: &Model, prompt: &[u32]) -> Result<Self::Session, Error>;
    /// A new session holding the same tokens.
    async fn fork(session: &Self::Session) -> Result<Self::Session, Error>;
    /// Evaluate `text` into the session.
    async fn append(session: &Self::Session, text: &str) -> Result<u32, Error>;
    /// Start generating; bad parameters fail here.
    fn generate(session: &Self::Session, params: &Params) -> Result<Self::Generation, Error>;
    /// The next chunk; none once the generation has ended.
    async fn next(generation: &mut Self::Generation) -> Option<Result<Chunk, Error>>;
    /// How a generation that gave its last chunk ended (an error is what
    /// ended it early).
    async fn end(generation: Self::Generation) -> Result<Option<Finish>, Error>;
    /// Stop a generation early; how it ended.
    async fn cancel(generation: Self::Generation) -> Option<Finish>;
    /// Keep `note` under `key` with the session's conversation.
    fn keep_note(session: &Self::Session, key: &str, note: &[u8]) -> Result<(), Error>;
    /// The note kept under `key`, while the cache holds its conversation.
    fn cached_note(model: &Model, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Which tier of the host's prefix cache gave `session` its prefix
    /// (`"local"` or `"shared"`), where the front door's session says.
    fn cached_from(session: &Self::Session) -> Option<&'static str>;
    /// Wait `duration` without holding up the instance's other requests.
    async fn sleep(duration: Duration);
}
