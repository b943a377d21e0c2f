//! `wasi-nn-llm`: run a guest component against base wasi-nn and the LLM
//! extension, with models from the operator's registry, or serve HTTP with
//! one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use wasi_nn_llm_host::backend::llama_cpp::{gpu_build, gpus};
use wasi_nn_llm_host::catalog::{self, ModelSpec};
use wasi_nn_llm_host::engine::{
    BackendKind, EngineConfig, FlashAttention, MAX_DRAFT, SharedTier, SnapshotKey, Speculation, SpeculationMode,
};
use wasi_nn_llm_host::policy::Policy;
use wasi_nn_llm_host::registry::Models;
use wasi_nn_llm_host::runner::{Preopen, Runtime, Stdio};
use wasi_nn_llm_host::serve::{ApiKeys, Reuse, Server};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a guest: a wasm32-wasip2 command component, or a wasm32-wasip1
    /// command module written for WasmEdge's GGML plugin (its
    /// `wasi_ephemeral_nn` ABI).
    Run(RunArgs),
    /// Serve HTTP with a component exporting wasi:http/incoming-handler
    /// (e.g. examples/openai-server), one fresh instance per request.
    Serve(ServeArgs),
    /// Fetch a catalog model into the cache and print its path.
    Fetch {
        /// Catalog name (e.g. smollm2).
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    host: HostArgs,
    /// A host directory the guest may use: `HOST[::GUEST]` (guest path
    /// defaults to the host path). Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// As `--dir`, but the guest may only read there (e.g. a model's GGUF
    /// for a guest that tokenizes itself). Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST[::GUEST]")]
    ro_dirs: Vec<String>,
    /// An environment variable for the guest: `NAME=VALUE`. Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The guest: a component, or a wasip1 core module.
    component: PathBuf,
    /// Arguments for the guest.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Socket address to listen on.
    #[arg(long, value_name = "SOCKADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    host: HostArgs,
    /// A key clients must send (`Authorization: Bearer KEY`, or
    /// `x-api-key`); without any key the server is open to every client.
    /// Repeatable. `/health` stays open, and so does `GET /` and
    /// `GET /ui/…` (a page's static files, which ask for the key).
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A file of API keys, one a line (`#` comments); repeatable. Keeps
    /// keys out of the process list, where `--api-key` shows them.
    #[arg(long = "api-key-file", value_name = "FILE")]
    api_key_files: Vec<PathBuf>,
    /// WASI 0.3 guests: requests one instance serves before a fresh one
    /// takes over.
    #[arg(long, value_name = "N", default_value_t = Reuse::default().requests, value_parser = clap::value_parser!(u32).range(1..))]
    instance_requests: u32,
    /// WASI 0.3 guests: requests one instance serves at once.
    #[arg(long, value_name = "N", default_value_t = Reuse::default().concurrent, value_parser = clap::value_parser!(u32).range(1..=1024))]
    instance_concurrency: u32,
    /// The HTTP guest component: WASI 0.3 (`wasi:http/handler`, instances
    /// reused) or WASI 0.2 (`wasi:http/incoming-handler`, an instance per
    /// request).
    component: PathBuf,
}

