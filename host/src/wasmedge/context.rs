//! One execution context of WasmEdge's GGML ABI, on the shared engine: the
//! prompt set by `set_input`, the session it is evaluated in, and the
//! outputs `get_output` reads.
//!
//! The plugin clears the KV cache at every `set_input` and `compute`, so a
//! guest that re-sends its whole history each turn (LlamaEdge's chat does)
//! pays a prefill of the whole history each turn. Here the context keeps
//! its session between computes and evaluates only what differs from the
//! tokens it holds (the longest common prefix stays, as in base wasi-nn's
//! tensor convention), unless the operator turns the reuse off to measure
//! what it saves.

use std::sync::Arc;

use super::Console;
use super::abi::{Errno, Fault};
use super::config::{Config, Reader};
use crate::engine::{EmbedInput, Engine, FinishReason, Quota, Session, SessionOptions, TokenStream};

/// What one `compute_single` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of text is ready for `get_output_single`.
    Piece,
    /// The generation has ended (errno 100, which is not an error).
    Ended,
}

/// An execution context.
pub struct Context {
    engine: Engine,
    config: Config,
    /// Keep the session between computes (the operator's `reuse-kv`).
    reuse: bool,
    /// Tokens of the last prompt `set_input` gave.
    prompt: Vec<u32>,
    session: Option<Session>,
    /// `compute_single`'s generation, once started.
    single: Option<TokenStream>,
    /// Everything the last generation produced.
    output: Vec<u8>,
    /// The last piece `compute_single` produced.
    last: Vec<u8>,
    output_tokens: u32,
    /// Of the last prompt's tokens, how many the session already held.
    cached_tokens: u32,
    /// The configuration notes last said (its graph's, at first).
    noted: Vec<String>,
}

impl Context {
    /// A context of `engine`'s, configured with its graph's `config` (whose
    /// notes the guest was given at load: `noted`).
    pub fn new(engine: Engine, config: Config, noted: Vec<String>, reuse: bool) -> Self {
        Self {
            engine,
            config,
            reuse,
            prompt: Vec::new(),
            session: None,
            single: None,
            output: Vec::new(),
            last: Vec::new(),
            output_tokens: 0,
            cached_tokens: 0,
            noted,
        }
    }

    /// `set_input(1, …)`: more configuration, for this context only (the
    /// plugin also changes the graph's, which every context shares).
    pub fn configure(&mut self, json: &[u8], operator: &Config, console: &Console) -> Result<(), Fault> {
        let mut config = self.config.clone();
        let notes = config.apply(json, Reader::Guest)?;
        // LlamaEdge sends the same metadata before every prompt: say each
        // note once per context, and again only when it changes.
        if notes != self.noted {
            for note in &notes {
                console.note(note);
            }
            self.noted = notes;
        }
        config.overlay(operator);
        self.config = config;
        self.single = None;
        Ok(())
    }

    /// `set_input(0, …)`: the prompt, tokenized as the plugin does (BOS
    /// where the model has one, special tokens parsed). Earlier outputs
    /// stay readable until the next compute, as in the plugin.
    pub fn set_prompt(&mut self, text: &str) -> Result<(), Fault> {
        self.prompt = self.engine.tokenize(text, true, true)?;
        self.single = None;
        Ok(())
    }

    /// `compute`: generate until the end of the sequence, `n-predict`
    /// tokens or the reverse prompt; with `stream-stdout`, each piece goes
    /// to the guest's stdout as it comes. A full context is errno 101 with
    /// the output so far kept, as in the plugin.
    pub fn compute(&mut self, quota: &Arc<Quota>, console: &Console) -> Result<(), Fault> {
        self.single = None;
        self.clear_output();
        if self.config.embeds() {
            return self.embed(quota);
        }
        let Some(mut stream) = self.start(quota)? else { return Ok(()) };
        while let Some(chunk) = stream.next_chunk()? {
            if self.config.streams_to_stdout() {
                console.out(chunk.text.as_bytes());
            }
            self.output.extend_from_slice(chunk.text.as_bytes());
            self.output_tokens += chunk.tokens.len() as u32;
        }
        match stream.finish().map(|f| &f.reason) {
            Some(FinishReason::ContextFull) => Err(self.context_full()),
            _ => Ok(()),
        }
    }

