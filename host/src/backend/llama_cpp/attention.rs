//! Which attention kernel a model's contexts run: llama.cpp's flash
//! attention, or its plain path (matrix products and a softmax).
//!
//! Why measure instead of taking llama.cpp's `auto` (which turns flash
//! attention on wherever the backend has it): on the CPU the faster kernel
//! depends on the CPU and the model. On an Intel Xeon with AMX, SmolLM2's
//! decode at a depth of 316 tokens ran at 27 tok/s with flash attention and
//! 73 without; on an AMD EPYC the two were within 6 % of each other, and
//! flash attention won at depths 16 and 1000 (`benches/RESULTS.md`). So
//! `auto` times a short decode each way at load, the steps of the two taken
//! in turn, after a prefill deep enough for attention to show, and
//! remembers the answer per model file, CPU and thread count, so later
//! loads pay nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context as _;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::init::{backend, cpu_code};
use super::workers::Workers;

/// llama.cpp's `llama_flash_attn_type` values.
const FLASH_ATTN_DISABLED: i32 = 0;
const FLASH_ATTN_ENABLED: i32 = 1;

/// Tokens in the probe's KV cache: past the depth (a few hundred) where
/// the two kernels part ways on the CPUs measured.
const PROBE_DEPTH: usize = 320;
/// Decode steps timed per kernel, after one untimed step.
const PROBE_STEPS: usize = 6;

/// What the operator asked for (`--flash-attn`, the policy's `flash-attn`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlashAttention {
    /// Measure which decodes faster on this machine (remembered).
    #[default]
    Auto,
    /// Always flash attention.
    On,
    /// Never flash attention.
    Off,
}

impl FromStr for FlashAttention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not auto, on or off")),
        }
    }
}

/// The kernel a model runs, and how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// Whether the contexts use flash attention.
    pub flash: bool,
    /// Why.
    pub chosen: Chosen,
}

/// How [`Attention`] was decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Chosen {
    /// The operator said so.
    Configured,
    /// Timed at this load.
    Measured {
        /// Decode tok/s with flash attention.
        on: f64,
        /// Decode tok/s without.
        off: f64,
    },
    /// Timed at an earlier load on this machine, read back from the cache.
    Remembered {
        /// Decode tok/s with flash attention.
        on: f64,
        /// Decode tok/s without.
        off: f64,
    },
    /// `auto`, but the probe failed (the reason); llama.cpp's default.
    Default(String),
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kernel = if self.flash { "flash attention" } else { "plain attention (no flash)" };
        match &self.chosen {
            Chosen::Configured => write!(f, "{kernel}, as configured"),
            Chosen::Measured { on, off } => {
                write!(f, "{kernel}: decodes faster here (measured {on:.0} tok/s with flash, {off:.0} without)")
            }
            Chosen::Remembered { on, off } => write!(
                f,
                "{kernel}: decodes faster here (measured earlier: {on:.0} tok/s with flash, {off:.0} without)"
            ),
            Chosen::Default(why) => write!(f, "{kernel}, llama.cpp's default (could not measure: {why})"),
        }
    }
}

impl Attention {
    /// The `flash_attn_type` for a context's parameters.
    pub(crate) fn context_param(&self) -> i32 {
        if self.flash { FLASH_ATTN_ENABLED } else { FLASH_ATTN_DISABLED }
    }
}

/// Decide the kernel for `model` (the GGUF at `path`) decoding on `threads`
/// in sessions of `ctx_size` tokens, its layers on `device` (the CPU, or a
/// GPU and how many layers it holds).
pub(crate) fn choose(
    model: &LlamaModel,
    path: &Path,
    wanted: FlashAttention,
    threads: u32,
    ctx_size: u32,
    device: &str,
) -> Attention {
    match wanted {
        FlashAttention::On => return Attention { flash: true, chosen: Chosen::Configured },
        FlashAttention::Off => return Attention { flash: false, chosen: Chosen::Configured },
        FlashAttention::Auto => {}
    }
    let key = cache_key(path, threads, ctx_size, device);
    if let Some(seen) = key.as_ref().and_then(|k| Remembered::load().0.get(k).copied()) {
        return Attention { flash: seen.on > seen.off, chosen: Chosen::Remembered { on: seen.on, off: seen.off } };
    }
    match probe(model, threads, ctx_size) {
        Ok((on, off)) => {
            if let Some(key) = key {
                Remembered::store(key, Seen { on, off });
            }
            Attention { flash: on > off, chosen: Chosen::Measured { on, off } }
        }
        Err(e) => Attention { flash: true, chosen: Chosen::Default(format!("{e:#}")) },
    }
}

