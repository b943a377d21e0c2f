//! The prefix cache: conversations kept past the session (and the guest
//! instance) that built them, so that a stateless front door — an HTTP
//! handler runs one request per instance — prefills only what is new.
//!
//! A session opened with [`Engine::open_cached`] goes into the cache when it
//! is dropped with no stream left. A later `open_cached` of the same
//! component (its namespace) and the same session shape finds the entry
//! sharing the longest token prefix with its prompt and continues it,
//! evaluating only the rest: llama-server's `cache_prompt` across slots.
//! When the prompt extends the entry's whole history (a conversation's next
//! turn) and the entry's sequence is where a new session would go anyway,
//! the session is the entry itself, taken back in place: nothing is copied.
//! Otherwise it takes the entry's place: the entry's state goes to host
//! memory (it stays cached, for the next request that branches there) and
//! the new session is restored from it (no evaluation) into the lowest
//! free sequence, rewound to the shared prefix. Taking the place rather
//! than forking beside it keeps the sessions that decode together in
//! consecutive sequences, which llama.cpp needs to batch them in one decode
//! (`Engine::take_in`); it copies the cells in use, where a fork copies the
//! entry's whole KV stream (`Engine::continue_entry` has all three ways).
//!
//! Bounds (the operator's, [`CacheLimits`]): a number of entries, least
//! recently used dropped first; entries hold KV sequences of the model's
//! lanes only while sequences are free — when a new session finds none, the
//! least recently used entry is saved to host memory through the state API
//! (a "spill", llama-server's `--cache-ram`) and its sequence given up;
//! spilled entries are restored, not re-evaluated, and their bytes are
//! bounded too. Entries never cross namespaces, so one component never sees
//! another's conversations.
//!
//! Why this shape, for the RFC (the alternatives weighed):
//! - Sessions that outlive an instance under a key the guest names: a
//!   stateless API's requests carry no conversation id, so the guest would
//!   hash messages into keys, an edited or branched history would find
//!   nothing, and someone must decide when a keyed session dies. Matching
//!   the longest token prefix needs no key and serves edits and branches.
//! - Guest-side `save`/`restore` through storage the guest is granted: every
//!   request copies the whole state through guest memory (about 23 KB per
//!   token on SmolLM2) and the guest needs a store; here the state stays
//!   in host memory and never crosses into the guest.
//! - Caching every dropped session (llama-server caches every slot): that
//!   would keep a 0.1.0 guest's conversations in host memory after it let
//!   them go; `open-cached` makes keeping them the guest's choice.
//! - Continuing any entry in place, whatever it shares: the rewind drops
//!   the entry's tail, so a new conversation that shares only the chat
//!   template's first tokens wiped a kept one (the serve bench's
//!   round-robin evaluated 6083 tokens instead of 1479). In place only when
//!   the prompt extends the whole entry; otherwise a copy.
//! - Matching text instead of tokens: two renderings of one conversation
//!   can tokenize differently; tokens are what the KV cache holds.
//!
//! Notes (0.1.5): where clients do name conversations (the Responses API's
//! `previous_response_id`), a guest keeps a note under that key with the
//! session it drops here, and a later instance reads it back by key. A
//! note belongs to the tokens its session held: it lives while an entry of
//! its namespace still holds those tokens (the entry itself or one that
//! extends it), and goes when the last such entry goes, so nothing a
//! client sent outlives the conversation the cache keeps. The key is only
//! for finding the note; the conversation is still found by its tokens.

mod continued;
mod shared;

pub use shared::{SharedSettings, SharedTier};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::quota::Quota;
use super::session::{Namespace, Session, Shape};
use super::snapshot::Snapshot;
use super::tokens;

/// How much the prefix cache of one model may keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheLimits {
    /// Conversations kept, live or spilled (`prefix-cache-entries`); 0 turns
    /// the cache off.
    pub entries: usize,
    /// Host-memory bytes of spilled conversations (`prefix-cache-bytes`).
    pub spill_bytes: u64,
}

impl Default for CacheLimits {
    /// 256 conversations and 1 GiB of spill: SmolLM2 keeps about 23 KB per
    /// token, so that is some 45,000 spilled tokens. Live entries are bounded
    /// by the model's free sequences anyway; the count keeps many short
    /// one-off prompts from pushing out the conversations still going on.
    fn default() -> Self {
        Self { entries: 256, spill_bytes: 1 << 30 }
    }
}

