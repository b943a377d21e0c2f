//! Running guest components: one wasmtime engine and linker for the process,
//! one store per guest instance, all instances sharing the loaded models.
//!
//! Each instance runs inside the policy's fences: the models its grants
//! allow, a quota of sessions and KV bytes ([`Access`]), a linear-memory cap
//! (wasmtime's `ResourceLimiter`) and a wall-clock budget (epoch
//! interruption). However it ends (return, trap, interrupt), dropping its
//! store drops its sessions and streams, which stops its generations and
//! frees their KV sequences for the next guest.
//!
//! Host calls are synchronous and every instance runs on its own thread: a
//! guest blocked in `token-stream.next` waits on its own stream buffer while
//! the model's scheduler thread serves everyone else. wasmtime-wasi-nn's
//! host functions are synchronous anyway, so an async host would buy base
//! wasi-nn nothing, and the per-token boundary cost stays at a plain call.
//!
//! The exception is a WASI 0.3 guest (one exporting `wasi:cli/run@0.3.x`,
//! or, for `serve`, `wasi:http/handler@0.3.x`): its streams are
//! component-model streams, which only an async store drives, so it gets a
//! second linker (WASI 0.2 on its async bindings, WASI 0.3, wasi:http 0.3,
//! and the extension's async session) and runs inside `run_concurrent` on a
//! tokio runtime. Both linkers serve the same extension implementation on
//! the same engines, under the same policy.
//!
//! A core module (a `wasm32-wasip1` command, as WasmEdge's guests are) gets
//! a core linker: WASI preview 1 and WasmEdge's `wasi_ephemeral_nn`
//! ([`wasmedge`]), on the same engines and under the same policy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Module, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::p3::bindings::Command as P3Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

use crate::engine::Quota;
use crate::p3;
use crate::policy::{Identity, Policy};
use crate::registry::{Access, Models};
use crate::wasi_nn;
use crate::wasmedge::{self, Console, WasmEdgeCtx};
use crate::wit::{LlmCtx, LlmView};

/// Everything one guest instance's store holds; one resource table serves
/// WASI, wasi:http, wasi-nn and the extension alike.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: NoOutgoingHttp,
    nn: WasiNnCtx,
    llm: LlmCtx,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// What one core-module guest's store holds: WASI preview 1 and WasmEdge's
/// GGML ABI.
pub struct ModuleState {
    wasi: WasiP1Ctx,
    nn: WasmEdgeCtx,
    limits: StoreLimits,
}

/// A store's data that carries its memory limits.
trait HasLimits: Send + 'static {
    fn limits(&mut self) -> &mut StoreLimits;
}

impl HasLimits for HostState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

impl HasLimits for ModuleState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

/// wasi:http's hooks for guests of this host: incoming requests only (the
/// `serve` front door); a guest's outgoing request is refused, since no
/// policy grants network access.
struct NoOutgoingHttp;

