//! The operator's policy file: which models exist, which guest components
//! may use which of them, which front doors are open, and the limits every
//! guest instance runs under.
//!
//! It is TOML, typed with serde, and unknown keys are refused: a misspelt
//! limit must stop the host, not be ignored. The `--model`/`--ctx-size` CLI
//! flags are the quick path: the same as a policy with those models and
//! nothing else (every component allowed, no limits beyond the engine's own).
//!
//! ```toml
//! snapshot-key-file = "/etc/wasi-nn-llm/snapshot.key"   # 32 bytes or 64 hex digits
//!
//! [models.smollm2]
//! catalog = "smollm2"            # or: path = "/srv/models/x.gguf"
//! context = 2048                 # most tokens per session
//!
//! [[grants]]                     # absent: every component may use every model
//! component = "chat"             # file name without .wasm, or
//! # digest = "sha256:…"          # the component file's SHA-256
//! models = ["smollm2"]           # "*" for all
//!
//! [interfaces]                   # all true by default
//! extension = true
//! wasi-nn-text = true
//! wasi-nn-tensor = false
//! wasi-ephemeral-nn = true
//!
//! [wasi-ephemeral-nn]            # WasmEdge's GGML ABI (wasip1 guests)
//! reuse-kv = true                # keep a context's KV cache between computes
//! config = { temp = 0.0 }        # over every guest's config
//!
//! [limits]                       # all optional
//! session-context = 4096
//! generate-tokens = 512
//! instance-sessions = 4
//! instance-kv-bytes = 268435456
//! generate-seconds = 60
//! concurrent-generations = 8
//! guest-memory-bytes = 536870912
//! guest-seconds = 600
//! shared-cache-ttl-seconds = 3600   # with --shared-cache
//! shared-cache-entry-bytes = 67108864
//! shared-cache-timeout-ms = 500
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::catalog::{self, ModelSpec};
use crate::engine::{CacheLimits, EngineConfig, FlashAttention, QuotaLimits, SharedSettings};

/// The whole policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Policy {
    /// Models by the name guests load them with.
    #[serde(default)]
    pub models: BTreeMap<String, ModelEntry>,
    /// Which components may use which models; absent, every component may
    /// use every model. Present, a component no grant names may use none.
    pub grants: Option<Vec<Grant>>,
    /// Which front doors are open.
    #[serde(default)]
    pub interfaces: Interfaces,
    /// The limits every guest instance runs under.
    #[serde(default)]
    pub limits: Limits,
    /// How WasmEdge's GGML ABI serves its guests.
    #[serde(default)]
    pub wasi_ephemeral_nn: EphemeralNn,
    /// The secret that seals saved sessions (`--snapshot-key` wins over it).
    pub snapshot_key_file: Option<PathBuf>,
}

/// The `[wasi-ephemeral-nn]` table: WasmEdge's GGML ABI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EphemeralNn {
    /// Keep an execution context's KV cache between computes, by longest
    /// common prefix [default: true]; false clears it as WasmEdge does, for
    /// measuring what the reuse saves.
    #[serde(default = "yes")]
    pub reuse_kv: bool,
    /// Configuration keys (WasmEdge's metadata, e.g. `temp`, `seed`,
    /// `n-predict`) applied over every guest's own: the operator's word wins.
    #[serde(default)]
    pub config: toml::Table,
}

impl Default for EphemeralNn {
    fn default() -> Self {
        Self { reuse_kv: true, config: toml::Table::new() }
    }
}

/// One `[models.NAME]` table: where the model comes from and how it runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelEntry {
    /// A GGUF file on the host.
    pub path: Option<PathBuf>,
    /// A catalog model, fetched and cached on first use.
    pub catalog: Option<String>,
    /// Layers offloaded to the GPU (default: all where a GPU build finds a GPU, else 0).
    pub gpu_layers: Option<u32>,
    /// Most tokens one session may hold (default: the host's `--ctx-size`).
    pub context: Option<u32>,
    /// `auto` (measured at load), `on` or `off` (default: the host's `--flash-attn`).
    pub flash_attn: Option<FlashAttention>,
    /// A Jinja chat template file to use instead of the GGUF's own (a
    /// corrected template, or one for a model that has none).
    pub chat_template_file: Option<PathBuf>,
    /// `llama-cpp` or `candle` (default: the host's `--backend`).
    pub backend: Option<crate::backend::BackendKind>,
    /// Speculative decoding: `ngram` or `off` (default: the host's `--speculation`).
    pub speculation: Option<crate::engine::SpeculationMode>,
    /// Most tokens drafted per step, 1 to 32 (default: the host's `--draft-max`).
    pub draft_max: Option<u32>,
}

