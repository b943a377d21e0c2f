//! Which sequence a new session takes: the lane with the most free
//! sequences, its lowest free one, a prefix-cache entry giving way when
//! none is free; and what a session's context reserves of its quota.

use std::sync::Arc;

use super::Engine;
use super::lanes::Lane;
use super::protocol::SeqId;
use super::quota::Quota;
use super::slot::Slot;
use crate::error::LlmError;

impl Engine {
    /// A slot for a new session of a `limit`-token context: its share of
    /// `quota`, then a sequence.
    pub(super) fn new_slot(&self, limit: u32, quota: &Arc<Quota>) -> Result<Slot, LlmError> {
        let lease = quota.lease(self.kv_bytes(limit))?;
        let (lane, seq) = self.take_slot()?;
        Ok(Slot::new(lane, seq, lease))
    }

    /// Reserve a free sequence in the lane with the most free sequences (so
    /// concurrent sessions spread over the cores); the slot made of it frees
    /// it on drop.
    pub(super) fn take_slot(&self) -> Result<(Arc<Lane>, SeqId), LlmError> {
        let lanes = &self.0.lanes;
        // Most free first; on a tie the lowest index, so placement is deterministic.
        let mut order: Vec<&Arc<Lane>> = lanes.iter().collect();
        order.sort_by_key(|l| std::cmp::Reverse(l.free()));
        let free = || order.iter().find_map(|l| self.take_in(l).map(|seq| ((*l).clone(), seq)));
        loop {
            if let Some(slot) = free() {
                return Ok(slot);
            }
            // A conversation the prefix cache keeps gives way to a live session.
            if !self.0.cache.spill_one() {
                return Err(LlmError::LimitExceeded { name: "sessions".into(), max: self.max_sessions() as u64 });
            }
        }
    }

    /// Reserve the lowest free sequence of `lane`, if it has one.
    ///
    /// Sessions that decode together should hold consecutive sequences:
    /// with a KV stream per sequence, llama.cpp splits a batch at every gap
    /// between sequence ids (one decode per run of consecutive ids), so four
    /// streams in sequences 0, 4, 6 and 7 cost three decodes a step
    /// (measured on SmolLM2 behind `serve`: 53 ms a step instead of 32). So
    /// a prefix-cache entry that holds a lower sequence than the free one
    /// gives it up (its state kept in host memory), and the session takes
    /// the lower one.
    pub(super) fn take_in(&self, lane: &Arc<Lane>) -> Option<SeqId> {
        let index = self.lane_index(lane);
        loop {
            let seq = lane.take()?;
            if !self.0.cache.spill_below(index, seq.index()) {
                return Some(seq);
            }
            lane.release(seq);
        }
    }

    /// KV-cache bytes a session of `tokens` context reserves.
    pub fn kv_bytes(&self, tokens: u32) -> u64 {
        self.model().kv_bytes_per_token() * u64::from(tokens)
    }
}
