//! The reader side of a generation: a bounded buffer the scheduler fills and
//! the guest's `token-stream` drains.
//!
//! The scheduler runs up to [`RUN_AHEAD`] chunks ahead of the reader so that
//! the streams of many sessions are always ready to be decoded together in
//! one batch; a reader that waits for its next chunk blocks only its own
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::quota::GenerationPermit;
use super::scheduler::Command;
use super::session::Slot;
use super::text::Chunk;
use crate::error::LlmError;

/// Chunks a generation may run ahead of its reader.
pub(crate) const RUN_AHEAD: usize = 8;

/// Why a generation ended (none of these is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    EndOfSequence,
    MaxTokens,
    Stop(String),
    Cancelled,
    ContextFull,
}

/// Token accounting for one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the session when the generation began.
    pub prompt_tokens: u32,
    /// Of those, how many were reused from the KV cache rather than evaluated for this turn.
    pub cached_tokens: u32,
    /// Tokens delivered in chunks.
    pub generated_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

pub(crate) enum Item {
    Chunk(Chunk),
    Finish(Finish),
    Failed(LlmError),
}

#[derive(Default)]
pub(crate) struct Buffer {
    pub items: VecDeque<Item>,
    /// The reader has taken the last item (a finish or an error).
    pub drained: bool,
}

impl Buffer {
    /// Tokens in chunks the reader has not taken.
    pub fn undelivered_tokens(&self) -> usize {
        self.items
            .iter()
            .map(|i| match i {
                Item::Chunk(c) => c.tokens.len(),
                Item::Finish(_) | Item::Failed(_) => 0,
            })
            .sum()
    }

    /// The usage a finished generation reported, if it finished.
    pub fn finished_usage(&self) -> Option<Usage> {
        self.items.iter().find_map(|i| match i {
            Item::Finish(f) => Some(f.usage),
            Item::Chunk(_) | Item::Failed(_) => None,
        })
    }

    /// Whether the generation may produce another chunk now.
    pub fn has_room(&self) -> bool {
        self.items.len() < RUN_AHEAD
    }
}

/// State shared by the scheduler and one reader.
pub(crate) struct Shared {
    /// Tells this stream from later ones on the same session.
    pub id: u64,
    buffer: Mutex<Buffer>,
    /// Wakes a reader blocked in `read`.
    ready: Condvar,
    /// Wakes a guest waiting in `wasi:io/poll` (an async wait on wasmtime-wasi's runtime).
    polled: tokio::sync::Notify,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            buffer: Mutex::default(),
            ready: Condvar::new(),
            polled: tokio::sync::Notify::new(),
        })
    }

    /// The buffer; a poisoned lock only means a reader panicked mid-pop, and
    /// the queue itself is always consistent.
    pub fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, item: Item) {
        self.lock().items.push_back(item);
        self.ready.notify_all();
        self.polled.notify_waiters();
    }
}

/// A generation in progress, as the guest sees it. Dropping it cancels the
/// generation; the session keeps exactly the chunks that were taken.
pub struct TokenStream {
    shared: Arc<Shared>,
    /// Keeps the session's sequence open while the stream is read.
    slot: Arc<Slot>,
    finish: Option<Finish>,
    done: bool,
    /// Counts this generation against the model's concurrent-generations
    /// limit until it ends (not until the handle is dropped).
    permit: Option<GenerationPermit>,
}

impl TokenStream {
    pub(crate) fn new(shared: Arc<Shared>, slot: Arc<Slot>, permit: Option<GenerationPermit>) -> Self {
        Self { shared, slot, finish: None, done: false, permit }
    }

    fn end(&mut self) {
        self.done = true;
        self.permit = None;
    }

    /// The next chunk; `Ok(None)` once the generation has finished.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, LlmError> {
        self.read(1)
    }

    /// Wait for the next chunk, then merge into it the chunks already
    /// generated, up to `max_tokens` tokens in all (the first chunk is
    /// always returned whole). `Ok(None)` once the generation has finished.
    pub fn read(&mut self, max_tokens: usize) -> Result<Option<Chunk>, LlmError> {
        self.take(max_tokens, true)
    }

    /// Like [`read`](Self::read), but `Ok(None)` at once when nothing is
    /// ready yet ([`finish`](Self::finish) tells that apart from the end).
    pub fn try_read(&mut self, max_tokens: usize) -> Result<Option<Chunk>, LlmError> {
        self.take(max_tokens, false)
    }

    fn take(&mut self, max_tokens: usize, wait: bool) -> Result<Option<Chunk>, LlmError> {
        if self.done {
            return Ok(None);
        }
        let mut buffer = self.shared.lock();
        let mut woke = false;
        let item = loop {
            woke |= !buffer.has_room();
            if let Some(item) = buffer.items.pop_front() {
                break item;
            }
            if !wait {
                return Ok(None);
            }
            buffer = self.shared.ready.wait(buffer).unwrap_or_else(|e| e.into_inner());
        };
        let result = match item {
            Item::Chunk(mut chunk) => {
                while let Some(Item::Chunk(next)) = buffer.items.front() {
                    if chunk.tokens.len() + next.tokens.len() > max_tokens {
                        break;
                    }
                    woke |= !buffer.has_room();
                    if let Some(Item::Chunk(next)) = buffer.items.pop_front() {
                        chunk.text.push_str(&next.text);
                        chunk.tokens.extend(next.tokens);
                        chunk.logprobs.extend(next.logprobs);
                    }
                }
                Ok(Some(chunk))
            }
            Item::Finish(finish) => {
                buffer.drained = true;
                self.finish = Some(finish);
                Ok(None)
            }
            Item::Failed(error) => {
                buffer.drained = true;
                Err(error)
            }
        };
        let ended = buffer.drained;
        drop(buffer);
        if ended {
            self.end();
        }
        if woke {
            // The scheduler may be idle waiting for room in this buffer.
            let _ = self.slot.send(Command::Wake);
        }
        result
    }

    /// Stop the generation now. The session keeps the chunks already taken;
    /// [`finish`](Self::finish) then reports `Cancelled` with their usage.
    pub fn cancel(&mut self) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        let (seq, stream) = (self.slot.seq(), self.shared.id);
        let usage = self.slot.request(|reply| Command::Cancel { seq, stream, reply: Some(reply) })?;
        self.end();
        self.finish = Some(Finish { reason: FinishReason::Cancelled, usage });
        Ok(())
    }

    /// How the generation ended; `None` until [`next_chunk`](Self::next_chunk) returned `None`.
    pub fn finish(&self) -> Option<&Finish> {
        self.finish.as_ref()
    }
}

/// Ready when a read would not wait: a chunk or the end is buffered.
#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for TokenStream {
    async fn ready(&mut self) {
        loop {
            // Registered before the check, so a push in between still wakes us.
            let notified = self.shared.polled.notified();
            if self.done || !self.shared.lock().items.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.slot.send(Command::Cancel { seq: self.slot.seq(), stream: self.shared.id, reply: None });
        }
    }
}
