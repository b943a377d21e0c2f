//! Running the benchmark guest (`benches/guest`) in this process's host and
//! reading its JSON lines.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use wasi_nn_llm_host::runner::Guest as Compiled;
use wasi_nn_llm_host::runner::{Preopen, Runtime, Stdio};

/// Where the guest sees the model cache (shared read-only, for the
/// tensor-mode guest's tokenizer).
pub const GUEST_MODELS: &str = "models";

pub struct Guest {
    pub runtime: Runtime,
    component: Compiled,
    models: Preopen,
}

impl Guest {
    pub fn new(runtime: Runtime, wasm: &Path, model_dir: PathBuf) -> Result<Self> {
        let component = runtime.load(wasm)?;
        Ok(Self {
            runtime,
            component,
            models: Preopen { host: model_dir, guest: GUEST_MODELS.into(), writable: false },
        })
    }

    /// Run one command in a fresh instance; its JSON lines.
    pub fn run(&self, args: &[&str]) -> Result<Vec<Value>> {
        self.run_in(&self.component, args)
    }

    /// Compile another guest for [`run_in`](Self::run_in) (the p3 bench guest).
    pub fn load(&self, wasm: &Path) -> Result<Compiled> {
        self.runtime.load(wasm)
    }

    /// Run one command of `component` in a fresh instance; its JSON lines.
    pub fn run_in(&self, component: &Compiled, args: &[&str]) -> Result<Vec<Value>> {
        json_lines(&self.runtime, component, "bench-guest", args, std::slice::from_ref(&self.models))
    }

    /// Run another component (an example guest) on `stdin`; what it printed
    /// on stderr (where the examples report their speed).
    pub fn run_other(&self, wasm: &Path, args: &[&str], stdin: &str) -> Result<String> {
        let component = self.runtime.load(wasm)?;
        let name = wasm.file_name().map_or("guest".into(), |n| n.to_string_lossy().into_owned());
        let argv: Vec<String> = std::iter::once(name.as_str()).chain(args.iter().copied()).map(String::from).collect();
        let out = self
            .runtime
            .run(&component, &argv, Stdio::Captured { stdin: stdin.as_bytes().to_vec() }, &[])
            .with_context(|| format!("running {name}"))?;
        if out.exit_code != 0 {
            bail!("{name} failed ({}): {}", out.exit_code, out.stderr.trim());
        }
        Ok(out.stderr)
    }

    /// Run one command in each of `n` instances at once, one host thread each.
    pub fn run_parallel(&self, n: usize, args: &[&str]) -> Result<Vec<Vec<Value>>> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..n).map(|_| scope.spawn(|| self.run(args))).collect();
            runs.into_iter().map(|r| r.join().map_err(|_| anyhow::anyhow!("a guest thread panicked"))?).collect()
        })
    }
}

/// Run `component` under `runtime` in a fresh instance, its argv `name` and
/// `args`, with `dirs` preopened; the JSON lines it printed.
pub fn json_lines(
    runtime: &Runtime,
    component: &Compiled,
    name: &str,
    args: &[&str],
    dirs: &[Preopen],
) -> Result<Vec<Value>> {
    let argv: Vec<String> = std::iter::once(name).chain(args.iter().copied()).map(String::from).collect();
    let out = runtime
        .run(component, &argv, Stdio::Captured { stdin: Vec::new() }, dirs)
        .with_context(|| format!("running {name} {}", args.first().unwrap_or(&"")))?;
    if out.exit_code != 0 {
        bail!("{name} {:?} failed ({}): {}", args.first(), out.exit_code, out.stderr.trim());
    }
    out.stdout.lines().map(|l| serde_json::from_str(l).with_context(|| format!("{name} printed {l:?}"))).collect()
}

/// A number from a guest line.
pub fn f64_of(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("{key:?} missing in {v}"))
}

/// A list of numbers from a guest line.
pub fn f64s_of(v: &Value, key: &str) -> Result<Vec<f64>> {
    v[key]
        .as_array()
        .with_context(|| format!("{key:?} missing in {v}"))?
        .iter()
        .map(|x| x.as_f64().with_context(|| format!("{key:?} holds {x}")))
        .collect()
}
