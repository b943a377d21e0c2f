//! The inference engine: one loaded model and its lanes (contexts of the
//! model's backend, each with one scheduler thread, see `lanes.rs`; one by
//! default), shared by every guest instance and session (and by every front
//! door, so comparisons between them measure the interface and nothing
//! else). It runs on any backend behind the seam ([`crate::backend`]).
//!
//! A token's way: a guest's [`Session::append`] or [`TokenStream`] read sends
//! a command of the lane protocol (`protocol.rs`) through its sequence's
//! slot (`slot.rs`) to its lane's scheduler thread (`scheduler/`), which
//! batches the work of the lane's sessions into decodes of the backend's
//! context (its share of the cores: `cores.rs`), samples with the
//! backend's sampler, turns token
//! bytes into whole-character chunks (`text.rs`), and pushes them into the
//! stream's buffer (`buffer.rs`), which the reader drains (`stream.rs`).
//! Conversations kept past their session for `open_cached` live in the
//! model's prefix cache (`prefix_cache.rs`); embeddings take the same lane
//! (`embed.rs`, then `scheduler/embed.rs`).

mod buffer;
mod constraint;
mod cores;
mod embed;
mod finish;
mod lanes;
mod logprob;
mod params;
mod prefix_cache;
mod protocol;
mod quota;
mod scheduler;
mod session;
mod slot;
pub mod snapshot;
mod snapshot_key;
mod stream;
mod text;
mod template;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, anyhow};

pub use crate::backend::llama_cpp::schema_grammar;
pub use crate::backend::{
    Attention, BackendKind, Chosen, Constraint, FlashAttention, GenerateParams, ModelInfo,
};
pub use embed::{EmbedInput, Embedding};
pub use finish::{Finish, FinishReason, Usage};
pub use params::{Feature, Pooling, SessionOptions};
pub use prefix_cache::CacheLimits;
pub use protocol::Pending;
pub use quota::{Quota, QuotaLimits};
pub use session::{Forking, Namespace, Session};
pub use snapshot_key::SnapshotKey;
pub use stream::TokenStream;
pub use text::{Chunk, TokenLogprob};

use crate::backend::{ContextSetup, LoadConfig, Model};
use crate::chat::{ChatTemplate, TemplateError};
use crate::error::LlmError;
use cores::Cores;
use lanes::Lane;
use prefix_cache::{PrefixCache, Start};
use session::Shape;
use protocol::{Command, SeqId};
use scheduler::Scheduler;
use slot::Slot;

fn scheduler_stopped() -> LlmError {
    LlmError::EngineFailure("the model's scheduler has stopped".into())
}

/// How the operator runs a model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Which backend runs the model.
    pub backend: BackendKind,
    /// CPU threads for decoding and prefill.
    pub threads: u32,
    /// Most tokens one session may hold.
    pub ctx_size: u32,
    /// Sessions that may be open at once on this model (the contexts' sequences).
    pub max_sessions: u32,
    /// Layers offloaded to the GPU; `None`: all when built with a GPU backend, else 0.
    pub gpu_layers: Option<u32>,
    /// Contexts the sessions are spread over (see `lanes.rs`);
    /// `None`: one.
    pub lanes: Option<u32>,
    /// Flash attention on, off, or measured at load (see `attention.rs`).
    pub flash_attn: FlashAttention,
    /// What the model's prefix cache may keep (see `prefix_cache.rs`).
    pub prefix_cache: CacheLimits,
    /// The secret that seals saved sessions (see `snapshot_key.rs`);
    /// default: a random key of this process.
    pub snapshot_key: SnapshotKey,
    /// A Jinja chat template that replaces the GGUF's own (the operator's).
    pub chat_template: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        Self {
            backend: BackendKind::default(),
            threads,
            ctx_size: 4096,
            max_sessions: 8,
            gpu_layers: None,
            lanes: None,
            flash_attn: FlashAttention::Auto,
            prefix_cache: CacheLimits::default(),
            snapshot_key: process_key(),
            chat_template: None,
        }
    }
}

/// One random snapshot key per process, for configurations that name none.
fn process_key() -> SnapshotKey {
    static KEY: OnceLock<SnapshotKey> = OnceLock::new();
    KEY.get_or_init(SnapshotKey::ephemeral).clone()
}

