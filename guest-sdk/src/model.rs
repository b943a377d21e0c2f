//! A model from the operator's registry.

use crate::raw::wasi::nn::graph::{self, Graph};
use crate::raw::wasi_nn_llm::llm::model as llm_model;
use crate::{Error, Message};

/// A loaded model: a wasi:nn graph the extension can open sessions on.
pub struct Model {
    graph: Graph,
}

impl Model {
    /// Load a model the host registered under `name`.
    ///
    /// ```no_run
    /// let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn load(name: &str) -> Result<Self, Error> {
        Ok(Self { graph: graph::load_by_name(name)? })
    }

    /// The underlying wasi:nn graph, for base wasi-nn calls.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Render messages with the model's own chat template.
    pub fn apply_chat_template(&self, messages: &[Message], add_assistant_turn: bool) -> Result<String, Error> {
        Ok(llm_model::apply_chat_template(&self.graph, messages, add_assistant_turn)?)
    }
}