/// Most note bytes one model's cache holds; past it the oldest notes go.
const NOTES_BYTES: usize = 64 << 20;

/// One model's prefix cache.
pub(super) struct PrefixCache {
    limits: CacheLimits,
    entries: Mutex<Vec<Entry>>,
    notes: Mutex<Vec<Note>>,
    /// Holds the leases of the sessions kept here, so that a kept session no
    /// longer counts against the instance that made it.
    quota: Arc<Quota>,
    clock: AtomicU64,
    /// The tier several hosts share, where the operator gave one.
    shared: Option<Arc<SharedTier>>,
}

struct Entry {
    namespace: Namespace,
    shape: Shape,
    tokens: Vec<u32>,
    held: Held,
    /// When it was last put in or used (the cache's clock).
    used: u64,
}

/// A guest's note on a conversation (see the module's doc).
struct Note {
    namespace: Namespace,
    key: String,
    /// The conversation it belongs to.
    tokens: Vec<u32>,
    bytes: Arc<[u8]>,
    /// When it was kept (the cache's clock).
    kept: u64,
}

enum Held {
    /// A session on one of the lanes' sequences.
    Live(Arc<Session>),
    /// Saved to host memory; its sequence went to someone else.
    Spilled(Arc<Snapshot>),
}

/// Where a new session starts from.
pub(super) enum Start {
    /// Fork this session, then keep `shared` tokens of it.
    Fork(Arc<Session>, usize),
    /// This session's whole history starts the prompt (`shared` tokens):
    /// continue it, in place where it can be, since nothing it holds is lost.
    Extend(Arc<Session>, usize),
    /// Restore this snapshot, then keep `shared` tokens of it.
    Restore(Arc<Snapshot>, usize),
    /// Nothing shares a prefix: start empty.
    Empty,
}

impl Start {
    /// Tokens of the prompt it holds.
    fn shared(&self) -> usize {
        match self {
            Start::Fork(_, n) | Start::Extend(_, n) | Start::Restore(_, n) => *n,
            Start::Empty => 0,
        }
    }
}

impl PrefixCache {
    pub(super) fn new(limits: CacheLimits, shared: Option<Arc<SharedTier>>) -> Self {
        Self {
            limits,
            entries: Mutex::default(),
            notes: Mutex::default(),
            quota: Quota::unlimited(),
            clock: AtomicU64::new(0),
            shared: shared.filter(|_| limits.entries > 0),
        }
    }

    /// The shared tier, if the operator gave one (and the cache is on).
    pub(super) fn shared(&self) -> Option<&Arc<SharedTier>> {
        self.shared.as_ref()
    }

