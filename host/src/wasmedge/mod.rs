//! WasmEdge's GGML ABI (`wasi_ephemeral_nn`), the front door for the
//! wasm32-wasip1 guests written for WasmEdge's GGML plugin and LlamaEdge,
//! served unmodified on the same engine, registry, policy and quotas as the
//! other doors.
//!
//! The ABI is the legacy witx wasi-nn (every argument an i32 address,
//! length or handle; every result an errno) plus the plugin's additions:
//! `load_by_name_with_config` (a JSON configuration), `compute_single` /
//! `get_output_single` / `fini_single` (a generation pulled piece by piece)
//! and errnos 100 to 103. What this host keeps and what it changes:
//!
//! | call | here |
//! |---|---|
//! | `load` | refused: guests bring no weights (WasmEdge writes them to a file, and takes `preload:<host path>`) |
//! | `load_by_name[_with_config]` | a model the operator registered, `not-found` (8) otherwise; a new graph per call (WasmEdge ignores a second config for a name) |
//! | config keys | sampling, `n-predict`, `reverse-prompt`, `stream-stdout`, `embedding` taken; `ctx-size` capped at the operator's; model-placement keys noted on stderr and not used; host-path keys refused; unknown keys ignored ([`config`]) |
//! | `set_input(1)` | more configuration, for that context only (WasmEdge's is sticky on the graph) |
//! | `set_input(0)` | the prompt, tokenized with BOS and special tokens as WasmEdge does; dimensions ignored as WasmEdge ignores them |
//! | `compute` | the KV cache is kept by longest common prefix ([`context`]); end of sequence, `n-predict` and the reverse prompt end it; a full context is 101 with the output kept |
//! | `compute_single` | one piece of whole UTF-8 characters per call (WasmEdge: one token's bytes, possibly half a character); 100 at the end, which includes `n-predict` (WasmEdge ignores it here) |
//! | `get_output(0)` / `get_output_single(0)` | the text / the last piece, without the end-of-turn token's text (WasmEdge appends it) and without the reverse prompt |
//! | `get_output(1)` | `{"input_tokens": …, "output_tokens": …, "llama_build_number": …, "llama_commit": "…", "cached_tokens": …}`: WasmEdge's format and keys, and how many prompt tokens the KV cache kept |
//! | output buffers | copied whole, bounded by the guest's linear memory alone: LlamaEdge passes a `max` of 0 with a big enough buffer, and WasmEdge checked `max` only from mid-2026 |
//! | `unload`, `finalize_execution_context` | free the handle |
//!
//! Every errno comes with one line on the guest's stderr saying why: the
//! ABI has room only for the number.

mod abi;
mod config;
mod context;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p2::OutputStream;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::engine::Engine;
use crate::policy::Policy;
use crate::registry::Access;
use abi::{ENCODING_GGML, Errno, Fault, Memory};
use config::{Config, Reader};
use context::{Context, Step};

/// The import module of the ABI.
pub const MODULE: &str = "wasi_ephemeral_nn";

/// The metadata output's llama.cpp build number and commit. llama-cpp-sys-2
/// builds llama.cpp from a copy outside git, so llama.cpp's own build info
/// knows neither (it says 0 and "unknown"), and nothing in the published
/// crate records which llama.cpp commit it copied. No build number is
/// made up: it stays 0, and the commit field names what does pin the
/// tree, the crate and its version ([`crate::backend::llama_cpp::BACKEND`], what
/// `model-identity` reports), so a guest's banner reads e.g.
/// "b0 (commit llama-cpp-sys-2 0.1.161)" instead of "unknown".
const LLAMA_BUILD_NUMBER: u32 = 0;
const LLAMA_COMMIT: &str = crate::backend::llama_cpp::BACKEND.1;

/// Graphs and contexts one instance may hold at once: each costs host
/// memory, and a guest could otherwise make them until the host runs out.
const MAX_HANDLES: usize = 1024;

/// What the operator says about this door (the policy's
/// `[wasi-ephemeral-nn]`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Keep a context's KV cache between computes.
    reuse: bool,
    /// Configuration applied over every guest's.
    config: Config,
}

