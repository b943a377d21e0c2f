//! A session handle: one sequence of a context in one of a model's lanes, owned
//! by one guest resource. Its calls block the calling guest's thread only.

use std::sync::{Arc, Mutex};

use super::protocol::{Command, Input, Pending, Reply, SeqId};
use super::quota::Lease;
use super::slot::Slot;
use super::snapshot::Snapshot;
use super::stream::TokenStream;
use super::{Engine, tokens};
use crate::backend::sampling::{self, Constraint, GenerateParams};
use crate::error::LlmError;

/// Whose conversations a prefix-cache entry holds: the SHA-256 of the
/// component that built it (what the policy's digest grants name). A
/// session from `open_cached` carries it to the cache when dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(pub String);

/// What a session must share with a prefix-cache entry to continue from
/// it: the context limit, context-shift setting and default seed it was
/// opened with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Shape {
    pub limit: u32,
    pub shift: Option<u32>,
    pub seed: Option<u64>,
}

/// Largest note a guest may keep with a conversation.
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// A conversation in the model's KV cache. Its sequence is freed when the
/// session and every stream it started are dropped.
pub struct Session {
    engine: Engine,
    slot: Arc<Slot>,
    limit: u32,
    /// The context-shift setting it was opened with (a fork inherits it).
    shift: Option<u32>,
    /// The default seed it was opened with.
    seed: Option<u64>,
    /// Set for a session from [`Engine::open_cached`]: whose prefix cache
    /// it goes into when dropped.
    kept_for: Option<Namespace>,
    /// The guest's notes, by key, that go into the cache with it.
    notes: Mutex<Vec<(String, Arc<[u8]>)>>,
    /// Which tier of the prefix cache gave it its prefix (`open_cached`).
    cached_from: Option<CacheTier>,
}

/// Which tier of the prefix cache a session was continued from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    /// This host's own.
    Local,
    /// The store several hosts share (`--shared-cache`).
    Shared,
}

impl Session {
    /// A session of `engine` on `slot`.
    pub(super) fn new(engine: Engine, slot: Slot, shape: Shape) -> Self {
        let Shape { limit, shift, seed } = shape;
        Self {
            engine,
            slot: Arc::new(slot),
            limit,
            shift,
            seed,
            kept_for: None,
            notes: Mutex::default(),
            cached_from: None,
        }
    }

    /// Which tier of the prefix cache gave this session its prefix; none
    /// if it was not continued from the cache.
    pub fn cached_from(&self) -> Option<CacheTier> {
        self.cached_from
    }

    pub(super) fn set_cached_from(&mut self, tier: CacheTier) {
        self.cached_from = Some(tier);
    }

    /// What another session must share with this one to continue from it.
    pub(super) fn shape(&self) -> Shape {
        Shape { limit: self.limit, shift: self.shift, seed: self.seed }
    }

    /// Put this session into `namespace`'s prefix cache when it is dropped.
    pub(super) fn keep_for(&mut self, namespace: Namespace) {
        self.kept_for = Some(namespace);
    }

    /// Keep `note` under `key` with this session in the prefix cache (see
    /// `prefix_cache.rs`): only a session from `open_cached` goes there.
    pub fn keep_note(&self, key: &str, note: Vec<u8>) -> Result<(), LlmError> {
        if self.kept_for.is_none() {
            return Err(LlmError::Unsupported(
                "only a session from open-cached goes into the prefix cache, and this host's cache must be on \
                 (prefix-cache-entries above 0) to keep notes"
                    .into(),
            ));
        }
        if key.is_empty() || key.len() > 256 {
            return Err(LlmError::invalid(format!("a note's key must be 1 to 256 bytes, not {}", key.len())));
        }
        if note.len() > MAX_NOTE_BYTES {
            return Err(LlmError::LimitExceeded { name: "note-bytes".into(), max: MAX_NOTE_BYTES as u64 });
        }
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.retain(|(k, _)| k != key);
        notes.push((key.to_owned(), note.into()));
        Ok(())
    }

    /// Hold `lease` in place of the one it has: a session passing between
    /// an instance's quota and the prefix cache's, either way. False if a
    /// stream still shares the slot (a kept session has none).
    pub(super) fn hold(&mut self, lease: Lease) -> bool {
        match Arc::get_mut(&mut self.slot) {
            Some(slot) => {
                slot.lease = lease;
                true
            }
            None => false,
        }
    }

    pub(super) fn seq(&self) -> SeqId {
        self.slot.seq()
    }

    pub(super) fn send(&self, command: Command) -> Result<(), LlmError> {
        self.slot.send(command)
    }

