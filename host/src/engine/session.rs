//! A session handle: one llama.cpp sequence of a model's context, owned by one
//! guest resource. Its calls block the calling guest's thread only.

use std::sync::mpsc;

use super::params::GenerateParams;
use super::scheduler::Command;
use super::stream::TokenStream;
use super::{Engine, sampler};
use crate::error::LlmError;

/// A conversation in the model's KV cache. Dropping it frees its sequence.
pub struct Session {
    engine: Engine,
    seq: i32,
}

impl Session {
    pub(super) fn new(engine: Engine, seq: i32) -> Self {
        Self { engine, seq }
    }

    /// The model this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Tokenize `text` and evaluate it into the KV cache; returns how many
    /// tokens were added. Blocks until the prefill is done.
    pub fn append(&self, text: &str) -> Result<u32, LlmError> {
        self.request(|reply| Command::Append { seq: self.seq, text: text.to_owned(), reply })
    }

    /// Start generating from the end of the session.
    pub fn generate(&self, params: &GenerateParams) -> Result<TokenStream, LlmError> {
        sampler::validate(params)?;
        let shared = self.request(|reply| Command::Generate { seq: self.seq, params: params.clone(), reply })?;
        Ok(TokenStream::new(shared, self.engine.0.commands.clone(), self.seq))
    }

    fn request<T>(&self, command: impl FnOnce(super::scheduler::Reply<T>) -> Command) -> Result<T, LlmError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.engine.send(command(reply))?;
        answer.recv().map_err(|_| LlmError::EngineFailure("the model's scheduler has stopped".into()))?
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The scheduler handles commands in order, so the slot can be reused
        // at once: a later Open of this sequence comes after this Close.
        let _ = self.engine.send(Command::Close { seq: self.seq });
        self.engine.release_slot(self.seq);
    }
}