    /// How much of `prompt` the best entry of `namespace` and `shape` holds,
    /// without taking it (whether the shared tier could give more).
    pub(super) fn longest(&self, namespace: &Namespace, shape: Shape, prompt: &[u32]) -> usize {
        let entries = self.lock();
        entries
            .iter()
            .filter(|e| &e.namespace == namespace && e.shape == shape)
            .map(|e| tokens::reusable_prefix(&e.tokens, prompt))
            .max()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    /// Whether sessions are kept at all.
    pub(super) fn enabled(&self) -> bool {
        self.limits.entries > 0
    }

    /// The entry of `namespace` and `shape` that shares the longest prefix
    /// with `prompt`. At least one token of the prompt is always left to
    /// evaluate, so the new session's last token has fresh logits.
    pub(super) fn lookup(&self, namespace: &Namespace, shape: Shape, prompt: &[u32]) -> Start {
        let now = self.tick();
        let mut entries = self.lock();
        let best = entries
            .iter_mut()
            .filter(|e| &e.namespace == namespace && e.shape == shape)
            .map(|e| (tokens::reusable_prefix(&e.tokens, prompt), e))
            .filter(|(shared, _)| *shared > 0)
            .max_by_key(|(shared, e)| (*shared, matches!(e.held, Held::Live(_)), e.used));
        match best {
            Some((shared, entry)) => {
                entry.used = now;
                match &entry.held {
                    Held::Live(session) if shared == entry.tokens.len() => Start::Extend(session.clone(), shared),
                    Held::Live(session) => Start::Fork(session.clone(), shared),
                    Held::Spilled(snapshot) => Start::Restore(snapshot.clone(), shared),
                }
            }
            None => Start::Empty,
        }
    }

    /// Keep `session` (already moved onto this cache's quota) holding
    /// `tokens`, with the guest's `notes` on it. An entry it extends is
    /// dropped (it is a prefix of this one); if an entry already extends
    /// it, the session is not kept (its notes are: that entry holds it).
    pub(super) fn keep(
        &self,
        namespace: Namespace,
        shape: Shape,
        tokens: Vec<u32>,
        session: Session,
        notes: Vec<(String, Arc<[u8]>)>,
    ) {
        if tokens.is_empty() || !self.enabled() {
            return;
        }
        self.add_notes(&namespace, &tokens, notes);
        let now = self.tick();
        let mut dropped = Vec::new();
        let mut entries = self.lock();
        let same = |e: &Entry| e.namespace == namespace && e.shape == shape;
        if entries.iter().any(|e| same(e) && e.tokens.starts_with(&tokens)) {
            // Nothing is dropped: the notes just kept are that entry's too.
            return;
        }
        let mut i = 0;
        while i < entries.len() {
            if same(&entries[i]) && tokens.starts_with(&entries[i].tokens) {
                dropped.push(entries.swap_remove(i));
            } else {
                i += 1;
            }
        }
        entries.push(Entry { namespace, shape, tokens, held: Held::Live(Arc::new(session)), used: now });
        while entries.len() > self.limits.entries {
            let oldest = oldest(&entries, |_| true).expect("more entries than the limit");
            dropped.push(entries.swap_remove(oldest));
        }
        // Sessions close (a command to their lane) after the lock is released.
        drop(entries);
        drop(dropped);
        self.prune_notes();
    }

    /// Keep `notes` on the conversation `tokens` of `namespace`; a note
    /// under a key already kept replaces it.
    fn add_notes(&self, namespace: &Namespace, tokens: &[u32], notes: Vec<(String, Arc<[u8]>)>) {
        if notes.is_empty() {
            return;
        }
        let now = self.tick();
        let mut kept = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        for (key, bytes) in notes {
            kept.retain(|n| !(&n.namespace == namespace && n.key == key));
            kept.push(Note { namespace: namespace.clone(), key, tokens: tokens.to_vec(), bytes, kept: now });
        }
        while kept.iter().map(|n| n.bytes.len()).sum::<usize>() > NOTES_BYTES {
            let oldest = kept.iter().enumerate().min_by_key(|(_, n)| n.kept).map(|(i, _)| i).expect("notes");
            kept.swap_remove(oldest);
        }
    }

    /// Drop the notes whose conversation no entry holds any more.
    fn prune_notes(&self) {
        let entries = self.lock();
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.retain(|n| entries.iter().any(|e| e.namespace == n.namespace && e.tokens.starts_with(&n.tokens)));
    }

    /// The note `namespace` kept under `key`, while its conversation is kept.
    pub(super) fn note(&self, namespace: &Namespace, key: &str) -> Option<Arc<[u8]>> {
        self.prune_notes();
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.iter().find(|n| &n.namespace == namespace && n.key == key).map(|n| n.bytes.clone())
    }

    /// Give up the sequence of the least recently used live entry, saving
    /// it to host memory if the spill bytes allow: called when a new
    /// session finds no free sequence. Returns whether a sequence was freed.
    pub(super) fn spill_one(&self) -> bool {
        // Only an entry nobody is forking right now frees its sequence.
        self.spill(|s| Arc::strong_count(s) == 1).is_some()
    }

    /// Spill the least recently used live entry that holds a sequence of
    /// lane `lane` below `seq` and that nobody is forking: for a new
    /// session, so that it can take that lower sequence (see
    /// `Engine::take_slot`). Whether one was spilled.
    pub(super) fn spill_below(&self, lane: usize, seq: usize) -> bool {
        self.spill(|s| s.lane() == lane && s.seq().index() < seq && Arc::strong_count(s) == 1).is_some()
    }

    /// Spill the live entry holding `session` if no one but the cache and
    /// `others` callers holds it (the caller's own handle counted there):
    /// for a session that takes the entry's place. Returns its state.
    pub(super) fn spill_entry(&self, session: *const Session, others: usize) -> Option<Arc<Snapshot>> {
        self.spill(|s| std::ptr::eq(Arc::as_ptr(s), session) && Arc::strong_count(s) == 1 + others)?
    }

    /// Take the live entry holding `session` out of the cache, for a session
    /// that continues it in place (its sequence and cells pass over, nothing
    /// is copied): only if no one but the cache and `others` callers holds
    /// it and no other live entry holds a lower sequence of its lane (that
    /// one a new session would take first, see `Engine::take_in`).
    pub(super) fn take_entry(&self, session: *const Session, others: usize) -> Option<Arc<Session>> {
        let mut entries = self.lock();
        let at = entries.iter().position(
            |e| matches!(&e.held, Held::Live(s) if std::ptr::eq(Arc::as_ptr(s), session) && Arc::strong_count(s) == 1 + others),
        )?;
        let Held::Live(taken) = &entries[at].held else { return None };
        let (lane, seq) = (taken.lane(), taken.seq());
        let lower = |e: &Entry| matches!(&e.held, Held::Live(s) if s.lane() == lane && s.seq().index() < seq.index());
        if entries.iter().any(lower) {
            return None;
        }
        let Held::Live(taken) = entries.swap_remove(at).held else { return None };
        Some(taken)
    }

    /// Take the least recently used live entry whose session `pick` accepts
    /// off its sequence, keeping its state in host memory (as the spill
    /// bytes allow). `None`: no such entry; `Some(None)`: its state could not
    /// be saved, and it is gone.
    ///
    /// The entry stays in place, live, while its state is copied (which
    /// waits for its lane): a lookup meanwhile still finds it, and may fork
    /// it. Its sequence is free once the last fork of it has its copy.
    fn spill(&self, pick: impl Fn(&Arc<Session>) -> bool) -> Option<Option<Arc<Snapshot>>> {
        let session = {
            let entries = self.lock();
            let i = oldest(&entries, |e| matches!(&e.held, Held::Live(s) if pick(s)))?;
            let Held::Live(session) = &entries[i].held else { return Some(None) };
            session.clone()
        };
        let snapshot = session.copy_state().map(Arc::new);
        let mut entries = self.lock();
        let at = entries.iter().position(|e| matches!(&e.held, Held::Live(s) if Arc::ptr_eq(s, &session)));
        // Superseded or dropped meanwhile: its sequence goes with `session`.
        let at = at?;
        let saved = match snapshot {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!("saving a prefix-cache entry to host memory failed; it is dropped: {e}");
                let gone = entries.swap_remove(at);
                drop(entries);
                drop(gone);
                self.prune_notes();
                return Some(None);
            }
        };
        let size = spilled_size(&saved);
        let mut dropped = vec![std::mem::replace(&mut entries[at].held, Held::Spilled(saved.clone()))];
        // The least recently used spilled entries go until the rest fit.
        while spilled_bytes(&entries) > self.limits.spill_bytes {
            let Some(i) = oldest(&entries, |e| matches!(e.held, Held::Spilled(_))) else { break };
            dropped.push(entries.swap_remove(i).held);
        }
        drop(entries);
        drop(dropped);
        drop(session);
        self.prune_notes();
        tracing::debug!(bytes = size, "a prefix-cache entry gave up its sequence, kept in host memory");
        Some(Some(saved))
    }

