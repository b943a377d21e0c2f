//! Running guest components: one wasmtime engine and linker for the process,
//! one store per guest instance, all instances sharing the loaded models.
//!
//! Host calls are synchronous and every instance runs on its own thread: a
//! guest blocked in `token-stream.next` waits on its own stream buffer while
//! the model's scheduler thread serves everyone else. wasmtime-wasi-nn's
//! host functions are synchronous anyway, so an async host would buy base
//! wasi-nn nothing, and the per-token boundary cost stays at a plain call.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

use crate::backend::ggml;
use crate::registry::Models;
use crate::wit::{LlmCtx, LlmView};

/// Everything one guest instance's store holds; one resource table serves
/// WASI, wasi-nn and the extension alike.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: WasiNnCtx,
    llm: LlmCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Where a guest's standard streams go.
pub enum Stdio {
    /// The host process's own stdin, stdout and stderr.
    Inherit,
    /// Fixed stdin; stdout and stderr captured (tests).
    Captured { stdin: Vec<u8> },
}

/// A host directory the guest may use, the path it sees it at, and whether
/// it may write there.
#[derive(Debug, Clone, PartialEq)]
pub struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
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
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The wasmtime side of the host, shared by every guest instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    models: Arc<Models>,
}

/// Captured streams are bounded so a runaway guest cannot exhaust host memory.
const CAPTURE_LIMIT: usize = 64 << 20;

impl Runtime {
    pub fn new(models: Arc<Models>) -> anyhow::Result<Self> {
        let engine = Engine::new(&Config::new())?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |s: &mut HostState| {
            WasiNnView::new(&mut s.table, &mut s.nn)
        })?;
        crate::wit::add_to_linker(&mut linker, |s: &mut HostState| LlmView::new(&mut s.table, &mut s.llm))?;
        Ok(Self { engine, linker, models })
    }

    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Compile a guest component (a `wasm32-wasip2` command).
    pub fn load(&self, path: &Path) -> anyhow::Result<Component> {
        Component::from_file(&self.engine, path)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {}", path.display()))
    }

    /// Run a command component to completion in a fresh instance.
    pub fn run(
        &self,
        component: &Component,
        args: &[String],
        stdio: Stdio,
        dirs: &[Preopen],
    ) -> anyhow::Result<Output> {
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
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            nn: WasiNnCtx::new([ggml::backend()], self.models.nn_registry()),
            llm: LlmCtx::new(self.models.clone()),
        };
        let mut store = Store::new(&self.engine, state);
        let command = Command::instantiate(&mut store, component, &self.linker)?;
        let exit_code = match command.wasi_cli_run().call_run(&mut store) {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => exit.0,
                None => return Err(anyhow::Error::from(e).context("the guest trapped")),
            },
        };
        // Dropping the store drops the guest's sessions and streams, which
        // frees their KV sequences.
        drop(store);
        let mut output = Output { exit_code, ..Output::default() };
        if let Some((out, err)) = captured {
            output.stdout = String::from_utf8_lossy(&out.contents()).into_owned();
            output.stderr = String::from_utf8_lossy(&err.contents()).into_owned();
        }
        Ok(output)
    }
}
