//! How the operator runs a model: the engine's configuration and its
//! defaults, named once here.

use std::sync::{Arc, OnceLock};

use super::{BackendKind, CacheLimits, FlashAttention, SharedTier, SnapshotKey, Speculation};

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
    /// The prefix cache's tier shared with other hosts (`--shared-cache`),
    /// one for all the host's models.
    pub shared_cache: Option<Arc<SharedTier>>,
    /// Speculative decoding by n-gram lookup (see `speculation/`).
    pub speculation: Speculation,
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
            shared_cache: None,
            speculation: Speculation::default(),
        }
    }
}

/// One random snapshot key per process, for configurations that name none.
fn process_key() -> SnapshotKey {
    static KEY: OnceLock<SnapshotKey> = OnceLock::new();
    KEY.get_or_init(SnapshotKey::ephemeral).clone()
}