/// Models one component may use, the component named by file name or digest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grant {
    /// The component's file name without `.wasm`.
    pub component: Option<String>,
    /// `sha256:<hex>` of the component file: pins the exact build.
    pub digest: Option<String>,
    /// Model names, or `"*"` for every model.
    pub models: Vec<String>,
}

/// The front doors a guest may use; a closed one answers `not-permitted`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Interfaces {
    /// The `wasi-nn-llm:llm` extension.
    #[serde(default = "yes")]
    pub extension: bool,
    /// Base wasi-nn, prompt text in and text out.
    #[serde(default = "yes")]
    pub wasi_nn_text: bool,
    /// Base wasi-nn, token ids in and logits out.
    #[serde(default = "yes")]
    pub wasi_nn_tensor: bool,
    /// WasmEdge's GGML ABI, for wasm32-wasip1 guests (`crate::wasmedge`).
    #[serde(default = "yes")]
    pub wasi_ephemeral_nn: bool,
}

fn yes() -> bool {
    true
}

impl Default for Interfaces {
    fn default() -> Self {
        Self { extension: true, wasi_nn_text: true, wasi_nn_tensor: true, wasi_ephemeral_nn: true }
    }
}

/// Limits; each one exceeded is a `limit-exceeded` error naming its key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Most tokens one session may hold, on every model.
    pub session_context: Option<u32>,
    /// Most tokens one generation may produce (also the default `max-tokens`).
    pub generate_tokens: Option<u32>,
    /// Sessions (and base wasi-nn contexts) one guest instance may hold at once.
    pub instance_sessions: Option<u32>,
    /// KV-cache bytes one instance's sessions may reserve (each session
    /// reserves its whole context).
    pub instance_kv_bytes: Option<u64>,
    /// Wall time of one generation, in seconds.
    pub generate_seconds: Option<f64>,
    /// Generations one instance may run at once.
    pub concurrent_generations: Option<u32>,
    /// Linear memory one guest instance may grow to.
    pub guest_memory_bytes: Option<u64>,
    /// Wall time of one guest run, in seconds (guest code is interrupted).
    pub guest_seconds: Option<f64>,
    /// Conversations each model's prefix cache keeps for `open-cached`
    /// (0 turns it off) [default: 256].
    pub prefix_cache_entries: Option<u32>,
    /// Host memory each model's prefix cache may fill with conversations
    /// saved out of the KV cache [default: 1 GiB].
    pub prefix_cache_bytes: Option<u64>,
    /// With `--shared-cache`: how long a conversation written to the shared
    /// store lives there, in seconds [default: 3600]. The store's own
    /// `maxmemory` and eviction policy bound its bytes (deploy/redis.conf).
    pub shared_cache_ttl_seconds: Option<u64>,
    /// With `--shared-cache`: the largest conversation written there, in
    /// bytes of its snapshot [default: 64 MiB]; a larger one stays local.
    pub shared_cache_entry_bytes: Option<u64>,
    /// With `--shared-cache`: the longest one call to the store may take,
    /// in milliseconds, before a request goes on without it [default: 500].
    pub shared_cache_timeout_ms: Option<u64>,
}

impl Limits {
    /// The limits the engine enforces per guest instance.
    pub fn quota(&self) -> QuotaLimits {
        QuotaLimits {
            sessions: self.instance_sessions,
            kv_bytes: self.instance_kv_bytes,
            generate_tokens: self.generate_tokens,
            generate_time: self.generate_seconds.map(Duration::from_secs_f64),
            generations: self.concurrent_generations,
        }
    }
}