/// What `run` and `serve` share: the models and how the engine runs them.
#[derive(Args)]
struct HostArgs {
    /// A model guests may load by name: NAME=PATH to a GGUF (a path
    /// contains `/` or ends in `.gguf`), NAME=CATALOG to register a catalog
    /// model under another name, or a catalog name alone (smollm2, gemma3;
    /// fetched and cached on first use). Repeatable; adds to the policy's
    /// models.
    #[arg(long = "model", value_name = "NAME=PATH|NAME=CATALOG|CATALOG", required_unless_present = "policy")]
    models: Vec<String>,
    /// The operator's policy (TOML): models, which components may use
    /// which, open interfaces, limits. See `host/src/policy.rs`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Layers to offload to the GPU [default: all where a GPU build finds a
    /// GPU, else 0].
    #[arg(long, value_name = "N")]
    gpu_layers: Option<u32>,
    /// CPU threads for inference, 1 to 512 [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=512))]
    threads: Option<u32>,
    /// Most tokens one session may hold, 16 to 1048576 (capped at the
    /// model's trained context).
    #[arg(long, value_name = "N", default_value_t = EngineConfig::default().ctx_size,
          value_parser = clap::value_parser!(u32).range(16..=1 << 20))]
    ctx_size: u32,
    /// Sessions that may be open at once per model, 1 to 256.
    #[arg(long, value_name = "N", default_value_t = EngineConfig::default().max_sessions,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    max_sessions: u32,
    /// llama.cpp contexts per model that sessions are spread over, each
    /// given an equal share of the threads while busy, 1 to 256 (at most
    /// --max-sessions) [default: 1, which batches every session in one
    /// context on all the threads].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    lanes: Option<u32>,
    /// Attention kernel: `auto` times a short decode each way at load and
    /// keeps the faster (remembered per model, CPU and thread count); `on`
    /// or `off` forces llama.cpp's flash attention on or off.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    flash_attn: FlashAttention,
    /// The inference backend of every model the policy does not give one:
    /// `llama.cpp`, or `candle` (pure Rust; Llama-architecture models on
    /// the CPU).
    #[arg(long, value_name = "llama.cpp|candle", default_value = "llama.cpp")]
    backend: BackendKind,
    /// Speculative decoding: `ngram` drafts each generation's next tokens
    /// from its own session (what followed an earlier occurrence of its
    /// last tokens) and checks them in the step's batch, as many as
    /// measured decode times and acceptance say pay; the output is the
    /// same as with `off`. Off by default until it is measured on both CPU
    /// kinds this project runs on (README: Speculative decoding).
    #[arg(long, value_name = "ngram|off", default_value = "off")]
    speculation: SpeculationMode,
    /// Most tokens drafted per step for one generation, 1 to 32.
    #[arg(long, value_name = "N", default_value_t = Speculation::default().draft_max,
          value_parser = clap::value_parser!(u32).range(1..=MAX_DRAFT as i64))]
    draft_max: u32,
    /// The secret that seals saved sessions: 32 bytes, or 64 hex digits
    /// (`openssl rand -hex 32`). Hosts given the same key accept each
    /// other's snapshots [default: the policy's `snapshot-key-file`, else a
    /// random key created once in the cache directory, mode 0600].
    #[arg(long, value_name = "FILE")]
    snapshot_key: Option<PathBuf>,
    /// A Jinja chat template file to use for model NAME instead of its
    /// GGUF's own (as llama-server's --chat-template-file); repeatable.
    #[arg(long = "chat-template", value_name = "NAME=FILE")]
    chat_templates: Vec<String>,
    /// A Redis (or Valkey) that several hosts share as a tier of their
    /// prefix caches (`redis://HOST:PORT/DB`): a conversation one host kept
    /// is continued on another from its snapshot. The hosts must share the
    /// snapshot key (`--snapshot-key`). The policy's `shared-cache-*`
    /// limits set TTL, entry size and timeout.
    #[arg(long, value_name = "URL")]
    shared_cache: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(log_filter()).with_writer(std::io::stderr).init();
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Fetch { name } => {
            println!("{}", catalog::named(&name)?.display());
            Ok(0)
        }
        Cmd::Run(args) => {
            // Before any model is fetched or loaded: a wrong file fails in milliseconds.
            Runtime::check_guest(&args.component)?;
            let runtime = args.host.runtime()?;
            let guest = runtime.load(&args.component)?;
            let name = args.component.file_name().map_or("guest".into(), |n| n.to_string_lossy().into_owned());
            let argv: Vec<String> = std::iter::once(name).chain(args.args).collect();
            let dirs: Vec<Preopen> = (args.dirs.iter().map(|d| Preopen::parse(d, true)))
                .chain(args.ro_dirs.iter().map(|d| Preopen::parse(d, false)))
                .collect();
            Ok(runtime.run_with_env(&guest, &argv, &args.env, Stdio::Inherit, &dirs)?.exit_code)
        }
        Cmd::Serve(args) => {
            Runtime::check_component(&args.component)?;
            let keys = ApiKeys::new(&args.api_keys, &args.api_key_files)?;
            let runtime = Arc::new(args.host.runtime()?);
            let guest = runtime.load(&args.component)?;
            let reuse =
                Reuse { requests: args.instance_requests, concurrent: args.instance_concurrency, ..Reuse::default() };
            Server::new(runtime, guest, keys, reuse)?.serve(args.addr)?;
            Ok(0)
        }
    }
}

