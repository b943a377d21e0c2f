//! Generations on the lane's thread: starting one (its sampler, held to its
//! grammar), one decode step for every generation with room in its stream,
//! sampling and handing whole characters to the stream, and how a
//! generation ends (finished, failed, cancelled by its reader).

use std::sync::Arc;

use super::draft::Drafting;
use super::sequence::Generation;
use super::{Scheduler, open};
use crate::backend::GenerateParams;
use crate::engine::buffer::{Item, Shared};
use crate::engine::constraint::{Guide, Guided};
use crate::engine::finish::{Finish, FinishReason, Usage};
use crate::engine::logprob::logprob;
use crate::engine::protocol::SeqId;
use crate::engine::quota::Deadline;
use crate::engine::text::{Pushed, TextAssembler};
use crate::error::{ContextOverflow, LlmError};

impl Scheduler<'_> {
    pub(super) fn start_generation(
        &mut self,
        seq: SeqId,
        params: &GenerateParams,
        guide: Option<Guide>,
        deadline: Option<Deadline>,
    ) -> Result<Arc<Shared>, LlmError> {
        let model = self.model;
        let s = self.sequence(seq)?;
        if s.tokens.is_empty() {
            return Err(LlmError::invalid("the session is empty: append a prompt before generating"));
        }
        if s.tokens.len() >= s.limit {
            let used = s.tokens.len() as u32;
            return Err(LlmError::ContextFull(ContextOverflow { requested: used + 1, used, limit: s.limit as u32 }));
        }
        let mut sampler = model.sampler(params, s.seed, &s.tokens, s.limit)?;
        if let Some(guide) = guide {
            sampler = Box::new(Guided::new(guide, sampler));
        }
        let fresh = self.take_fresh(seq);
        if fresh.is_none() {
            // The first step decodes the last token again, for its logits.
            self.uncache_last(seq)?;
        }
        let s = open(&mut self.seqs, seq)?;
        let started = s.turn_start.and(s.turn_at).unwrap_or_else(std::time::Instant::now);
        let cached = s.turn_start.take().unwrap_or(s.n_past);
        let shared = Shared::new();
        s.generation = Some(Generation {
            sampler,
            text: TextAssembler::new(params.stop.clone()),
            remaining: params.max_tokens,
            logprobs: params.logprobs,
            usage: Usage { prompt_tokens: s.tokens.len() as u32, cached_tokens: cached as u32, generated_tokens: 0 },
            shared: shared.clone(),
            deadline,
            started,
            first: None,
            drafting: Drafting::default(),
        });
        s.stream = Some(shared.clone());
        if let Some(index) = fresh {
            let _goes_on = self.sample(seq, index);
        }
        Ok(shared)
    }

    /// One decode for every generation with room in its buffer, each with
    /// the drafted tokens worth checking (`draft.rs`), then sampling.
    pub(super) fn step_generations(&mut self) {
        let mut members = Vec::new();
        for index in 0..self.seqs.len() {
            let seq = SeqId::new(index);
            let Some(s) = self.seqs[index].as_mut() else { continue };
            let Some(g) = s.generation.as_ref() else { continue };
            if !g.shared.lock().has_room() {
                continue;
            }
            if let Some(deadline) = g.deadline.filter(|d| std::time::Instant::now() >= d.at) {
                self.fail_generation(seq, deadline.error());
                continue;
            }
            if s.tokens.len() >= s.limit && (s.shift.is_none() || self.shift(seq, 1).is_err()) {
                self.finish(seq, FinishReason::ContextFull);
                continue;
            }
            members.push(seq);
        }
        if members.is_empty() {
            return;
        }
        let drafts = self.plan_drafts(&members);
        self.batch.clear();
        for (&seq, draft) in members.iter().zip(&drafts) {
            let Ok(s) = open(&mut self.seqs, seq) else { continue };
            let pos = s.tokens.len() - 1;
            self.batch.add(s.tokens[pos], pos, seq.id(), true);
            for (i, &token) in draft.checked().iter().enumerate() {
                self.batch.add(token, pos + 1 + i, seq.id(), true);
            }
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.decode() {
            for seq in members {
                self.fail_generation(seq, LlmError::EngineFailure(format!("decode failed: {e}")));
            }
            return;
        }
        let seconds = started.elapsed().as_secs_f32();
        self.cost.observe(self.batch.len(), seconds);
        tracing::trace!(
            sequences = members.len(),
            tokens = self.batch.len(),
            ms = seconds * 1e3,
            ids = ?members.iter().map(|s| s.index()).collect::<Vec<_>>(),
            "decode step"
        );
        self.copies_applied();
        let mut index = 0;
        for (seq, draft) in members.into_iter().zip(drafts) {
            self.verify(seq, index, &draft);
            index += 1 + draft.checked().len();
        }
    }

    /// Sample `seq`'s next token from the logits at batch `index` (its last
    /// token's, just decoded) and hand it to the stream. Returns the token
    /// while the generation goes on after it.
    pub(super) fn sample(&mut self, seq: SeqId, index: usize) -> Option<u32> {
        let model = self.model;
        let s = self.seqs[seq.index()].as_mut()?;
        let g = s.generation.as_mut()?;
        s.n_past = s.tokens.len();
        let logits = self.ctx.logits(index);
        let token = g.sampler.sample(logits);
        if model.is_end_of_generation(token) {
            self.finish(seq, FinishReason::EndOfSequence);
            return None;
        }
        if g.first.is_none() {
            g.first = Some(std::time::Instant::now());
            crate::metrics::get().time_to_first_token.observe(g.started.elapsed().as_secs_f64());
        }
        let logprob = g.logprobs.map(|n| logprob(logits, token, n as usize));
        s.tokens.push(token);
        let bytes = model.piece(token);
        match g.text.push(token, &bytes, logprob) {
            Pushed::Ready(chunk) => {
                if let Some(chunk) = chunk {
                    g.usage.generated_tokens += chunk.tokens.len() as u32;
                    g.shared.push(Item::Chunk(chunk));
                }
                if let Some(r) = g.remaining.as_mut() {
                    *r -= 1;
                    if *r == 0 {
                        self.finish(seq, FinishReason::MaxTokens);
                        return None;
                    }
                }
                Some(token)
            }
            Pushed::Stopped(m) => {
                // Drop what follows the stop string, keep the text before it.
                let keep = s.tokens.len() - m.dropped;
                s.tokens.truncate(keep);
                let mut chunk = m.chunk;
                if !m.straddle.is_empty() {
                    let retok = model.tokenize(&m.straddle, false, false);
                    chunk.tokens.extend(&retok);
                    s.tokens.extend(retok);
                }
                self.rewind_kv(seq, keep);
                let g = self.seqs[seq.index()].as_mut().and_then(|s| s.generation.as_mut())?;
                g.usage.generated_tokens += chunk.tokens.len() as u32;
                g.shared.push(Item::Chunk(chunk));
                self.finish(seq, FinishReason::Stop(m.stop));
                None
            }
        }
    }

    pub(super) fn finish(&mut self, seq: SeqId, reason: FinishReason) {
        let Some(s) = self.seqs[seq.index()].as_mut() else { return };
        let Some(mut g) = s.generation.take() else { return };
        if let Some(chunk) = g.text.flush() {
            g.usage.generated_tokens += chunk.tokens.len() as u32;
            g.shared.push(Item::Chunk(chunk));
        }
        g.account(&g.usage);
        g.shared.push(Item::Finish(Finish { reason, usage: g.usage }));
    }

    pub(super) fn fail_generation(&mut self, seq: SeqId, error: LlmError) {
        let Some(s) = self.seqs[seq.index()].as_mut() else { return };
        // Keep what was delivered; the undelivered tail leaves the session.
        let keep = s.tokens.len() - s.undelivered();
        let Some(g) = s.generation.take() else { return };
        g.shared.push(Item::Failed(error));
        s.tokens.truncate(keep);
        self.rewind_kv(seq, keep);
    }

    /// The reader is gone or gave up: the session keeps exactly the chunks it
    /// took. Returns the usage of what was delivered.
    pub(super) fn cancel(&mut self, seq: SeqId, stream: u64) -> Usage {
        let Some(s) = self.seqs[seq.index()].as_mut() else { return Usage::default() };
        if s.stream.as_ref().is_none_or(|st| st.id != stream) {
            return Usage::default();
        }
        let undelivered = s.undelivered();
        let Some(shared) = s.stream.take() else { return Usage::default() };
        let finished = shared.lock().finished_usage();
        let generation = s.generation.take();
        let mut usage = match &generation {
            Some(g) => g.usage,
            None => finished.unwrap_or_default(),
        };
        usage.generated_tokens = usage.generated_tokens.saturating_sub(undelivered as u32);
        if let Some(g) = &generation {
            g.account(&usage);
        }
        let keep = s.tokens.len() - undelivered;
        s.tokens.truncate(keep);
        self.rewind_kv(seq, keep);
        // What an operator (and the serve tests) see of a client that went away.
        tracing::debug!(
            seq = seq.index(),
            generated = usage.generated_tokens,
            "a generation was cancelled before its end"
        );
        usage
    }
}
