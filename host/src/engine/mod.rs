//! The inference engine: one loaded model and its lanes (contexts of the
//! model's backend, each with one scheduler thread, see `lanes.rs`; one by
//! default), shared by every guest instance and session (and by every front
//! door, so comparisons between them measure the interface and nothing
//! else). It runs on any backend behind the seam ([`crate::backend`]).
//!
//! A token's way: a guest's [`Session::append`] or [`TokenStream`] read sends
//! a command of the lane protocol (`protocol.rs`) through its sequence's
//! slot (`slot.rs`, the sequence it took: `placement.rs`) to its lane's
//! scheduler thread (`scheduler/`), which
//! batches the work of the lane's sessions into decodes of the backend's
//! context (its share of the cores: `cores.rs`), samples with the
//! backend's sampler, turns token
//! bytes into whole-character chunks (`text.rs`), and pushes them into the
//! stream's buffer (`buffer.rs`), which the reader drains (`stream.rs`).
//! Conversations kept past their session for `open_cached` live in the
//! model's prefix cache (`prefix_cache/`); embeddings take the same lane
//! (`embed.rs`, then `scheduler/embed.rs`). A generation held to a Lark
//! grammar or JSON schema is masked by `constraint.rs`; the tokens a decode
//! step may check ahead of each generation are `speculation/`'s. The operator's
//! settings are `config.rs`.

mod buffer;
mod config;
mod constraint;
mod cores;
mod embed;
mod finish;
mod lanes;
mod logprob;
mod params;
mod placement;
mod prefix_cache;
mod protocol;
mod quota;
mod scheduler;
mod session;
mod slot;
pub mod snapshot;
mod snapshot_key;
mod speculation;
mod stream;
mod template;
mod text;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;

pub use crate::backend::llama_cpp::schema_grammar;
pub use crate::backend::{Attention, BackendKind, Chosen, Constraint, FlashAttention, GenerateParams, ModelInfo};
pub use config::EngineConfig;
pub use embed::{EmbedInput, Embedding};
pub use finish::{Finish, FinishReason, Usage};
pub use params::{Feature, Pooling, SessionOptions};
pub use prefix_cache::{CacheLimits, SharedSettings, SharedTier};
pub use protocol::Pending;
pub use quota::{Quota, QuotaLimits};
pub use session::{CacheTier, Forking, Namespace, Session};
pub use snapshot_key::SnapshotKey;
pub use speculation::{MAX_DRAFT, Speculation, SpeculationMode};
pub use stream::TokenStream;
pub use text::{Chunk, TokenLogprob};

use crate::backend::{ContextSetup, LoadConfig, Model};
use crate::chat::{ChatTemplate, TemplateError};
use crate::error::LlmError;
use cores::Cores;
use lanes::Lane;
use prefix_cache::PrefixCache;
use protocol::Command;
use session::Shape;
use slot::Slot;

fn scheduler_stopped() -> LlmError {
    LlmError::EngineFailure("the model's scheduler has stopped".into())
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
    /// Whether the lanes draft (the operator's setting).
    speculation: Speculation,
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
        let ctx_size = load.session_context(model.trained_context());
        let max_sessions = config.max_sessions.clamp(1, 256);
        let lanes = config.lanes.unwrap_or(lanes::DEFAULT_COUNT);
        let lanes = lanes.clamp(1, max_sessions);
        let cores = Cores::new(threads);
        let lanes = (0..lanes)
            .map(|index| {
                let sequences = lanes::sequences(max_sessions, lanes, index);
                let setup = ContextSetup { ctx_size, sequences, threads, batch: scheduler::PREFILL_CHUNK as u32 };
                lanes::start(name, index, &setup, &model, &cores, config.speculation)
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
            cache: PrefixCache::new(config.prefix_cache, config.shared_cache.clone()),
            opening: Mutex::new(()),
            snapshot_key: config.snapshot_key.clone(),
            chat_template: config.chat_template.clone(),
            jinja: OnceLock::new(),
            grammars: OnceLock::new(),
            speculation: config.speculation,
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

    /// Whether generations speculate, and how far (the operator's setting;
    /// the lanes draft only where it pays).
    pub fn speculation(&self) -> Speculation {
        self.0.speculation
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