impl Policy {
    /// Read and check a policy file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("policy {}", path.display()))
    }

    fn check(&self) -> anyhow::Result<()> {
        for (name, m) in &self.models {
            if name.is_empty() {
                bail!("a model name is empty");
            }
            if m.path.is_some() == m.catalog.is_some() {
                bail!("model {name:?} needs exactly one of `path` and `catalog`");
            }
            if let Some(n) = m.draft_max.filter(|n| !(1..=crate::engine::MAX_DRAFT).contains(n)) {
                bail!("model {name:?}: draft-max must be 1 to {}, got {n}", crate::engine::MAX_DRAFT);
            }
        }
        for (i, g) in self.grants.iter().flatten().enumerate() {
            if g.component.is_none() && g.digest.is_none() {
                bail!("grant {} names no component: give `component` or `digest`", i + 1);
            }
            if let Some(d) = &g.digest {
                let hex = d.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("grant {}: digest must be sha256:<64 hex digits>, got {d:?}", i + 1);
                }
            }
        }
        let l = &self.limits;
        let positive = [
            ("session-context", l.session_context.map(u64::from)),
            ("generate-tokens", l.generate_tokens.map(u64::from)),
            ("instance-sessions", l.instance_sessions.map(u64::from)),
            ("instance-kv-bytes", l.instance_kv_bytes),
            ("concurrent-generations", l.concurrent_generations.map(u64::from)),
            ("guest-memory-bytes", l.guest_memory_bytes),
            ("shared-cache-ttl-seconds", l.shared_cache_ttl_seconds),
            ("shared-cache-entry-bytes", l.shared_cache_entry_bytes),
            ("shared-cache-timeout-ms", l.shared_cache_timeout_ms),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                bail!("limits.{key} must be at least 1");
            }
        }
        for (key, secs) in [("generate-seconds", l.generate_seconds), ("guest-seconds", l.guest_seconds)] {
            if secs.is_some_and(|s| !(s > 0.0 && s < 1e9)) {
                bail!("limits.{key} must be a positive number of seconds");
            }
        }
        Ok(())
    }

    /// The models to load, paths resolved (catalog models fetched).
    pub fn model_specs(&self) -> anyhow::Result<Vec<ModelSpec>> {
        self.models
            .iter()
            .map(|(name, m)| {
                let path = match (&m.path, &m.catalog) {
                    (Some(p), _) => p.clone(),
                    (None, Some(c)) => catalog::named(c).with_context(|| format!("model {name:?}"))?,
                    (None, None) => bail!("model {name:?} has neither path nor catalog"),
                };
                Ok(ModelSpec {
                    name: name.clone(),
                    path,
                    gpu_layers: m.gpu_layers,
                    context: m.context,
                    flash_attn: m.flash_attn,
                    chat_template: m.chat_template_file.clone(),
                    backend: m.backend,
                    speculation: m.speculation,
                    draft_max: m.draft_max,
                })
            })
            .collect()
    }

    /// Fold the session context cap into every model's context, and the
    /// prefix-cache bounds into the engine's configuration.
    pub fn apply_limits(&self, config: &mut EngineConfig, specs: &mut [ModelSpec]) {
        let default = CacheLimits::default();
        config.prefix_cache = CacheLimits {
            entries: self.limits.prefix_cache_entries.map_or(default.entries, |n| n as usize),
            spill_bytes: self.limits.prefix_cache_bytes.unwrap_or(default.spill_bytes),
        };
        if let Some(cap) = self.limits.session_context {
            for spec in specs.iter_mut() {
                spec.context = Some(spec.context.unwrap_or(config.ctx_size).min(cap));
            }
        }
    }

    /// The shared tier's settings for the store at `url`, the policy's
    /// `shared-cache-*` limits applied.
    pub fn shared_cache(&self, url: &str) -> SharedSettings {
        let mut settings = SharedSettings::new(url);
        let l = &self.limits;
        if let Some(secs) = l.shared_cache_ttl_seconds {
            settings.ttl = Duration::from_secs(secs);
        }
        if let Some(bytes) = l.shared_cache_entry_bytes {
            settings.max_entry_bytes = bytes;
        }
        if let Some(ms) = l.shared_cache_timeout_ms {
            settings.timeout = Duration::from_millis(ms);
        }
        settings
    }

    /// Parse and check a policy's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let policy: Self = toml::from_str(text)?;
        policy.check()?;
        Ok(policy)
    }

    /// Every model a grant names must be loaded (from the policy or `--model`).
    pub fn check_grants(&self, loaded: &[&str]) -> anyhow::Result<()> {
        for (i, g) in self.grants.iter().flatten().enumerate() {
            for m in &g.models {
                if m != "*" && !loaded.contains(&m.as_str()) {
                    bail!("grant {} names model {m:?}, which is not loaded", i + 1);
                }
            }
        }
        Ok(())
    }

    /// Whether the component (file name without `.wasm`, and digest) may use `model`.
    pub fn permits(&self, component: &Identity, model: &str) -> bool {
        let Some(grants) = &self.grants else { return true };
        grants.iter().any(|g| {
            let named = g.component.as_deref().is_some_and(|c| c == component.name);
            let pinned = g.digest.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(&component.digest));
            (named || pinned) && g.models.iter().any(|m| m == "*" || m == model)
        })
    }
}