    /// `compute_single`: the first call evaluates the prompt and starts a
    /// generation; each call then delivers the next piece of whole UTF-8
    /// characters (one token, or the few a character spans), and the
    /// generation's end is [`Step::Ended`]. `n-predict` is honoured here
    /// too (the plugin ignores it in single mode).
    pub fn compute_single(&mut self, quota: &Arc<Quota>) -> Result<Step, Fault> {
        if self.single.is_none() {
            self.clear_output();
            let Some(stream) = self.start(quota)? else { return Ok(Step::Ended) };
            self.single = Some(stream);
        }
        let Some(stream) = self.single.as_mut() else { return Ok(Step::Ended) };
        match stream.next_chunk() {
            Ok(Some(chunk)) => {
                self.output.extend_from_slice(chunk.text.as_bytes());
                self.output_tokens += chunk.tokens.len() as u32;
                self.last = chunk.text.into_bytes();
                Ok(Step::Piece)
            }
            Ok(None) => {
                let full = stream.finish().is_some_and(|f| f.reason == FinishReason::ContextFull);
                self.single = None;
                if full { Err(self.context_full()) } else { Ok(Step::Ended) }
            }
            Err(e) => {
                self.single = None;
                Err(e.into())
            }
        }
    }

    /// `fini_single`: end the single-token generation; the session keeps
    /// what was delivered. The outputs are cleared, as in the plugin.
    pub fn fini_single(&mut self) {
        self.single = None;
        self.clear_output();
    }

    /// `get_output(0)`: the last generation's text.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `get_output_single(0)`: the last piece.
    pub fn last_piece(&self) -> &[u8] {
        &self.last
    }

    /// `get_output(1)`: the plugin's metadata in its format (LlamaEdge
    /// parses it): token counts of the last prompt and generation, and which
    /// llama.cpp runs them; then one key the plugin has not, `cached_tokens`,
    /// how many of the prompt's tokens were not evaluated again.
    pub fn metadata(&self) -> Vec<u8> {
        format!(
            "{{\"input_tokens\": {}, \"output_tokens\": {}, \"llama_build_number\": {}, \"llama_commit\": \"{}\", \
             \"cached_tokens\": {}}}",
            self.prompt.len(),
            self.output_tokens,
            super::LLAMA_BUILD_NUMBER,
            super::LLAMA_COMMIT,
            self.cached_tokens,
        )
        .into_bytes()
    }

    fn clear_output(&mut self) {
        self.output.clear();
        self.last.clear();
        self.output_tokens = 0;
    }

    /// Prefill and start generating; `None` when `n-predict` is 0.
    fn start(&mut self, quota: &Arc<Quota>) -> Result<Option<TokenStream>, Fault> {
        let (params, none) = (self.config.params(), self.config.max_tokens() == Some(0));
        let session = self.prefill(quota)?;
        if none {
            return Ok(None);
        }
        Ok(Some(session.generate(&params)?))
    }

    fn context_full(&self) -> Fault {
        let limit = self.session.as_ref().map_or(0, Session::context_limit);
        Fault::new(Errno::ContextFull, format!("the context is full ({limit} tokens)"))
    }

    /// The session holding the prompt, its last token evaluated anew (its
    /// logits start the generation). With reuse, the tokens the session
    /// already holds in common with the prompt stay; without, it starts
    /// empty, as the plugin's cleared KV cache does.
    fn prefill(&mut self, quota: &Arc<Quota>) -> Result<&Session, Fault> {
        if self.prompt.is_empty() {
            return Err(Fault::invalid("no prompt: call set_input(0, …) with the prompt before compute"));
        }
        let (context_length, _) = self.config.context_length(self.engine.ctx_size());
        let wanted = context_length.unwrap_or(self.engine.ctx_size());
        if !self.reuse || self.session.as_ref().is_some_and(|s| s.context_limit() != wanted) {
            // Freed first: the new session may need this one's slot.
            self.session = None;
        }
        let session = match self.session.take() {
            Some(session) => session,
            None => self.engine.open_session(&SessionOptions { context_length, ..SessionOptions::default() }, quota)?,
        };
        self.cached_tokens = session.set_tokens(&self.prompt)? as u32;
        Ok(self.session.insert(session))
    }

    /// `compute` with `embedding`: the plugin's `{"n_embedding", "embedding"}`
    /// JSON for the prompt, unit length as the plugin's is.
    fn embed(&mut self, quota: &Arc<Quota>) -> Result<(), Fault> {
        if self.prompt.is_empty() {
            return Err(Fault::invalid("no prompt: call set_input(0, …) with the text before compute"));
        }
        let input = [EmbedInput::Tokens(self.prompt.clone())];
        let embedding = self.engine.embed(&input, None, true, quota)?.pop().map(|e| e.vector).unwrap_or_default();
        let json = serde_json::json!({ "n_embedding": embedding.len(), "embedding": embedding });
        self.output = json.to_string().into_bytes();
        Ok(())
    }
}