impl Settings {
    /// The policy's settings, its `config` read strictly.
    pub fn from_policy(policy: &Policy) -> anyhow::Result<Self> {
        let door = &policy.wasi_ephemeral_nn;
        let mut config = Config::default();
        let json = serde_json::to_value(&door.config).context("policy [wasi-ephemeral-nn] config")?;
        if let serde_json::Value::Object(map) = json {
            config
                .apply_map(&map, Reader::Operator)
                .map_err(|f| anyhow::anyhow!("policy [wasi-ephemeral-nn] config: {}", f.why))?;
        }
        Ok(Self { reuse: door.reuse_kv, config })
    }
}

/// Where a guest's standard output and error go, for what the plugin
/// writes there itself (`stream-stdout`) and for the reasons of errnos.
#[derive(Clone)]
pub enum Console {
    /// The host process's own.
    Inherit,
    /// The pipes the guest's WASI stdout and stderr write to.
    Captured {
        /// stdout.
        out: MemoryOutputPipe,
        /// stderr.
        err: MemoryOutputPipe,
    },
}

impl Console {
    fn out(&self, bytes: &[u8]) {
        match self {
            Self::Inherit => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes).and_then(|()| out.flush());
            }
            Self::Captured { out, .. } => {
                let _ = out.clone().write(bytes::Bytes::copy_from_slice(bytes));
            }
        }
    }

    fn note(&self, line: &str) {
        let line = format!("[wasi-nn-llm] {line}\n");
        match self {
            Self::Inherit => eprint!("{line}"),
            Self::Captured { err, .. } => {
                let _ = err.clone().write(bytes::Bytes::from(line));
            }
        }
    }
}

/// One guest instance's state of this door.
pub struct WasmEdgeCtx {
    access: Arc<Access>,
    settings: Arc<Settings>,
    console: Console,
    graphs: Handles<Graph>,
    contexts: Handles<Context>,
}

struct Graph {
    engine: Engine,
    config: Config,
    /// What its configuration's notes told the guest at load.
    notes: Vec<String>,
}

impl WasmEdgeCtx {
    /// The door for an instance reaching `access`, writing to `console`.
    pub fn new(access: Arc<Access>, settings: Arc<Settings>, console: Console) -> Self {
        Self { access, settings, console, graphs: Handles::new("graph"), contexts: Handles::new("context") }
    }

    fn load(&mut self, name: &str, config: &[u8]) -> Result<u32, Fault> {
        if !self.access.interfaces().wasi_ephemeral_nn {
            return Err(Fault::new(Errno::UnsupportedOperation, "the host's policy closes wasi_ephemeral_nn"));
        }
        let engine = match self.access.engine_named(name) {
            None => {
                let known: Vec<&str> = self.access.permitted().collect();
                return Err(Fault::new(
                    Errno::NotFound,
                    format!("no model is registered as {name:?}; models: {known:?}"),
                ));
            }
            Some(Err(e)) => return Err(Fault::new(Errno::NotFound, e.to_string())),
            Some(Ok(engine)) => engine.clone(),
        };
        let mut graph = Config::default();
        let notes = if config.is_empty() { Vec::new() } else { graph.apply(config, Reader::Guest)? };
        for note in &notes {
            self.console.note(note);
        }
        graph.overlay(&self.settings.config);
        if let (_, Some(note)) = graph.context_length(engine.ctx_size()) {
            self.console.note(&note);
        }
        self.graphs.insert(Graph { engine, config: graph, notes })
    }

    fn init_execution_context(&mut self, graph: i32) -> Result<u32, Fault> {
        let graph = self.graphs.get(graph)?;
        let context =
            Context::new(graph.engine.clone(), graph.config.clone(), graph.notes.clone(), self.settings.reuse);
        self.contexts.insert(context)
    }

    fn set_input(&mut self, context: i32, index: i32, data: &[u8]) -> Result<(), Fault> {
        let context = self.contexts.get(context)?;
        if index == 1 {
            return context.configure(data, &self.settings.config, &self.console);
        }
        let prompt = std::str::from_utf8(data).map_err(|e| Fault::invalid(format!("the prompt is not UTF-8: {e}")))?;
        context.set_prompt(prompt)
    }

