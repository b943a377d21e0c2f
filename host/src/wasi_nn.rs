//! Base wasi-nn's front door: the `ggml` graph encoding served through
//! wasmtime-wasi-nn's public backend traits (so the extension is shown to
//! layer on the stock wasi-nn host), by the same engine as the extension.
//!
//! The spec is tensor-only, so an LLM is run by one of two conventions:
//!
//! - **text**: `compute` takes a `prompt` tensor (u8, UTF-8 text) and an
//!   optional `params` tensor (u8, JSON object of [`GenerateParams`] fields,
//!   unknown keys refused) and returns a `text` tensor (u8, UTF-8). Every
//!   compute is stateless: it opens a session, prefills the whole prompt,
//!   generates, and closes it, so a chat re-sends and re-evaluates its whole
//!   history every turn.
//! - **tensor** (the spec's own way): `compute` takes a `tokens` tensor (i32,
//!   the whole sequence so far) and returns a `logits` tensor (f32, one per
//!   vocabulary entry) for the next token; the guest tokenizes and samples
//!   itself, one compute per token. The result depends only on the input,
//!   but the execution context keeps the sequence it evaluated last and
//!   reuses the longest common prefix, so re-sending the sequence costs a
//!   transfer, not a re-evaluation. Such a context holds one of the model's
//!   session slots until it is dropped.
//!
//! wasmtime-wasi-nn gives a backend no way to choose the wasi:nn error code,
//! nor to explain itself: every backend failure reaches the guest as
//! `runtime-error` whose data is only "Failed while accessing backend" (the
//! crate renders the error's outer message and drops its source, where our
//! typed [`LlmError`] sits). Upstream findings, both; the extension's typed
//! errors are the answer we propose.

use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendFromDir, BackendGraph, BackendInner, Id, NamedTensor,
};
use wasmtime_wasi_nn::wit::{ExecutionTarget, GraphEncoding, TensorType};
use wasmtime_wasi_nn::{Backend, ExecutionContext, Graph, Tensor};

use std::sync::Arc;

use crate::engine::{Engine, GenerateParams, Quota, Session, SessionOptions};
use crate::error::LlmError;
use crate::policy::Interfaces;

/// Text convention: the input holding the prompt (u8, UTF-8).
pub const PROMPT: &str = "prompt";
/// Text convention: the optional input holding the sampling parameters (u8, JSON).
pub const PARAMS: &str = "params";
/// Text convention: the output holding the reply (u8, UTF-8).
pub const TEXT: &str = "text";
/// Tensor convention: the input holding the whole sequence's token ids (i32).
pub const TOKENS: &str = "tokens";
/// Tensor convention: the output holding the next token's logits (f32).
pub const LOGITS: &str = "logits";

/// The backend registered for `graph-encoding::ggml`.
pub fn backend() -> Backend {
    Backend::from(GgmlBackend)
}

/// The wasi:nn graph `load-by-name` hands one guest instance for a model it
/// may use: its contexts count against the instance's `quota`, and only the
/// conventions the policy opens are served.
pub fn graph(engine: Engine, quota: Arc<Quota>, interfaces: &Interfaces) -> Graph {
    let graph = LlmGraph { engine, quota, text: interfaces.wasi_nn_text, tensor: interfaces.wasi_nn_tensor };
    Graph::from(Box::new(graph) as Box<dyn BackendGraph>)
}

/// The graph for a model the policy denies this instance: it exists (so the
/// guest learns why, not just "not found"), and every use is refused.
pub fn denied(why: String) -> Graph {
    Graph::from(Box::new(DeniedGraph(why)) as Box<dyn BackendGraph>)
}

struct DeniedGraph(String);

impl BackendGraph for DeniedGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        Err(fail(LlmError::NotPermitted(self.0.clone())))
    }
}

/// Every error this backend returns to a guest passes here, so this is
/// where they are logged, as the extension logs its own: an engine failure
/// is the host's fault (a warning), the rest the guest's (debug level;
/// wasmtime-wasi-nn's glue would log each as an ERROR, which the CLI
/// silences, see its `log_filter`).
fn fail(e: LlmError) -> BackendError {
    match &e {
        LlmError::EngineFailure(_) => tracing::warn!(error = %e, "a base wasi-nn call fails"),
        _ => tracing::debug!(error = %e, "a base wasi-nn call returns an error to the guest"),
    }
    BackendError::BackendAccess(wasmtime::format_err!("{e}"))
}

struct GgmlBackend;

impl BackendInner for GgmlBackend {
    fn encoding(&self) -> GraphEncoding {
        GraphEncoding::Ggml
    }

    /// Guests may not bring their own weights: models come from the operator's registry.
    fn load(&mut self, _builders: &[&[u8]], _target: ExecutionTarget) -> Result<Graph, BackendError> {
        Err(fail(LlmError::NotPermitted(
            "loading a model from guest bytes is refused; use load-by-name with a model the host operator registered"
                .into(),
        )))
    }

    fn as_dir_loadable(&mut self) -> Option<&mut dyn BackendFromDir> {
        None
    }
}

struct LlmGraph {
    engine: Engine,
    quota: Arc<Quota>,
    text: bool,
    tensor: bool,
}

impl BackendGraph for LlmGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        if !self.text && !self.tensor {
            return Err(fail(LlmError::NotPermitted("the host's policy closes base wasi-nn".into())));
        }
        let exec = LlmExecution {
            engine: self.engine.clone(),
            quota: self.quota.clone(),
            text: self.text,
            tensor: self.tensor,
            tensor_session: None,
        };
        Ok(ExecutionContext::from(Box::new(exec) as Box<dyn BackendExecutionContext>))
    }
}

