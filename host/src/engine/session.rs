//! A session handle: one llama.cpp sequence in one of a model's lanes, owned
//! by one guest resource. Its calls block the calling guest's thread only.

use std::sync::Arc;

use llama_cpp_2::token::LlamaToken;

use super::params::GenerateParams;
use super::protocol::{Command, Input, Reply, SeqId};
use super::slot::Slot;
use super::snapshot::Snapshot;
use super::stream::TokenStream;
use super::{Engine, sampler};
use crate::error::LlmError;

/// A conversation in the model's KV cache. Its sequence is freed when the
/// session and every stream it started are dropped.
pub struct Session {
    engine: Engine,
    slot: Arc<Slot>,
    limit: u32,
    /// The context-shift setting it was opened with (a fork inherits it).
    shift: Option<u32>,
}

impl Session {
    /// A session of `engine` on `slot`.
    pub(super) fn new(engine: Engine, slot: Slot, limit: u32, shift: Option<u32>) -> Self {
        Self { engine, slot: Arc::new(slot), limit, shift }
    }

    pub(super) fn seq(&self) -> SeqId {
        self.slot.seq()
    }

    pub(super) fn send(&self, command: Command) -> Result<(), LlmError> {
        self.slot.send(command)
    }

    /// Most tokens this session may hold.
    pub fn context_limit(&self) -> u32 {
        self.limit
    }

    /// Which of the model's lanes (llama.cpp contexts) holds this session.
    pub fn lane(&self) -> usize {
        self.engine.lane_index(&self.slot.lane)
    }

    /// The model this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Tokenize `text` and evaluate it into the KV cache; returns how many
    /// tokens were added. Blocks until the prefill is done.
    pub fn append(&self, text: &str) -> Result<u32, LlmError> {
        self.request(|reply| Command::Append { seq: self.slot.seq(), input: Input::Text(text.to_owned()), reply })
    }

    /// Evaluate token ids into the KV cache, each checked against the
    /// vocabulary first; returns how many were added.
    pub fn append_tokens(&self, tokens: &[u32]) -> Result<u32, LlmError> {
        let n_vocab = self.engine().model().n_vocab();
        let tokens = tokens.iter().map(|&t| sampler::checked_token(t, n_vocab)).collect::<Result<Vec<_>, _>>()?;
        self.request(|reply| Command::Append { seq: self.slot.seq(), input: Input::Tokens(tokens), reply })
    }

    /// The tokens the session holds.
    pub fn tokens(&self) -> Result<Vec<u32>, LlmError> {
        let tokens: Vec<LlamaToken> = self.request(|reply| Command::Tokens { seq: self.slot.seq(), reply })?;
        Ok(tokens.into_iter().map(|t| t.0 as u32).collect())
    }

    /// Raw logits (one per vocabulary entry) for the next token, computed
    /// from the session's last token: what a tensor-only API returns.
    pub fn logits(&self) -> Result<Vec<f32>, LlmError> {
        self.request(|reply| Command::Logits { seq: self.slot.seq(), reply })
    }

    /// Drop the last `n` tokens; returns the new length.
    pub fn rewind(&self, n: u32) -> Result<u32, LlmError> {
        self.request(|reply| Command::Rewind { seq: self.slot.seq(), n, reply })
    }

    /// Drop every token.
    pub fn reset(&self) -> Result<(), LlmError> {
        self.request(|reply| Command::Reset { seq: self.slot.seq(), reply })
    }

    /// A new session with the same tokens and a copy of the KV cache: in
    /// this session's lane (a cell copy) when it has a free sequence, else
    /// through the state API into another lane.
    pub fn fork(&self) -> Result<Session, LlmError> {
        let engine = self.engine();
        let lease = self.slot.lease.renew()?;
        let lane = &self.slot.lane;
        let Some(child) = lane.take() else {
            // An in-process copy, never encoded: no model identity needed.
            let snapshot = self.request(|reply| Command::Save { seq: self.seq(), model: [0; 32], reply })?;
            let (lane, seq) = engine.take_slot()?;
            return engine.restore_into(Slot::new(lane, seq, lease), snapshot, self.shift);
        };
        // From here the child owns its slot: dropping it on failure frees it.
        let forked = Session::new(engine.clone(), Slot::new(lane.clone(), child, lease), self.limit, self.shift);
        self.request(|reply| Command::Fork { seq: self.seq(), child, reply })?;
        Ok(forked)
    }

    /// Start generating from the end of the session.
    pub fn generate(&self, params: &GenerateParams) -> Result<TokenStream, LlmError> {
        sampler::validate(params)?;
        let mut params = params.clone();
        let deadline = self.slot.lease.quota().admit(&mut params)?;
        let permit = self.slot.lease.quota().start_generation()?;
        let shared = self.request(|reply| Command::Generate { seq: self.slot.seq(), params, deadline, reply })?;
        Ok(TokenStream::new(shared, self.slot.clone(), permit))
    }

    /// The session as a versioned blob bound to this model (see
    /// [`snapshot`](super::snapshot)); [`Engine::restore_session`] reads it back.
    pub fn save(&self) -> Result<Vec<u8>, LlmError> {
        let model = self.engine().identity()?;
        let snapshot: Snapshot = self.request(|reply| Command::Save { seq: self.slot.seq(), model, reply })?;
        Ok(snapshot.encode())
    }

    pub(super) fn load(&self, snapshot: Snapshot) -> Result<(), LlmError> {
        self.request(|reply| Command::Restore { seq: self.slot.seq(), snapshot, reply })
    }

    fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, LlmError> {
        self.slot.request(command)
    }
}
