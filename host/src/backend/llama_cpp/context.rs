//! llama.cpp contexts behind the seam: a lane's (its sequences' KV streams,
//! decoded in batches) and an embedding context.

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::init::backend;
use super::workers::Workers;
use crate::backend::{Batch, ContextSetup, StateError};

/// The first bytes of llama.cpp's sequence-state files (`LLAMA_STATE_SEQ_MAGIC`, 'ggsq').
pub(crate) const STATE_MAGIC: [u8; 4] = 0x6767_7371u32.to_le_bytes();

/// A lane's context: one KV stream per sequence.
pub(super) struct Lane<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    workers: Workers,
}

impl<'m> Lane<'m> {
    /// `flash_attn`: llama.cpp's `flash_attn_type`.
    pub fn new(model: &'m LlamaModel, setup: &ContextSetup, flash_attn: i32) -> Result<Self, String> {
        let threads = setup.threads as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(setup.ctx_size * setup.sequences))
            .with_n_batch(setup.batch)
            .with_n_ubatch(setup.batch)
            .with_n_seq_max(setup.sequences)
            // One KV stream per sequence: a session's attention never sees
            // (or is rounded differently because of) another session's cells.
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash_attn)
            .with_no_perf(false);
        let mut ctx = model.new_context(backend().map_err(|e| e.to_string())?, params).map_err(|e| e.to_string())?;
        warm_up(model, &mut ctx);
        let capacity = (setup.batch as usize).max(setup.sequences as usize);
        Ok(Self { ctx, batch: LlamaBatch::new(capacity, 1), workers: Workers::new(setup.threads) })
    }
}

/// The first decode on a new context costs 80–150 ms extra; pay it at load time.
fn warm_up(model: &LlamaModel, ctx: &mut LlamaContext<'_>) {
    let mut batch = LlamaBatch::new(1, 1);
    let token = model.vocab().bos();
    let token = if (0..model.n_vocab()).contains(&token.0) { token } else { LlamaToken(0) };
    if batch.add(token, 0, &[0], true).is_ok() {
        let _ = ctx.decode(&mut batch);
    }
    ctx.clear_kv_cache();
}

/// `batch` as llama.cpp's.
fn fill(into: &mut LlamaBatch<'static>, batch: &Batch) -> Result<(), String> {
    into.clear();
    for t in batch.tokens() {
        into.add(LlamaToken(t.token as i32), t.pos as i32, &[t.seq as i32], t.logits)
            .map_err(|e| format!("batch: {e}"))?;
    }
    Ok(())
}

impl crate::backend::Context for Lane<'_> {
    fn decode(&mut self, batch: &Batch) -> Result<(), String> {
        fill(&mut self.batch, batch)?;
        self.ctx.decode(&mut self.batch).map_err(|e| e.to_string())
    }

    fn logits(&self, index: usize) -> &[f32] {
        self.ctx.get_logits_ith(index as i32)
    }

    fn clear(&mut self, seq: u32) -> Result<(), String> {
        self.ctx.clear_kv_cache_seq(Some(seq), None, None).map(|_| ()).map_err(|e| e.to_string())
    }

    fn remove(&mut self, seq: u32, from: u32, to: Option<u32>) -> Result<(), String> {
        self.ctx.kv_cache_seq_rm(seq as i32, Some(from), to).map_err(|e| e.to_string())
    }

    fn shift(&mut self, seq: u32, from: u32, delta: i32) -> Result<(), String> {
        self.ctx.kv_cache_seq_add(seq as i32, Some(from), None, delta).map_err(|e| e.to_string())
    }

    /// The whole stream copied inside llama.cpp (the only cross-stream copy
    /// it allows), applied at the next decode.
    fn copy(&mut self, from: u32, to: u32) -> Result<(), String> {
        self.ctx.copy_kv_cache_seq(from as i32, to as i32, None, None).map_err(|e| e.to_string())
    }

    /// llama.cpp's sequence-state file (the safe way to move a sequence's state).
    fn save(&mut self, seq: u32, tokens: &[u32]) -> Result<Vec<u8>, String> {
        let file = StateFile::new(seq);
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
        self.ctx.state_seq_save_file(&file.0, seq as i32, &tokens).map_err(|e| e.to_string())?;
        std::fs::read(&file.0).map_err(|e| format!("reading the KV state: {e}"))
    }

    fn load(&mut self, seq: u32, state: &[u8], tokens: usize) -> Result<Vec<u32>, StateError> {
        if !state.starts_with(&STATE_MAGIC) {
            return Err(StateError::foreign(state));
        }
        let file = StateFile::new(seq);
        std::fs::write(&file.0, state).map_err(|e| {
            tracing::warn!("writing the KV state: {e}");
            StateError::Corrupted
        })?;
        let (loaded, _) =
            self.ctx.state_seq_load_file(&file.0, seq as i32, tokens).map_err(|_| StateError::Corrupted)?;
        Ok(loaded.into_iter().map(|t| t.0 as u32).collect())
    }

    fn use_threads(&mut self, threads: u32) {
        self.workers.run_on(&mut self.ctx, threads);
    }

    fn rest(&mut self) {
        self.workers.rest(&self.ctx);
    }
}

/// A scratch file for llama.cpp's state API, removed when dropped.
struct StateFile(std::path::PathBuf);

impl StateFile {
    fn new(seq: u32) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("wasi-nn-llm-{}-{seq}-{n}.state", std::process::id());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An embedding context: one sequence of up to a session's context, every
/// token's hidden state out (pooled by the engine).
pub(super) struct Embedding<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    workers: Workers,
}

impl<'m> Embedding<'m> {
    pub fn new(model: &'m LlamaModel, setup: &ContextSetup, flash_attn: i32) -> Result<Self, String> {
        let threads = setup.threads as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(setup.ctx_size))
            .with_n_batch(setup.batch)
            .with_n_ubatch(setup.batch)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::None)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash_attn);
        let backend = backend().map_err(|e| e.to_string())?;
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| format!("llama.cpp could not make the embedding context: {e}"))?;
        Ok(Self { ctx, batch: LlamaBatch::new(setup.batch as usize, 1), workers: Workers::new(setup.threads) })
    }
}

impl crate::backend::Embedder for Embedding<'_> {
    fn decode(&mut self, tokens: &[u32], start: usize) -> Result<(), String> {
        self.batch.clear();
        for (i, &token) in tokens.iter().enumerate() {
            self.batch
                .add(LlamaToken(token as i32), (start + i) as i32, &[0], true)
                .map_err(|e| format!("batch: {e}"))?;
        }
        self.ctx.decode(&mut self.batch).map_err(|e| e.to_string())
    }

    fn hidden(&self, index: usize) -> Result<&[f32], String> {
        self.ctx.embeddings_ith(index as i32).map_err(|e| e.to_string())
    }

    fn clear(&mut self) {
        self.ctx.clear_kv_cache();
    }

    fn use_threads(&mut self, threads: u32) {
        self.workers.run_on(&mut self.ctx, threads);
    }

    fn rest(&mut self) {
        self.workers.rest(&self.ctx);
    }
}