struct LlmExecution {
    engine: Engine,
    quota: Arc<Quota>,
    /// Which conventions the policy opens.
    text: bool,
    tensor: bool,
    /// The tensor convention's sequence, kept for prefix reuse.
    tensor_session: Option<Session>,
}

impl LlmExecution {
    fn run(&mut self, mut inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, LlmError> {
        if inputs.len() == 1
            && inputs[0].name == TOKENS
            && let Some(NamedTensor { tensor, .. }) = inputs.pop()
        {
            if !self.tensor {
                return Err(LlmError::NotPermitted("the host's policy closes base wasi-nn's tensor convention".into()));
            }
            return self.logits(tensor);
        }
        if !self.text {
            return Err(LlmError::NotPermitted("the host's policy closes base wasi-nn's text convention".into()));
        }
        let mut prompt = None;
        let mut params = GenerateParams::default();
        for NamedTensor { name, tensor } in inputs {
            match name.as_str() {
                PROMPT => prompt = Some(utf8_tensor(PROMPT, tensor)?),
                PARAMS => {
                    let json = utf8_tensor(PARAMS, tensor)?;
                    params = serde_json::from_str(&json)
                        .map_err(|e| LlmError::invalid(format!("params tensor is not valid params JSON: {e}")))?;
                }
                other => {
                    return Err(LlmError::invalid(format!(
                        "unknown input tensor {other:?}; expected {PROMPT:?} and optionally {PARAMS:?}, or {TOKENS:?} alone"
                    )));
                }
            }
        }
        let prompt = prompt.ok_or_else(|| LlmError::invalid(format!("the {PROMPT:?} input tensor is missing")))?;
        if prompt.is_empty() {
            return Err(LlmError::invalid("the prompt is empty"));
        }

        let session = self.engine.open_session(&SessionOptions::default(), &self.quota)?;
        session.append(&prompt)?;
        let mut stream = session.generate(&params)?;
        let mut text = String::new();
        while let Some(chunk) = stream.next_chunk()? {
            text.push_str(&chunk.text);
        }
        let bytes = text.into_bytes();
        let tensor = Tensor::new(vec![bytes.len() as u32], TensorType::U8, bytes);
        Ok(vec![NamedTensor { name: TEXT.into(), tensor }])
    }
}

impl LlmExecution {
    /// Tensor convention: logits for the token after `tokens`.
    fn logits(&mut self, tokens: Tensor) -> Result<Vec<NamedTensor>, LlmError> {
        if tokens.ty != TensorType::I32 {
            return Err(LlmError::invalid(format!("tensor {TOKENS:?} must be i32 token ids, got {:?}", tokens.ty)));
        }
        let n = tokens.data.len() / 4;
        if !tokens.data.len().is_multiple_of(4) || tokens.dimensions != [n as u32] || n == 0 {
            return Err(LlmError::invalid(format!(
                "tensor {TOKENS:?} must be a non-empty 1-D list of i32 with dimensions [{n}], got {:?} over {} bytes",
                tokens.dimensions,
                tokens.data.len()
            )));
        }
        // Negative ids become huge u32s, which the vocabulary check refuses.
        let ids: Vec<u32> =
            tokens.data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32).collect();
        let session = match &mut self.tensor_session {
            Some(s) => s,
            none => none.insert(self.engine.open_session(&SessionOptions::default(), &self.quota)?),
        };
        // Keep the common prefix, evaluate the rest; the last token is always
        // evaluated anew, since its logits are what is asked for.
        session.set_tokens(&ids)?;
        let logits = session.logits()?;
        let bytes: Vec<u8> = logits.iter().flat_map(|l| l.to_le_bytes()).collect();
        let tensor = Tensor::new(vec![logits.len() as u32], TensorType::Fp32, bytes);
        Ok(vec![NamedTensor { name: LOGITS.into(), tensor }])
    }
}

/// A 1-D u8 tensor holding UTF-8 text.
fn utf8_tensor(name: &str, tensor: Tensor) -> Result<String, LlmError> {
    if tensor.ty != TensorType::U8 {
        return Err(LlmError::invalid(format!("tensor {name:?} must be u8 (UTF-8 bytes), got {:?}", tensor.ty)));
    }
    if tensor.dimensions != [tensor.data.len() as u32] {
        return Err(LlmError::invalid(format!(
            "tensor {name:?} must have dimensions [{}] (its byte length), got {:?}",
            tensor.data.len(),
            tensor.dimensions
        )));
    }
    String::from_utf8(tensor.data).map_err(|e| LlmError::invalid(format!("tensor {name:?} is not valid UTF-8: {e}")))
}

impl BackendExecutionContext for LlmExecution {
    fn set_input(&mut self, _id: Id, _tensor: &Tensor) -> Result<(), BackendError> {
        Err(fail(LlmError::Unsupported("the witx (wasi-nn 0.1) interface is not served; use the WIT compute".into())))
    }

    fn get_output(&mut self, _id: Id) -> Result<Tensor, BackendError> {
        Err(fail(LlmError::Unsupported("the witx (wasi-nn 0.1) interface is not served; use the WIT compute".into())))
    }

    fn compute(&mut self, inputs: Option<Vec<NamedTensor>>) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let inputs = inputs
            .ok_or_else(|| fail(LlmError::Unsupported("compute without named inputs (witx) is not served".into())))?;
        self.run(inputs).map(Some).map_err(fail)
    }
}