/// Who a guest is, as grants name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The component file's name without `.wasm`.
    pub name: String,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
}

impl Identity {
    /// The identity of the component read from `path` as `bytes`.
    pub fn of(path: &Path, bytes: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let name = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        Self { name, digest: format!("sha256:{hex}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_policy_parses() {
        let policy = Policy::parse(include_str!("../../policy.example.toml")).expect("the example is valid");
        assert_eq!(policy.models.len(), 2);
        assert_eq!(policy.limits.generate_tokens, Some(1024));
        let chat = Identity { name: "chat".into(), digest: "sha256:ab".into() };
        assert!(policy.permits(&chat, "smollm2"));
        assert!(!policy.permits(&chat, "gemma3"));
        // Its snapshot key line, uncommented, names the file.
        let keyed = include_str!("../../policy.example.toml").replace("# snapshot-key-file", "snapshot-key-file");
        let keyed = Policy::parse(&keyed).expect("the example with its key line is valid");
        assert_eq!(keyed.snapshot_key_file, Some(PathBuf::from("/etc/wasi-nn-llm/snapshot.key")));
        // So do its commented model keys.
        let mut full = include_str!("../../policy.example.toml").to_owned();
        for key in ["path", "gpu-layers", "flash-attn", "chat-template-file", "speculation", "draft-max"] {
            full = full.replace(&format!("# {key} = "), &format!("{key} = "));
        }
        let full = Policy::parse(&full.replace("catalog = \"gemma3\"\n", "")).expect("every model key is valid");
        let gemma = &full.models["gemma3"];
        assert_eq!(gemma.chat_template_file, Some(PathBuf::from("/srv/templates/gemma3.jinja")));
        assert_eq!((gemma.gpu_layers, gemma.flash_attn), (Some(99), Some(FlashAttention::Auto)));
        assert_eq!((gemma.speculation, gemma.draft_max), (Some(crate::engine::SpeculationMode::Ngram), Some(16)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for bad in [
            "[limits]\ngenerate-token = 5\n",
            "[limits]\ngenerate-tokens = 0\n",
            "[limits]\ngenerate-seconds = -1\n",
            "[models.x]\n",
            "[models.x]\npath = \"a\"\ncatalog = \"b\"\n",
            "[[grants]]\nmodels = [\"*\"]\n",
            "[[grants]]\ndigest = \"md5:1\"\nmodels = [\"*\"]\n",
            "[interfaces]\nwasi-nn = false\n",
            "[models.x]\npath = \"a\"\nspeculation = \"draft-model\"\n",
            "[models.x]\npath = \"a\"\ndraft-max = 0\n",
            "[models.x]\npath = \"a\"\ndraft-max = 33\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn without_grants_everything_is_permitted() {
        let who = Identity { name: "any".into(), digest: "sha256:00".into() };
        assert!(Policy::default().permits(&who, "whatever"));
    }
}
