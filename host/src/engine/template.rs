//! A model's chat template: the GGUF's Jinja (see [`crate::chat`]), and
//! llama.cpp's built-in formats for models that have none, which also
//! serve the extension's first `apply-chat-template`.

use std::sync::Arc;

use chrono::Local;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate};

use super::{Engine, tokens};
use crate::chat::{ChatMessage, ChatTemplate, RenderOptions, Rendered, TemplateError, TemplateSource};
use crate::error::LlmError;

impl Engine {
    /// Render `messages` (role, content) with llama.cpp's template matcher:
    /// the format llama.cpp recognises in the GGUF's template, or the
    /// built-in one of the model's family. (The extension's 0.1.0 call.)
    pub fn apply_chat_template(&self, messages: &[(String, String)], add_assistant: bool) -> Result<String, LlmError> {
        let template = match (&self.0.chat_template, self.model().chat_template(None)) {
            (Some(text), _) => LlamaChatTemplate::new(text).map_err(|e| LlmError::invalid(e.to_string()))?,
            (None, Ok(template)) => template,
            (None, Err(_)) => self.builtin_template()?.1,
        };
        self.apply_builtin(&template, messages, add_assistant)
    }

    /// Render a conversation with the model's own Jinja template, as
    /// Hugging Face's `apply_chat_template` does; a model without one gets
    /// llama.cpp's built-in format of its family, which knows roles and
    /// text only, so tools, tool calls, reasoning and template arguments
    /// are then refused as `unsupported`.
    pub fn render_chat(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<Rendered, LlmError> {
        if let Some(template) = self.jinja()? {
            let text = template.render(messages, options, Local::now().naive_local()).map_err(template_error)?;
            return Ok(Rendered { text, source: TemplateSource::Jinja });
        }
        let (name, template) = self.builtin_template()?;
        let needs_jinja = if !options.tools.is_empty() {
            Some("tools")
        } else if !options.documents.is_empty() {
            Some("documents")
        } else if !options.arguments.is_empty() {
            Some("template arguments")
        } else if messages.iter().any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some()) {
            Some("tool calls and tool results")
        } else if messages.iter().any(|m| m.reasoning.is_some()) {
            Some("reasoning")
        } else {
            None
        };
        if let Some(what) = needs_jinja {
            return Err(LlmError::Unsupported(format!(
                "model {:?} has no chat template of its own, and llama.cpp's built-in {name:?} format renders \
                 roles and text only, not {what}",
                self.name()
            )));
        }
        let messages: Vec<(String, String)> =
            messages.iter().map(|m| (m.role.clone(), m.content.clone().unwrap_or_default())).collect();
        let text = self.apply_builtin(&template, &messages, options.add_generation_prompt)?;
        Ok(Rendered { text, source: TemplateSource::BuiltIn(name.into()) })
    }

    /// The GGUF's Jinja template, compiled once; none if it has none.
    fn jinja(&self) -> Result<Option<Arc<ChatTemplate>>, LlmError> {
        self.0
            .jinja
            .get_or_init(|| {
                let info = self.info();
                let Some(source) = &info.chat_template else { return Ok(None) };
                let marker = |token: Option<u32>| token.and_then(|t| tokens::detokenize(self.model(), &[t], true).ok());
                ChatTemplate::new(source, marker(info.bos), marker(info.eos)).map(|t| Some(Arc::new(t)))
            })
            .clone()
            .map_err(template_error)
    }

    fn apply_builtin(
        &self,
        template: &LlamaChatTemplate,
        messages: &[(String, String)],
        add_assistant: bool,
    ) -> Result<String, LlmError> {
        let chat = messages
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::invalid(format!("chat message: {e}")))?;
        self.model()
            .apply_chat_template(template, &chat, add_assistant)
            .map_err(|e| LlmError::Unsupported(format!("llama.cpp cannot render this model's chat template: {e}")))
    }

    /// For a model without a template (a base model), llama.cpp's built-in
    /// format of its architecture family, where llama.cpp has one.
    fn builtin_template(&self) -> Result<(&'static str, LlamaChatTemplate), LlmError> {
        let architecture = self.model().meta_val_str("general.architecture").unwrap_or_default();
        let name = match architecture.as_str() {
            a if a.starts_with("gemma") => "gemma",
            a if a.starts_with("llama") => "llama3",
            a if a.starts_with("phi3") => "phi3",
            _ => {
                return Err(LlmError::Unsupported(format!(
                    "model {:?} ({architecture}) has no chat template and no built-in one is known for it",
                    self.name()
                )));
            }
        };
        let template = LlamaChatTemplate::new(name).map_err(|e| LlmError::EngineFailure(e.to_string()))?;
        Ok((name, template))
    }
}

/// A template's failure as the extension reports it: a template that does
/// not compile came with the model (`unsupported`); the rest is about the
/// conversation the caller sent (`invalid-argument`).
fn template_error(e: TemplateError) -> LlmError {
    match e {
        TemplateError::Syntax(_) => LlmError::Unsupported(e.to_string()),
        _ => LlmError::InvalidArgument(e.to_string()),
    }
}
