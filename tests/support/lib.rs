//! Shared set-up for the integration tests: the real default model, one host
//! per test process, and the probe guest whose JSON lines the tests check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::Value;
use wasi_nn_llm_host::catalog;
use wasi_nn_llm_host::catalog::ModelSpec;
use wasi_nn_llm_host::engine::{Engine, EngineConfig};
use wasi_nn_llm_host::policy::{Identity, Policy};
use wasi_nn_llm_host::registry::Models;
use wasi_nn_llm_host::runner::Guest;
use wasi_nn_llm_host::runner::{Preopen, Runtime, Stdio};

/// The registry name of the default model.
pub const MODEL: &str = "smollm2";
/// The second architecture (gemma-3-270m, a base model with SPM tokens,
/// BOS and sliding-window attention).
pub const GEMMA: &str = "gemma3";
/// Every model the tests load; the model-independent checks run on each.
pub const MODELS: [&str; 2] = [MODEL, GEMMA];

/// Threads and per-session context every test engine uses, so that direct
/// llama.cpp runs in the tests can use the very same settings.
pub const THREADS: u32 = 2;
pub const CTX_SIZE: u32 = 2048;
/// Lanes of the test host: more than the default one, so the cross-lane
/// paths (placement, forks through the state API) stay tested.
pub const LANES: u32 = 2;

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace")
}

/// The text of `file` between the `begin` and `end` markers (a block a
/// test generates into a checked-in Markdown file), if both are there.
pub fn generated_block(file: &Path, begin: &str, end: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let (a, b) = (text.find(begin)?, text.find(end)?);
    (a < b).then(|| text[a + begin.len()..b].trim().to_owned())
}

/// Check that the block of `file` between `begin` and `end` is `table`;
/// or, with the environment variable `bless` set, write `table` there
/// (appending the block if the file has none). `rerun` is the command
/// that blesses, for the failure message.
pub fn check_generated_block(file: &Path, begin: &str, end: &str, table: &str, bless: &str, rerun: &str) {
    if std::env::var_os(bless).is_some() {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let written = match (text.find(begin), text.find(end)) {
            (Some(a), Some(b)) if a < b => format!("{}{begin}\n\n{table}\n{}", &text[..a], &text[b..]),
            _ => format!("{text}\n{begin}\n\n{table}\n{end}\n"),
        };
        std::fs::write(file, written).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        return;
    }
    assert_eq!(
        generated_block(file, begin, end).unwrap_or_default(),
        table.trim(),
        "{} changed: read the difference, explain it there, and write it with {bless}=1 {rerun}",
        file.display()
    );
}

/// A guest component built by `make test` (`cargo build --target wasm32-wasip2`).
pub fn guest(name: &str) -> PathBuf {
    built_guest("wasm32-wasip2", name)
}

/// A wasm32-wasip1 guest built by `make test` (a guest of WasmEdge's ABI).
pub fn guest_p1(name: &str) -> PathBuf {
    built_guest("wasm32-wasip1", name)
}

fn built_guest(target: &str, name: &str) -> PathBuf {
    let path = workspace_root().join("target").join(target).join("release").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run the tests with `make test`, which builds the guests", path.display());
    path
}

/// What `sha256sum` prints for a file: 64 lowercase hex digits.
pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Identity::of(path, &bytes).digest.trim_start_matches("sha256:").to_owned()
}

/// The host CLI (`make test` builds it), for tests that need separate host processes.
pub fn host_cli() -> PathBuf {
    let path = workspace_root().join("target/release/wasi-nn-llm");
    assert!(path.is_file(), "{} is missing: run the tests with `make test`", path.display());
    path
}

/// The cached GGUF of a test model (fetched on first use).
pub fn model_path(name: &str) -> PathBuf {
    catalog::named(name).expect("fetching the model")
}

/// Where guests see the model cache when it is shared with them.
pub const GUEST_MODELS: &str = "models";

/// The directory holding the cached models (all catalog models share it).
pub fn model_dir() -> PathBuf {
    model_path(MODEL).parent().expect("a cached model lies in a directory").to_owned()
}

/// The path a guest sees `name`'s GGUF at under [`GUEST_MODELS`].
pub fn guest_model_path(name: &str) -> String {
    let path = model_path(name);
    let file = path.file_name().expect("a file name").to_string_lossy();
    format!("{GUEST_MODELS}/{file}")
}

pub fn smollm2_path() -> PathBuf {
    model_path(MODEL)
}

pub struct TestHost {
    pub runtime: Runtime,
    probe: Guest,
}

