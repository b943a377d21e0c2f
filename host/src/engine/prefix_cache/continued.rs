//! How `open-cached` continues a conversation the prefix cache kept: the
//! cache's policy of taking an entry back in place, taking its place, or
//! forking it (the entries themselves are `mod.rs`).

use std::sync::Arc;

use super::{PrefixCache, Start, shared};
use crate::engine::quota::Quota;
use crate::engine::session::{CacheTier, Namespace, Session, Shape};
use crate::engine::snapshot::Snapshot;
use crate::engine::{Engine, SessionOptions, snapshot, tokens};
use crate::error::LlmError;

impl Engine {
    /// A session holding `prompt`, continued from the longest prefix of it
    /// that `namespace`'s entries in the prefix cache hold (see
    /// `prefix_cache/mod.rs`); only the rest is evaluated. The session goes into
    /// the cache when dropped.
    pub fn open_cached(
        &self,
        options: &SessionOptions,
        prompt: &[u32],
        namespace: &Namespace,
        quota: &Arc<Quota>,
    ) -> Result<Session, LlmError> {
        let mut ids = tokens::checked_tokens(self.model(), prompt)?;
        let shape = self.shape(options)?;
        if prompt.len() > shape.limit as usize && shape.shift.is_none() {
            return Err(LlmError::PromptTooLong(crate::error::ContextOverflow {
                requested: prompt.len() as u32,
                used: 0,
                limit: shape.limit,
            }));
        }
        // The shared tier, where this host's own cache holds less of the
        // prompt than another host may have kept (before the lock below:
        // the store may take up to its timeout).
        let fetched = self.fetch_shared(namespace, shape, prompt);
        // One request at a time finds its entry and takes its place, so no
        // other request holds the entry meanwhile and blocks the takeover
        // below (a few milliseconds each; the prefill comes after).
        let opening = self.0.opening.lock().unwrap_or_else(|e| e.into_inner());
        let mut start = self.0.cache.lookup(namespace, shape, prompt);
        let metrics = crate::metrics::get();
        let tier = match fetched {
            Some((snapshot, shared)) if shared > start.shared() => {
                tracing::debug!(model = self.name(), tokens = shared, "open-cached continues from the shared cache");
                metrics.cache_hit("shared", shared);
                start = Start::Restore(Arc::new(snapshot), shared);
                CacheTier::Shared
            }
            _ if matches!(start, Start::Empty) => {
                metrics.prefix_cache_misses.inc();
                CacheTier::Local
            }
            _ => {
                metrics.cache_hit("local", start.shared());
                CacheTier::Local
            }
        };
        let continued = match start {
            Start::Extend(entry, shared) => self.continue_entry(entry, true, shape, quota).map(|s| (s, shared)),
            Start::Fork(entry, shared) => self.continue_entry(entry, false, shape, quota).map(|s| (s, shared)),
            Start::Restore(snapshot, shared) => self.restore_cached(&snapshot, shape, quota).map(|s| (s, shared)),
            Start::Empty => Err(LlmError::invalid("nothing cached")),
        };
        let (mut session, shared) = match continued {
            Ok((mut session, shared)) => {
                session.resume(shared)?;
                session.set_cached_from(tier);
                (session, shared)
            }
            // A quota or sequence limit is the caller's to see; anything
            // else (nothing cached, a failed copy) starts from scratch.
            Err(e @ LlmError::LimitExceeded { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(model = self.name(), "open-cached starts from nothing: {e}");
                (self.open_shaped(shape, quota)?, 0)
            }
        };
        drop(opening);
        if shared < prompt.len() {
            session.append_checked(ids.split_off(shared))?;
        }
        if self.0.cache.enabled() {
            session.keep_for(namespace.clone());
        }
        Ok(session)
    }

    /// A new session continuing the live prefix-cache entry `entry`, in the
    /// cheapest of three ways that keeps the sessions that decode together
    /// in consecutive sequences (see `take_in`):
    /// - in place: the entry's session itself, when the prompt extends its
    ///   `whole` history (so the cache loses nothing the session will not
    ///   hold again) and its sequence is where a new session would go anyway
    ///   (every lower one is a live session's): a conversation that comes
    ///   back turn after turn copies nothing;
    /// - taking its place: the entry's state goes to host memory (it stays
    ///   cached) and the session is restored from it into the lowest free
    ///   sequence. It copies only the cells in use, where a fork copies the
    ///   whole KV stream;
    /// - a fork, when someone else still holds the entry (another request
    ///   forking it): or, with no sequence free for the copy, taking its
    ///   place once the others let it go.
    fn continue_entry(
        &self,
        entry: Arc<Session>,
        whole: bool,
        shape: Shape,
        quota: &Arc<Quota>,
    ) -> Result<Session, LlmError> {
        let id = Arc::as_ptr(&entry);
        let lane = entry.lane();
        let in_place = whole && self.0.lanes[lane].taken_below(entry.seq());
        let lease = quota.lease(self.kv_bytes(shape.limit))?;
        if in_place && let Some(kept) = self.0.cache.take_entry(id, 1) {
            drop(entry);
            // The cache held the last handle but ours, and a kept session
            // has no stream: it is ours alone.
            let shared = || LlmError::EngineFailure("a prefix-cache entry was still shared when taken".into());
            let mut session = Arc::try_unwrap(kept).map_err(|_| shared())?;
            return if session.hold(lease) { Ok(session) } else { Err(shared()) };
        }
        if let Some(snapshot) = self.0.cache.spill_entry(id, 1) {
            drop(entry);
            drop(lease);
            return self.restore_cached(&snapshot, shape, quota);
        }
        match entry.fork_with(lease) {
            Err(e @ LlmError::LimitExceeded { .. }) => {
                drop(entry);
                match self.0.cache.spill_entry(id, 0) {
                    Some(snapshot) => self.restore_cached(&snapshot, shape, quota),
                    None => Err(e),
                }
            }
            forked => forked,
        }
    }

    /// What the shared tier holds of `prompt` beyond this host's own cache:
    /// a snapshot checked in full (tag, seal, model, tokens) and how many of
    /// the prompt's tokens it gives.
    fn fetch_shared(&self, namespace: &Namespace, shape: Shape, prompt: &[u32]) -> Option<(Snapshot, usize)> {
        let tier = self.0.cache.shared()?;
        let local = self.0.cache.longest(namespace, shape, prompt);
        if local + 1 >= prompt.len() {
            return None;
        }
        let base = self.shared_base(namespace, shape)?;
        let blob = tier.find(&base, prompt, local, &self.0.snapshot_key)?;
        let checked = Snapshot::decode(&blob, &self.0.snapshot_key, &self.identity().ok()?)
            .and_then(|s| tokens::checked_tokens(self.model(), &s.tokens).map(|_| s));
        match checked {
            Ok(snapshot) if snapshot.limit == shape.limit && snapshot.seed == shape.seed => {
                let shared = tokens::reusable_prefix(&snapshot.tokens, prompt);
                Some((snapshot, shared))
            }
            Ok(_) => None,
            Err(e) => {
                crate::metrics::get().shared_refused.inc();
                tracing::warn!(model = self.name(), "a shared-cache entry was refused: {e}");
                None
            }
        }
    }

    /// Write `session` (holding `tokens`, about to be kept) to the shared
    /// tier, sealed, for the other hosts; before the session is released,
    /// so a client that sees its answer end finds it there.
    pub(in crate::engine) fn share(&self, namespace: &Namespace, shape: Shape, tokens: &[u32], session: &Session) {
        let Some(tier) = self.0.cache.shared() else { return };
        let Some(base) = self.shared_base(namespace, shape) else { return };
        let Ok(model) = self.identity() else { return };
        match session.copy_state() {
            Ok(mut snapshot) => {
                snapshot.model = model;
                tier.put(&base, tokens, &self.seal(&snapshot), &self.0.snapshot_key);
            }
            Err(e) => {
                tracing::debug!(model = self.name(), "a kept session could not be copied for the shared cache: {e}")
            }
        }
    }

    /// What the shared tier's keys of `namespace` and `shape` start with:
    /// a hash of the namespace, the model file, the backend and the shape.
    fn shared_base(&self, namespace: &Namespace, shape: Shape) -> Option<String> {
        let model = self.identity().ok()?;
        let mut h = blake3::Hasher::new();
        h.update(namespace.0.as_bytes()).update(&[0]).update(&model).update(self.backend().to_string().as_bytes());
        h.update(&shape.limit.to_le_bytes());
        h.update(&shape.shift.map_or([0xff; 5], |s| {
            let mut b = [1u8; 5];
            b[1..].copy_from_slice(&s.to_le_bytes());
            b
        }));
        h.update(&shape.seed.map_or([0xff; 9], |s| {
            let mut b = [1u8; 9];
            b[1..].copy_from_slice(&s.to_le_bytes());
            b
        }));
        Some(shared::hex(&h.finalize().as_bytes()[..16]))
    }

    /// A new session holding a spilled prefix-cache entry's state.
    fn restore_cached(
        &self,
        snapshot: &snapshot::Snapshot,
        shape: Shape,
        quota: &Arc<Quota>,
    ) -> Result<Session, LlmError> {
        self.restore_into(self.new_slot(shape.limit, quota)?, snapshot.clone(), shape.shift)
    }

    /// The model's prefix cache.
    pub(in crate::engine) fn cache(&self) -> &PrefixCache {
        &self.0.cache
    }

    /// The note `namespace` kept under `key` with a conversation its prefix
    /// cache still holds (see `prefix_cache/mod.rs`).
    pub fn cached_note(&self, namespace: &Namespace, key: &str) -> Option<Vec<u8>> {
        self.0.cache.note(namespace, key).map(|bytes| bytes.to_vec())
    }

    /// Drop every conversation the prefix cache keeps (they hold the engine
    /// alive; see `registry::Models`'s drop).
    pub fn clear_cache(&self) {
        self.0.cache.clear();
    }

    /// Entries in the prefix cache: (live, spilled) — for tests and benchmarks.
    pub fn cached_entries(&self) -> (usize, usize) {
        self.0.cache.counts()
    }
}