/// A loaded model and its lanes; cheap to clone, shared by all guests.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    name: String,
    model: Arc<dyn Model>,
    lanes: Vec<Arc<Lane>>,
    ctx_size: u32,
    path: PathBuf,
    /// SHA-256 of the GGUF, computed on first use (snapshots carry it).
    identity: OnceLock<Result<[u8; 32], String>>,
    /// The model file's size in bytes, when it was loaded.
    file_size: u64,
    /// Conversations kept for `open_cached`.
    cache: PrefixCache,
    /// Held while `open_cached` finds its prefix and takes it over.
    opening: Mutex<()>,
    /// Seals the sessions guests save, and checks those they restore.
    snapshot_key: SnapshotKey,
    /// The operator's chat template, replacing the GGUF's.
    chat_template: Option<String>,
    /// The model's Jinja chat template (the operator's, else the GGUF's),
    /// compiled on first use; none where there is none.
    jinja: OnceLock<Result<Option<Arc<ChatTemplate>>, TemplateError>>,
    /// The compiler of Lark and JSON-schema constraints, made on first use.
    grammars: OnceLock<Result<Arc<constraint::Grammars>, LlmError>>,
}

impl Engine {
    /// Load a GGUF with the configured backend and start its lanes'
    /// scheduler threads.
    pub fn load(name: &str, path: &Path, config: &EngineConfig) -> anyhow::Result<Self> {
        let threads = config.threads.clamp(1, 512);
        let load = LoadConfig {
            threads,
            ctx_size: config.ctx_size,
            gpu_layers: config.gpu_layers,
            flash_attn: config.flash_attn,
        };
        let model = crate::backend::load(config.backend, name, path, &load)?;
        let ctx_size = config.ctx_size.clamp(16, model.trained_context().max(16));
        let max_sessions = config.max_sessions.clamp(1, 256);
        let lanes = config.lanes.unwrap_or(lanes::DEFAULT_COUNT);
        let lanes = lanes.clamp(1, max_sessions);
        let cores = Cores::new(threads);
        let lanes = (0..lanes)
            .map(|index| {
                let sequences = lanes::sequences(max_sessions, lanes, index);
                let setup = ContextSetup { ctx_size, sequences, threads, batch: scheduler::PREFILL_CHUNK as u32 };
                start_lane(name, index, &setup, &model, &cores)
                    .with_context(|| format!("creating {} context {index} for {name:?}", model.kind()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        Ok(Self(Arc::new(Inner {
            name: name.to_owned(),
            model,
            lanes,
            ctx_size,
            path: path.to_owned(),
            identity: OnceLock::new(),
            file_size: std::fs::metadata(path).map_or(0, |m| m.len()),
            cache: PrefixCache::new(config.prefix_cache),
            opening: Mutex::new(()),
            snapshot_key: config.snapshot_key.clone(),
            chat_template: config.chat_template.clone(),
            jinja: OnceLock::new(),
            grammars: OnceLock::new(),
        })))
    }

    /// The registry name this model was loaded under.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The backend's model (tokenizer, metadata); read-only and thread-safe.
    pub fn model(&self) -> &dyn Model {
        &*self.0.model
    }

    /// Which backend runs the model.
    pub fn backend(&self) -> crate::backend::BackendKind {
        self.0.model.kind()
    }

    /// Most tokens one session may hold.
    pub fn ctx_size(&self) -> u32 {
        self.0.ctx_size
    }

    /// The attention kernel the model's contexts run, and why, where the
    /// backend chooses one (llama.cpp).
    pub fn attention(&self) -> Option<&Attention> {
        self.0.model.attention()
    }

    /// Open an empty session, taking one of the model's sequence slots and
    /// a share of `quota` (its instance's).
    pub fn open_session(&self, options: &SessionOptions, quota: &Arc<Quota>) -> Result<Session, LlmError> {
        let shape = self.shape(options)?;
        self.open_shaped(shape, quota)
    }

    fn open_shaped(&self, shape: Shape, quota: &Arc<Quota>) -> Result<Session, LlmError> {
        let session = Session::new(self.clone(), self.new_slot(shape.limit, quota)?, shape);
        session.send(Command::Open { seq: session.seq(), limit: shape.limit, seed: shape.seed, shift: shape.shift })?;
        Ok(session)
    }

    /// The session `options` ask for, checked against this model.
    fn shape(&self, options: &SessionOptions) -> Result<Shape, LlmError> {
        let limit = match options.context_length {
            None => self.0.ctx_size,
            Some(0) => return Err(LlmError::invalid("context-length must be at least 1")),
            Some(n) if n > self.0.ctx_size => {
                return Err(LlmError::LimitExceeded { name: "context-length".into(), max: self.0.ctx_size.into() });
            }
            Some(n) => n,
        };
        if let Some(keep) = options.shift_keep {
            if keep >= limit {
                return Err(LlmError::invalid(format!(
                    "shift must keep fewer than the {limit}-token context, not {keep}"
                )));
            }
            self.check_shiftable()?;
        }
        Ok(Shape { limit, shift: options.shift_keep, seed: options.seed })
    }

    /// A session holding `prompt`, continued from the longest prefix of it
    /// that `namespace`'s entries in the prefix cache hold (see
    /// `prefix_cache.rs`); only the rest is evaluated. The session goes into
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
        // One request at a time finds its entry and takes its place, so no
        // other request holds the entry meanwhile and blocks the takeover
        // below (a few milliseconds each; the prefill comes after).
        let opening = self.0.opening.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.0.cache.lookup(namespace, shape, prompt);
        let continued = match start {
            Start::Extend(entry, shared) => self.continue_entry(entry, true, shape, quota).map(|s| (s, shared)),
            Start::Fork(entry, shared) => self.continue_entry(entry, false, shape, quota).map(|s| (s, shared)),
            Start::Restore(snapshot, shared) => self.restore_cached(&snapshot, shape, quota).map(|s| (s, shared)),
            Start::Empty => Err(LlmError::invalid("nothing cached")),
        };
        let (mut session, shared) = match continued {
            Ok((session, shared)) => {
                session.resume(shared)?;
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
    fn cache(&self) -> &PrefixCache {
        &self.0.cache
    }

    /// The note `namespace` kept under `key` with a conversation its prefix
    /// cache still holds (see `prefix_cache.rs`).
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

    /// Whether sessions of this model can shift their context (checked
    /// here: llama.cpp asserts rather than refuses).
    fn check_shiftable(&self) -> Result<(), LlmError> {
        match self.model().cannot_shift() {
            None => Ok(()),
            Some(why) => Err(LlmError::Unsupported(format!("model {:?} cannot shift its context: {why}", self.name()))),
        }
    }

    /// A session from a blob [`Session::save`] wrote: checked in full
    /// (format, seal under this host's key, model identity, token ids,
    /// limits) before any of it reaches llama.cpp.
    pub fn restore_session(&self, blob: &[u8], quota: &Arc<Quota>) -> Result<Session, LlmError> {
        let snapshot = snapshot::Snapshot::decode(blob, &self.0.snapshot_key, &self.identity()?)?;
        if snapshot.limit > self.0.ctx_size {
            return Err(LlmError::LimitExceeded { name: "context-length".into(), max: self.0.ctx_size.into() });
        }
        tokens::checked_tokens(self.model(), &snapshot.tokens)?;
        self.restore_into(self.new_slot(snapshot.limit, quota)?, snapshot, None)
    }

    /// A new session on `slot` holding `snapshot` (already checked).
    fn restore_into(&self, slot: Slot, snapshot: snapshot::Snapshot, shift: Option<u32>) -> Result<Session, LlmError> {
        let session = Session::new(self.clone(), slot, Shape { limit: snapshot.limit, shift, seed: snapshot.seed });
        let open = Command::Open { seq: session.seq(), limit: snapshot.limit, seed: snapshot.seed, shift };
        session.send(open)?;
        session.load(snapshot)?;
        Ok(session)
    }

    /// The key this engine seals and checks snapshots with.
    pub fn snapshot_key(&self) -> &SnapshotKey {
        &self.0.snapshot_key
    }

    /// The blob `session.save` returns for `snapshot`, sealed with this
    /// host's key.
    pub fn seal(&self, snapshot: &snapshot::Snapshot) -> Vec<u8> {
        snapshot.encode(&self.0.snapshot_key)
    }

    /// Where the model's layers run: `cpu`, or the GPU and how many layers.
    pub fn device(&self) -> &str {
        self.0.model.device()
    }

    /// The model file's size in bytes, when it was loaded.
    pub fn file_size(&self) -> u64 {
        self.0.file_size
    }

    /// SHA-256 of the model file: what binds a snapshot to its model, and
    /// what a guest checks to know which model serves it. Read from the
    /// file the first time it is asked for, then kept.
    pub fn identity(&self) -> Result<[u8; 32], LlmError> {
        let id = self.0.identity.get_or_init(|| {
            use sha2::{Digest, Sha256};
            let mut file = std::fs::File::open(&self.0.path).map_err(|e| e.to_string())?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
            Ok(hasher.finalize().into())
        });
        id.clone().map_err(|e| LlmError::EngineFailure(format!("hashing the model file: {e}")))
    }

    /// A slot for a new session of a `limit`-token context: its share of
    /// `quota`, then a sequence.
    fn new_slot(&self, limit: u32, quota: &Arc<Quota>) -> Result<Slot, LlmError> {
        let lease = quota.lease(self.kv_bytes(limit))?;
        let (lane, seq) = self.take_slot()?;
        Ok(Slot::new(lane, seq, lease))
    }

    /// Reserve a free sequence in the lane with the most free sequences (so
    /// concurrent sessions spread over the cores); the slot made of it frees
    /// it on drop.
    fn take_slot(&self) -> Result<(Arc<Lane>, SeqId), LlmError> {
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

    /// Wait until every lane has handled what was sent to it so far (the
    /// closes of a guest that just ended, for one): afterwards the engine is
    /// exactly as the dropped handles left it.
    pub fn quiesce(&self) {
        for lane in &self.0.lanes {
            // A stopped lane has nothing in flight either.
            let _ = lane.request(|reply| Command::Barrier { reply });
        }
    }

    /// Sessions that may be open at once, over all lanes.
    pub fn max_sessions(&self) -> usize {
        self.0.lanes.iter().map(|l| l.capacity()).sum()
    }

    /// How many contexts the sessions are spread over.
    pub fn lanes(&self) -> usize {
        self.0.lanes.len()
    }

    /// Where `lane` is among this model's lanes.
    pub(super) fn lane_index(&self, lane: &Arc<Lane>) -> usize {
        self.0.lanes.iter().position(|l| Arc::ptr_eq(l, lane)).unwrap_or(0)
    }

    /// Token ids for `text`; `add_special` adds BOS where the model uses one,
    /// `parse_special` turns marker text into special tokens.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, LlmError> {
        tokens::tokenize_with(self.model(), text, add_special, parse_special)
    }

    /// Text for token ids; every id is checked against the vocabulary.
    pub fn detokenize(&self, tokens: &[u32], render_special: bool) -> Result<String, LlmError> {
        tokens::detokenize(self.model(), tokens, render_special)
    }

    /// How many tokens appending `text` to an empty session adds.
    pub fn count_tokens(&self, text: &str) -> Result<u32, LlmError> {
        Ok(tokens::tokenize(self.model(), text, true)?.len() as u32)
    }

    /// The model's metadata and this host's limits for it.
    pub fn info(&self) -> ModelInfo {
        let mut info = self.model().info();
        info.name = self.name().to_owned();
        info.max_session_context = self.ctx_size();
        if let Some(template) = &self.0.chat_template {
            info.chat_template = Some(template.clone());
        }
        info
    }

    /// The optional features this model offers: every backend forks,
    /// saves, restores, reports logprobs and embeds (the engine's and the
    /// seam's doing); GBNF is the backend's own; the prefix cache is the
    /// operator's choice; context shift is the model's.
    pub fn features(&self) -> Vec<Feature> {
        let mut features = vec![Feature::Fork, Feature::SaveRestore, Feature::Logprobs, Feature::Embeddings];
        if self.model().gbnf() {
            features.push(Feature::Gbnf);
        }
        if self.0.cache.enabled() {
            features.push(Feature::PrefixCache);
        }
        if self.model().cannot_shift().is_none() {
            features.push(Feature::ContextShift);
        }
        features
    }

    /// The compiler of this model's Lark and JSON-schema constraints.
    fn grammars(&self) -> Result<Arc<constraint::Grammars>, LlmError> {
        self.0.grammars.get_or_init(|| constraint::Grammars::new(&self.0.model).map(Arc::new)).clone()
    }

    /// Whether `self` and `other` are the same loaded model.
    pub fn same(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Make one lane's context on its own scheduler thread, which then serves
/// the lane's commands.
fn start_lane(
    name: &str,
    index: u32,
    setup: &ContextSetup,
    model: &Arc<dyn Model>,
    cores: &Arc<Cores>,
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
            Scheduler::new(model, ctx, &setup, cores).run(receiver);
        })
        .context("spawning the scheduler thread")?;
    ready_rx.recv().context("scheduler thread died")?.map_err(|e| anyhow!("{e}"))?;
    Ok(Arc::new(Lane::new(commands, setup.sequences as usize)))
}