type HttpBody = wasmtime_wasi_http::WasiBody;
type HttpIo = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for NoOutgoingHttp {
    fn send_request(
        &mut self,
        _request: hyper::Request<HttpBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _io: HttpIo,
    ) -> Box<dyn Future<Output = Result<(hyper::Response<HttpBody>, HttpIo), wasmtime_wasi_http::Error>> + Send> {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Where a guest's standard streams go.
pub enum Stdio {
    /// The host process's own stdin, stdout and stderr.
    Inherit,
    /// Fixed stdin; stdout and stderr captured (tests).
    Captured {
        /// What the guest reads from stdin.
        stdin: Vec<u8>,
    },
}

/// A host directory the guest may use, the path it sees it at, and whether
/// it may write there.
#[derive(Debug, Clone, PartialEq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: std::path::PathBuf,
    /// The path the guest opens it at.
    pub guest: String,
    /// Whether the guest may write there (else read only).
    pub writable: bool,
}

impl Preopen {
    /// `HOST[::GUEST]`, as wasmtime's `--dir` (the guest path defaults to the host path).
    pub fn parse(spec: &str, writable: bool) -> Self {
        let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
        Self { host: host.into(), guest: guest.to_owned(), writable }
    }
}

/// What a guest printed, when its output was captured.
#[derive(Debug, Default)]
pub struct Output {
    /// The guest's exit status (1 when its `run` returns an error; a trap
    /// is an error of [`Runtime::run`] instead).
    pub exit_code: i32,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

/// What a trapped guest printed last on its captured stderr, for the
/// error: at most this many bytes of it.
const TRAP_STDERR_TAIL: usize = 2048;

/// The end of `bytes` as text, cut at a line start when it is long.
fn last_lines(bytes: &[u8]) -> String {
    let tail = &bytes[bytes.len().saturating_sub(TRAP_STDERR_TAIL)..];
    let tail = if tail.len() < bytes.len() {
        tail.iter().position(|&b| b == b'\n').map_or(tail, |i| &tail[i + 1..])
    } else {
        tail
    };
    String::from_utf8_lossy(tail).trim_end().to_owned()
}

/// The wasmtime side of the host, shared by every guest instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// For WASI 0.3 guests: WASI 0.2 (async) and 0.3, wasi:http 0.3, base
    /// wasi-nn, the extension's 0.1.x interfaces and its async session. A
    /// guest built for `wasm32-wasip2` still imports WASI 0.2 from its std.
    linker_p3: Linker<HostState>,
    /// For core modules: WASI preview 1 and WasmEdge's GGML ABI.
    linker_module: wasmtime::Linker<ModuleState>,
    models: Arc<Models>,
    policy: Arc<Policy>,
    /// The policy's settings of WasmEdge's ABI.
    wasmedge: Arc<wasmedge::Settings>,
}

/// A compiled guest and who it is (what the policy's grants name).
pub struct Guest {
    code: Code,
    /// Its file name and digest.
    pub identity: Identity,
}

/// What a guest is compiled as.
enum Code {
    /// A component: a `wasi:cli` command (0.2 or 0.3) or an HTTP handler (0.2 or 0.3).
    Component(Component),
    /// A core module: a `wasm32-wasip1` command (WasmEdge's guests).
    Module(Module),
}

/// How often the epoch advances: the resolution of `guest-seconds`.
const EPOCH_TICK: Duration = Duration::from_millis(50);

/// Captured streams are bounded so a runaway guest cannot exhaust host memory.
const CAPTURE_LIMIT: usize = 64 << 20;

impl Runtime {
    /// A runtime under the quick-path policy: every guest may use every model, no limits.
    pub fn new(models: Arc<Models>) -> anyhow::Result<Self> {
        Self::with_policy(models, Arc::new(Policy::default()))
    }

    /// A runtime whose guests run under `policy`.
    pub fn with_policy(models: Arc<Models>, policy: Arc<Policy>) -> anyhow::Result<Self> {
        policy.check_grants(&models.names().collect::<Vec<_>>()).context("policy")?;
        let engine = Engine::new(Config::new().epoch_interruption(true))?;
        // The epoch clock; stops when the engine is gone.
        let weak = engine.weak();
        std::thread::Builder::new().name("epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        add_llm_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
        let mut linker_p3 = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker_p3)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker_p3)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker_p3)?;
        add_llm_to_linker(&mut linker_p3)?;
        p3::add_to_linker(&mut linker_p3, llm_view)?;
        let mut linker_module = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker_module, |s: &mut ModuleState| &mut s.wasi)?;
        wasmedge::add_to_linker(&mut linker_module, |s: &mut ModuleState| &mut s.nn)?;
        let wasmedge = Arc::new(wasmedge::Settings::from_policy(&policy)?);
        Ok(Self { engine, linker, linker_p3, linker_module, models, policy, wasmedge })
    }

    /// The models its guests can reach.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Check that `path` holds a valid WebAssembly component, without
    /// compiling it: milliseconds, so a command line naming the wrong file
    /// fails before any model is loaded.
    pub fn check_component(path: &Path) -> anyhow::Result<()> {
        let shown = path.display();
        if !wasmparser::Parser::is_component(&Self::check_wasm(path)?) {
            anyhow::bail!("{shown} is a core WebAssembly module, not a component: build the guest for wasm32-wasip2");
        }
        Ok(())
    }

    /// Check that `path` holds a guest `run` takes: a valid component, or a
    /// valid core module (a `wasm32-wasip1` command, as WasmEdge's guests are).
    pub fn check_guest(path: &Path) -> anyhow::Result<()> {
        Self::check_wasm(path).map(drop)
    }

    fn check_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("no such file: {shown}"),
            Err(e) => anyhow::bail!("{shown} cannot be read: {e}"),
        };
        if !bytes.starts_with(b"\0asm") {
            anyhow::bail!("{shown} is not WebAssembly (a component starts with \"\\0asm\")");
        }
        let kind = if wasmparser::Parser::is_component(&bytes) { "component" } else { "module" };
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&bytes)
            .map_err(|e| anyhow::anyhow!("{shown} is not a valid {kind}: {e}"))?;
        Ok(bytes)
    }

    /// Compile a guest: a component (a `wasm32-wasip2` command, a WASIp3
    /// guest or an HTTP handler) or a core module (a `wasm32-wasip1` command).
    pub fn load(&self, path: &Path) -> anyhow::Result<Guest> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let code = if wasmparser::Parser::is_core_wasm(&bytes) {
            Module::new(&self.engine, &bytes).map(Code::Module)
        } else {
            Component::new(&self.engine, &bytes).map(Code::Component)
        };
        let code = code.map_err(anyhow::Error::from).with_context(|| format!("compiling {}", path.display()))?;
        Ok(Guest { code, identity: Identity::of(path, &bytes) })
    }

    /// A guest linked against this host's interfaces, ready to instantiate
    /// once per request without compiling or linking again.
    pub fn instance_pre(&self, guest: &Guest) -> anyhow::Result<InstancePre<HostState>> {
        match &guest.code {
            Code::Component(component) => Ok(self.linker.instantiate_pre(component)?),
            Code::Module(_) => anyhow::bail!(
                "{} is a core module; serving HTTP needs a component exporting wasi:http/incoming-handler",
                guest.identity.name
            ),
        }
    }

    /// A WASI 0.3 guest linked against this host's async interfaces, ready
    /// to instantiate (`serve` reuses each instance for many requests).
    pub fn instance_pre_p3(&self, guest: &Guest) -> anyhow::Result<InstancePre<HostState>> {
        match &guest.code {
            Code::Component(component) => Ok(self.linker_p3.instantiate_pre(component)?),
            Code::Module(_) => anyhow::bail!("{} is a core module, not a WASI 0.3 component", guest.identity.name),
        }
    }

    /// Whether `guest` is a WASI 0.3 HTTP service: it exports
    /// `wasi:http/handler@0.3.x`.
    pub fn is_p3_service(&self, guest: &Guest) -> bool {
        matches!(&guest.code, Code::Component(c) if exports(&self.engine, c, p3::HANDLER_EXPORT))
    }

    /// A fresh store for one instance of `guest`, inside the policy's fences
    /// (models, quota, memory, wall time), its WASI given by `wasi`.
    pub fn store(&self, guest: &Guest, wasi: WasiCtx) -> Store<HostState> {
        self.fenced(guest, |access, limits| HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: NoOutgoingHttp,
            nn: WasiNnCtx::new([wasi_nn::backend()], access.nn_registry()),
            llm: LlmCtx::new(access),
            limits,
        })
    }

    /// A store of `guest`'s inside the policy's fences: the models and
    /// quota `make` gets (as an [`Access`]), its memory limit and its
    /// wall-time budget.
    fn fenced<T: HasLimits>(&self, guest: &Guest, make: impl FnOnce(Arc<Access>, StoreLimits) -> T) -> Store<T> {
        let limits = &self.policy.limits;
        let access = Access::new(&self.models, &self.policy, &guest.identity, Quota::new(limits.quota()));
        let mut memory = StoreLimitsBuilder::new();
        if let Some(bytes) = limits.guest_memory_bytes {
            memory = memory.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        let mut store = Store::new(&self.engine, make(access, memory.build()));
        store.limiter(|s| -> &mut dyn wasmtime::ResourceLimiter { s.limits() });
        let ticks = limits.guest_seconds.map_or(u64::MAX / 2, |s| (s / EPOCH_TICK.as_secs_f64()).ceil() as u64);
        store.set_epoch_deadline(ticks.max(1));
        store
    }

    /// The policy's `guest-seconds`, for the message when a guest is stopped.
    pub fn guest_seconds(&self) -> Option<f64> {
        self.policy.limits.guest_seconds
    }

    /// Run a guest to completion in a fresh instance: a `wasi:cli` command,
    /// 0.2 or 0.3 (async `run`), or a core module.
    pub fn run(&self, guest: &Guest, args: &[String], stdio: Stdio, dirs: &[Preopen]) -> anyhow::Result<Output> {
        self.run_with_env(guest, args, &[], stdio, dirs)
    }

    /// [`run`](Self::run), with environment variables for the guest
    /// (WasmEdge's example guests read their settings there).
    pub fn run_with_env(
        &self,
        guest: &Guest,
        args: &[String],
        env: &[(String, String)],
        stdio: Stdio,
        dirs: &[Preopen],
    ) -> anyhow::Result<Output> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args).envs(env);
        for dir in dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("opening {} for the guest", dir.host.display()))?;
        }
        let captured = match stdio {
            Stdio::Inherit => {
                wasi.inherit_stdio();
                None
            }
            Stdio::Captured { stdin } => {
                let (out, err) = (MemoryOutputPipe::new(CAPTURE_LIMIT), MemoryOutputPipe::new(CAPTURE_LIMIT));
                wasi.stdin(MemoryInputPipe::new(stdin)).stdout(out.clone()).stderr(err.clone());
                Some((out, err))
            }
        };
        // However it ends, the store is dropped here, which drops the guest's
        // sessions and streams and so frees their KV sequences.
        let ended = match &guest.code {
            Code::Component(component) => {
                let mut store = self.store(guest, wasi.build());
                if self.is_p3(component) {
                    self.run_p3(component, &mut store)
                } else {
                    Command::instantiate(&mut store, component, &self.linker)
                        .and_then(|command| command.wasi_cli_run().call_run(&mut store))
                }
            }
            Code::Module(module) => {
                let console = match &captured {
                    None => Console::Inherit,
                    Some((out, err)) => Console::Captured { out: out.clone(), err: err.clone() },
                };
                self.run_module(guest, module, wasi.build_p1(), console)
            }
        };
        let ended = match ended {
            Ok(Ok(())) => Ok(0),
            Ok(Err(())) => Ok(1),
            Err(e) => match (e.downcast_ref::<I32Exit>(), e.downcast_ref::<Trap>()) {
                (Some(exit), _) => Ok(exit.0),
                (None, Some(Trap::Interrupt)) => {
                    let secs = self.guest_seconds().unwrap_or_default();
                    Err(anyhow::anyhow!("the guest ran past limits.guest-seconds ({secs} s) and was stopped"))
                }
                // A guest's panic message is on its stderr, just before
                // the trap: keep it in the error, where captured output
                // would otherwise be lost with the run.
                _ => {
                    let printed = captured.as_ref().map(|(_, err)| last_lines(&err.contents())).unwrap_or_default();
                    let why = if printed.is_empty() {
                        "the guest trapped".to_owned()
                    } else {
                        format!("the guest trapped; its stderr ended with:\n{printed}")
                    };
                    Err(anyhow::Error::from(e).context(why))
                }
            },
        };
        // The run returns once the engines have freed what the store held.
        self.models.quiesce();
        let exit_code = ended?;
        let mut output = Output { exit_code, ..Output::default() };
        if let Some((out, err)) = captured {
            output.stdout = String::from_utf8_lossy(&out.contents()).into_owned();
            output.stderr = String::from_utf8_lossy(&err.contents()).into_owned();
        }
        Ok(output)
    }

    /// Whether `component` is a WASI 0.3 command: it exports
    /// `wasi:cli/run@0.3.x` (any patch release, as wasmtime links them).
    fn is_p3(&self, component: &Component) -> bool {
        exports(&self.engine, component, p3::RUN_EXPORT)
    }

    /// Run a core module's `_start` with WASI preview 1 and WasmEdge's GGML
    /// ABI, under the same fences as a component.
    fn run_module(
        &self,
        guest: &Guest,
        module: &Module,
        wasi: WasiP1Ctx,
        console: Console,
    ) -> wasmtime::Result<Result<(), ()>> {
        let settings = self.wasmedge.clone();
        let mut store = self.fenced(guest, |access, limits| ModuleState {
            wasi,
            nn: WasmEdgeCtx::new(access, settings, console),
            limits,
        });
        let instance = self.linker_module.instantiate(&mut store, module)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ()).map(Ok)
    }

    /// Run a WASI 0.3 command's async `run` on a tokio runtime of this thread:
    /// its tasks, streams and host futures all advance inside one
    /// `run_concurrent`. Epochs interrupt only running guest code, and a p3
    /// guest mostly waits in host futures, so `guest-seconds` is also a
    /// timeout around the whole run (wasmtime's advice: a timeout inside
    /// `run_concurrent` may not fire).
    fn run_p3(&self, component: &Component, store: &mut Store<HostState>) -> wasmtime::Result<Result<(), ()>> {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let limit = self.guest_seconds().map_or(Duration::MAX, Duration::from_secs_f64);
        tokio.block_on(async {
            let command = P3Command::instantiate_async(&mut *store, component, &self.linker_p3).await?;
            let run = store.run_concurrent(async |a| command.wasi_cli_run().call_run(a).await);
            match tokio::time::timeout(limit, run).await {
                Ok(ran) => ran?,
                Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)),
            }
        })
    }
}

