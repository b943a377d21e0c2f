//! A model's lanes: llama.cpp contexts that each own some of the model's
//! sequences and run on their own scheduler thread (the cores they share
//! are `threads.rs`).
//!
//! Why more than one context: on a CPU, batching two sequences into one
//! decode gains little over decoding one (the step is bound by reading the
//! weights once per thread, and two threads already saturate two cores), while
//! two contexts decoding side by side on one core each nearly double the
//! throughput. So sessions are spread over lanes, and before every decode a
//! lane takes an equal share of the threads among the lanes busy at that
//! moment: a lone busy session still gets every thread. On a GPU a batch is
//! nearly free, so GPU builds default to one lane.

use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};

use super::protocol::{Command, Reply, SeqId};
use super::scheduler_stopped;
use crate::error::LlmError;

/// One context's front door: its scheduler's command queue and which of its
/// sequence ids open sessions hold.
pub(crate) struct Lane {
    commands: Sender<Command>,
    slots: Mutex<Vec<bool>>,
}

impl Lane {
    /// The front door of a scheduler reading `commands`, with `sequences` sequences.
    pub fn new(commands: Sender<Command>, sequences: usize) -> Self {
        Self { commands, slots: Mutex::new(vec![false; sequences]) }
    }

    /// Queue a command for the lane's scheduler.
    pub fn send(&self, command: Command) -> Result<(), LlmError> {
        self.commands.send(command).map_err(|_| scheduler_stopped())
    }

    /// Send a command and wait for the scheduler's answer.
    pub fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, LlmError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(command(reply))?;
        answer.recv().map_err(|_| scheduler_stopped())?
    }

    fn slots(&self) -> MutexGuard<'_, Vec<bool>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sequences no session holds.
    pub fn free(&self) -> usize {
        self.slots().iter().filter(|taken| !**taken).count()
    }

    /// Sequences in all.
    pub fn capacity(&self) -> usize {
        self.slots().len()
    }

    /// Reserve a free sequence of this lane.
    pub fn take(&self) -> Option<SeqId> {
        let mut slots = self.slots();
        let free = slots.iter().position(|taken| !taken)?;
        slots[free] = true;
        Some(SeqId::new(free))
    }

    /// Give a sequence back (its session's `Close` is already queued).
    pub fn release(&self, seq: SeqId) {
        if let Some(slot) = self.slots().get_mut(seq.index()) {
            *slot = false;
        }
    }
}

/// How many lanes to run when the operator does not say: one per thread up
/// to four on a CPU (never more than sessions), one when layers sit on a GPU.
pub(crate) fn default_count(threads: u32, max_sessions: u32, on_gpu: bool) -> u32 {
    if on_gpu { 1 } else { threads.min(max_sessions).clamp(1, 4) }
}

/// Sequences of lane `index` when `sessions` are spread over `lanes`.
pub(crate) fn sequences(sessions: u32, lanes: u32, index: u32) -> u32 {
    sessions / lanes + u32::from(index < sessions % lanes)
}
