//! How many tokens a conversation's prompt is, rendered by the model's own
//! Jinja template (what the server sends since extension 0.1.5) and by
//! llama.cpp's built-in template matcher (what it sent before, and what
//! 0.1.0's `apply-chat-template` still does). No timing: the counts are
//! the model's tokenizer's.

use anyhow::Result;
use wasi_nn_llm_host::chat::{ChatMessage, RenderOptions, TemplateSource};
use wasi_nn_llm_host::engine::Engine;

use crate::report::Table;

/// The conversations counted: one turn, and three with a system prompt.
fn conversations() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("one user turn", vec![("user", "What is the capital of France?")]),
        (
            "system + 3 turns",
            vec![
                ("system", "You are a helpful assistant."),
                ("user", "What is the capital of France?"),
                ("assistant", "The capital of France is Paris."),
                ("user", "And of Italy?"),
            ],
        ),
    ]
}

/// One row per conversation for `engine`'s model.
pub fn rows(name: &str, engine: &Engine, table: &mut Table) -> Result<()> {
    for (what, turns) in conversations() {
        let pairs: Vec<(String, String)> = turns.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect();
        let builtin = engine.count_tokens(&engine.apply_chat_template(&pairs, true)?)?;
        let messages: Vec<ChatMessage> = turns
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.to_string(),
                content: Some(content.to_string()),
                ..ChatMessage::default()
            })
            .collect();
        let options = RenderOptions { add_generation_prompt: true, ..RenderOptions::default() };
        let rendered = engine.render_chat(&messages, &options)?;
        let jinja = engine.count_tokens(&rendered.text)?;
        let source = match rendered.source {
            TemplateSource::Jinja => "the GGUF's Jinja".to_owned(),
            TemplateSource::BuiltIn(format) => format!("none in the GGUF: built-in `{format}` both ways"),
        };
        table.row(vec![
            name.into(),
            what.into(),
            builtin.to_string(),
            jinja.to_string(),
            format!("{:+}", i64::from(jinja) - i64::from(builtin)),
            source,
        ]);
    }
    Ok(())
}

/// The table's header.
pub fn table() -> Table {
    Table::new(&["model", "conversation", "built-in matcher", "Jinja (render)", "difference", "template"])
}
