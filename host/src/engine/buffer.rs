//! The channel between a lane's scheduler and one stream's reader: a bounded
//! buffer of chunks the scheduler fills and the reader drains.
//!
//! The scheduler runs up to [`RUN_AHEAD`] chunks ahead of the reader so that
//! the streams of many sessions are always ready to be decoded together in
//! one batch; a reader that waits for its next chunk blocks only its own
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::finish::{Finish, Usage};
use super::text::Chunk;
use crate::error::LlmError;

/// Chunks a generation may run ahead of its reader.
pub(crate) const RUN_AHEAD: usize = 8;

/// One entry of a stream's buffer.
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

    /// Block until the scheduler pushes something, with the buffer's lock
    /// released meanwhile.
    pub fn wait<'a>(&'a self, buffer: MutexGuard<'a, Buffer>) -> MutexGuard<'a, Buffer> {
        self.ready.wait(buffer).unwrap_or_else(|e| e.into_inner())
    }

    /// Completes at the next push; create it before checking the buffer, so
    /// a push in between still wakes the waiter.
    pub fn pushed(&self) -> tokio::sync::futures::Notified<'_> {
        self.polled.notified()
    }

    /// Add an item for the reader and wake it, however it waits.
    pub fn push(&self, item: Item) {
        self.lock().items.push_back(item);
        self.ready.notify_all();
        self.polled.notify_waiters();
    }
}