    fn compute(&mut self, context: i32) -> Result<(), Fault> {
        self.contexts.get(context)?.compute(self.access.quota(), &self.console)
    }

    fn compute_single(&mut self, context: i32) -> Result<Step, Fault> {
        self.contexts.get(context)?.compute_single(self.access.quota())
    }

    fn output(&mut self, context: i32, index: i32, single: bool) -> Result<Vec<u8>, Fault> {
        let context = self.contexts.get(context)?;
        Ok(match (index, single) {
            (1, _) => context.metadata(),
            (_, false) => context.output().to_vec(),
            (_, true) => context.last_piece().to_vec(),
        })
    }

    /// An errno for the guest, its reason on the guest's stderr.
    fn errno(&self, call: &str, result: Result<(), Fault>) -> i32 {
        match result {
            Ok(()) => Errno::Success as i32,
            Err(fault) => {
                if fault.errno != Errno::EndOfSequence {
                    self.console.note(&format!("{call}: {fault}"));
                }
                fault.errno as i32
            }
        }
    }
}

/// Handles of one kind: increasing, never reused (as WasmEdge's are).
struct Handles<T> {
    kind: &'static str,
    next: u32,
    items: BTreeMap<u32, T>,
}

impl<T> Handles<T> {
    fn new(kind: &'static str) -> Self {
        Self { kind, next: 0, items: BTreeMap::new() }
    }

    fn insert(&mut self, item: T) -> Result<u32, Fault> {
        if self.items.len() >= MAX_HANDLES {
            return Err(Fault::new(Errno::TooLarge, format!("more than {MAX_HANDLES} {}s are open", self.kind)));
        }
        let id = self.next;
        self.next = self.next.checked_add(1).ok_or_else(|| Fault::new(Errno::TooLarge, "handles exhausted"))?;
        self.items.insert(id, item);
        Ok(id)
    }

    fn get(&mut self, id: i32) -> Result<&mut T, Fault> {
        let kind = self.kind;
        self.items.get_mut(&(id as u32)).ok_or_else(|| Fault::invalid(format!("{} is not an open {kind}", id as u32)))
    }

    fn remove(&mut self, id: i32) -> Result<(), Fault> {
        self.get(id)?;
        self.items.remove(&(id as u32));
        Ok(())
    }
}

