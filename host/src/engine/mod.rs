//! The inference engine: one loaded model and its lanes (llama.cpp contexts,
//! each with one scheduler thread, see `lanes.rs`; one by default), shared by
//! every guest instance and session (and by both front doors, base wasi-nn
//! and the extension, so comparisons between them measure the interface and
//! nothing else).
//!
//! A token's way: a guest's [`Session::append`] or [`TokenStream`] read sends
//! a command of the lane protocol (`protocol.rs`) through its sequence's
//! slot (`slot.rs`) to its lane's scheduler thread (`scheduler/`), which
//! batches the work of the lane's sessions into `llama_decode` calls on the
//! lane's thread pool (`threads.rs`), samples (`sampler.rs`), turns token
//! bytes into whole-character chunks (`text.rs`), and pushes them into the
//! stream's buffer (`buffer.rs`), which the reader drains (`stream.rs`).
//! Conversations kept past their session for `open_cached` live in the
//! model's prefix cache (`prefix_cache.rs`); embeddings take the same lane
//! (`embed.rs`, then `scheduler/embed.rs`). Which attention kernel the
//! contexts run is measured at load
//! (`attention.rs`); the model file is checked before llama.cpp reads it
//! (`model_file.rs`).

mod attention;
mod buffer;
mod embed;
mod finish;
mod info;
mod lanes;
mod llama;
mod logprob;
mod model_file;
mod params;
mod prefix_cache;
mod protocol;
mod quota;
mod sampler;
mod scheduler;
mod session;
mod slot;
pub mod snapshot;
mod snapshot_key;
mod stream;
mod text;
mod threads;
mod template;
mod tokens;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, anyhow};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaModel, RopeType};

pub use attention::{Attention, Chosen, FlashAttention};
pub use embed::{EmbedInput, Embedding};
pub use finish::{Finish, FinishReason, Usage};
pub use info::ModelInfo;
pub use llama::{BACKEND, backend, cpu_code, gpu_build, gpus};
pub use params::{Constraint, GenerateParams, Pooling, SessionOptions};
pub use prefix_cache::CacheLimits;
pub use protocol::Pending;
pub use quota::{Quota, QuotaLimits};
pub use sampler::schema_grammar;
pub use session::{Forking, Namespace, Session};
pub use snapshot_key::SnapshotKey;
pub use stream::TokenStream;
pub use text::{Chunk, TokenLogprob};

use crate::chat::{ChatTemplate, TemplateError};
use crate::error::LlmError;
use lanes::Lane;
use prefix_cache::{PrefixCache, Start};
use session::Shape;
use protocol::{Command, SeqId};
use scheduler::Scheduler;
use slot::Slot;
use threads::Cores;

fn scheduler_stopped() -> LlmError {
    LlmError::EngineFailure("the model's scheduler has stopped".into())
}

/// How the operator runs a model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// CPU threads for decoding and prefill.
    pub threads: u32,
    /// Most tokens one session may hold.
    pub ctx_size: u32,
    /// Sessions that may be open at once on this model (llama.cpp sequences).
    pub max_sessions: u32,
    /// Layers offloaded to the GPU; `None`: all when built with a GPU backend, else 0.
    pub gpu_layers: Option<u32>,
    /// llama.cpp contexts the sessions are spread over (see `lanes.rs`);
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
    model: Arc<LlamaModel>,
    lanes: Vec<Arc<Lane>>,
    ctx_size: u32,
    attention: Attention,
    path: PathBuf,
    /// SHA-256 of the GGUF, computed on first use (snapshots carry it).
    identity: OnceLock<Result<[u8; 32], String>>,
    /// Where its layers run (`cpu`, or the GPU and how many layers).
    device: String,
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
}

