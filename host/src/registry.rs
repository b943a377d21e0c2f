//! The operator's model registry: the only way a model reaches a guest.
//!
//! The operator maps names to GGUF files (`--model NAME=PATH`, a catalog
//! name, or a policy file); guests ask for a name with wasi:nn
//! `load-by-name` and never see or supply a host path. Every model is loaded
//! once, at start-up, and shared by every guest instance; what one instance
//! may reach of them ([`Access`]) follows the policy.

use std::sync::Arc;

use anyhow::bail;
use wasmtime_wasi_nn::{Graph, GraphRegistry, Registry};

use crate::catalog::ModelSpec;
use crate::engine::{Engine, EngineConfig, Namespace, Quota};
use crate::error::LlmError;
use crate::policy::{Identity, Interfaces, Policy};
use crate::wasi_nn;

/// The loaded models, shared by all guest instances.
pub struct Models {
    engines: Vec<Engine>,
}

impl Models {
    /// Load every model once; fails on the first that cannot be loaded.
    pub fn load(specs: &[ModelSpec], config: &EngineConfig) -> anyhow::Result<Arc<Self>> {
        let mut engines: Vec<Engine> = Vec::new();
        for spec in specs {
            if engines.iter().any(|e| e.name() == spec.name) {
                bail!("model name {:?} is registered twice", spec.name);
            }
            let mut config = config.clone();
            config.gpu_layers = spec.gpu_layers.or(config.gpu_layers);
            config.ctx_size = spec.context.unwrap_or(config.ctx_size);
            config.flash_attn = spec.flash_attn.unwrap_or(config.flash_attn);
            config.backend = spec.backend.unwrap_or(config.backend);
            config.speculation.mode = spec.speculation.unwrap_or(config.speculation.mode);
            config.speculation.draft_max = spec.draft_max.unwrap_or(config.speculation.draft_max);
            if let Some(file) = &spec.chat_template {
                let template = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("model {:?}: cannot read the chat template {}: {e}", spec.name, file.display())
                })?;
                config.chat_template = Some(template);
            }
            engines.push(Engine::load(&spec.name, &spec.path, &config)?);
        }
        Ok(Arc::new(Self { engines }))
    }

    /// The registered names, in load order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.engines.iter().map(|e| e.name())
    }

    /// The model registered as `name`.
    pub fn engine(&self, name: &str) -> Option<&Engine> {
        self.engines.iter().find(|e| e.name() == name)
    }

    /// Wait until every engine has handled what was sent to it so far.
    pub fn quiesce(&self) {
        self.engines.iter().for_each(Engine::quiesce);
    }
}

impl Drop for Models {
    /// The conversations a prefix cache keeps hold their engine: let them
    /// go, so the engines (their contexts and threads) go with the models.
    fn drop(&mut self) {
        self.engines.iter().for_each(Engine::clear_cache);
    }
}

/// What one guest instance can reach: every registered model as a wasi:nn
/// graph, either bound to an engine and the instance's quota, or denied by
/// the policy (so using it answers `not-permitted`, naming the model).
pub struct Access {
    entries: Vec<Reach>,
    quota: Arc<Quota>,
    interfaces: Interfaces,
    /// Whose entries of the prefix caches this instance may continue from.
    namespace: Namespace,
}

struct Reach {
    name: String,
    graph: Graph,
    engine: Result<Engine, String>,
}

impl Access {
    /// What `guest` may reach of `models` under `policy`, its sessions
    /// counted against `quota`.
    pub fn new(models: &Models, policy: &Policy, guest: &Identity, quota: Arc<Quota>) -> Arc<Self> {
        let interfaces = policy.interfaces.clone();
        let entries = models
            .engines
            .iter()
            .map(|engine| {
                let name = engine.name().to_owned();
                if policy.permits(guest, &name) {
                    let graph = wasi_nn::graph(engine.clone(), quota.clone(), &interfaces);
                    Reach { name, graph, engine: Ok(engine.clone()) }
                } else {
                    let why = format!("the host's policy does not let component {:?} use model {name:?}", guest.name);
                    Reach { name, graph: wasi_nn::denied(why.clone()), engine: Err(why) }
                }
            })
            .collect();
        Arc::new(Self { entries, quota, interfaces, namespace: Namespace(guest.digest.clone()) })
    }

    /// The models the policy lets this instance use, in load order.
    pub fn permitted(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter(|e| e.engine.is_ok()).map(|e| e.name.as_str())
    }

    /// The instance's namespace in the prefix caches: its component's digest,
    /// so one component never continues another's conversation.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The engine of the model registered as `name`: `None` if there is
    /// none, `not-permitted` if the policy denies it to this instance (for
    /// doors that name models directly rather than through a wasi:nn graph).
    pub fn engine_named(&self, name: &str) -> Option<Result<&Engine, LlmError>> {
        let reach = self.entries.iter().find(|e| e.name == name)?;
        Some(reach.engine.as_ref().map_err(|why| LlmError::NotPermitted(why.clone())))
    }

    /// Which front doors the policy opens.
    pub fn interfaces(&self) -> &Interfaces {
        &self.interfaces
    }

    /// This instance's quota.
    pub fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    /// The engine behind a wasi:nn graph the guest holds, if the extension
    /// is open and the model is permitted.
    ///
    /// wasmtime-wasi-nn's `Graph` is opaque (an `Arc<dyn BackendGraph>` with no
    /// `Any`), so the extension recognises graphs by identity: every graph a
    /// guest can hold is a clone of one made here (raw-bytes `load` is
    /// refused), and clones share the `Arc`'s address. Upstream finding: a
    /// `BackendGraph::as_any` would make this a downcast.
    pub fn engine_for(&self, graph: &Graph) -> Result<&Engine, LlmError> {
        if !self.interfaces.extension {
            return Err(LlmError::NotPermitted("the host's policy closes the LLM extension".into()));
        }
        let reach =
            self.entries.iter().find(|e| std::ptr::addr_eq(&*e.graph, &**graph)).ok_or_else(|| {
                LlmError::UnsupportedGraph("this graph was not loaded by the host's LLM engine".into())
            })?;
        reach.engine.as_ref().map_err(|why| LlmError::NotPermitted(why.clone()))
    }

    /// A wasi:nn registry view for the instance's `WasiNnCtx`.
    pub fn nn_registry(self: &Arc<Self>) -> Registry {
        Registry::from(NnRegistry(self.clone()))
    }
}

struct NnRegistry(Arc<Access>);

impl GraphRegistry for NnRegistry {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.entries.iter().find(|e| e.name == name).map(|e| &e.graph)
    }

    /// Graphs are shared by the instance's handles; none may change one.
    fn get_mut(&mut self, _name: &str) -> Option<&mut Graph> {
        None
    }
}
