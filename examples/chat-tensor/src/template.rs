//! The chat template, rendered in the guest: base wasi-nn cannot ask the host
//! to apply the model's own. These render byte for byte what the extension's
//! `chat.render` renders for the test models: SmolLM2's Jinja template
//! (ChatML, and a default system prompt for a conversation without one,
//! read out of the template's text) and llama.cpp's built-in Gemma format
//! for gemma3, whose GGUF has no template. A guest without host templates
//! must re-implement each template it meets like this, one pattern at a time.

use gguf_vocab::Metadata;

/// The chat formats this guest knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2 and many others),
    /// with the system prompt the template puts first in a conversation
    /// that has none, if it has one.
    ChatMl { default_system: Option<String> },
    /// `<start_of_turn>user\n…<end_of_turn>\n`, assistant as `model`, a
    /// system message merged into the first user turn, contents trimmed.
    Gemma,
}

impl Template {
    /// The template of the model whose GGUF header is `meta`: the GGUF's own
    /// template if it is ChatML, else the architecture's usual one.
    pub fn for_model(meta: &Metadata) -> Result<Self, String> {
        if let Some(template) = meta.str("tokenizer.chat_template").filter(|t| t.contains("<|im_start|>")) {
            return Ok(Self::ChatMl { default_system: default_system(template) });
        }
        match meta.str("general.architecture") {
            Some(arch) if arch.starts_with("gemma") => Ok(Self::Gemma),
            arch => Err(format!("no chat template known to this guest for architecture {arch:?}")),
        }
    }

    /// The conversation `(role, content)` as one prompt, opening the
    /// assistant's turn when `open_reply` is set.
    pub fn render(&self, messages: &[(String, String)], open_reply: bool) -> String {
        let mut s = String::new();
        match self {
            Self::ChatMl { default_system } => {
                if let Some(system) = default_system
                    && messages.first().is_some_and(|(role, _)| role != "system")
                {
                    s.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
                }
                for (role, content) in messages {
                    s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
                }
                if open_reply {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            Self::Gemma => {
                let mut system = String::new();
                for (role, content) in messages {
                    if role == "system" {
                        system.push_str(content.trim());
                        continue;
                    }
                    let role = if role == "assistant" { "model" } else { role };
                    s.push_str(&format!("<start_of_turn>{role}\n"));
                    if !system.is_empty() && role != "model" {
                        s.push_str(&format!("{system}\n\n"));
                        system.clear();
                    }
                    s.push_str(&format!("{}<end_of_turn>\n", content.trim()));
                }
                if open_reply {
                    s.push_str("<start_of_turn>model\n");
                }
            }
        }
        s
    }
}

/// The system prompt a ChatML template writes when the first message is
/// not a system one, in the form SmolLM2's has it:
/// `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n…<|im_end|>\n' }}{% endif %}`.
fn default_system(template: &str) -> Option<String> {
    let guard = template.find("messages[0]['role'] != 'system' %}")?;
    let rest = &template[guard..];
    let start = rest.find("'<|im_start|>system\n")? + "'<|im_start|>system\n".len();
    let end = rest[start..].find("<|im_end|>")?;
    Some(rest[start..start + end].to_owned())
}
