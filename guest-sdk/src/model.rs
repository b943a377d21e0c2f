//! A model from the operator's registry.

use crate::raw::wasi::nn::graph::{self, Graph};
use crate::raw::wasi_nn_llm::llm::chat;
use crate::raw::wasi_nn_llm::llm::embeddings;
use crate::raw::wasi_nn_llm::llm::model as llm_model;
use crate::{
    ChatMessage, EmbedInput, EmbedOptions, Embedding, Error, Message, ModelIdentity, ModelMetadata, RenderOptions,
    Rendered,
};

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

    /// The names this component may [`load`](Self::load), as the host's
    /// policy grants them (wasi:nn itself cannot list its graphs).
    ///
    /// ```no_run
    /// for name in wasi_nn_llm::Model::list() {
    ///     println!("{name}");
    /// }
    /// ```
    pub fn list() -> Vec<String> {
        llm_model::list_models()
    }

    /// Load the model registered under `name` only if it is the model whose
    /// file has SHA-256 `digest` (hex): a name says nothing about what the
    /// operator put behind it, the digest says exactly which weights serve
    /// this guest. Any other model is [`Error::UnexpectedModel`].
    ///
    /// ```no_run
    /// const SMOLLM2: &str = "0c9e7f4a…"; // sha256sum of the GGUF this guest was tested on
    /// let model = wasi_nn_llm::Model::load_verified("default", SMOLLM2)?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn load_verified(name: &str, digest: &str) -> Result<Self, Error> {
        let model = Self::load(name)?;
        let identity = model.identity()?;
        if !identity.digest.eq_ignore_ascii_case(digest.trim()) {
            return Err(Error::UnexpectedModel { name: name.to_owned(), expected: digest.trim().to_owned(), identity });
        }
        Ok(model)
    }

    /// Which model file and which engine serve this model, as the host
    /// knows them (the file's SHA-256 and size, the backend and its version,
    /// the host, the device).
    ///
    /// ```no_run
    /// let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let id = model.identity()?;
    /// println!("{} on {} {} ({})", id.digest, id.backend, id.backend_version, id.device);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn identity(&self) -> Result<ModelIdentity, Error> {
        Ok(llm_model::model_identity(&self.graph)?)
    }

    /// The optional features the host offers for this model (extension
    /// 0.1.6); whatever is not listed beyond the core is `unsupported`.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// use wasi_nn_llm::Feature;
    /// let params = if model.features()?.contains(&Feature::Gbnf) {
    ///     wasi_nn_llm::Params::greedy().grammar(r#"root ::= "yes" | "no""#)
    /// } else {
    ///     wasi_nn_llm::Params::greedy().lark(r#"start: "yes" | "no""#)
    /// };
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn features(&self) -> Result<Vec<crate::Feature>, Error> {
        Ok(llm_model::features(&self.graph)?)
    }

    /// Whether the host speculates for this model's generations (0.1.7):
    /// `speculation` names how drafts are made (`ngram`, or `off`), and
    /// `draft-max` is the most tokens drafted per step. Output is the same
    /// either way; only its speed differs.
    pub fn decoding(&self) -> Result<crate::Decoding, Error> {
        Ok(llm_model::model_decoding(&self.graph)?)
    }

    /// The underlying wasi:nn graph, for base wasi-nn calls.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let exec = model.graph().init_execution_context()?; // base wasi-nn
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Token ids for `text`. `add_special` adds the model's BOS (where it
    /// uses one); `parse_special` turns marker text such as `<|im_start|>`
    /// into its token.
    ///
    /// ```no_run
    /// let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let ids = model.tokenize("Hello world", false, false)?;
    /// assert_eq!(model.detokenize(&ids, false)?, "Hello world");
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, Error> {
        Ok(llm_model::tokenize(&self.graph, text, add_special, parse_special)?)
    }

    /// Text for token ids (a character cut between tokens becomes U+FFFD);
    /// `render_special` renders control tokens as their marker text.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let ids = model.tokenize("<|im_start|>user", false, true)?;
    /// assert_eq!(model.detokenize(&ids, true)?, "<|im_start|>user");
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn detokenize(&self, tokens: &[u32], render_special: bool) -> Result<String, Error> {
        Ok(llm_model::detokenize(&self.graph, tokens, render_special)?)
    }

    /// How many tokens appending `text` to an empty session adds.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let n = model.count_tokens("How long is this prompt?")?;
    /// assert!(n > 0);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn count_tokens(&self, text: &str) -> Result<u32, Error> {
        Ok(llm_model::count_tokens(&self.graph, text)?)
    }

    /// The model's metadata and the host's limits for it.
    ///
    /// ```no_run
    /// let info = wasi_nn_llm::Model::load("smollm2")?.info()?;
    /// println!("{} ({}), {} tokens of context", info.name, info.quantization, info.max_session_context);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn info(&self) -> Result<ModelMetadata, Error> {
        Ok(llm_model::model_info(&self.graph)?)
    }

    /// Render messages with the model's own chat template.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// use wasi_nn_llm::Message;
    /// let prompt = model.apply_chat_template(&[Message { role: "user".into(), content: "Hi!".into() }], true)?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn apply_chat_template(&self, messages: &[Message], add_assistant_turn: bool) -> Result<String, Error> {
        Ok(llm_model::apply_chat_template(&self.graph, messages, add_assistant_turn)?)
    }

    /// Render a conversation with the model's own Jinja chat template, as
    /// Hugging Face's `apply_chat_template` does: tools, tool calls, tool
    /// results, reasoning and template arguments included (extension
    /// 0.1.5). [`Rendered::source`] says whether the model's template or
    /// the host's built-in format of its family rendered it.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// use wasi_nn_llm::{ChatMessage, RenderOptions};
    /// let user = ChatMessage {
    ///     role: "user".into(),
    ///     content: Some("Hi!".into()),
    ///     reasoning: None,
    ///     tool_calls: vec![],
    ///     tool_call_id: None,
    ///     name: None,
    /// };
    /// let options =
    ///     RenderOptions { add_generation_prompt: true, tools: vec![], documents: vec![], arguments: vec![] };
    /// let prompt = model.render_chat(&[user], &options)?.text;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn render_chat(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<Rendered, Error> {
        Ok(chat::render(&self.graph, messages, options)?)
    }

    /// Render role-and-text messages with the model's own Jinja template
    /// ([`render_chat`](Self::render_chat) with nothing else): what
    /// [`Chat`](crate::Chat) appends, and what the OpenAI server sends.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error> {
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: Some(m.content.clone()),
                reasoning: None,
                tool_calls: vec![],
                tool_call_id: None,
                name: None,
            })
            .collect();
        let options = RenderOptions { add_generation_prompt, tools: vec![], documents: vec![], arguments: vec![] };
        Ok(self.render_chat(&messages, &options)?.text)
    }

    /// One embedding per input, computed by the host's engine with no
    /// session held (extension 0.1.3).
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// use wasi_nn_llm::{EmbedInput, EmbedOptions};
    /// let inputs = [EmbedInput::Text("A cat sat on the mat.".into())];
    /// let vectors = model.embed(&inputs, EmbedOptions { pooling: None, normalize: true })?;
    /// assert_eq!(vectors[0].vector.len() as u32, model.dimensions()?);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn embed(&self, inputs: &[EmbedInput], options: EmbedOptions) -> Result<Vec<Embedding>, Error> {
        Ok(embeddings::embed(&self.graph, inputs, options)?)
    }

    /// Length of the model's embedding vectors.
    pub fn dimensions(&self) -> Result<u32, Error> {
        Ok(embeddings::dimensions(&self.graph)?)
    }
}
