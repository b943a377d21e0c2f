//! `wasi-nn-stock-host [--graph DIR]... COMPONENT [ARGS...]`: run a
//! wasm32-wasip2 command on wasmtime 48's own wasi-nn implementation, as
//! `wasmtime run -S nn -S nn-graph=onnx::DIR` sets it up: the ONNX backend
//! (onnxruntime from `ORT_DYLIB_PATH`), each `--graph DIR` preloaded for
//! `load-by-name` under the directory's name (DIR/model.onnx).
//!
//! This is the second, independent host of the base wasi-nn conformance
//! suite (`tests/spec/base`): nothing of this project sits between the
//! guest and wasmtime-wasi-nn. A panic in wasmtime-wasi-nn is left to end
//! the process, as it ends `wasmtime run`: the suite records it.

use std::process::ExitCode;

use anyhow::{Context, bail};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: WasiNnCtx,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("wasi-nn-stock-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let mut args = std::env::args().skip(1).peekable();
    let mut graphs = Vec::new();
    while args.peek().is_some_and(|a| a == "--graph") {
        args.next();
        graphs.push(("onnx".to_owned(), args.next().context("--graph needs a directory")?));
    }
    let Some(component) = args.next() else { bail!("usage: wasi-nn-stock-host [--graph DIR]... COMPONENT [ARGS...]") };
    let argv: Vec<String> = std::iter::once(component.clone()).chain(args).collect();

    let engine = Engine::default();
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |h: &mut Host| WasiNnView::new(&mut h.table, &mut h.nn))?;
    let (backends, registry) = wasmtime_wasi_nn::preload(&graphs)?;
    let host = Host {
        wasi: WasiCtxBuilder::new().inherit_stdio().args(&argv).build(),
        table: ResourceTable::new(),
        nn: WasiNnCtx::new(backends, registry),
    };
    let mut store = Store::new(&engine, host);
    let component = Component::from_file(&engine, &component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {component}"))?;
    let command = Command::instantiate(&mut store, &component, &linker)?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(anyhow::Error::from(e).context("the guest trapped")),
        },
    }
}
