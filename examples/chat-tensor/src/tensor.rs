//! Base wasi-nn's tensor convention, from the guest's side: `tokens` (i32,
//! the whole sequence) in, `logits` (f32, one per vocabulary entry) out.

use wasi_nn_llm::raw::wasi::nn::errors::Error;
use wasi_nn_llm::raw::wasi::nn::graph::{self, Graph};
use wasi_nn_llm::raw::wasi::nn::inference::GraphExecutionContext;
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};

/// A graph loaded by name and one execution context on it.
pub struct TensorModel {
    // Field order: the context must drop before its graph.
    exec: GraphExecutionContext,
    graph: Graph,
}

fn describe(e: Error) -> String {
    format!("wasi-nn {:?}: {}", e.code(), e.data())
}

impl TensorModel {
    /// Load the model the operator registered as `name`.
    pub fn load(name: &str) -> Result<Self, String> {
        let graph = graph::load_by_name(name).map_err(describe)?;
        let exec = graph.init_execution_context().map_err(describe)?;
        Ok(Self { exec, graph })
    }

    /// Replace the execution context with a new one (dropping what the host
    /// kept for the old one).
    pub fn reset(&mut self) -> Result<(), String> {
        self.exec = self.graph.init_execution_context().map_err(describe)?;
        Ok(())
    }

    /// The logits for the token after `tokens`: one compute.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, String> {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
        let input = Tensor::new(&[tokens.len() as u32], TensorType::I32, &bytes);
        let outputs = self.exec.compute(vec![("tokens".into(), input)]).map_err(describe)?;
        let (_, logits) =
            outputs.into_iter().find(|(name, _)| name == "logits").ok_or("compute returned no \"logits\" tensor")?;
        let data = logits.data();
        if logits.ty() != TensorType::Fp32 || data.len() % 4 != 0 {
            return Err(format!("\"logits\" is {:?} over {} bytes, expected f32", logits.ty(), data.len()));
        }
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// The greedy choice: the first index of the largest logit (llama.cpp's
/// greedy sampler breaks ties the same way).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}
