//! Ownership of one sequence of one lane, shared by a session and the
//! streams it started: the sequence (and its quota lease) goes back when the
//! last of them is dropped.

use std::sync::Arc;

use super::lanes::Lane;
use super::protocol::{Command, Pending, Reply, SeqId};
use super::quota::Lease;
use crate::error::LlmError;

/// Ownership of one sequence id, shared by a session and its streams: a
/// stream stays readable to its end even after its session is dropped.
pub(crate) struct Slot {
    pub(super) lane: Arc<Lane>,
    seq: SeqId,
    /// The owning instance's quota share, returned with the sequence.
    pub(super) lease: Lease,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The scheduler handles commands in order, so the id can be reused
        // at once: a later Open of this sequence comes after this Close.
        let _ = self.send(Command::Close { seq: self.seq });
        self.lane.release(self.seq);
        crate::metrics::get().sessions.dec();
    }
}

impl Slot {
    /// A sequence of `lane` and `lease`, which the slot now owns.
    pub(super) fn new(lane: Arc<Lane>, seq: SeqId, lease: Lease) -> Self {
        crate::metrics::get().sessions.inc();
        Self { lane, seq, lease }
    }

    pub(super) fn seq(&self) -> SeqId {
        self.seq
    }

    /// Queue a command on this sequence's lane.
    pub(super) fn send(&self, command: Command) -> Result<(), LlmError> {
        self.lane.send(command)
    }

    /// Send a command to this sequence's lane and wait for the answer.
    pub(super) fn request<T: Send + 'static>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, LlmError> {
        self.lane.request(command)
    }

    /// Send a command to this sequence's lane; its answer comes later.
    pub(super) fn start<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<Pending<T>, LlmError> {
        self.lane.start(command)
    }
}
