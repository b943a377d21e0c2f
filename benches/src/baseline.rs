//! The baselines every "vs native" figure is divided by, each in a process
//! of its own so that it shares nothing with what is measured (not the
//! process, not its threads, not the engine):
//!
//! - `llama-native` (`benches/native`): this workspace's llama.cpp build
//!   driven as llama-bench drives it, so both sides run the same kernels;
//! - llama.cpp's own `llama-bench`, built from the llama.cpp tree vendored
//!   in the `llama-cpp-python` sdist (`scripts/llama-tool.sh`): a
//!   cross-check only, since it is a newer llama.cpp than the crate's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::report::median;

/// One `llama-native` configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub threads: u32,
    pub flash: bool,
    /// Prompt tokens per sequence.
    pub depth: u32,
    /// Tokens decoded per sequence.
    pub tokens: u32,
    /// Sequences batched in one context.
    pub sequences: u32,
    /// KV cells per sequence; `None`: depth plus tokens, as llama-bench
    /// sizes its context.
    pub ctx: Option<u32>,
}

/// What one `llama-native` process measured (medians of its repetitions).
pub struct Figures {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// The `llama-native` binary, beside the bench's own.
pub struct Native {
    bin: PathBuf,
    model: PathBuf,
    /// Layers on the GPU, as the engine measured beside it offloads them.
    gpu_layers: u32,
}

impl Native {
    pub fn new(model: &Path, gpu_layers: u32) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("llama-native");
        if !bin.is_file() {
            bail!("{} is missing: `make bench` builds it (cargo build --release -p wasi-nn-llm-native)", bin.display());
        }
        Ok(Self { bin, model: model.to_owned(), gpu_layers })
    }

    /// Run one configuration: `reps` timed repetitions after a warm-up.
    pub fn run(&self, c: Config, reps: usize) -> Result<Figures> {
        let line = self.spawn(c, reps, None)?.wait_with_output()?;
        parse(&line)
    }

    /// `k` independent contexts with the threads split between them (at
    /// least one each), as `k` single-session processes run: aggregate
    /// decode tok/s from the first start to the last end.
    pub fn partitioned(&self, c: Config, k: u32) -> Result<f64> {
        let per = Config { threads: (c.threads / k).max(1), sequences: 1, ..c };
        // Late enough for every process to load and prefill first.
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let go = now + 2000 + 400 * u64::from(k);
        let children = (0..k).map(|_| self.spawn(per, 1, Some(go))).collect::<Result<Vec<_>>>()?;
        let (mut start, mut end) = (f64::MAX, 0.0f64);
        for child in children {
            let f = parse(&child.wait_with_output()?)?;
            start = start.min(f.start_ms);
            end = end.max(f.end_ms);
        }
        Ok(f64::from(k * c.tokens) / (end - start) * 1e3)
    }

    fn spawn(&self, c: Config, reps: usize, start_at: Option<u64>) -> Result<std::process::Child> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--model").arg(&self.model);
        for (flag, value) in [
            ("--threads", c.threads),
            ("--depth", c.depth),
            ("--tokens", c.tokens),
            ("--sequences", c.sequences),
            ("--reps", reps as u32),
            ("--gpu-layers", self.gpu_layers),
        ] {
            cmd.arg(flag).arg(value.to_string());
        }
        cmd.arg("--flash").arg(if c.flash { "on" } else { "off" });
        if let Some(ctx) = c.ctx {
            cmd.arg("--ctx").arg(ctx.to_string());
        }
        if let Some(at) = start_at {
            cmd.arg("--start-at").arg(at.to_string());
        }
        cmd.stdout(std::process::Stdio::piped());
        cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))
    }
}

fn parse(out: &std::process::Output) -> Result<Figures> {
    if !out.status.success() {
        bail!("llama-native failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("llama-native's JSON line")?;
    let list = |key: &str| -> Vec<f64> {
        v[key].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    Ok(Figures {
        prefill_tps: median(&list("prefill_tps")),
        decode_tps: median(&list("decode_tps")),
        start_ms: v["start_epoch_ms"].as_f64().unwrap_or(0.0),
        end_ms: v["end_epoch_ms"].as_f64().unwrap_or(0.0),
    })
}

/// llama.cpp's own llama-bench.
pub struct LlamaBench {
    bin: PathBuf,
}

/// One llama-bench test: generation of `tokens` after `depth` prompt tokens.
pub struct BenchRow {
    pub threads: u32,
    pub flash: bool,
    pub depth: u32,
    pub decode_tps: f64,
}

impl LlamaBench {
    /// Build it if needed (about 10 minutes the first time).
    pub fn build(workspace: &Path) -> Result<Self> {
        Ok(Self { bin: llama_tool(workspace, "llama-bench")? })
    }

    /// Decode tok/s for every combination, as llama-bench reports them (the
    /// mean of `reps`).
    pub fn run(&self, model: &Path, threads: &[u32], depths: &[u32], tokens: u32, reps: u32) -> Result<Vec<BenchRow>> {
        let list = |xs: &[u32]| xs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let out = Command::new(&self.bin)
            .arg("-m")
            .arg(model)
            .args(["-t", &list(threads), "-fa", "0,1", "-p", "0", "-n", &tokens.to_string()])
            .args(["-d", &list(depths), "-r", &reps.to_string(), "-o", "json"])
            .output()
            .context("running llama-bench")?;
        if !out.status.success() {
            bail!("llama-bench failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).context("llama-bench's JSON")?;
        let int = |v: &Value| v.as_u64().or_else(|| v.as_bool().map(u64::from)).unwrap_or(0) as u32;
        Ok(rows
            .iter()
            .map(|r| BenchRow {
                threads: int(&r["n_threads"]),
                flash: int(&r["flash_attn"]) == 1,
                depth: int(&r["n_depth"]),
                decode_tps: r["avg_ts"].as_f64().unwrap_or(f64::NAN),
            })
            .collect())
    }
}

/// One of llama.cpp's own tools (`llama-bench`, `llama-server`), built by
/// `scripts/llama-tool.sh` if needed: its path.
pub fn llama_tool(workspace: &Path, tool: &str) -> Result<PathBuf> {
    let out = Command::new(workspace.join("scripts/llama-tool.sh"))
        .arg(tool)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/llama-tool.sh")?;
    if !out.status.success() {
        bail!("scripts/llama-tool.sh {tool} failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