/// The process's host: SmolLM2 loaded once, the probe compiled once.
pub fn host() -> &'static TestHost {
    static HOST: OnceLock<TestHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let config = EngineConfig {
            threads: THREADS,
            ctx_size: CTX_SIZE,
            max_sessions: 8,
            gpu_layers: Some(0),
            lanes: Some(LANES),
            ..EngineConfig::default()
        };
        let specs: Vec<ModelSpec> = MODELS.iter().map(|&m| ModelSpec::new(m, model_path(m))).collect();
        let models = Models::load(&specs, &config).expect("loading the models");
        let runtime = Runtime::new(models).expect("creating the runtime");
        let probe = runtime.load(&guest("probe")).expect("compiling the probe guest");
        TestHost { runtime, probe }
    })
}

impl TestHost {
    /// The engine of the default model.
    pub fn engine(&self) -> &Engine {
        self.engine_of(MODEL)
    }

    pub fn engine_of(&self, model: &str) -> &Engine {
        self.runtime.models().engine(model).expect("the test model is registered")
    }

    /// A one-turn prompt in `model`'s own chat template.
    pub fn user_prompt(&self, model: &str, user: &str) -> String {
        self.engine_of(model).apply_chat_template(&[("user".into(), user.into())], true).expect("template")
    }

    /// Run the probe guest and parse its JSON lines; panics (with its output)
    /// if it fails.
    pub fn probe(&self, args: &[&str]) -> Vec<Value> {
        json_lines("probe", &self.run(&self.probe, "probe", args))
    }

    /// Compile and run another guest; returns its stdout.
    pub fn run_guest(&self, name: &str, args: &[&str]) -> String {
        let component = self.runtime.load(&guest(name)).expect("compiling the guest");
        self.run(&component, name, args)
    }

    /// As [`probe`](Self::probe), with the model cache shared read-only at
    /// [`GUEST_MODELS`] (for the guest-side tokenizer).
    pub fn probe_with_models(&self, args: &[&str]) -> Vec<Value> {
        let models = Preopen { host: model_dir(), guest: GUEST_MODELS.into(), writable: false };
        json_lines("probe", &self.run_with(&self.probe, "probe", args, &[models]))
    }

    fn run(&self, component: &Guest, name: &str, args: &[&str]) -> String {
        self.run_with(component, name, args, &[])
    }

    fn run_with(&self, component: &Guest, name: &str, args: &[&str], dirs: &[Preopen]) -> String {
        let out = self
            .runtime
            .run(component, &argv(name, args), Stdio::Captured { stdin: Vec::new() }, dirs)
            .expect("running the guest");
        assert_eq!(out.exit_code, 0, "{name} {args:?} failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        out.stdout
    }
}

/// Tests whose exact token ids depend on what else is being decoded hold this.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A streamed generation as the probe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Streamed {
    pub chunks: Vec<(String, Vec<u32>)>,
    pub finish: Value,
}

impl Streamed {
    pub fn parse(lines: &[Value]) -> Self {
        let mut chunks = Vec::new();
        let mut finish = Value::Null;
        for line in lines {
            if let Some(c) = line.get("chunk") {
                let text = c["text"].as_str().expect("chunk text").to_owned();
                let tokens = c["tokens"].as_array().expect("chunk tokens").iter().map(as_u32).collect();
                chunks.push((text, tokens));
            } else if let Some(f) = line.get("finish") {
                finish = f.clone();
            }
        }
        Self { chunks, finish }
    }

    pub fn text(&self) -> String {
        self.chunks.iter().map(|(t, _)| t.as_str()).collect()
    }

    pub fn tokens(&self) -> Vec<u32> {
        self.chunks.iter().flat_map(|(_, t)| t.iter().copied()).collect()
    }
}

pub fn as_u32(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_else(|| panic!("not a u32: {v}"))
}

/// Tokens a stream decoded beside others must start as the same prompt's
/// greedy reply decoded alone: the stream carried its own prompt's
/// continuation. Only the start is asserted. A batch of several sequences
/// runs other llama.cpp kernels than a batch of one, so the logits differ
/// in the last bits, and a near-tie between two tokens can later flip a
/// greedy choice (seen on an AMD EPYC of family 26: ten equal tokens, then
/// a different one). Whether the whole reply matched is printed.
pub fn assert_starts_as_alone(beside: &Value, alone: &[u32], what: &str) {
    let beside: Vec<u32> =
        beside.as_array().unwrap_or_else(|| panic!("{what}: not a token list")).iter().map(as_u32).collect();
    let start = alone.len().min(8);
    assert!(start > 0 && beside.len() >= start, "{what}: {} tokens beside others, {} alone", beside.len(), alone.len());
    assert_eq!(beside[..start], alone[..start], "{what}: beside others {beside:?}, alone {alone:?}");
    eprintln!("{what}: the whole reply beside others equals it alone: {}", beside == alone);
}

