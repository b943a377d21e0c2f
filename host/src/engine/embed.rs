//! Embeddings: one vector per input, on the model's first lane.
//!
//! The inputs are checked and tokenized here, on the caller's thread; the
//! lane's scheduler evaluates them (`scheduler/embed.rs`) in a context of
//! its own, made at the first call, interleaved chunk by chunk with the
//! lane's generations as a prefill is. That context returns every token's
//! last hidden state (llama.cpp's pooling "none") and the pooling is done
//! here, so an input of any length up to the session context runs in small
//! chunks: llama.cpp's own pooling needs a whole input in one micro-batch,
//! and its output buffer holds logits for every token of it (the vocabulary
//! times the context: gigabytes for gemma3).

use std::sync::Arc;

use super::Engine;
use super::params::Pooling;
use super::protocol::Command;
use super::quota::Quota;
use super::tokens::{checked_tokens, tokenize};
use crate::error::{ContextOverflow, LlmError};

/// Most inputs one call takes (OpenAI's limit for one embeddings request).
pub const MAX_INPUTS: usize = 2048;

/// One input: text or token ids.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    /// Tokenized as a session's first append is (BOS, special tokens parsed).
    Text(String),
    /// Token ids, checked against the vocabulary.
    Tokens(Vec<u32>),
}

/// One input's vector and how many tokens it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// [`Engine::dimensions`] floats.
    pub vector: Vec<f32>,
    /// Tokens the input was.
    pub tokens: u32,
}

impl Engine {
    /// One embedding per input, in order; `pooling` absent takes the
    /// model's own (its GGUF's `pooling_type`), else mean. Every input is
    /// checked before any reaches llama.cpp. The call counts as one
    /// generation of `quota` (its concurrency and time limits).
    pub fn embed(
        &self,
        inputs: &[EmbedInput],
        pooling: Option<Pooling>,
        normalize: bool,
        quota: &Arc<Quota>,
    ) -> Result<Vec<Embedding>, LlmError> {
        if inputs.is_empty() {
            return Err(LlmError::invalid("embeddings need at least one input"));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(LlmError::LimitExceeded { name: "embedding-inputs".into(), max: MAX_INPUTS as u64 });
        }
        let limit = self.ctx_size();
        let mut tokenized = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let tokens: Vec<u32> = match input {
                // Empty text is an empty input on every model, not just on
                // those without a BOS (which would embed the BOS alone).
                EmbedInput::Text(text) if text.is_empty() => Vec::new(),
                EmbedInput::Text(text) => tokenize(self.model(), text, true)?,
                EmbedInput::Tokens(ids) => checked_tokens(self.model(), ids)?,
            };
            if tokens.is_empty() {
                return Err(LlmError::invalid(format!("embedding input {i} is empty")));
            }
            if tokens.len() > limit as usize {
                return Err(LlmError::PromptTooLong(ContextOverflow {
                    requested: tokens.len().min(u32::MAX as usize) as u32,
                    used: 0,
                    limit,
                }));
            }
            tokenized.push(tokens);
        }
        let _permit = quota.start_generation()?;
        let deadline = quota.deadline();
        let pooling = pooling.unwrap_or_else(|| self.own_pooling());
        let lane = &self.0.lanes[0];
        let states = lane.request(|reply| Command::Embed { inputs: tokenized, pooling, deadline, reply })?;
        Ok(states
            .into_iter()
            .map(|(mut vector, tokens)| {
                if normalize {
                    unit_length(&mut vector);
                }
                Embedding { vector, tokens }
            })
            .collect())
    }

    /// Length of the model's vectors.
    pub fn dimensions(&self) -> u32 {
        self.model().embedding_size()
    }

    /// The pooling the GGUF names (`{arch}.pooling_type`, llama.cpp's
    /// numbering), or mean: a decoder LLM names none.
    fn own_pooling(&self) -> Pooling {
        let model = self.model();
        let architecture = model.meta("general.architecture").unwrap_or_default();
        match model.meta(&format!("{architecture}.pooling_type")).and_then(|v| v.parse().ok()) {
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            _ => Pooling::Mean,
        }
    }
}

/// Scale `v` to Euclidean length 1 (a zero vector stays zero), as
/// llama.cpp's `common_embd_normalize` does by default.
fn unit_length(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}
