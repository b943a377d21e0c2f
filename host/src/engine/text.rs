//! From generated token bytes to deliverable text: whole UTF-8 characters
//! only, with stop strings matched across token and chunk boundaries.
//!
//! Byte-level BPE splits characters across tokens, and the peers' byte-at-a-
//! time streams hand guests half characters. Here the bytes of every token
//! are buffered until they end on a character boundary, and any tail that
//! could still grow into a stop string is held back, so neither a half
//! character nor a piece of a stop string is ever delivered.

use std::collections::VecDeque;

/// A token's log-probability and its best alternatives (ids and log-probabilities).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token chosen.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Text ready for the guest and the tokens that completed in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Whole UTF-8 characters.
    pub text: String,
    /// The tokens whose bytes end in this chunk.
    pub tokens: Vec<u32>,
    /// One per token, when the generation asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

/// A stop string was produced.
pub(crate) struct StopMatch {
    /// Everything before the stop string that was not delivered yet.
    pub chunk: Chunk,
    pub stop: String,
    /// Tokens generated at or after the stop string's start: they leave the session.
    pub dropped: usize,
    /// Bytes of the token the stop string starts inside, before the stop: they
    /// stay (re-tokenized) so the session holds exactly the delivered text.
    pub straddle: Vec<u8>,
}

pub(crate) enum Pushed {
    /// Maybe some text is ready; generation goes on.
    Ready(Option<Chunk>),
    Stopped(StopMatch),
}

struct Pending {
    token: u32,
    /// Offset just past this token's bytes in `TextAssembler::raw`.
    end: usize,
    logprob: Option<TokenLogprob>,
}

/// Buffers the bytes and tokens of one generation that are not fully delivered.
pub(crate) struct TextAssembler {
    stops: Vec<String>,
    /// Bytes from the start of the first pending token on.
    raw: Vec<u8>,
    /// How many bytes of `raw` were already delivered as text.
    sent: usize,
    pending: VecDeque<Pending>,
}

