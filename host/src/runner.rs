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
//! The exception is a WASIp3 guest (one exporting [`p3::RUN_EXPORT`]):
//! its streams are component-model streams, which only an async store
//! drives, so it gets a second linker (WASI on its async bindings) and runs
//! inside `run_concurrent` on a tokio runtime of its own thread. Both
//! linkers serve the same extension implementation on the same engines,
//! under the same policy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

use crate::backend::ggml;
use crate::engine::Quota;
use crate::p3;
use crate::policy::{Identity, Policy};
use crate::registry::{Access, Models};
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
    /// The guest's exit status (1 for a trap).
    pub exit_code: i32,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error (and the trap's message), lossily decoded.
    pub stderr: String,
}

/// The wasmtime side of the host, shared by every guest instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// For WASIp3 guests: async WASI, base wasi-nn, the extension's 0.1.x
    /// interfaces and the draft session.
    linker_p3: Linker<HostState>,
    models: Arc<Models>,
    policy: Arc<Policy>,
}

/// A compiled guest and who it is (what the policy's grants name).
pub struct Guest {
    /// The compiled component.
    pub component: Component,
    /// Its file name and digest.
    pub identity: Identity,
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
        add_llm_to_linker(&mut linker_p3)?;
        p3::add_to_linker(&mut linker_p3, llm_view)?;
        Ok(Self { engine, linker, linker_p3, models, policy })
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
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("no such file: {shown}"),
            Err(e) => anyhow::bail!("{shown} cannot be read: {e}"),
        };
        if !bytes.starts_with(b"\0asm") {
            anyhow::bail!("{shown} is not WebAssembly (a component starts with \"\\0asm\")");
        }
        if !wasmparser::Parser::is_component(&bytes) {
            anyhow::bail!("{shown} is a core WebAssembly module, not a component: build the guest for wasm32-wasip2");
        }
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&bytes)
            .map_err(|e| anyhow::anyhow!("{shown} is not a valid component: {e}"))?;
        Ok(())
    }

    /// Compile a guest component (a `wasm32-wasip2` command).
    pub fn load(&self, path: &Path) -> anyhow::Result<Guest> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {}", path.display()))?;
        Ok(Guest { component, identity: Identity::of(path, &bytes) })
    }

    /// A guest linked against this host's interfaces, ready to instantiate
    /// once per request without compiling or linking again.
    pub fn instance_pre(&self, guest: &Guest) -> anyhow::Result<InstancePre<HostState>> {
        Ok(self.linker.instantiate_pre(&guest.component)?)
    }

    /// A fresh store for one instance of `guest`, inside the policy's fences
    /// (models, quota, memory, wall time), its WASI given by `wasi`.
    pub fn store(&self, guest: &Guest, wasi: WasiCtx) -> Store<HostState> {
        let limits = &self.policy.limits;
        let access = Access::new(&self.models, &self.policy, &guest.identity, Quota::new(limits.quota()));
        let mut memory = StoreLimitsBuilder::new();
        if let Some(bytes) = limits.guest_memory_bytes {
            memory = memory.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: NoOutgoingHttp,
            nn: WasiNnCtx::new([ggml::backend()], access.nn_registry()),
            llm: LlmCtx::new(access),
            limits: memory.build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = limits.guest_seconds.map_or(u64::MAX / 2, |s| (s / EPOCH_TICK.as_secs_f64()).ceil() as u64);
        store.set_epoch_deadline(ticks.max(1));
        store
    }

    /// The policy's `guest-seconds`, for the message when a guest is stopped.
    pub fn guest_seconds(&self) -> Option<f64> {
        self.policy.limits.guest_seconds
    }

    /// Run a guest to completion in a fresh instance: a `wasi:cli` command,
    /// or a WASIp3 guest (one exporting [`p3::RUN_EXPORT`]).
    pub fn run(&self, guest: &Guest, args: &[String], stdio: Stdio, dirs: &[Preopen]) -> anyhow::Result<Output> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args);
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
        let mut store = self.store(guest, wasi.build());
        let ended = if self.is_p3(guest) {
            self.run_p3(guest, &mut store)
        } else {
            Command::instantiate(&mut store, &guest.component, &self.linker)
                .and_then(|command| command.wasi_cli_run().call_run(&mut store))
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
                _ => Err(anyhow::Error::from(e).context("the guest trapped")),
            },
        };
        // However it ended, dropping the store drops the guest's sessions and
        // streams, which frees their KV sequences; the run returns once the
        // engines have done so.
        drop(store);
        self.models.quiesce();
        let exit_code = ended?;
        let mut output = Output { exit_code, ..Output::default() };
        if let Some((out, err)) = captured {
            output.stdout = String::from_utf8_lossy(&out.contents()).into_owned();
            output.stderr = String::from_utf8_lossy(&err.contents()).into_owned();
        }
        Ok(output)
    }

    /// Whether `guest` is a WASIp3 guest (exports the draft's `run`).
    fn is_p3(&self, guest: &Guest) -> bool {
        guest.component.component_type().exports(&self.engine).any(|(name, _)| name == p3::RUN_EXPORT)
    }

    /// Run a WASIp3 guest's async `run` on a tokio runtime of this thread:
    /// its tasks, streams and host futures all advance inside one
    /// `run_concurrent`. Epochs interrupt only running guest code, and a p3
    /// guest mostly waits in host futures, so `guest-seconds` is also a
    /// timeout around the whole run (wasmtime's advice: a timeout inside
    /// `run_concurrent` may not fire).
    fn run_p3(&self, guest: &Guest, store: &mut Store<HostState>) -> wasmtime::Result<Result<(), ()>> {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let limit = self.guest_seconds().map_or(Duration::MAX, Duration::from_secs_f64);
        tokio.block_on(async {
            let llm = p3::bindings::Llm::instantiate_async(&mut *store, &guest.component, &self.linker_p3).await?;
            let run = store.run_concurrent(async |a| llm.wasi_nn_llm_llm0_2_0_draft_run().call_run(a).await);
            match tokio::time::timeout(limit, run).await {
                Ok(ran) => ran?,
                Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)),
            }
        })
    }
}

/// Base wasi-nn and the extension's 0.1.x interfaces, as both linkers serve them.
fn add_llm_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_nn::wit::add_to_linker(linker, |s: &mut HostState| WasiNnView::new(&mut s.table, &mut s.nn))?;
    crate::wit::add_to_linker(linker, llm_view)
}

fn llm_view(s: &mut HostState) -> LlmView<'_> {
    LlmView::new(&mut s.table, &mut s.llm)
}