    /// Most tokens this session may hold.
    pub fn context_limit(&self) -> u32 {
        self.limit
    }

    /// Which of the model's lanes (llama.cpp contexts) holds this session.
    pub fn lane(&self) -> usize {
        self.engine.lane_index(&self.slot.lane)
    }

    /// The model this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Tokenize `text` and evaluate it into the KV cache; returns how many
    /// tokens were added. Blocks until the prefill is done.
    pub fn append(&self, text: &str) -> Result<u32, LlmError> {
        self.start_append(text)?.wait()
    }

    /// [`append`](Self::append), answered later: the prefill is queued and
    /// the caller waits (or awaits) when it chooses.
    pub fn start_append(&self, text: &str) -> Result<Pending<u32>, LlmError> {
        self.slot.start(|reply| Command::Append { seq: self.slot.seq(), input: Input::Text(text.to_owned()), reply })
    }

    /// Evaluate token ids into the KV cache, each checked against the
    /// vocabulary first; returns how many were added.
    pub fn append_tokens(&self, tokens: &[u32]) -> Result<u32, LlmError> {
        self.start_append_tokens(tokens)?.wait()
    }

    /// [`append_tokens`](Self::append_tokens), answered later (the ids are
    /// checked now).
    pub fn start_append_tokens(&self, tokens: &[u32]) -> Result<Pending<u32>, LlmError> {
        self.start_checked(tokens::checked_tokens(self.engine().model(), tokens)?)
    }

    /// [`append_tokens`](Self::append_tokens) of ids already checked.
    pub(super) fn append_checked(&self, ids: Vec<u32>) -> Result<u32, LlmError> {
        self.start_checked(ids)?.wait()
    }

    fn start_checked(&self, ids: Vec<u32>) -> Result<Pending<u32>, LlmError> {
        self.slot.start(|reply| Command::Append { seq: self.slot.seq(), input: Input::Tokens(ids), reply })
    }

    /// Make the session hold exactly `tokens`, evaluating as few as it
    /// can: what it already holds of them stays
    /// ([`reusable_prefix`](tokens::reusable_prefix): the last token is
    /// always evaluated anew, for its logits), the rest is dropped and the
    /// remainder appended. Returns how many were kept.
    pub fn set_tokens(&self, tokens: &[u32]) -> Result<usize, LlmError> {
        let held = self.tokens()?;
        let keep = tokens::reusable_prefix(&held, tokens);
        self.rewind((held.len() - keep) as u32)?;
        self.append_tokens(&tokens[keep..])?;
        Ok(keep)
    }

    /// The tokens the session holds.
    pub fn tokens(&self) -> Result<Vec<u32>, LlmError> {
        self.request(|reply| Command::Tokens { seq: self.slot.seq(), reply })
    }

    /// Raw logits (one per vocabulary entry) for the next token, computed
    /// from the session's last token: what a tensor-only API returns.
    pub fn logits(&self) -> Result<Vec<f32>, LlmError> {
        self.request(|reply| Command::Logits { seq: self.slot.seq(), reply })
    }

    /// Drop the last `n` tokens; returns the new length.
    pub fn rewind(&self, n: u32) -> Result<u32, LlmError> {
        self.request(|reply| Command::Rewind { seq: self.slot.seq(), n, reply })
    }

    /// Continue a kept conversation from its first `keep` tokens (see
    /// [`Command::Resume`]).
    pub(super) fn resume(&self, keep: usize) -> Result<(), LlmError> {
        self.request(|reply| Command::Resume { seq: self.slot.seq(), keep, reply })
    }

    /// Drop every token.
    pub fn reset(&self) -> Result<(), LlmError> {
        self.request(|reply| Command::Reset { seq: self.slot.seq(), reply })
    }

    /// A new session with the same tokens and a copy of the KV cache: in
    /// this session's lane (a cell copy) when it has a free sequence, else
    /// through the state API into another lane.
    pub fn fork(&self) -> Result<Session, LlmError> {
        self.fork_with(self.slot.lease.renew()?)
    }

    /// [`fork`](Self::fork), the child holding `lease` (of any quota).
    pub(super) fn fork_with(&self, lease: Lease) -> Result<Session, LlmError> {
        self.start_fork_with(lease)?.wait()
    }

    /// [`fork`](Self::fork), answered later where it is one command (a cell
    /// copy within the lane); a fork into another lane, through the state
    /// API, is done before this returns.
    pub fn start_fork(&self) -> Result<Forking, LlmError> {
        self.start_fork_with(self.slot.lease.renew()?)
    }