impl TextAssembler {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, raw: Vec::new(), sent: 0, pending: VecDeque::new() }
    }

    /// Tokens generated but not yet delivered in a chunk.
    pub fn undelivered_tokens(&self) -> usize {
        self.pending.len()
    }

    pub fn push(&mut self, token: u32, bytes: &[u8], logprob: Option<TokenLogprob>) -> Pushed {
        self.raw.extend_from_slice(bytes);
        self.pending.push_back(Pending { token, end: self.raw.len(), logprob });

        if let Some((at, stop)) = self.find_stop() {
            let kept = self.pending.iter().take_while(|p| p.end <= at).count();
            let straddle_start = if kept == 0 { 0 } else { self.pending[kept - 1].end };
            let straddle = self.raw[straddle_start..at].to_vec();
            let dropped = self.pending.len() - kept;
            let chunk = self.take(at, kept);
            // The stop string and everything after it are never delivered.
            self.pending.clear();
            self.raw.clear();
            self.sent = 0;
            return Pushed::Stopped(StopMatch { chunk, stop, dropped, straddle });
        }

        let hold = self.stop_prefix_len();
        let cut = complete_utf8_prefix(&self.raw[..self.raw.len() - hold]).max(self.sent);
        let kept = self.pending.iter().take_while(|p| p.end <= cut).count();
        if cut == self.sent && kept == 0 {
            return Pushed::Ready(None);
        }
        Pushed::Ready(Some(self.take(cut, kept)))
    }

    /// Deliver everything left (the generation has ended); a trailing partial
    /// character becomes U+FFFD, as a lossy detokenization would render it.
    pub fn flush(&mut self) -> Option<Chunk> {
        let kept = self.pending.len();
        (kept > 0 || self.sent < self.raw.len()).then(|| self.take(self.raw.len(), kept))
    }

    /// Deliver the text up to byte `cut` and the first `tokens` pending tokens.
    fn take(&mut self, cut: usize, tokens: usize) -> Chunk {
        let text = String::from_utf8_lossy(&self.raw[self.sent..cut]).into_owned();
        let mut chunk = Chunk { text, ..Chunk::default() };
        let base = if tokens == 0 { 0 } else { self.pending[tokens - 1].end };
        for p in self.pending.drain(..tokens) {
            chunk.tokens.push(p.token);
            chunk.logprobs.extend(p.logprob);
        }
        self.raw.drain(..base);
        self.sent = cut - base;
        for p in &mut self.pending {
            p.end -= base;
        }
        chunk
    }

    /// The earliest stop string in the undelivered bytes.
    fn find_stop(&self) -> Option<(usize, String)> {
        let unsent = &self.raw[self.sent..];
        self.stops
            .iter()
            .filter_map(|s| find(unsent, s.as_bytes()).map(|at| (self.sent + at, s)))
            .min_by_key(|(at, _)| *at)
            .map(|(at, s)| (at, s.clone()))
    }

    /// Length of the longest undelivered tail that is a proper prefix of a stop string.
    fn stop_prefix_len(&self) -> usize {
        let unsent = &self.raw[self.sent..];
        self.stops
            .iter()
            .map(|s| {
                let s = s.as_bytes();
                (1..s.len().min(unsent.len() + 1)).rev().find(|&k| unsent.ends_with(&s[..k])).unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest prefix of `b` that does not end inside a UTF-8
/// sequence that later bytes could still complete.
fn complete_utf8_prefix(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(3) {
        let byte = b[n - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(a: &mut TextAssembler, id: u32, s: &[u8]) -> Option<Chunk> {
        match a.push(id, s, None) {
            Pushed::Ready(c) => c,
            Pushed::Stopped(_) => panic!("unexpected stop"),
        }
    }

    #[test]
    fn holds_back_split_characters() {
        let mut a = TextAssembler::new(vec![]);
        let e = "é".as_bytes();
        assert_eq!(push(&mut a, 1, b"caf"), Some(Chunk { text: "caf".into(), tokens: vec![1], ..Chunk::default() }));
        assert_eq!(push(&mut a, 2, &e[..1]), None);
        let c = push(&mut a, 3, &e[1..]).unwrap();
        assert_eq!((c.text.as_str(), c.tokens), ("é", vec![2, 3]));
    }

    #[test]
    fn stop_string_across_tokens_is_not_emitted() {
        let mut a = TextAssembler::new(vec!["END".into()]);
        assert_eq!(push(&mut a, 1, b"ok E").unwrap().text, "ok ");
        assert_eq!(push(&mut a, 2, b"N"), None);
        match a.push(3, b"Dx", None) {
            Pushed::Stopped(m) => {
                // Token 1 ("ok E") was half delivered: its "ok " stays as the straddle.
                assert_eq!((m.chunk.text.as_str(), m.stop.as_str(), m.dropped), ("", "END", 3));
                assert_eq!(m.straddle, b"ok ");
            }
            Pushed::Ready(_) => panic!("stop not found"),
        }
        assert_eq!(a.flush(), None, "nothing of the stop string may be flushed later");
    }

    #[test]
    fn stop_inside_a_token_keeps_its_prefix() {
        let mut a = TextAssembler::new(vec!["\n\n".into()]);
        match a.push(7, b"hi.\n\nmore", None) {
            Pushed::Stopped(m) => {
                assert_eq!((m.chunk.text.as_str(), m.dropped), ("hi.", 1));
                assert_eq!(m.straddle, b"hi.");
            }
            Pushed::Ready(_) => panic!("stop not found"),
        }
    }

    #[test]
    fn flush_renders_a_dangling_partial_character_lossily() {
        let mut a = TextAssembler::new(vec![]);
        assert_eq!(push(&mut a, 1, &"€".as_bytes()[..2]), None);
        assert_eq!(a.flush().unwrap().text, "\u{FFFD}");
        assert_eq!(a.flush(), None);
    }
}
