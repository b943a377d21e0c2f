//! The scheduler's KV-cache operations: rewinding, forking, context shift,
//! and making a sequence's last token evaluable again. Each keeps the
//! [`Sequence`](super::sequence::Sequence) mirror and the context's cache in step.

use super::{Scheduler, open};
use crate::engine::protocol::SeqId;
use crate::error::{ContextOverflow, LlmError};

impl Scheduler<'_> {
    /// Drop `seq`'s whole KV stream. A failure leaves cells nobody reads
    /// (the sequence is closed or starts over), so it is only logged.
    pub(super) fn clear_kv(&mut self, seq: SeqId) {
        if let Err(e) = self.ctx.clear(seq.id()) {
            tracing::warn!(seq = seq.index(), "clearing a sequence's KV cache failed: {e}");
        }
    }

    /// Drop `seq`'s KV cells from position `keep` on, after a failed prefill.
    pub(super) fn remove_kv_from(&mut self, seq: SeqId, keep: usize) {
        if let Err(e) = self.ctx.remove(seq.id(), keep as u32, None) {
            tracing::warn!(seq = seq.index(), keep, "dropping a failed prefill's KV cells failed: {e}");
            self.restart(seq);
        }
    }

    /// Forget everything evaluated for `seq`: its tokens are evaluated again
    /// from the start when next needed.
    pub(super) fn restart(&mut self, seq: SeqId) {
        self.clear_kv(seq);
        if let Some(s) = self.seqs[seq.index()].as_mut() {
            s.n_past = 0;
        }
    }

    /// Drop KV entries from position `keep` on, if the cache holds any.
    pub(super) fn rewind_kv(&mut self, seq: SeqId, keep: usize) {
        let Some(s) = self.seqs[seq.index()].as_mut() else { return };
        if s.n_past > keep {
            s.n_past = keep;
            if self.ctx.remove(seq.id(), keep as u32, None).is_err() {
                // The model cannot drop a tail (recurrent state): start over.
                tracing::debug!(
                    seq = seq.index(),
                    keep,
                    "the model cannot drop a KV tail; re-evaluating from the start"
                );
                self.restart(seq);
            }
        }
    }

    /// Drop the last `n` tokens (all of them for `u32::MAX`); returns the new length.
    pub(super) fn rewind(&mut self, seq: SeqId, n: u32) -> Result<u32, LlmError> {
        let s = self.sequence(seq)?;
        let len = s.tokens.len();
        let keep = match n {
            u32::MAX => 0,
            n if n as usize > len => {
                return Err(LlmError::invalid(format!("cannot rewind {n} tokens: the session holds {len}")));
            }
            n => len - n as usize,
        };
        s.tokens.truncate(keep);
        s.turn_start = s.turn_start.map(|t| t.min(keep));
        if keep == 0 {
            s.n_past = 0;
            s.turn_start = None;
            self.clear_kv(seq);
        } else {
            self.rewind_kv(seq, keep);
        }
        Ok(keep as u32)
    }

    /// See [`Command::Resume`](crate::engine::protocol::Command::Resume).
    pub(super) fn resume(&mut self, seq: SeqId, keep: usize) -> Result<(), LlmError> {
        let len = self.sequence(seq)?.tokens.len();
        self.rewind(seq, (len - keep.min(len)) as u32)?;
        open(&mut self.seqs, seq)?.turn_start = None;
        Ok(())
    }

    /// Make `child` a copy of `seq`: same tokens, and the KV cache copied
    /// by the context, so the fork needs no prefill.
    pub(super) fn fork(&mut self, seq: SeqId, child: SeqId) -> Result<(), LlmError> {
        let copy = self.sequence(seq)?.fork();
        self.ctx
            .copy(seq.id(), child.id())
            .map_err(|e| LlmError::EngineFailure(format!("copying the KV cache: {e}")))?;
        self.seqs[child.index()] = Some(copy);
        Ok(())
    }

    /// Context shift (llama-server's): drop at least `needed` tokens, and
    /// half of what may go, from just after the first `n_keep`, and move the
    /// rest down in the KV cache. Tokens a stream has not delivered yet never
    /// go.
    pub(super) fn shift(&mut self, seq: SeqId, needed: usize) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        let keep = s.shift.unwrap_or(s.limit);
        // Only evaluated tokens can move, and never the undelivered tail.
        let movable = s.n_past.min(s.tokens.len() - s.undelivered()).saturating_sub(keep);
        let drop = needed.max(movable / 2).min(movable);
        if drop < needed || drop == 0 {
            return Err(LlmError::ContextFull(ContextOverflow {
                requested: (s.tokens.len() + needed) as u32,
                used: s.tokens.len() as u32,
                limit: s.limit as u32,
            }));
        }
        let failed = |e: &dyn std::fmt::Display| LlmError::EngineFailure(format!("context shift: {e}"));
        self.ctx.remove(seq.id(), keep as u32, Some((keep + drop) as u32)).map_err(|e| failed(&e))?;
        self.ctx.shift(seq.id(), (keep + drop) as u32, -(drop as i32)).map_err(|e| failed(&e))?;
        let s = open(&mut self.seqs, seq)?;
        s.tokens.drain(keep..keep + drop);
        s.n_past -= drop;
        s.turn_start = s.turn_start.map(|t| if t > keep { t.saturating_sub(drop).max(keep) } else { t });
        Ok(())
    }

    /// Make the last token uncached, so that decoding it again yields its
    /// logits (they are gone once anything else was decoded).
    pub(super) fn uncache_last(&mut self, seq: SeqId) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        let last = s.tokens.len() - 1;
        if s.n_past < last {
            // Only after a model that cannot drop a tail was rewound.
            return Err(LlmError::Unsupported("this model cannot rewind its state; reset the session".into()));
        }
        if s.n_past > last {
            self.ctx
                .remove(seq.id(), last as u32, None)
                .map_err(|e| LlmError::EngineFailure(format!("cannot rewind the KV cache: {e}")))?;
            s.n_past = last;
        }
        Ok(())
    }

    /// Decode the last token alone, so the KV cache holds every token; its
    /// logits are then at batch index 0 if asked for.
    pub(super) fn decode_last(&mut self, seq: SeqId, logits: bool) -> Result<(), LlmError> {
        self.uncache_last(seq)?;
        let s = open(&mut self.seqs, seq)?;
        let failed = |e: &dyn std::fmt::Display| LlmError::EngineFailure(format!("decoding the last token: {e}"));
        let token = s.tokens[s.n_past];
        self.batch.clear();
        self.batch.add(token, s.n_past, seq.id(), logits);
        self.decode().map_err(|e| failed(&e))?;
        self.copies_applied();
        let s = open(&mut self.seqs, seq)?;
        s.n_past += 1;
        Ok(())
    }

    /// Make a forked sequence's KV copy real (a backend may copy lazily, at
    /// the next decode, as llama.cpp does between streams) by decoding its
    /// last token.
    pub(super) fn settle(&mut self, seq: SeqId) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        if s.tokens.is_empty() {
            s.copy_pending = false;
            return Ok(());
        }
        self.decode_last(seq, false)
    }
}