/// A single-turn ChatML prompt, as SmolLM2's template renders it.
pub fn chatml(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// A runtime on the test host's loaded models under the policy `toml` (its
/// grants, interfaces and limits; its `[models]` are ignored: the models are
/// the test host's).
pub fn policed(toml: &str) -> Runtime {
    let policy = Policy::parse(toml).expect("a valid policy");
    Runtime::with_policy(host().runtime.models().clone(), Arc::new(policy)).expect("creating the runtime")
}

/// Run guest `name` under `runtime`: its stdout's JSON lines, or the host's
/// error (a trap, an interrupt) if the instance did not end normally.
pub fn run_lines(runtime: &Runtime, name: &str, args: &[&str]) -> Result<(i32, Vec<Value>), String> {
    let compiled = runtime.load(&guest(name)).expect("compiling the guest");
    let out = runtime
        .run(&compiled, &argv(name, args), Stdio::Captured { stdin: Vec::new() }, &[])
        .map_err(|e| format!("{e:#}"))?;
    if out.exit_code != 0 {
        eprintln!("{name} {args:?} exited with {}: {}", out.exit_code, out.stderr);
    }
    Ok((out.exit_code, json_lines(name, &out.stdout)))
}

/// A guest's argv: its name, then `args`.
fn argv(name: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(name).chain(args.iter().copied()).map(String::from).collect()
}

/// A guest's stdout as JSON lines; panics on a line that is not JSON.
fn json_lines(name: &str, stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} printed non-JSON {l:?}: {e}")))
        .collect()
}

/// The line of `case` in a guest's report.
pub fn case<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines.iter().find(|l| l["case"] == name).unwrap_or_else(|| panic!("case {name} missing in {lines:#?}"))
}

/// Greedy tokens of one `max`-token generation on `session`, and how many
/// of the session's tokens its usage counts as cached.
pub fn greedy_reply(session: &wasi_nn_llm_host::engine::Session, max: u32) -> (Vec<u32>, u32) {
    let mut stream = session.generate(&wasi_nn_llm_host::engine::GenerateParams::greedy(max)).expect("generate");
    let mut tokens = Vec::new();
    while let Some(chunk) = stream.next_chunk().expect("a chunk") {
        tokens.extend(chunk.tokens);
    }
    (tokens, stream.finish().expect("a finish").usage.cached_tokens)
}

/// The unit-length embedding of `tokens` as llama.cpp computes it when
/// driven directly, as its `llama-embedding` tool does: a context of its
/// own with embeddings on and llama.cpp's own mean pooling, the whole input
/// in one batch; `flash`: the attention kernel.
pub fn llama_cpp_embedding(
    model: &llama_cpp_2::model::LlamaModel,
    tokens: &[llama_cpp_2::token::LlamaToken],
    flash: bool,
) -> Vec<f64> {
    use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
    use llama_cpp_2::llama_batch::LlamaBatch;
    let backend = wasi_nn_llm_host::backend::llama_cpp::backend().expect("llama.cpp backend");
    let n = tokens.len().max(1) as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n.max(256)))
        .with_n_batch(n)
        .with_n_ubatch(n)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean)
        .with_n_threads(THREADS as i32)
        .with_n_threads_batch(THREADS as i32)
        .with_flash_attention_policy(i32::from(flash));
    let mut ctx = model.new_context(backend, params).expect("an embedding context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], true).expect("a batch of the input's size");
    }
    ctx.decode(&mut batch).expect("decode");
    let v: Vec<f64> = ctx.embeddings_seq_ith(0).expect("pooled embedding").iter().map(|&x| f64::from(x)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// The llama.cpp model behind an engine, for checks against llama.cpp
/// called directly.
pub trait Llama {
    /// The model llama.cpp loaded.
    fn llama(&self) -> &llama_cpp_2::model::LlamaModel;
}

impl Llama for Engine {
    fn llama(&self) -> &llama_cpp_2::model::LlamaModel {
        wasi_nn_llm_host::backend::llama_cpp::LlamaCpp::of(self.model()).expect("llama.cpp serves this model")
    }
}