/// Whether `component` exports an interface of `family` (`"wasi:cli/run@0.3."`):
/// a name is matched on its semver track, as wasmtime's linker matches them,
/// so a guest built on WASI 0.3.2's bindings runs on this host's 0.3.0.
pub(crate) fn exports(engine: &Engine, component: &Component, family: &str) -> bool {
    component.component_type().exports(engine).any(|(name, _)| name.starts_with(family))
}

/// Base wasi-nn and the extension's 0.1.x interfaces, as both linkers serve them.
fn add_llm_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_nn::wit::add_to_linker(linker, |s: &mut HostState| WasiNnView::new(&mut s.table, &mut s.nn))?;
    crate::wit::add_to_linker(linker, llm_view)
}

fn llm_view(s: &mut HostState) -> LlmView<'_> {
    LlmView::new(&mut s.table, &mut s.llm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trapped_guests_stderr_is_kept_from_a_line_start() {
        assert_eq!(last_lines(b"panicked at src/main.rs:3:5:\nboom\n"), "panicked at src/main.rs:3:5:\nboom");
        let long = format!("{}\nthe last words\n", "x".repeat(TRAP_STDERR_TAIL * 2));
        assert_eq!(last_lines(long.as_bytes()), "the last words");
        assert_eq!(last_lines(b""), "");
    }
}