    fn start_fork_with(&self, lease: Lease) -> Result<Forking, LlmError> {
        let engine = self.engine();
        let lane = &self.slot.lane;
        let Some(child) = engine.take_in(lane) else {
            let snapshot = self.copy_state()?;
            let (lane, seq) = engine.take_slot()?;
            return Ok(Forking::Done(engine.restore_into(Slot::new(lane, seq, lease), snapshot, self.shift)?));
        };
        // From here the child owns its slot: dropping it on failure frees it.
        let forked = Session::new(engine.clone(), Slot::new(lane.clone(), child, lease), self.shape());
        let copied = self.slot.start(|reply| Command::Fork { seq: self.seq(), child, reply })?;
        Ok(Forking::Copying(forked, copied))
    }

    /// The session's tokens and KV state as an in-process copy: never
    /// encoded, so no model identity is needed.
    pub(super) fn copy_state(&self) -> Result<Snapshot, LlmError> {
        self.request(|reply| Command::Save { seq: self.seq(), model: [0; 32], reply })
    }

    /// Start generating from the end of the session.
    pub fn generate(&self, params: &GenerateParams) -> Result<TokenStream, LlmError> {
        sampling::validate(params)?;
        let mut params = params.clone();
        let guide = match params.constraint.take() {
            Some(Constraint::Lark(grammar)) => Some(self.engine().grammars()?.lark(&grammar)?),
            Some(Constraint::JsonSchema(schema)) => Some(self.engine().grammars()?.json_schema(&schema)?),
            gbnf => {
                params.constraint = gbnf;
                None
            }
        };
        let deadline = self.slot.lease.quota().admit(&mut params)?;
        let permit = self.slot.lease.quota().start_generation()?;
        let generate = |reply| Command::Generate { seq: self.slot.seq(), params, guide, deadline, reply };
        let shared = self.request(generate)?;
        Ok(TokenStream::new(shared, self.slot.clone(), permit))
    }

    /// The session as a versioned blob bound to this model (see
    /// [`snapshot`](super::snapshot)); [`Engine::restore_session`] reads it back.
    pub fn save(&self) -> Result<Vec<u8>, LlmError> {
        Ok(self.engine().seal(&self.start_save()?.wait()?))
    }

    /// [`save`](Self::save), answered later; the caller seals the
    /// snapshot ([`Engine::seal`](super::Engine::seal)) once it has it.
    pub fn start_save(&self) -> Result<Pending<Snapshot>, LlmError> {
        let model = self.engine().identity()?;
        self.slot.start(|reply| Command::Save { seq: self.slot.seq(), model, reply })
    }

    pub(super) fn load(&self, snapshot: Snapshot) -> Result<(), LlmError> {
        self.request(|reply| Command::Restore { seq: self.slot.seq(), snapshot, reply })
    }

    fn request<T: Send + 'static>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, LlmError> {
        self.slot.request(command)
    }
}

/// A fork in progress ([`Session::start_fork`]).
pub enum Forking {
    /// The child, usable once the scheduler has copied the cells.
    Copying(Session, Pending<()>),
    /// The child, copied already.
    Done(Session),
}

impl Forking {
    /// Block until the child is ready.
    pub fn wait(self) -> Result<Session, LlmError> {
        match self {
            Self::Copying(child, copied) => copied.wait().map(|()| child),
            Self::Done(child) => Ok(child),
        }
    }

    /// Await the child without blocking the caller's async runtime.
    pub async fn ready(self) -> Result<Session, LlmError> {
        match self {
            Self::Copying(child, copied) => copied.answer().await.map(|()| child),
            Self::Done(child) => Ok(child),
        }
    }
}

impl Drop for Session {
    /// A session from `open_cached` goes into its model's prefix cache, on
    /// the cache's quota (no longer its instance's), unless a stream of it
    /// is still running: then its tokens are still changing.
    fn drop(&mut self) {
        let Some(namespace) = self.kept_for.take() else { return };
        let Ok(lease) = self.slot.lease.move_to(self.engine.cache().quota()) else { return };
        if !self.hold(lease) {
            return;
        }
        let Ok(tokens) = self.tokens() else { return };
        let notes = std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()));
        self.engine.share(&namespace, self.shape(), &tokens, self);
        let kept = Session {
            slot: self.slot.clone(),
            engine: self.engine.clone(),
            kept_for: None,
            notes: Mutex::default(),
            cached_from: None,
            ..*self
        };
        self.engine.cache().keep(namespace, self.shape(), tokens, kept, notes);
    }
}
