//! A reply's reasoning, `<think>…</think>` as Qwen 3, QwQ, DeepSeek-R1 and
//! SmolLM3 write it, told apart from its answer: whole, or as it streams.
//!
//! The block either opens the reply, or the template's generation prompt
//! has opened it already (DeepSeek-R1's ends in `<think>\n`).

/// Opens a reasoning block.
pub const OPEN: &str = "<think>";
/// Closes it.
pub const CLOSE: &str = "</think>";

/// Whether a rendered prompt leaves the model inside a reasoning block.
pub fn opened_by(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// A whole reply as (reasoning, answer); `open` when the prompt opened the
/// block. A block never closed is all reasoning.
pub fn split(text: &str, open: bool) -> (Option<String>, String) {
    let inside = if open {
        text
    } else {
        match text.trim_start().strip_prefix(OPEN) {
            Some(rest) => rest,
            None => return (None, text.to_owned()),
        }
    };
    match inside.find(CLOSE) {
        Some(end) => (Some(inside[..end].trim().to_owned()), inside[end + CLOSE.len()..].trim_start().to_owned()),
        None => (Some(inside.trim().to_owned()), String::new()),
    }
}

/// A reply read as it streams: each piece of it goes out as reasoning or
/// as answer text.
#[derive(Debug)]
pub struct Splitter {
    state: State,
    /// Text not sent yet: a start that may still become `<think>`, or an
    /// end of the reasoning that may be whitespace or part of `</think>`.
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not yet known whether the reply opens with a block.
    Start,
    /// Inside the block; `begun` once text other than whitespace came.
    Thinking { begun: bool },
    /// Past the block (or there was none); `begun` as above, so the
    /// whitespace between block and answer is dropped.
    Answer { begun: bool },
}

/// What a piece of a streamed reply holds.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    /// Reasoning text (inside the block).
    pub reasoning: String,
    /// Answer text (after it, or all of a reply without one).
    pub answer: String,
}

impl Splitter {
    /// A reply whose prompt opened a block (`open`) or not.
    pub fn new(open: bool) -> Self {
        let state = if open { State::Thinking { begun: false } } else { State::Start };
        Self { state, held: String::new() }
    }

    /// Whether the reply is inside its reasoning block now.
    pub fn thinking(&self) -> bool {
        matches!(self.state, State::Thinking { .. })
    }

    /// Take the next piece of the reply.
    pub fn push(&mut self, text: &str) -> Piece {
        let mut piece = Piece::default();
        self.held.push_str(text);
        loop {
            match self.state {
                State::Start => {
                    let start = self.held.trim_start();
                    if let Some(rest) = start.strip_prefix(OPEN) {
                        self.held = rest.to_owned();
                        self.state = State::Thinking { begun: false };
                    } else if OPEN.starts_with(start) {
                        return piece;
                    } else {
                        self.state = State::Answer { begun: true };
                    }
                }
                State::Thinking { begun } => {
                    if !begun {
                        self.held = self.held.trim_start().to_owned();
                        if self.held.is_empty() {
                            return piece;
                        }
                        self.state = State::Thinking { begun: true };
                    }
                    if let Some(end) = self.held.find(CLOSE) {
                        piece.reasoning.push_str(self.held[..end].trim_end());
                        self.held = self.held[end + CLOSE.len()..].to_owned();
                        self.state = State::Answer { begun: false };
                        continue;
                    }
                    // Keep back what may be whitespace before `</think>` or its start.
                    let keep = (0..=self.held.len())
                        .filter(|&i| self.held.is_char_boundary(i))
                        .find(|&i| {
                            let tail = &self.held[i..];
                            let tail = tail.trim_start();
                            CLOSE.starts_with(tail) || tail.is_empty()
                        })
                        .unwrap_or(self.held.len());
                    piece.reasoning.push_str(&self.held[..keep]);
                    self.held.drain(..keep);
                    return piece;
                }
                State::Answer { begun } => {
                    let text = if begun { std::mem::take(&mut self.held) } else { self.held.trim_start().to_owned() };
                    self.held.clear();
                    if !text.is_empty() {
                        self.state = State::Answer { begun: true };
                    }
                    piece.answer.push_str(&text);
                    return piece;
                }
            }
        }
    }

    /// Close the block now (the host closed it for the model, its budget
    /// spent): what comes next is the answer.
    pub fn close(&mut self) {
        if self.thinking() {
            self.held.clear();
            self.state = State::Answer { begun: false };
        }
    }

    /// The end of the reply: whatever was held back.
    pub fn finish(&mut self) -> Piece {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking { .. } => Piece { reasoning: held.trim_end().to_owned(), answer: String::new() },
            State::Start | State::Answer { .. } => Piece { reasoning: String::new(), answer: held },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_reply_splits_at_its_block() {
        assert_eq!(split("<think>\nhmm\n</think>\n\nYes.", false), (Some("hmm".into()), "Yes.".into()));
        assert_eq!(split("hmm</think>Yes.", true), (Some("hmm".into()), "Yes.".into()));
        assert_eq!(split("Yes.", false), (None, "Yes.".into()));
        assert_eq!(split("<think>never closed", false), (Some("never closed".into()), String::new()));
    }

    #[test]
    fn a_streamed_reply_splits_the_same_whatever_the_pieces() {
        let reply = "<think>\nLet me see.\n</think>\n\nYes, it is.";
        for size in 1..reply.len() {
            let mut s = Splitter::new(false);
            let (mut reasoning, mut answer) = (String::new(), String::new());
            let mut rest = reply;
            while !rest.is_empty() {
                let cut = (size..=rest.len()).find(|&i| rest.is_char_boundary(i)).unwrap_or(rest.len());
                let piece = s.push(&rest[..cut]);
                reasoning.push_str(&piece.reasoning);
                answer.push_str(&piece.answer);
                rest = &rest[cut..];
            }
            let piece = s.finish();
            reasoning.push_str(&piece.reasoning);
            answer.push_str(&piece.answer);
            assert_eq!((reasoning.as_str(), answer.as_str()), ("Let me see.", "Yes, it is."), "pieces of {size}");
        }
    }

    #[test]
    fn a_block_the_host_closes_ends_the_reasoning() {
        let mut s = Splitter::new(true);
        assert_eq!(s.push("one two").reasoning, "one two");
        s.close();
        assert_eq!(s.push("\n\nAnswer").answer, "Answer");
    }
}
