//! `make bench`: every comparison of issue 4, regenerated from scratch into
//! `benches/RESULTS.md` and SVG plots beside it.
//!
//! The host runs in this process, the models loaded once; every "native"
//! figure comes from a process of its own (`baseline`): `llama-native`, this
//! workspace's llama.cpp driven as llama-bench drives it, and llama.cpp's own
//! llama-bench as a cross-check. Figures are medians of several runs; each
//! ratio is taken between runs made back to back, since this machine's speed
//! drifts by tens of percent between rounds.

mod backends;
mod baseline;
mod chat;
mod concurrency;
mod depth;
mod guest;
mod memory;
mod p3;
mod plot;
mod process;
mod report;
mod restore;
mod scale;
mod serve;
mod single;
mod speculation;
mod template;
mod wasmedge;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use wasi_nn_llm_host::catalog;
use wasi_nn_llm_host::catalog::ModelSpec;
use wasi_nn_llm_host::engine::EngineConfig;
use wasi_nn_llm_host::registry::Models;
use wasi_nn_llm_host::runner::Runtime;

use guest::{GUEST_MODELS, Guest};
use report::Target;

/// Regenerate benches/RESULTS.md and the plots.
#[derive(Parser)]
struct Args {
    /// Catalog models to measure, or NAME=PATH for a GGUF of one's own (the
    /// GPU kit's synthetic model, `benches/gpu`).
    #[arg(long, value_delimiter = ',', default_values_t = ["smollm2".to_string(), "gemma3".to_string()])]
    models: Vec<String>,
    /// Runs per figure (single turn, concurrency, restore).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of the 10-turn chat (each is long).
    #[arg(long, default_value_t = 3)]
    chat_runs: usize,
    /// Runs of each point of the depth matrix (each is three processes' worth).
    #[arg(long, default_value_t = 3)]
    depth_runs: usize,
    /// Where the results and the SVGs go.
    #[arg(long, default_value = "benches")]
    out: PathBuf,
    /// The results' file name in `--out`.
    #[arg(long, default_value = "RESULTS.md")]
    results: String,
    /// Layers offloaded to the GPU, by the engine and the baseline alike
    /// (more than a model has means all).
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// The build's target directory, where the guests are
    /// [default: this workspace's `target`].
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// The command that regenerates these results, for their header.
    #[arg(long, default_value = "make bench")]
    command: String,
    /// The commit measured [default: `git rev-parse HEAD` here]: a copy
    /// of the tree elsewhere may have no git.
    #[arg(long)]
    commit: Option<String>,
    /// Measure only these sections (for working on one; the checked-in
    /// results always come from a full run).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Section>,
    /// Lanes per model [default: the engine's own choice].
    #[arg(long)]
    lanes: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Section {
    Depth,
    Single,
    Chat,
    Concurrency,
    Restore,
    Memory,
    Serve,
    P3,
    Wasmedge,
    Backends,
    /// Two hosts behind a balancer, the shared tier on and off.
    ScaleOut,
    /// Speculative decoding on and off, and llama-server's n-gram speculation.
    Speculation,
    /// Where drafting breaks even: decode time by batch size, 1 and 2 threads.
    BreakEven,
}

/// What every measurement shares.
pub struct Settings {
    pub runs: usize,
    pub chat_runs: usize,
    pub threads: i32,
    /// Tokens generated in the single-turn comparison.
    pub tokens: u32,
    /// Reply limit per chat turn.
    pub chat_tokens: u32,
    /// Tokens per session in the concurrency runs.
    pub concurrency_tokens: u32,
}

const THREADS: u32 = 2;
const CTX_SIZE: u32 = 2048;
const MAX_SESSIONS: u32 = 8;

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    // Before this run rewrites the checked-in results.
    let commit = args.commit.clone().unwrap_or_else(commit);
    let settings = Settings {
        runs: args.runs,
        chat_runs: args.chat_runs,
        threads: THREADS as i32,
        tokens: 128,
        chat_tokens: 48,
        concurrency_tokens: 64,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("benches/ lies in the workspace")?;
    let target = args.target_dir.clone().unwrap_or_else(|| workspace.join("target"));
    let guests = target.join("wasm32-wasip2/release");
    let wasm = guests.join("bench-guest.wasm");
    anyhow::ensure!(wasm.is_file(), "{} is missing: run `make bench`, which builds it", wasm.display());

    let mut specs = Vec::new();
    for name in &args.models {
        specs.push(match name.split_once('=') {
            Some((name, path)) => ModelSpec::new(name, path),
            None => ModelSpec::new(name.clone(), catalog::named(name)?),
        });
    }
    let model_dir = specs[0].path.parent().context("a model lies in a directory")?.to_owned();
    let config = EngineConfig {
        threads: THREADS,
        ctx_size: CTX_SIZE,
        max_sessions: MAX_SESSIONS,
        gpu_layers: Some(args.gpu_layers),
        lanes: args.lanes,
        ..EngineConfig::default()
    };
    let models = Models::load(&specs, &config)?;
    let loaded_mb = memory::rss_mb()?;
    let guest = Guest::new(Runtime::new(models)?, &wasm, model_dir.clone())?;
    std::fs::create_dir_all(&args.out)?;

    let wanted = |section: Section| args.only.is_empty() || args.only.contains(&section);
    // The depth matrix also runs the engine on one thread, loaded apart.
    let one_thread = if wanted(Section::Depth) {
        let config = EngineConfig { threads: 1, lanes: Some(1), ..config.clone() };
        Some(Guest::new(Runtime::new(Models::load(&specs, &config)?)?, &wasm, model_dir)?)
    } else {
        None
    };
    let llama_bench = if wanted(Section::Depth) {
        baseline::LlamaBench::build(workspace).map_err(|e| eprintln!("llama-bench unavailable: {e:#}")).ok()
    } else {
        None
    };
    // The serve section runs on the first model only (the one `make serve`
    // serves): a run of it on gemma3 would take most of an hour.
    let llama_server = if wanted(Section::Serve) || wanted(Section::ScaleOut) || wanted(Section::Speculation) {
        baseline::llama_tool(workspace, "llama-server").map_err(|e| eprintln!("llama-server unavailable: {e:#}")).ok()
    } else {
        None
    };
    let results = Results {
        path: args.out.join(&args.results),
        command: args.command.clone(),
        started,
        machine: machine()?,
        commit,
        placement: specs
            .iter()
            .map(|spec| {
                let device = guest.runtime.models().engine(&spec.name).map_or("cpu", |e| e.device());
                format!("{}: {}", spec.name, if device == "cpu" { "CPU only (no GPU layers)" } else { device })
            })
            .collect::<Vec<_>>()
            .join("; "),
    };
    let mut body = String::new();
    let mut targets: Vec<Target> = Vec::new();
    // The serve section's prompt sizes: every model's template, counted.
    let mut prompt_tokens = template::table();
    for (index, spec) in specs.iter().enumerate() {
        let name = spec.name.as_str();
        eprintln!("{name}:");
        let engine = guest.runtime.models().engine(name).context("a loaded model")?.clone();
        let file = spec.path.file_name().context("a file name")?.to_string_lossy();
        let gguf = format!("{GUEST_MODELS}/{file}");
        let info = engine.info();
        writeln!(
            body,
            "## {name}: {file}\n\n{}, {} parameters, {} quantization, {:.0} MB. Attention: {}.\n",
            info.architecture,
            info.parameters,
            info.quantization,
            info.size_bytes as f64 / 1e6,
            engine.attention().map_or_else(|| "the backend's own".to_owned(), |a| a.to_string())
        )?;
        let native = baseline::Native::new(&spec.path, args.gpu_layers)?;

        if let Some(one) = &one_thread {
            let one_engine = one.runtime.models().engine(name).context("a loaded model")?.clone();
            let rows = match &llama_bench {
                Some(b) => {
                    eprintln!("  llama-bench {name}");
                    b.run(&spec.path, &depth::THREADS, &depth::DEPTHS, 128, 2)
                        .map_err(|e| eprintln!("llama-bench failed: {e:#}"))
                        .ok()
                }
                None => None,
            };
            let d = depth::run(&[one, &guest], &[&one_engine, &engine], &native, rows.as_deref(), args.depth_runs)?;
            writeln!(body, "### Decode and prefill at depth\n\n{}", d.markdown)?;
            targets.extend(d.targets);
            let chat = guests.join("chat.wasm");
            let (markdown, t) = depth::chat_guest(&guest, &engine, &native, &chat, args.depth_runs)?;
            writeln!(body, "### The chat guest on a long reply\n\n{markdown}")?;
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Single) {
            let s = single::run(&guest, &engine, &native, &gguf, &settings)?;
            writeln!(body, "### Single turn\n\n{}", s.markdown)?;
            targets.extend(s.targets);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Chat) {
            let c = chat::run(&guest, &engine, &gguf, &settings)?;
            let svg = format!("ttft-per-turn-{name}.svg");
            let series: Vec<(&str, Vec<(f64, f64)>)> = c
                .series
                .iter()
                .map(|s| (s.name, s.ttft_ms.iter().enumerate().map(|(t, &ms)| ((t + 1) as f64, ms)).collect()))
                .collect();
            plot::lines(&args.out.join(&svg), &format!("{name}: time to first token per turn"), "turn", "ms", &series)?;
            writeln!(body, "### 10-turn chat\n\n{}\n![time to first token per turn]({svg})\n", c.markdown)?;
            targets.extend(c.targets);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Concurrency) {
            let k = concurrency::run(&guest, &engine, &native, &settings)?;
            let svg = format!("tokps-vs-sessions-{name}.svg");
            let curves: Vec<(&str, Vec<(f64, f64)>)> = k
                .curves
                .iter()
                .map(|c| {
                    (c.name, concurrency::SESSIONS.iter().zip(&c.aggregate).map(|(&s, &a)| (s as f64, a)).collect())
                })
                .collect();
            plot::lines(
                &args.out.join(&svg),
                &format!("{name}: aggregate decode tok/s"),
                "sessions",
                "tok/s",
                &curves,
            )?;
            writeln!(body, "### Concurrent sessions\n\n{}\n![aggregate tok/s vs sessions]({svg})\n", k.markdown)?;
            targets.extend(k.targets);
            results.write(&body, &targets, false)?;
        }

        // candle implements the Llama architecture: the first model (SmolLM2).
        if wanted(Section::Backends) && index == 0 {
            let markdown = backends::run(&spec.path, name, &config, settings.runs)?;
            writeln!(body, "### Backends: candle against llama.cpp\n\n{markdown}")?;
            results.write(&body, &targets, false)?;
        }

        if let Some(bin) = llama_server.as_ref().filter(|_| wanted(Section::Speculation)) {
            let setup = speculation::Setup {
                llama_server: bin,
                model: name,
                gguf: &spec.path,
                flash: engine.attention().expect("llama.cpp chooses a kernel").flash,
                config: &config,
                runs: settings.chat_runs,
            };
            let s = speculation::run(&setup)?;
            writeln!(body, "### Speculative decoding\n\n{}", s.markdown)?;
            targets.extend(s.targets);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::BreakEven) {
            let markdown = speculation::break_even(name, &spec.path, settings.chat_runs)?;
            writeln!(body, "### Speculative decoding: where it breaks even\n\n{markdown}")?;
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Restore) {
            let (markdown, t) = restore::run(&guest, &engine, &settings)?;
            writeln!(body, "### Restore vs re-prefill\n\n{markdown}")?;
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Serve) {
            template::rows(name, &engine, &mut prompt_tokens)?;
        }

        if let Some(bin) = llama_server.as_ref().filter(|_| index == 0 && wanted(Section::Serve)) {
            let setup = serve::Setup {
                workspace,
                llama_server: bin.clone(),
                model: name,
                gguf: &spec.path,
                flash: engine.attention().expect("llama.cpp chooses a kernel").flash,
                runs: args.chat_runs,
            };
            let s = serve::run(&setup)?;
            let svg = format!("serve-ttft-per-turn-{name}.svg");
            let series: Vec<(&str, Vec<(f64, f64)>)> = s
                .series
                .iter()
                .map(|(side, ms)| (*side, ms.iter().enumerate().map(|(t, &ms)| ((t + 1) as f64, ms)).collect()))
                .collect();
            plot::lines(
                &args.out.join(&svg),
                &format!("{name}: time to first token per chat turn, over HTTP"),
                "turn",
                "ms",
                &series,
            )?;
            writeln!(
                body,
                "### Serving over HTTP vs llama-server\n\n{}\n![time to first token per turn]({svg})\n",
                s.markdown
            )?;
            targets.extend(s.targets);
            results.write(&body, &targets, false)?;
        }

        if let Some(bin) = llama_server.as_ref().filter(|_| index == 0 && wanted(Section::ScaleOut)) {
            let flash = engine.attention().expect("llama.cpp chooses a kernel").flash;
            let (markdown, t) = scale::run(workspace, bin, name, &spec.path, flash, args.chat_runs)?;
            writeln!(body, "### Scale-out: two hosts sharing a cache\n\n{markdown}")?;
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::P3) {
            let p3_wasm = guests.join("bench_guest_p3.wasm");
            let (markdown, t) = p3::run(&guest, &p3_wasm, &engine, &settings)?;
            writeln!(
                body,
                "### The WASI 0.3 session vs the pull API

{markdown}"
            )?;
            if index == 0 {
                writeln!(
                    body,
                    "#### The same chat, both ways

{}",
                    p3::chat_cost(workspace)?
                )?;
            }
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Wasmedge) {
            let probe = target.join("wasm32-wasip1/release/wasmedge-probe.wasm");
            anyhow::ensure!(probe.is_file(), "{} is missing: run `make bench`, which builds it", probe.display());
            let (markdown, t) = wasmedge::run(&guest, &probe, &engine, &settings)?;
            writeln!(body, "### WasmEdge's ABI: a re-sent history, KV reuse on and off\n\n{markdown}")?;
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }

        if wanted(Section::Memory) {
            let (markdown, t) = memory::run(&guest, &engine, loaded_mb)?;
            writeln!(body, "### Memory\n\n{markdown}")?;
            targets.extend(t);
            results.write(&body, &targets, false)?;
        }
    }

    if wanted(Section::Serve) {
        writeln!(
            body,
            "### Chat templates: prompt tokens, the model's Jinja against llama.cpp's built-in matcher\n\n\
             The server renders chats with the GGUF's own Jinja template since extension 0.1.5 (before: \
             llama.cpp's built-in matcher, which the 0.1.0 `apply-chat-template` still uses). Tokens of the \
             rendered prompt, generation prompt included, counted by each model's tokenizer:\n\n{}",
            prompt_tokens.markdown()
        )?;
    }
    results.write(&body, &targets, true)?;
    eprintln!("wrote {} in {:.0} s", results.path.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Where the results go and what their header says.
struct Results {
    path: PathBuf,
    command: String,
    started: Instant,
    machine: String,
    commit: String,
    /// Where each model's layers run.
    placement: String,
}

impl Results {
    /// Write the results so far: after every section, so that a run cut
    /// short (a GPU machine's time limit) still leaves what it measured.
    fn write(&self, body: &str, targets: &[Target], finished: bool) -> Result<()> {
        let partial = if finished {
            String::new()
        } else {
            format!("- **Partial**: written {} s into a run that had not finished.\n", self.started.elapsed().as_secs())
        };
        let text = format!(
            "# Benchmark results\n\n\
             Regenerate with `{}` (about {} minutes here). Generated by `benches/src/main.rs`; do not edit by hand.\n\n\
             {partial}- Machine: {}\n- Commit: {}\n- Settings: {THREADS} threads everywhere, context {CTX_SIZE} tokens \
             per session, batch 512, up to {MAX_SESSIONS} sessions per model; {}; release build, CPU code for {} \
             (`make bench` builds for this machine's CPU, `make gpu-kit` for x86-64-v3).\n\
             - Guests are wasm32-wasip2 components (and, for WasmEdge's ABI, a wasm32-wasip1 module) run by this \
             repository's host (wasmtime 48); every baseline is a process of its own (`llama-native`: this \
             workspace's llama.cpp as llama-bench runs it, `benches/native`).\n\n\
             ## Targets\n\n{}\n### Missed, and why\n\n{}\n{body}",
            self.command,
            self.started.elapsed().as_secs().div_ceil(60),
            self.machine,
            self.commit,
            self.placement,
            wasi_nn_llm_host::backend::llama_cpp::cpu_code(),
            report::targets_table(targets),
            report::missed(targets),
        );
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The machine: its CPU and, where llama.cpp finds one, its GPUs.
fn machine() -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let gpus = wasi_nn_llm_host::backend::llama_cpp::gpus()?;
    Ok(if gpus.is_empty() {
        format!("{cpu}, {cores} cores available")
    } else {
        format!("{cpu}, {cores} cores available; {}", gpus.join(", "))
    })
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git").args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head} (with uncommitted changes)") } else { head }
}