/// Decode tok/s of each kernel (flash on, off): two contexts like a lane's
/// (a session's worth of KV cells: without flash attention the V cache is
/// stored transposed, so its size changes what a step reads), each
/// prefilled with `PROBE_DEPTH` tokens, then `PROBE_STEPS` single-token
/// decodes timed on each in turn, and the median step of each kept. Taking
/// the steps in turn puts both kernels under the same load (this machine's
/// speed drifts within seconds); an earlier probe that timed one kernel
/// after the other once measured gemma's flash attention at 28 tok/s where
/// it decodes at 35–37, and the wrong choice was remembered.
fn probe(model: &LlamaModel, threads: u32, ctx_size: u32) -> anyhow::Result<(f64, f64)> {
    let n_ctx = ctx_size.max((PROBE_DEPTH + PROBE_STEPS + 1) as u32).next_multiple_of(256);
    let context = |flash: bool| {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(PROBE_DEPTH as u32)
            .with_n_ubatch(PROBE_DEPTH as u32)
            .with_n_seq_max(1)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32)
            .with_flash_attention_policy(if flash { FLASH_ATTN_ENABLED } else { FLASH_ATTN_DISABLED });
        model.new_context(backend()?, params).context("creating a probe context")
    };
    // Any valid ids do: the time of a step does not depend on them.
    let n_vocab = model.n_vocab().max(1) as usize;
    let token = |i: usize| LlamaToken((i * 7919 % n_vocab) as i32);
    let mut batch = LlamaBatch::new(PROBE_DEPTH, 1);
    let mut kernels = Vec::new();
    for flash in [true, false] {
        let mut ctx = context(flash)?;
        let mut workers = Workers::new(threads);
        workers.run_on(&mut ctx, threads);
        batch.clear();
        for i in 0..PROBE_DEPTH {
            batch.add(token(i), i as i32, &[0], i + 1 == PROBE_DEPTH)?;
        }
        ctx.decode(&mut batch).context("probe prefill")?;
        workers.rest(&ctx);
        kernels.push((ctx, workers, Vec::with_capacity(PROBE_STEPS)));
    }
    for step in 0..=PROBE_STEPS {
        let pos = PROBE_DEPTH + step;
        for (ctx, workers, steps) in &mut kernels {
            batch.clear();
            batch.add(token(pos), pos as i32, &[0], true)?;
            let start = Instant::now();
            ctx.decode(&mut batch).context("probe decode")?;
            if step > 0 {
                steps.push(start.elapsed().as_secs_f64());
            }
            workers.rest(ctx);
        }
    }
    let tps = |steps: &mut Vec<f64>| {
        steps.sort_by(f64::total_cmp);
        1.0 / steps[steps.len() / 2]
    };
    Ok((tps(&mut kernels[0].2), tps(&mut kernels[1].2)))
}

/// One remembered measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seen {
    on: f64,
    off: f64,
}

/// Measurements of earlier loads, in `attention.json` in the model cache.
#[derive(Default, Serialize, Deserialize)]
struct Remembered(BTreeMap<String, Seen>);

impl Remembered {
    fn file() -> Option<PathBuf> {
        crate::cache::dir().ok().map(|d| d.join("attention.json"))
    }

    fn load() -> Self {
        Self::file()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Add one entry; a cache that cannot be written only costs a probe next time.
    fn store(key: String, seen: Seen) {
        let Some(file) = Self::file() else { return };
        let mut all = Self::load();
        all.0.insert(key, seen);
        let written = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other).and_then(|bytes| {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Written whole, then renamed: a concurrent load never reads half a file.
            let tmp = file.with_extension(format!("json.{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &file)
        });
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot remember the attention probe: {e}");
        }
    }
}

/// What a measurement depends on: the model file (name, size, modification
/// time), the CPU, the thread count, the session context, the device its
/// layers run on and this host's build (its llama.cpp).
fn cache_key(path: &Path, threads: u32, ctx_size: u32, device: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let file = path.file_name()?.to_string_lossy();
    let version = format!("{} {}", env!("CARGO_PKG_VERSION"), cpu_code());
    // "probe 2": steps interleaved (see `probe`); earlier entries are measured again.
    Some(format!(
        "{file} {} {modified} | {cpu} | {threads} threads | context {ctx_size} | {device} | host {version} | probe 2",
        meta.len()
    ))
}
