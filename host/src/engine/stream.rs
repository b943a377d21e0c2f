//! The reader side of a generation: the guest's `token-stream`, draining the
//! buffer its lane's scheduler fills (`buffer.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::buffer::{Item, Shared};
use super::finish::{Finish, FinishReason};
use super::protocol::Command;
use super::quota::GenerationPermit;
use super::slot::Slot;
use super::text::Chunk;
use crate::error::LlmError;

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
    /// An async reader's registration for the next push ([`poll_ready`](Self::poll_ready)).
    waiter: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl TokenStream {
    pub(crate) fn new(shared: Arc<Shared>, slot: Arc<Slot>, permit: Option<GenerationPermit>) -> Self {
        Self { shared, slot, finish: None, done: false, permit, waiter: None }
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
            buffer = self.shared.wait(buffer);
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

    /// Whether a read would not wait: a chunk or the end is buffered.
    pub fn is_ready(&self) -> bool {
        self.done || !self.shared.lock().items.is_empty()
    }

    /// Ready once a read would not wait; else `Pending`, and `cx` is woken
    /// at the scheduler's next push. Both async readers wait here: the
    /// `wasi:io` pollable and the WASIp3 stream.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Registered (first polled) before the check, so a push in
            // between still wakes the reader.
            let shared = &self.shared;
            let waiter = self.waiter.get_or_insert_with(|| {
                let shared = shared.clone();
                Box::pin(async move { shared.pushed().await })
            });
            let pushed = waiter.as_mut().poll(cx).is_ready();
            if pushed {
                self.waiter = None;
            }
            if self.is_ready() {
                self.waiter = None;
                return Poll::Ready(());
            }
            if !pushed {
                return Poll::Pending;
            }
        }
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
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.slot.send(Command::Cancel { seq: self.slot.seq(), stream: self.shared.id, reply: None });
        }
    }
}
