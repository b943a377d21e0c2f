//! What the scheduler knows of each session: its tokens, mirrored one by one
//! (a context need not report what a sequence holds; llama.cpp cannot), and
//! the work in flight on it.

use std::sync::Arc;

use super::draft::Drafting;
use crate::backend::Sampler;
use crate::engine::buffer::Shared;
use crate::engine::finish::Usage;
use crate::engine::protocol::Reply;
use crate::engine::quota::Deadline;
use crate::engine::text::TextAssembler;

/// One session's state. Invariants: the KV cache holds `tokens[..n_past]`,
/// and `n_past <= tokens.len()`.
pub(super) struct Sequence {
    pub limit: usize,
    pub seed: Option<u64>,
    /// Context shift: the first tokens always kept; `None` refuses instead.
    pub shift: Option<usize>,
    pub tokens: Vec<u32>,
    /// `tokens[..n_past]` are in the KV cache.
    pub n_past: usize,
    /// `n_past` when the current turn's first append came; `None` once a
    /// generation has started. Usage's cached-tokens comes from it.
    pub turn_start: Option<usize>,
    /// When `turn_start` was last set: a turn's time to first token counts
    /// from there.
    pub turn_at: Option<std::time::Instant>,
    pub prefill: Option<Prefill>,
    pub generation: Option<Generation>,
    /// The last stream handed out, until its reader has drained it.
    pub stream: Option<Arc<Shared>>,
    /// A fork's KV copy that the context may apply only at the next decode.
    pub copy_pending: bool,
}

impl Sequence {
    /// An empty session.
    pub fn new(limit: usize, seed: Option<u64>, shift: Option<usize>) -> Self {
        Self {
            limit,
            seed,
            shift,
            tokens: Vec::new(),
            n_past: 0,
            turn_start: None,
            turn_at: None,
            prefill: None,
            generation: None,
            stream: None,
            copy_pending: false,
        }
    }

    /// A copy holding the same tokens (a fork), with nothing in flight.
    pub fn fork(&self) -> Self {
        Self {
            tokens: self.tokens.clone(),
            n_past: self.n_past,
            turn_start: self.turn_start,
            turn_at: self.turn_at,
            copy_pending: true,
            ..Self::new(self.limit, self.seed, self.shift)
        }
    }

    /// Tokens generated but not yet taken by the stream's reader.
    pub fn undelivered(&self) -> usize {
        self.generation.as_ref().map_or(0, |g| g.text.undelivered_tokens())
            + self.stream.as_ref().map_or(0, |st| st.lock().undelivered_tokens())
    }
}

/// An append waiting for its tokens to be evaluated.
pub(super) struct Prefill {
    pub added: u32,
    pub reply: Reply<u32>,
    /// Where to return to if a decode fails midway.
    pub rollback_len: usize,
    /// When the append arrived (its prefill time is logged, as
    /// llama-server logs its "prompt eval time").
    pub since: std::time::Instant,
}

/// A generation in progress.
pub(super) struct Generation {
    pub sampler: Box<dyn Sampler>,
    pub text: TextAssembler,
    pub remaining: Option<u32>,
    pub logprobs: Option<u32>,
    pub usage: Usage,
    pub shared: Arc<Shared>,
    pub deadline: Option<Deadline>,
    /// When its turn started (for time to first token), and when its first
    /// token came (for decode speed).
    pub started: std::time::Instant,
    pub first: Option<std::time::Instant>,
    /// What its drafts were worth so far (speculative decoding).
    pub drafting: Drafting,
}

impl Generation {
    /// Count a generation that ended with `usage` in the process's metrics.
    pub fn account(&self, usage: &Usage) {
        let m = crate::metrics::get();
        m.prompt_tokens.inc_by(usage.prompt_tokens.into());
        m.cached_prompt_tokens.inc_by(usage.cached_tokens.into());
        m.generated_tokens.inc_by(usage.generated_tokens.into());
        m.draft_tokens.inc_by(self.drafting.drafted.into());
        m.accepted_draft_tokens.inc_by(self.drafting.accepted.into());
        m.draft_checks.inc_by(self.drafting.checks.into());
        if self.drafting.drafted > 0 {
            // What an operator (and the tests of each front door) see of speculation.
            tracing::debug!(
                drafted = self.drafting.drafted,
                accepted = self.drafting.accepted,
                generated = usage.generated_tokens,
                "speculative decoding: drafted tokens checked and accepted"
            );
        }
        if let Some(first) = self.first
            && usage.generated_tokens > 1
        {
            m.decode_seconds_per_token.observe(first.elapsed().as_secs_f64() / f64::from(usage.generated_tokens - 1));
        }
    }
}