impl Engine {
    /// Load a GGUF and start its lanes' scheduler threads.
    pub fn load(name: &str, path: &Path, config: &EngineConfig) -> anyhow::Result<Self> {
        let backend = backend()?;
        let gpus = gpus()?;
        // When the operator does not say: every layer where a GPU is usable, else none.
        let gpu_layers = config.gpu_layers.unwrap_or(if gpus.is_empty() { 0 } else { u32::MAX });
        let model_params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let checked = model_file::check(path).with_context(|| format!("model {name:?}"))?;
        let model = LlamaModel::load_from_file(backend, path, &model_params).map_err(|e| {
            let architecture = checked.architecture.as_deref().unwrap_or("none named");
            anyhow!(
                "model {name:?}: llama.cpp cannot load {} (architecture {architecture:?}; {e}): this build's \
                 llama.cpp may not know the architecture, or the file is damaged; WASI_NN_LLM_LOG=info shows \
                 llama.cpp's own reason",
                path.display()
            )
        })?;
        let model = Arc::new(model);

        let ctx_size = config.ctx_size.clamp(16, model.n_ctx_train().max(16));
        let max_sessions = config.max_sessions.clamp(1, 256);
        let threads = config.threads.clamp(1, 512);
        let lanes = config.lanes.unwrap_or(lanes::DEFAULT_COUNT);
        let lanes = lanes.clamp(1, max_sessions);
        // Where the layers went is part of what a kernel measurement depends on.
        let device = match gpus.first() {
            Some(gpu) if gpu_layers > 0 => {
                format!("{gpu}, {} of {} layers", gpu_layers.min(model.n_layer()), model.n_layer())
            }
            _ => "cpu".to_owned(),
        };
        let attention = attention::choose(&model, path, config.flash_attn, threads, ctx_size, &device);
        let cores = Cores::new(threads);
        let lanes = (0..lanes)
            .map(|index| {
                let sequences = lanes::sequences(max_sessions, lanes, index);
                let lane = LaneSetup { index, ctx_size, sequences, flash_attn: attention.context_param() };
                start_lane(name, &lane, &model, &cores)
                    .with_context(|| format!("creating llama.cpp context {index} for {name:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        Ok(Self(Arc::new(Inner {
            name: name.to_owned(),
            model,
            lanes,
            ctx_size,
            attention,
            path: path.to_owned(),
            identity: OnceLock::new(),
            device,
            file_size: std::fs::metadata(path).map_or(0, |m| m.len()),
            cache: PrefixCache::new(config.prefix_cache),
            opening: Mutex::new(()),
            snapshot_key: config.snapshot_key.clone(),
            chat_template: config.chat_template.clone(),
            jinja: OnceLock::new(),
        })))
    }

    /// The registry name this model was loaded under.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The llama.cpp model (tokenizer, metadata); read-only and thread-safe.
    pub fn model(&self) -> &LlamaModel {
        &self.0.model
    }

    /// Most tokens one session may hold.
    pub fn ctx_size(&self) -> u32 {
        self.0.ctx_size
    }

