//! The operator's model registry: the only way a model reaches a guest.
//!
//! The operator maps names to GGUF files (`--model NAME=PATH`, or a catalog
//! name); guests ask for a name with wasi:nn `load-by-name` and never see or
//! supply a host path. Every model is loaded once, at start-up, and shared by
//! every guest instance.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use wasmtime_wasi_nn::{Graph, GraphRegistry, Registry};

use crate::backend::ggml;
use crate::catalog;
use crate::engine::{Engine, EngineConfig};

/// One `--model` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
}

impl ModelSpec {
    /// `NAME=PATH`, or a catalog name (fetched and cached on first use).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        if let Some((name, path)) = spec.split_once('=') {
            if name.is_empty() || path.is_empty() {
                bail!("--model wants NAME=PATH or a catalog name, got {spec:?}");
            }
            return Ok(Self { name: name.to_owned(), path: PathBuf::from(path) });
        }
        let known = || catalog::MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ");
        let entry = catalog::find(spec)
            .with_context(|| format!("{spec:?} is neither NAME=PATH nor a catalog model ({})", known()))?;
        Ok(Self { name: spec.to_owned(), path: entry.ensure()? })
    }
}

struct Entry {
    engine: Engine,
    graph: Graph,
}

/// The loaded models, shared by all guest instances.
pub struct Models {
    entries: Vec<Entry>,
}

impl Models {
    /// Load every model once; fails on the first that cannot be loaded.
    pub fn load(specs: &[ModelSpec], config: &EngineConfig) -> anyhow::Result<Arc<Self>> {
        let mut entries: Vec<Entry> = Vec::new();
        for spec in specs {
            if entries.iter().any(|e| e.engine.name() == spec.name) {
                bail!("model name {:?} is registered twice", spec.name);
            }
            let engine = Engine::load(&spec.name, &spec.path, config)?;
            let graph = ggml::graph(engine.clone());
            entries.push(Entry { engine, graph });
        }
        Ok(Arc::new(Self { entries }))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.engine.name())
    }

    pub fn engine(&self, name: &str) -> Option<&Engine> {
        self.entries.iter().find(|e| e.engine.name() == name).map(|e| &e.engine)
    }

    /// The engine behind a wasi:nn graph a guest holds.
    ///
    /// wasmtime-wasi-nn's `Graph` is opaque (an `Arc<dyn BackendGraph>` with no
    /// `Any`), so the extension recognises graphs by identity: every graph a
    /// guest can hold is a clone of one registered here (raw-bytes `load` is
    /// refused), and clones share the `Arc`'s address. Upstream finding: a
    /// `BackendGraph::as_any` would make this a downcast.
    pub fn engine_for(&self, graph: &Graph) -> Option<&Engine> {
        self.entries.iter().find(|e| std::ptr::addr_eq(&*e.graph, &**graph)).map(|e| &e.engine)
    }

    /// A wasi:nn registry view for one guest instance's `WasiNnCtx`.
    pub fn nn_registry(self: &Arc<Self>) -> Registry {
        Registry::from(NnRegistry(self.clone()))
    }
}

struct NnRegistry(Arc<Models>);

impl GraphRegistry for NnRegistry {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.entries.iter().find(|e| e.engine.name() == name).map(|e| &e.graph)
    }

    /// Graphs are shared by every guest; none may change one.
    fn get_mut(&mut self, _name: &str) -> Option<&mut Graph> {
        None
    }
}
