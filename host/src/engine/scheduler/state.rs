//! Sessions in and out of the KV cache as snapshots, through llama.cpp's
//! sequence-state files (the safe way to move a sequence's state).

use llama_cpp_2::token::LlamaToken;

use super::{Scheduler, open};
use crate::engine::protocol::SeqId;
use crate::engine::snapshot::Snapshot;
use crate::error::{LlmError, SnapshotError};

impl Scheduler<'_> {
    /// `seq` as a snapshot of the model with identity `model`.
    pub(super) fn save(&mut self, seq: SeqId, model: [u8; 32]) -> Result<Snapshot, LlmError> {
        if self.sequence(seq)?.copy_pending {
            self.settle(seq)?;
        }
        let s = open(&mut self.seqs, seq)?;
        let file = StateFile::new(seq);
        self.ctx
            .state_seq_save_file(&file.0, seq.llama(), &s.tokens[..s.n_past])
            .map_err(|e| LlmError::EngineFailure(format!("saving the KV state: {e}")))?;
        let state =
            std::fs::read(&file.0).map_err(|e| LlmError::EngineFailure(format!("reading the KV state: {e}")))?;
        Ok(Snapshot {
            model,
            limit: s.limit as u32,
            seed: s.seed,
            tokens: s.tokens.iter().map(|t| t.0 as u32).collect(),
            n_past: s.n_past as u32,
            state,
        })
    }

    /// Load a snapshot the caller has checked (format, seal, model,
    /// token ids, limit) into the empty sequence `seq`.
    pub(super) fn restore(&mut self, seq: SeqId, snapshot: Snapshot) -> Result<(), LlmError> {
        let file = StateFile::new(seq);
        std::fs::write(&file.0, &snapshot.state)
            .map_err(|e| LlmError::EngineFailure(format!("writing the KV state: {e}")))?;
        let n_past = snapshot.n_past as usize;
        let tokens: Vec<LlamaToken> = snapshot.tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
        let (loaded, _) = self
            .ctx
            .state_seq_load_file(&file.0, seq.llama(), n_past)
            .map_err(|_| LlmError::InvalidSnapshot(SnapshotError::Corrupted))?;
        if loaded[..] != tokens[..n_past] {
            return Err(LlmError::InvalidSnapshot(SnapshotError::Corrupted));
        }
        let s = self.sequence(seq)?;
        s.limit = snapshot.limit as usize;
        s.seed = snapshot.seed;
        s.tokens = tokens;
        s.n_past = n_past;
        s.turn_start = None;
        Ok(())
    }
}

/// A scratch file for llama.cpp's state API, removed when dropped.
struct StateFile(std::path::PathBuf);

impl StateFile {
    fn new(seq: SeqId) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("wasi-nn-llm-{}-{}-{n}.state", std::process::id(), seq.index());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