    /// The attention kernel the model's contexts run, and why.
    pub fn attention(&self) -> &Attention {
        &self.0.attention
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

    /// Context shift moves KV positions, which recurrent state and
    /// multi-axis RoPE cannot do (llama.cpp asserts rather than refuses).
    fn check_shiftable(&self) -> Result<(), LlmError> {
        let model = self.model();
        let rope = model.rope_type();
        let shiftable = !model.is_recurrent()
            && !model.is_hybrid()
            && !matches!(rope, Some(RopeType::MRope | RopeType::IMRope | RopeType::Vision));
        if shiftable {
            Ok(())
        } else {
            Err(LlmError::Unsupported(format!("model {:?} cannot shift its context ({rope:?} positions)", self.name())))
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
        &self.0.device
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

    /// KV-cache bytes a session of `tokens` context reserves: keys and values
    /// of every layer at f16, the whole context (a sliding-window layer
    /// holds less; the reservation is the bound).
    pub fn kv_bytes(&self, tokens: u32) -> u64 {
        let m = self.model();
        let head_dim = (m.n_embd().max(0) as u64) / u64::from(m.n_head().max(1));
        let per_token = 2 * 2 * u64::from(m.n_layer()) * u64::from(m.n_head_kv()) * head_dim;
        per_token * u64::from(tokens)
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

    /// How many llama.cpp contexts the sessions are spread over.
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
        let tokens = tokens::tokenize_with(self.model(), text, add_special, parse_special)?;
        Ok(tokens.into_iter().map(|t| t.0 as u32).collect())
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
        let mut info = info::read(self.name(), self.model(), self.ctx_size());
        if let Some(template) = &self.0.chat_template {
            info.chat_template = Some(template.clone());
        }
        info
    }

    /// Whether `self` and `other` are the same loaded model.
    pub fn same(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What one lane's context is made with.
struct LaneSetup {
    index: u32,
    /// Tokens per sequence.
    ctx_size: u32,
    sequences: u32,
    /// llama.cpp's `flash_attn_type`.
    flash_attn: i32,
}

/// Create one lane's context on its own scheduler thread, warmed up.
fn start_lane(name: &str, lane: &LaneSetup, model: &Arc<LlamaModel>, cores: &Arc<Cores>) -> anyhow::Result<Arc<Lane>> {
    let (ctx_size, sequences, index) = (lane.ctx_size, lane.sequences, lane.index);
    let threads = cores.threads();
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(ctx_size * sequences))
        .with_n_batch(scheduler::PREFILL_CHUNK as u32)
        .with_n_ubatch(scheduler::PREFILL_CHUNK as u32)
        .with_n_seq_max(sequences)
        // One KV stream per sequence: a session's attention never sees
        // (or is rounded differently because of) another session's cells.
        .with_kv_unified(false)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32)
        .with_flash_attention_policy(lane.flash_attn)
        .with_no_perf(false);
    // Embeddings: one sequence of up to a session's context, every token's
    // hidden state out (pooled by the engine), in small chunks.
    let embed_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(ctx_size))
        .with_n_batch(scheduler::EMBED_CHUNK as u32)
        .with_n_ubatch(scheduler::EMBED_CHUNK as u32)
        .with_n_seq_max(1)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::None)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32)
        .with_flash_attention_policy(lane.flash_attn);

    let (commands, receiver) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let (model, cores) = (model.clone(), cores.clone());
    std::thread::Builder::new()
        .name(format!("llm-{name}-{index}"))
        .spawn(move || {
            let model = &*model;
            let Ok(backend) = backend() else { return };
            let ctx = match model.new_context(backend, ctx_params) {
                Ok(mut ctx) => {
                    warm_up(model, &mut ctx);
                    ctx
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            Scheduler::new(model, ctx, embed_params, threads, sequences as usize, cores).run(receiver);
        })
        .context("spawning the scheduler thread")?;
    ready_rx.recv().context("scheduler thread died")?.map_err(|e| anyhow!("{e}"))?;
    Ok(Arc::new(Lane::new(commands, sequences as usize)))
}

/// The first decode on a new context costs 80–150 ms extra; pay it at load time.
fn warm_up(model: &LlamaModel, ctx: &mut llama_cpp_2::context::LlamaContext<'_>) {
    let mut batch = LlamaBatch::new(1, 1);
    let token = model.vocab().bos();
    let token = if (0..model.n_vocab()).contains(&token.0) { token } else { llama_cpp_2::token::LlamaToken(0) };
    if batch.add(token, 0, &[0], true).is_ok() {
        let _ = ctx.decode(&mut batch);
    }
    ctx.clear_kv_cache();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_backend_version_is_the_one_cargo_lock_pins() {
        let lock = include_str!("../../../Cargo.lock");
        let (crate_name, version) = super::BACKEND.1.split_once(' ').expect("crate and version");
        assert!(
            lock.contains(&format!("name = \"{crate_name}\"\nversion = \"{version}\"")),
            "Cargo.lock pins another {crate_name}: update engine::BACKEND"
        );
    }
}
