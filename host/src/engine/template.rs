//! A model's chat template: the GGUF's Jinja (see [`crate::chat`]), and
//! the backend's built-in formats (llama.cpp's) for models that have none,
//! which also serve the extension's first `apply-chat-template`.

use std::sync::Arc;

use chrono::Local;

use super::{Engine, tokens};
use crate::chat::{ChatMessage, ChatTemplate, RenderOptions, Rendered, TemplateError, TemplateSource};
use crate::error::LlmError;

impl Engine {
    /// Render `messages` (role, content) with llama.cpp's template matcher:
    /// the format llama.cpp recognises in the GGUF's template, or the
    /// built-in one of the model's family. (The extension's 0.1.0 call.) A
    /// backend without llama.cpp's formats renders the Jinja template.
    pub fn apply_chat_template(&self, messages: &[(String, String)], add_assistant: bool) -> Result<String, LlmError> {
        if let Some(rendered) =
            self.model().apply_known_template(self.0.chat_template.as_deref(), messages, add_assistant)
        {
            return rendered;
        }
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.clone(),
                content: Some(content.clone()),
                ..ChatMessage::default()
            })
            .collect();
        let options = RenderOptions { add_generation_prompt: add_assistant, ..RenderOptions::default() };
        Ok(self.render_chat(&messages, &options)?.text)
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
        let plain: Vec<(String, String)> =
            messages.iter().map(|m| (m.role.clone(), m.content.clone().unwrap_or_default())).collect();
        let (name, text) =
            self.model().apply_family_template(&plain, options.add_generation_prompt).map_err(|e| match e {
                LlmError::Unsupported(why) => LlmError::Unsupported(format!("model {:?}: {why}", self.name())),
                other => other,
            })?;
        if let Some(what) = needs_jinja {
            return Err(LlmError::Unsupported(format!(
                "model {:?} has no chat template of its own, and llama.cpp's built-in {name:?} format renders \
                 roles and text only, not {what}",
                self.name()
            )));
        }
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
