//! The llama.cpp backend (through llama-cpp-2): a GGUF loaded by llama.cpp,
//! its contexts (`context.rs`, one per lane, every session a llama.cpp
//! sequence with a KV stream of its own), their worker threads
//! (`workers.rs`), the attention kernel measured at load (`attention.rs`),
//! sampler chains (`sampler.rs`), and llama.cpp itself as this host is
//! built with it (`init.rs`). The file is checked before llama.cpp reads it
//! (`model_file.rs`).

mod attention;
mod context;
mod init;
mod model_file;
mod sampler;
mod workers;

use std::any::Any;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel, RopeType};
use llama_cpp_2::token::LlamaToken;

pub use attention::{Attention, Chosen, FlashAttention};
pub(crate) use context::STATE_MAGIC;
pub use init::{BACKEND, backend, cpu_code, gpu_build, gpus};
pub use sampler::schema_grammar;

use super::info::{ModelInfo, file_type_name};
use super::{BackendKind, Context, ContextSetup, Embedder, GenerateParams, LoadConfig, Model, Sampler};
use crate::error::LlmError;

/// A model llama.cpp loaded, and how its contexts run.
pub struct LlamaCpp {
    model: LlamaModel,
    attention: Attention,
    device: String,
}

impl LlamaCpp {
    /// Load the GGUF at `path`, and choose the attention kernel its
    /// contexts will run for sessions of `config.ctx_size` tokens.
    pub fn load(name: &str, path: &Path, config: &LoadConfig) -> anyhow::Result<Self> {
        let backend = backend()?;
        let gpus = gpus()?;
        // When the operator does not say: every layer where a GPU is usable, else none.
        let gpu_layers = config.gpu_layers.unwrap_or(if gpus.is_empty() { 0 } else { u32::MAX });
        let model_params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let checked = model_file::check(path).with_context(|| format!("model {name:?}"))?;
        let model = LlamaModel::load_from_file(backend, path, &model_params).map_err(|e| {
            let architecture = checked.architecture.as_deref().unwrap_or("none named");
            anyhow!(
                "model {name:?}: llama.cpp cannot load {} (architecture {architecture:?}; {e}): this build's \
                 llama.cpp may not know the architecture, or the file is damaged; WASI_NN_LLM_LOG=info shows \
                 llama.cpp's own reason",
                path.display()
            )
        })?;
        // Where the layers went is part of what a kernel measurement depends on.
        let device = match gpus.first() {
            Some(gpu) if gpu_layers > 0 => {
                format!("{gpu}, {} of {} layers", gpu_layers.min(model.n_layer()), model.n_layer())
            }
            _ => "cpu".to_owned(),
        };
        let ctx_size = config.session_context(model.n_ctx_train());
        let attention = attention::choose(&model, path, config.flash_attn, config.threads, ctx_size, &device);
        Ok(Self { model, attention, device })
    }

    /// The llama.cpp model behind `model`, if llama.cpp serves it (for tests
    /// that check the engine against llama.cpp called directly).
    pub fn of(model: &dyn Model) -> Option<&LlamaModel> {
        model.as_any().downcast_ref::<Self>().map(|m| &m.model)
    }

    /// A token id of llama.cpp's; the engine checked it against the vocabulary.
    fn token(id: u32) -> LlamaToken {
        LlamaToken(id as i32)
    }

    /// llama.cpp's token, unless it answers -1 (`LLAMA_TOKEN_NULL`) for one
    /// the model lacks.
    fn known(&self, token: LlamaToken) -> Option<u32> {
        (0..self.model.n_vocab()).contains(&token.0).then_some(token.0 as u32)
    }

    fn render(
        &self,
        template: &LlamaChatTemplate,
        messages: &[(String, String)],
        add: bool,
    ) -> Result<String, LlmError> {
        let chat = messages
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::invalid(format!("chat message: {e}")))?;
        self.model
            .apply_chat_template(template, &chat, add)
            .map_err(|e| LlmError::Unsupported(format!("llama.cpp cannot render this model's chat template: {e}")))
    }

    /// For a model without a template (a base model), llama.cpp's built-in
    /// format of its architecture family, where llama.cpp has one.
    fn family_template(&self) -> Result<(&'static str, LlamaChatTemplate), LlmError> {
        let architecture = self.model.meta_val_str("general.architecture").unwrap_or_default();
        let name = match architecture.as_str() {
            a if a.starts_with("gemma") => "gemma",
            a if a.starts_with("llama") => "llama3",
            a if a.starts_with("phi3") => "phi3",
            _ => {
                return Err(LlmError::Unsupported(format!(
                    "the model ({architecture}) has no chat template and no built-in one is known for it"
                )));
            }
        };
        let template = LlamaChatTemplate::new(name).map_err(|e| LlmError::EngineFailure(e.to_string()))?;
        Ok((name, template))
    }
}