/// Run `body` with the guest's memory and the door's state.
fn with_memory<T>(
    mut caller: Caller<'_, T>,
    get: fn(&mut T) -> &mut WasmEdgeCtx,
    call: &str,
    body: impl FnOnce(&mut Memory<'_>, &mut WasmEdgeCtx) -> Result<(), Fault>,
) -> i32 {
    match caller.get_export("memory").and_then(Extern::into_memory) {
        Some(memory) => {
            let (bytes, data) = memory.data_and_store_mut(&mut caller);
            let ctx = get(data);
            let result = body(&mut Memory(bytes), ctx);
            ctx.errno(call, result)
        }
        None => {
            let ctx = get(caller.data_mut());
            ctx.errno(call, Err(Fault::new(Errno::MissingMemory, "the guest exports no memory named \"memory\"")))
        }
    }
}

/// Run `body` on the door's state (calls that touch no guest memory).
fn with_ctx<T>(
    mut caller: Caller<'_, T>,
    get: fn(&mut T) -> &mut WasmEdgeCtx,
    call: &str,
    body: impl FnOnce(&mut WasmEdgeCtx) -> Result<(), Fault>,
) -> i32 {
    let ctx = get(caller.data_mut());
    let result = body(ctx);
    ctx.errno(call, result)
}

/// Add `wasi_ephemeral_nn` to a core-module linker; `get` finds the door's
/// state in the store.
pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut WasmEdgeCtx) -> anyhow::Result<()> {
    linker.func_wrap(MODULE, "load", move |caller: Caller<'_, T>, builders: i32, count: i32, encoding: i32, _target: i32, _out: i32| {
        with_memory(caller, get, "load", |memory, _| {
            if encoding != ENCODING_GGML {
                return Err(Fault::new(
                    Errno::InvalidEncoding,
                    format!("encoding {encoding} is not served; this host serves GGML ({ENCODING_GGML}) models by name"),
                ));
            }
            let first = if count > 0 {
                let (ptr, len) = (memory.u32(builders, "the builder array")?, memory.u32(builders.wrapping_add(4), "the builder array")?);
                memory.bytes(ptr as i32, (len as i32).clamp(0, 8), "the first builder")?.starts_with(b"preload:")
            } else {
                false
            };
            let why = if first {
                "a preload: builder names a host file; guests never name host paths: use load_by_name with a model the operator registered"
            } else {
                "guests cannot bring their own weights: use load_by_name with a model the operator registered"
            };
            Err(Fault::new(Errno::UnsupportedOperation, why))
        })
    })?;
    linker.func_wrap(MODULE, "load_by_name", move |caller: Caller<'_, T>, name: i32, len: i32, out: i32| {
        with_memory(caller, get, "load_by_name", |memory, ctx| {
            let graph = ctx.load(memory.text(name, len, "the model name")?, &[])?;
            memory.put_u32(out, graph, "the graph handle")
        })
    })?;
    linker.func_wrap(
        MODULE,
        "load_by_name_with_config",
        move |caller: Caller<'_, T>, name: i32, len: i32, config: i32, config_len: i32, out: i32| {
            with_memory(caller, get, "load_by_name_with_config", |memory, ctx| {
                let config = memory.bytes(config, config_len, "the config")?;
                let graph = ctx.load(memory.text(name, len, "the model name")?, config)?;
                memory.put_u32(out, graph, "the graph handle")
            })
        },
    )?;
    linker.func_wrap(MODULE, "init_execution_context", move |caller: Caller<'_, T>, graph: i32, out: i32| {
        with_memory(caller, get, "init_execution_context", |memory, ctx| {
            let context = ctx.init_execution_context(graph)?;
            memory.put_u32(out, context, "the context handle")
        })
    })?;
    linker.func_wrap(MODULE, "set_input", move |caller: Caller<'_, T>, context: i32, index: i32, tensor: i32| {
        with_memory(caller, get, "set_input", |memory, ctx| ctx.set_input(context, index, memory.tensor(tensor)?))
    })?;
    for (name, single) in [("get_output", false), ("get_output_single", true)] {
        linker.func_wrap(
            MODULE,
            name,
            move |caller: Caller<'_, T>, context: i32, index: i32, buffer: i32, _max: i32, written: i32| {
                with_memory(caller, get, name, |memory, ctx| {
                    let bytes = ctx.output(context, index, single)?;
                    memory.put_u32(written, bytes.len() as u32, "the written-size address")?;
                    memory.put(buffer, &bytes, "the output buffer")
                })
            },
        )?;
    }
    linker.func_wrap(MODULE, "compute", move |caller: Caller<'_, T>, context: i32| {
        with_ctx(caller, get, "compute", |ctx| ctx.compute(context))
    })?;
    linker.func_wrap(MODULE, "compute_single", move |caller: Caller<'_, T>, context: i32| {
        with_ctx(caller, get, "compute_single", |ctx| match ctx.compute_single(context)? {
            Step::Piece => Ok(()),
            Step::Ended => Err(Fault::new(Errno::EndOfSequence, "the generation has ended")),
        })
    })?;
    linker.func_wrap(MODULE, "fini_single", move |caller: Caller<'_, T>, context: i32| {
        with_ctx(caller, get, "fini_single", |ctx| ctx.contexts.get(context).map(Context::fini_single))
    })?;
    linker.func_wrap(MODULE, "unload", move |caller: Caller<'_, T>, graph: i32| {
        with_ctx(caller, get, "unload", |ctx| ctx.graphs.remove(graph))
    })?;
    linker.func_wrap(MODULE, "finalize_execution_context", move |caller: Caller<'_, T>, context: i32| {
        with_ctx(caller, get, "finalize_execution_context", |ctx| ctx.contexts.remove(context))
    })?;
    Ok(())
}
