//! Sessions in and out of the KV cache as snapshots: the envelope is the
//! engine's (`engine/snapshot.rs`), the state inside it the backend's own
//! format.

use super::{Scheduler, open};
use crate::backend::StateError;
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
        let state = self
            .ctx
            .save(seq.id(), &s.tokens[..s.n_past])
            .map_err(|e| LlmError::EngineFailure(format!("saving the KV state: {e}")))?;
        Ok(Snapshot {
            model,
            limit: s.limit as u32,
            seed: s.seed,
            tokens: s.tokens.clone(),
            n_past: s.n_past as u32,
            state,
        })
    }

    /// Load a snapshot the caller has checked (format, seal, model,
    /// token ids, limit) into the empty sequence `seq`.
    pub(super) fn restore(&mut self, seq: SeqId, snapshot: Snapshot) -> Result<(), LlmError> {
        let n_past = snapshot.n_past as usize;
        let tokens = snapshot.tokens;
        let loaded = self.ctx.load(seq.id(), &snapshot.state, n_past).map_err(|e| match e {
            StateError::OtherBackend(backend) => LlmError::InvalidSnapshot(SnapshotError::OtherBackend(backend)),
            StateError::Corrupted => LlmError::InvalidSnapshot(SnapshotError::Corrupted),
        })?;
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
