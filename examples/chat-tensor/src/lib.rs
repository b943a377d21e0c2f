//! A chat through base wasi-nn's tensor convention: everything the extension
//! does on the host, done in the guest.
//!
//! The guest reads the model's GGUF header (shared read-only by the
//! operator) to build its tokenizer (`gguf-vocab`) and chat template
//! ([`template`]), and runs one `compute` per generated token, each sending
//! the whole sequence and receiving one logit per vocabulary entry
//! ([`tensor`]). [`Conversation`] keeps the token history the way the
//! extension's `Chat` keeps its session: each turn appends only the new
//! text's tokens, so the two produce the same greedy replies.

pub mod template;
pub mod tensor;

use std::path::Path;
use std::time::{Duration, Instant};

use gguf_vocab::{GgufTokenizer, Metadata};
use template::Template;
use tensor::TensorModel;

/// A guest-side chat over a tensor-mode model.
pub struct Conversation {
    pub model: TensorModel,
    pub tokenizer: GgufTokenizer,
    template: Template,
    messages: Vec<(String, String)>,
    /// The rendered conversation so far, reply text included.
    transcript: String,
    /// The token ids of `transcript`, as generated (not re-tokenized).
    tokens: Vec<u32>,
    /// How many of `tokens` the execution context has evaluated: the host
    /// keeps the sequence of its last compute and reuses the common prefix.
    evaluated: usize,
}

/// One reply: its text, its token ids, and whether it ended on an
/// end-of-generation token (else it hit `max`); with what the first token
/// cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub tokens: Vec<u32>,
    pub ended: bool,
    /// From the call to the first token id (tokenizing included).
    pub first_token: Duration,
    /// Tokens the host had to evaluate for the first token.
    pub prefilled: usize,
}

impl Conversation {
    /// A conversation with the model registered as `name`, whose GGUF file
    /// the guest can read at `gguf`.
    pub fn open(name: &str, gguf: &Path) -> Result<Self, String> {
        let meta = Metadata::read(gguf).map_err(|e| format!("reading {}: {e}", gguf.display()))?;
        Ok(Self {
            model: TensorModel::load(name)?,
            tokenizer: GgufTokenizer::from_gguf(&meta)?,
            template: Template::for_model(&meta)?,
            messages: Vec::new(),
            transcript: String::new(),
            tokens: Vec::new(),
            evaluated: 0,
        })
    }

    /// Continue on a new execution context, as on a host that keeps nothing
    /// between computes: the next turn re-evaluates the whole conversation.
    pub fn forget_context(&mut self) -> Result<(), String> {
        self.model.reset()?;
        self.evaluated = 0;
        Ok(())
    }

    /// The tokens held so far (what every compute re-sends).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Send a user message and generate greedily up to `max` tokens, calling
    /// `on_text` with each piece of text as soon as it is complete UTF-8.
    pub fn send(&mut self, user: &str, max: u32, mut on_text: impl FnMut(&str)) -> Result<Reply, String> {
        let started = Instant::now();
        self.messages.push(("user".into(), user.into()));
        let full = self.template.render(&self.messages, true);
        let Some(delta) = wasi_nn_llm::turn_delta(&self.transcript, &full) else {
            self.messages.pop();
            return Err("the template re-rendered earlier turns differently; cannot append".into());
        };
        let first = self.tokens.is_empty();
        self.tokens.extend(self.tokenizer.encode(delta, first)?);
        self.transcript = full;

        // The last token is always evaluated anew (its logits are asked for).
        let prefilled = self.tokens.len() - self.evaluated.min(self.tokens.len() - 1);
        let mut reply =
            Reply { text: String::new(), tokens: Vec::new(), ended: false, first_token: Duration::ZERO, prefilled };
        let mut pending = Vec::new();
        while reply.tokens.len() < max as usize {
            let next = tensor::argmax(&self.model.logits(&self.tokens)?);
            self.evaluated = self.tokens.len();
            if reply.first_token.is_zero() {
                reply.first_token = started.elapsed();
            }
            if self.tokenizer.is_end(next) {
                reply.ended = true;
                break;
            }
            self.tokens.push(next);
            reply.tokens.push(next);
            pending.push(next);
            let piece = self.tokenizer.decode(&pending)?;
            if !piece.ends_with('\u{FFFD}') {
                on_text(&piece);
                reply.text.push_str(&piece);
                pending.clear();
            }
        }
        if !pending.is_empty() {
            let piece = self.tokenizer.decode(&pending)?;
            on_text(&piece);
            reply.text.push_str(&piece);
        }
        self.transcript.push_str(&reply.text);
        self.messages.push(("assistant".into(), reply.text.clone()));
        Ok(reply)
    }
}
