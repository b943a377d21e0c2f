//! The chat template, rendered in the guest: base wasi-nn cannot ask the host
//! to apply the model's own. These render byte for byte what llama.cpp's
//! built-in templates render, which is what the extension's
//! `apply-chat-template` uses for the test models.

use crate::gguf::Metadata;

/// The chat formats this guest knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2 and many others).
    ChatMl,
    /// `<start_of_turn>user\n…<end_of_turn>\n`, assistant as `model`, a
    /// system message merged into the first user turn, contents trimmed.
    Gemma,
}

impl Template {
    /// The template of the model whose GGUF header is `meta`: the GGUF's own
    /// template if it is ChatML, else the architecture's usual one.
    pub fn for_model(meta: &Metadata) -> Result<Self, String> {
        if meta.str("tokenizer.chat_template").is_some_and(|t| t.contains("<|im_start|>")) {
            return Ok(Self::ChatMl);
        }
        match meta.str("general.architecture") {
            Some(arch) if arch.starts_with("gemma") => Ok(Self::Gemma),
            arch => Err(format!("no chat template known to this guest for architecture {arch:?}")),
        }
    }

    /// The conversation `(role, content)` as one prompt, opening the
    /// assistant's turn when `open_reply` is set.
    pub fn render(self, messages: &[(String, String)], open_reply: bool) -> String {
        let mut s = String::new();
        match self {
            Self::ChatMl => {
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