    /// Drop every entry. A live entry's session holds its engine, so the
    /// owner of the engines empties the caches when it is done with them.
    pub(super) fn clear(&self) {
        let entries = std::mem::take(&mut *self.lock());
        drop(entries);
        self.prune_notes();
    }

    /// How many entries are held, live and spilled (tests, benchmarks).
    pub(super) fn counts(&self) -> (usize, usize) {
        let entries = self.lock();
        let live = entries.iter().filter(|e| matches!(e.held, Held::Live(_))).count();
        (live, entries.len() - live)
    }
}

/// Host-memory bytes of the spilled entries.
fn spilled_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| match &e.held {
            Held::Spilled(s) => spilled_size(s),
            Held::Live(_) => 0,
        })
        .sum()
}

/// Host memory one spilled entry takes: its state and its tokens.
fn spilled_size(snapshot: &Snapshot) -> u64 {
    snapshot.state.len() as u64 + 4 * snapshot.tokens.len() as u64
}

/// Index of the least recently used entry among those `pick` accepts.
fn oldest(entries: &[Entry], pick: impl Fn(&Entry) -> bool) -> Option<usize> {
    entries.iter().enumerate().filter(|(_, e)| pick(e)).min_by_key(|(_, e)| e.used).map(|(i, _)| i)
}