impl Model for LlamaCpp {
    fn kind(&self) -> BackendKind {
        BackendKind::LlamaCpp
    }

    fn version(&self) -> (&'static str, &'static str) {
        BACKEND
    }

    fn n_vocab(&self) -> u32 {
        self.model.n_vocab().max(0) as u32
    }

    fn tokenize(&self, text: &[u8], add_special: bool, parse_special: bool) -> Vec<u32> {
        let tokens = self.model.vocab().tokenize(text, add_special, parse_special);
        tokens.into_iter().map(|t| t.0 as u32).collect()
    }

    fn detokenize(&self, tokens: &[u32], render_special: bool) -> Vec<u8> {
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| Self::token(t)).collect();
        self.model.vocab().detokenize(&tokens, false, render_special)
    }

    fn piece(&self, token: u32) -> Vec<u8> {
        self.model.vocab().token_to_piece(Self::token(token), false, None)
    }

    fn is_end_of_generation(&self, token: u32) -> bool {
        self.model.vocab().is_eog(Self::token(token))
    }

    fn bos(&self) -> Option<u32> {
        self.known(self.model.vocab().bos())
    }

    fn meta(&self, key: &str) -> Option<String> {
        self.model.meta_val_str(key).ok()
    }

    fn info(&self) -> ModelInfo {
        let model = &self.model;
        let vocab = model.vocab();
        ModelInfo {
            name: String::new(),
            architecture: model.meta_val_str("general.architecture").unwrap_or_default(),
            trained_context: model.n_ctx_train(),
            max_session_context: 0,
            vocab_size: self.n_vocab(),
            bos: self.known(vocab.bos()),
            eos: self.known(vocab.eos()),
            eot: self.known(vocab.eot()),
            parameters: model.n_params(),
            size_bytes: model.size(),
            chat_template: model.chat_template(None).ok().and_then(|t| t.to_string().ok()),
            quantization: model
                .meta_val_str("general.file_type")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or_else(|| "unknown".into(), file_type_name),
        }
    }

    fn trained_context(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// Keys and values of every layer at f16, the whole context (a
    /// sliding-window layer holds less; the reservation is the bound).
    fn kv_bytes_per_token(&self) -> u64 {
        let m = &self.model;
        let head_dim = (m.n_embd().max(0) as u64) / u64::from(m.n_head().max(1));
        2 * 2 * u64::from(m.n_layer()) * u64::from(m.n_head_kv()) * head_dim
    }

    fn embedding_size(&self) -> u32 {
        self.model.n_embd_out().max(0) as u32
    }

    /// Context shift moves KV positions, which recurrent state and
    /// multi-axis RoPE cannot do (llama.cpp asserts rather than refuses).
    fn cannot_shift(&self) -> Option<String> {
        let model = &self.model;
        let rope = model.rope_type();
        let shiftable = !model.is_recurrent()
            && !model.is_hybrid()
            && !matches!(rope, Some(RopeType::MRope | RopeType::IMRope | RopeType::Vision));
        (!shiftable).then(|| format!("its positions ({rope:?}) cannot move"))
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn gbnf(&self) -> bool {
        true
    }

    fn attention(&self) -> Option<&Attention> {
        Some(&self.attention)
    }

    fn new_context(&self, setup: &ContextSetup) -> Result<Box<dyn Context + '_>, String> {
        Ok(Box::new(context::Lane::new(&self.model, setup, self.attention.context_param())?))
    }

    fn new_embedder(&self, setup: &ContextSetup) -> Result<Box<dyn Embedder + '_>, String> {
        Ok(Box::new(context::Embedding::new(&self.model, setup, self.attention.context_param())?))
    }

    fn sampler(
        &self,
        params: &GenerateParams,
        seed: Option<u64>,
        history: &[u32],
        context: usize,
    ) -> Result<Box<dyn Sampler>, LlmError> {
        Ok(Box::new(sampler::build(&self.model, params, seed, history, context)?))
    }

    fn apply_known_template(
        &self,
        template: Option<&str>,
        messages: &[(String, String)],
        add_assistant: bool,
    ) -> Option<Result<String, LlmError>> {
        let template = match (template, self.model.chat_template(None)) {
            (Some(text), _) => LlamaChatTemplate::new(text).map_err(|e| LlmError::invalid(e.to_string())),
            (None, Ok(template)) => Ok(template),
            (None, Err(_)) => self.family_template().map(|(_, template)| template),
        };
        Some(template.and_then(|template| self.render(&template, messages, add_assistant)))
    }

    fn apply_family_template(
        &self,
        messages: &[(String, String)],
        add_assistant: bool,
    ) -> Result<(&'static str, String), LlmError> {
        let (name, template) = self.family_template()?;
        Ok((name, self.render(&template, messages, add_assistant)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
