//! The candle backend: Hugging Face's pure-Rust tensor library, sharing no
//! kernel, tokenizer or sampler with llama.cpp. It reads the same GGUF
//! files: the vocabulary through `gguf-vocab` (a `tokenizers` tokenizer
//! built from the GGUF), the weights as candle's quantized tensors
//! (`llama.rs`, the Llama architecture: SmolLM2), and keeps each sequence's
//! KV cache as candle tensors (`context.rs`). Sampling is the engine's
//! Rust chain ([`crate::backend::sampling`]).
//!
//! Why candle: it is the Rust-native engine with GGUF and quantized matmuls
//! of its own, so a host built on it needs no C++ at all, and it is what a
//! second wasi-nn implementation in Rust would most likely use.
//!
//! What it does not do (reported by the capability query, refused with
//! `unsupported`): GBNF grammars (llama.cpp's syntax), architectures other
//! than `llama`, GPUs (the CPU build only), and the attention-kernel choice.

mod context;
mod llama;

use std::any::Any;
use std::path::Path;

use gguf_vocab::{GgufTokenizer, Metadata};

pub(crate) use context::STATE_MAGIC;
use llama::{Shape, Weights};

use super::info::{ModelInfo, file_type_name};
use super::sampling::{self, Chain, Greedy};
use super::{BackendKind, Constraint, Context, ContextSetup, Embedder, GenerateParams, LoadConfig, Model, Sampler};
use crate::error::LlmError;

/// The crate and version that name this backend in `model-identity`.
pub const VERSION: (&str, &str) = ("candle", "candle-core 0.11.1");

/// A model candle loaded.
pub struct Candle {
    meta: Metadata,
    vocab: GgufTokenizer,
    weights: Weights,
}

impl Candle {
    /// Load the GGUF at `path` (a `llama` architecture).
    pub fn load(name: &str, path: &Path, _config: &LoadConfig) -> anyhow::Result<Self> {
        let fail =
            |why: String| anyhow::anyhow!("model {name:?}: the candle backend cannot load {}: {why}", path.display());
        let meta = Metadata::read(path).map_err(|e| fail(e.to_string()))?;
        let architecture = meta.str("general.architecture").unwrap_or("none named").to_owned();
        if architecture != "llama" {
            return Err(fail(format!(
                "it implements the llama architecture (SmolLM2) only, not {architecture:?}; serve this model \
                 with --backend llama.cpp"
            )));
        }
        let vocab = GgufTokenizer::from_gguf(&meta).map_err(fail)?;
        let shape = Shape::read(&meta, vocab.len()).map_err(fail)?;
        let weights = Weights::load(path, shape).map_err(fail)?;
        Ok(Self { meta, vocab, weights })
    }

    fn id(&self, key: &str) -> Option<u32> {
        self.meta.int(key).and_then(|n| u32::try_from(n).ok()).filter(|&n| (n as usize) < self.vocab.len())
    }
}

impl Model for Candle {
    fn kind(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn version(&self) -> (&'static str, &'static str) {
        VERSION
    }

    fn n_vocab(&self) -> u32 {
        self.vocab.len() as u32
    }

    fn tokenize(&self, text: &[u8], add_special: bool, parse_special: bool) -> Vec<u32> {
        let text = String::from_utf8_lossy(text);
        let encoded = if parse_special {
            self.vocab.encode(&text, add_special)
        } else {
            self.vocab.encode_plain(&text, add_special)
        };
        encoded.unwrap_or_else(|e| {
            tracing::warn!("tokenizing failed: {e}");
            Vec::new()
        })
    }

    fn detokenize(&self, tokens: &[u32], render_special: bool) -> Vec<u8> {
        tokens.iter().flat_map(|&t| self.vocab.piece(t, render_special).iter().copied()).collect()
    }

    fn piece(&self, token: u32) -> Vec<u8> {
        self.vocab.piece(token, false).to_vec()
    }

    fn is_end_of_generation(&self, token: u32) -> bool {
        self.vocab.is_end(token)
    }

    fn bos(&self) -> Option<u32> {
        self.vocab.bos()
    }

    fn meta(&self, key: &str) -> Option<String> {
        self.meta.text(key)
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: String::new(),
            architecture: self.meta.str("general.architecture").unwrap_or_default().to_owned(),
            trained_context: self.trained_context(),
            max_session_context: 0,
            vocab_size: self.n_vocab(),
            bos: self.id("tokenizer.ggml.bos_token_id"),
            eos: self.id("tokenizer.ggml.eos_token_id"),
            eot: self.id("tokenizer.ggml.eot_token_id"),
            parameters: self.weights.parameters,
            size_bytes: self.weights.size_bytes,
            chat_template: self.meta.str("tokenizer.chat_template").map(str::to_owned),
            quantization: self
                .meta
                .int("general.file_type")
                .and_then(|n| u32::try_from(n).ok())
                .map_or_else(|| "unknown".into(), file_type_name),
        }
    }

    fn trained_context(&self) -> u32 {
        self.weights.shape.trained_context.min(u32::MAX as usize) as u32
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.weights.shape.kv_bytes_per_token()
    }

    fn embedding_size(&self) -> u32 {
        self.weights.shape.n_embd as u32
    }

    fn cannot_shift(&self) -> Option<String> {
        None
    }

    fn device(&self) -> &str {
        "cpu"
    }

    fn new_context(&self, setup: &ContextSetup) -> Result<Box<dyn Context + '_>, String> {
        Ok(Box::new(context::Lane::new(&self.weights, setup)))
    }

    fn new_embedder(&self, _setup: &ContextSetup) -> Result<Box<dyn Embedder + '_>, String> {
        Ok(Box::new(context::Embedding::new(&self.weights)))
    }

    fn sampler(
        &self,
        params: &GenerateParams,
        seed: Option<u64>,
        history: &[u32],
        context: usize,
    ) -> Result<Box<dyn Sampler>, LlmError> {
        if let Some(constraint) = &params.constraint {
            let what = match constraint {
                Constraint::Grammar(_) => "GBNF grammars: that is llama.cpp's own syntax (use a Lark grammar)",
                Constraint::JsonSchema(_) | Constraint::Lark(_) => "this constraint itself (the engine applies it)",
            };
            return Err(LlmError::Unsupported(format!("the candle backend does not apply {what}")));
        }
        let n_vocab = self.n_vocab();
        if params.temperature.unwrap_or(sampling::DEFAULT_TEMPERATURE) == 0.0 {
            return Ok(Box::new(Greedy::new(params, n_vocab, history, context)?));
        }
        let seed = sampling::seed(params, seed);
        Ok(Box::new(Chain::new(params, seed, n_vocab, history, context)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
