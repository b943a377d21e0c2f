//! How one choice's reply is read as it comes: its reasoning (a
//! `<think>` block) apart from its answer, the answer read for tool calls
//! in the template's format, and the reasoning budget the server holds the
//! model to.
//!
//! The budget is kept with the extension's own calls: once the block has
//! taken its tokens, the stream is cancelled (the session keeps what was
//! delivered), `</think>` is appended for the model, and a new generation
//! writes the answer. The same restart serves a template that opens the
//! block in its generation prompt while tools are asked for: the block is
//! generated free and the answer under the tools' grammar.

use wasi_nn_llm::reasoning::{self, Splitter};
use wasi_nn_llm::tool_calls::{Call, Format, Streamer};

/// What the reader makes of a piece of the reply.
#[derive(Default)]
pub struct Read {
    pub reasoning: String,
    /// Answer text that can go out now (a tool call is held to the end).
    pub content: String,
    /// The block must be closed for the model now: its budget is spent.
    pub close: bool,
}

/// How a reply ended.
pub struct End {
    pub reasoning: String,
    /// Tokens the reasoning block took.
    pub reasoning_tokens: u32,
    pub content: Option<String>,
    pub calls: Vec<Call>,
}

/// One choice's reply, read.
pub struct Reader {
    splitter: Splitter,
    tools: Option<Streamer>,
    budget: Option<u32>,
    /// Tokens the block has taken.
    thought: u32,
}

impl Reader {
    /// A reply to a prompt that opened a block or not (`open`), read for
    /// tool calls in `tools`' format, its block held to `budget` tokens.
    pub fn new(open: bool, tools: Option<Format>, budget: Option<u32>) -> Self {
        Self { splitter: Splitter::new(open), tools: tools.map(Streamer::new), budget, thought: 0 }
    }

    /// Whether the reply is inside its block.
    pub fn thinking(&self) -> bool {
        self.splitter.thinking()
    }

    /// Take `text`, `tokens` tokens of the reply.
    pub fn read(&mut self, text: &str, tokens: u32) -> Read {
        let was_thinking = self.thinking();
        let piece = self.splitter.push(text);
        if was_thinking {
            self.thought += tokens;
        }
        let content = self.answer(&piece.answer);
        let close = self.thinking() && self.budget.is_some_and(|b| self.thought >= b);
        Read { reasoning: piece.reasoning, content, close }
    }

    /// The block is closed for the model: the rest is the answer.
    pub fn close(&mut self) {
        self.splitter.close();
    }

    /// The reply has ended.
    pub fn end(mut self) -> End {
        let last = self.splitter.finish();
        let mut content = self.answer(&last.answer);
        let (calls, late) = match self.tools.take() {
            Some(streamer) => {
                let parsed = streamer.finish();
                (parsed.calls, parsed.content)
            }
            None => (Vec::new(), None),
        };
        if let Some(late) = late {
            content.push_str(&late);
        }
        let content = (!content.is_empty()).then_some(content);
        End { reasoning: last.reasoning, reasoning_tokens: self.thought, content, calls }
    }

    fn answer(&mut self, text: &str) -> String {
        match &mut self.tools {
            Some(streamer) if !text.is_empty() => streamer.push(text).unwrap_or_default(),
            Some(_) => String::new(),
            None => text.to_owned(),
        }
    }
}

/// What is appended for the model when its block is closed for it: the
/// tag its stop string held back, or, its budget spent mid-thought, the
/// tag on a line of its own.
pub fn closing(budget_spent: bool) -> String {
    if budget_spent { format!("\n{}\n\n", reasoning::CLOSE) } else { format!("{}\n\n", reasoning::CLOSE) }
}
