//! Chat templates as the model's authors wrote them: the GGUF's
//! `tokenizer.chat_template` (Jinja) rendered the way Hugging Face's
//! `apply_chat_template` renders it, with tools, tool calls, tool results,
//! reasoning and extra template arguments.
//!
//! llama.cpp's own `llama_chat_apply_template` does not run Jinja: it
//! matches the template's text against a list of known formats and writes
//! that format by hand (role and content only). That stays as the fallback
//! for a model whose GGUF has no template, and as the behaviour of the
//! extension's older `apply-chat-template`.
//!
//! [`jinja`] holds the environment (Jinja2 semantics on `minijinja`),
//! [`python`] the parts of Python that templates see through it (`tojson`,
//! how a value prints, `strftime`).

mod jinja;
mod python;

pub use jinja::{ChatTemplate, TemplateError};

/// One message of a conversation, as a template sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, or whatever else the template knows.
    pub role: String,
    /// The text; absent for an assistant turn that only calls tools (the
    /// template then sees no `content` key, as `transformers` drops None).
    pub content: Option<String>,
    /// An assistant turn's reasoning (`reasoning_content` to the template).
    pub reasoning: Option<String>,
    /// The tools an assistant turn called.
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// The tool's name on a `tool` message (some templates print it).
    pub name: Option<String>,
}

/// One call of a tool by the assistant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    /// The id a `tool` message answers it with.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, JSON text (an object); templates see it parsed.
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON schema (JSON text, an object) of its arguments.
    pub parameters: String,
}

/// A typed value of an extra template argument (`enable_thinking`,
/// `reasoning_effort`, …).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateValue {
    /// Python's `True`/`False`.
    Boolean(bool),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A string.
    Text(String),
    /// A list, an object or null, as JSON text.
    Json(String),
}

/// What a conversation is rendered with besides its messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// Open the assistant's turn at the end (`add_generation_prompt`).
    pub add_generation_prompt: bool,
    /// The functions the model may call (`tools`; none if empty).
    pub tools: Vec<Tool>,
    /// Documents for retrieval-augmented templates (`documents`; none if
    /// empty), each a list of string fields such as `title` and `text`.
    pub documents: Vec<Vec<(String, String)>>,
    /// Further keyword arguments, e.g. `enable_thinking`.
    pub arguments: Vec<(String, TemplateValue)>,
}

/// Which template rendered a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The GGUF's own Jinja template.
    Jinja,
    /// llama.cpp's hand-written format of this name: the model has no
    /// template of its own.
    BuiltIn(String),
}

/// A rendered conversation and which template rendered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt text (special tokens as their marker text).
    pub text: String,
    /// Which template made it.
    pub source: TemplateSource,
}
