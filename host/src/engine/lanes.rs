//! A model's lanes: llama.cpp contexts that each own some of the model's
//! sequences and run on their own scheduler thread (the cores they share
//! are `threads.rs`).
//!
//! Each lane decodes its own sessions together, one batch per step, and
//! before every decode a lane takes an equal share of the threads among the
//! lanes busy at that moment, so a lone busy session still gets them all.
//!
//! Why the default is one lane: a batch reads the weights once for all its
//! sequences, so one context batching every session on all the threads
//! beats several contexts on a share each. On the Intel kind (2 threads,
//! SmolLM2, `benches/RESULTS.md`'s batch-shape table) one context decoded 4
//! sequences at 150 tok/s, two lanes batching 2 on one thread each at
//! 2 × 62; only at exactly 2 sessions did two one-thread lanes win (2 × 57
//! against 93). Lanes looked better before only because with OpenMP every
//! multi-threaded decode ran throttled (see `threads.rs`). `--lanes N` opts
//! into splitting where the batch-shape figures say it pays.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context as _, anyhow};

use super::cores::Cores;
use super::protocol::{Command, Pending, Reply, SeqId};
use super::scheduler::Scheduler;
use super::scheduler_stopped;
use super::speculation::Speculation;
use crate::backend::{ContextSetup, Model};
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
    pub fn request<T: Send + 'static>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, LlmError> {
        self.start(command)?.wait()
    }

    /// Send a command; its answer comes later.
    pub fn start<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<Pending<T>, LlmError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(command(reply))?;
        Ok(Pending(answer))
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

    /// Whether every sequence below `seq` is taken: where a new session
    /// would not go (it takes the lowest free one).
    pub fn taken_below(&self, seq: SeqId) -> bool {
        self.slots().iter().take(seq.index()).all(|taken| *taken)
    }

    /// Give a sequence back (its session's `Close` is already queued).
    pub fn release(&self, seq: SeqId) {
        if let Some(slot) = self.slots().get_mut(seq.index()) {
            *slot = false;
        }
    }
}

/// How many lanes to run when the operator does not say: one (see the
/// module's doc), on a CPU as on a GPU.
pub(crate) const DEFAULT_COUNT: u32 = 1;

/// Sequences of lane `index` when `sessions` are spread over `lanes`.
pub(crate) fn sequences(sessions: u32, lanes: u32, index: u32) -> u32 {
    sessions / lanes + u32::from(index < sessions % lanes)
}

/// Make one lane's context on its own scheduler thread, which then serves
/// the lane's commands.
pub(super) fn start(
    name: &str,
    index: u32,
    setup: &ContextSetup,
    model: &Arc<dyn Model>,
    cores: &Arc<Cores>,
    speculation: Speculation,
) -> anyhow::Result<Arc<Lane>> {
    let (commands, receiver) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let (model, cores, setup) = (model.clone(), cores.clone(), *setup);
    std::thread::Builder::new()
        .name(format!("llm-{name}-{index}"))
        .spawn(move || {
            let model = &*model;
            let ctx = match model.new_context(&setup) {
                Ok(ctx) => ctx,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            Scheduler::new(model, ctx, &setup, cores, speculation).run(receiver);
        })
        .context("spawning the scheduler thread")?;
    ready_rx.recv().context("scheduler thread died")?.map_err(|e| anyhow!("{e}"))?;
    Ok(Arc::new(Lane::new(commands, setup.sequences as usize)))
}