/// WASI_NN_LLM_LOG is a tracing filter (`debug`, `wasi_nn_llm_host=trace`,
/// …); unset, only warnings show. Either way wasmtime-wasi-nn's glue is
/// silenced unless the filter names it: it logs every error a base wasi-nn
/// call returns to a guest at ERROR level (with a ~130-line backtrace
/// where RUST_BACKTRACE is set), so any guest could flood the operator's
/// log. Those are the guest's mistakes, and this host's wasi-nn backend
/// logs each at debug level itself (`wasi_nn`).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let given = std::env::var("WASI_NN_LLM_LOG").ok().filter(|f| !f.trim().is_empty());
    let mut filter = given.as_deref().unwrap_or("warn").to_owned();
    if !filter.contains("wasmtime_wasi_nn") {
        filter.push_str(",wasmtime_wasi_nn::wit=off");
    }
    tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("WASI_NN_LLM_LOG={filter:?} is not a log filter ({e}); showing warnings");
        tracing_subscriber::EnvFilter::new("warn,wasmtime_wasi_nn::wit=off")
    })
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

impl HostArgs {
    /// Load the models (policy and flags) and make the runtime for guests.
    fn runtime(&self) -> anyhow::Result<Runtime> {
        let mut config =
            EngineConfig { ctx_size: self.ctx_size, max_sessions: self.max_sessions, ..EngineConfig::default() };
        config.gpu_layers = self.gpu_layers;
        config.lanes = self.lanes;
        config.flash_attn = self.flash_attn;
        config.backend = self.backend;
        config.speculation = Speculation { mode: self.speculation, draft_max: self.draft_max };
        if let Some(t) = self.threads {
            config.threads = t;
        }
        let policy = match &self.policy {
            Some(path) => Policy::read(path)?,
            None => Policy::default(),
        };
        let mut specs = policy.model_specs()?;
        for flag in &self.models {
            let spec = ModelSpec::parse(flag)?;
            anyhow::ensure!(
                !specs.iter().any(|s| s.name == spec.name),
                "model {:?} is in both --model and the policy",
                spec.name
            );
            specs.push(spec);
        }
        anyhow::ensure!(!specs.is_empty(), "no models: give --model or a policy with [models]");
        for flag in &self.chat_templates {
            let Some((name, file)) = flag.split_once('=') else {
                anyhow::bail!("--chat-template wants NAME=FILE, got {flag:?}");
            };
            let Some(spec) = specs.iter_mut().find(|s| s.name == name) else {
                anyhow::bail!("--chat-template {flag:?}: no model is named {name:?}");
            };
            spec.chat_template = Some(PathBuf::from(file));
        }
        policy.apply_limits(&mut config, &mut specs);
        config.snapshot_key = match self.snapshot_key.as_ref().or(policy.snapshot_key_file.as_ref()) {
            Some(file) => SnapshotKey::from_file(file)?,
            None => SnapshotKey::for_this_machine(&wasi_nn_llm_host::cache::dir()?)?,
        };
        eprintln!(
            "snapshots sealed with {} (fingerprint {})",
            config.snapshot_key.source(),
            config.snapshot_key.fingerprint_hex()
        );
        if let Some(url) = &self.shared_cache {
            let settings = policy.shared_cache(url);
            eprintln!(
                "sharing the prefix cache through {url} (entries live {} s, up to {} bytes; calls time out after {:?})",
                settings.ttl.as_secs(),
                settings.max_entry_bytes,
                settings.timeout
            );
            config.shared_cache = Some(Arc::new(SharedTier::new(settings)?));
        }
        let gpus = gpus()?;
        if gpu_build() && gpus.is_empty() {
            eprintln!(
                "this host is built with a GPU backend but finds no usable GPU (no device, or no driver; \
                 WASI_NN_LLM_LOG=info shows llama.cpp's reason): serving on the CPU"
            );
        }
        for gpu in &gpus {
            eprintln!("GPU: {gpu}");
        }
        for spec in &specs {
            let layers = match spec.gpu_layers.or(config.gpu_layers) {
                _ if gpus.is_empty() => "0".to_owned(),
                None => "all".to_owned(),
                Some(n) => n.to_string(),
            };
            eprintln!(
                "loading model {:?} from {} ({} threads, {layers} GPU layers)",
                spec.name,
                spec.path.display(),
                config.threads,
            );
        }
        let models = Models::load(&specs, &config)?;
        for name in models.names() {
            if let Some(engine) = models.engine(name) {
                let speculation = match engine.speculation() {
                    s if s.on() => format!("speculation {} (up to {} drafted)", s.mode, s.draft_max),
                    _ => "speculation off".to_owned(),
                };
                match engine.attention() {
                    Some(attention) => eprintln!("model {name:?}: {}, {attention}, {speculation}", engine.backend()),
                    None => eprintln!("model {name:?}: {}, {speculation}", engine.backend()),
                }
            }
        }
        Runtime::with_policy(models, Arc::new(policy))
    }
}
