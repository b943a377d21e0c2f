//! The one thread per lane that owns the lane's context (the backend's, see
//! [`crate::backend::Context`]) and decides what to decode next.
//!
//! Every session of the lane is a sequence in this context. Each decode
//! first takes the lane's share of the model's threads (`cores.rs`). Each turn of the loop decodes one token for *every*
//! generation that has room in its stream buffer, in a single batch (so
//! concurrency is batching, not contention), then one prefill chunk of one
//! appending session, so a long prompt never stalls the other streams for
//! more than a chunk.
//!
//! Invariants kept per sequence (see [`Sequence`]): the KV cache holds
//! `tokens[..n_past]`, and `n_past <= tokens.len()`; logits are read only
//! right after the decode that produced them (`fresh` remembers whose they
//! are until the next decode). Every position handed to llama.cpp is below
//! the session's limit, which is at most the context's per-sequence size,
//! and every batch is at most the context's batch size: nothing a guest
//! sends can reach a backend's assertion (llama.cpp's abort the process).
//!
//! Generations (start, step, sample, end) are `generation.rs`, with the
//! drafts a step may verify for each (speculative decoding: the drafts come
//! from `crate::engine::speculation`, `draft.rs` plans and checks them),
//! the KV-cache operations `kv.rs`, snapshots `state.rs`, embedding jobs (a context of
//! their own, chunk by chunk like a prefill) `embed.rs`.

mod draft;
mod embed;
mod generation;
mod kv;
mod sequence;
mod state;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

use super::buffer::Item;
use super::cores::Cores;
use super::finish::{Finish, FinishReason};
use super::protocol::{Command, Input, Reply, SeqId};
use super::speculation::{DecodeCost, MatchPriors, Speculation};
use super::tokens::tokenize;
use crate::backend::{Batch, Context, ContextSetup, Model};
use crate::error::{ContextOverflow, LlmError};
pub(in crate::engine) use embed::EMBED_CHUNK;
use embed::{EmbedContext, EmbedJob};
use sequence::{Prefill, Sequence};

/// Tokens decoded per prefill batch; also the context's batch size.
pub(crate) const PREFILL_CHUNK: usize = 512;

pub(crate) struct Scheduler<'m> {
    model: &'m dyn Model,
    ctx: Box<dyn Context + 'm>,
    seqs: Vec<Option<Sequence>>,
    prefills: VecDeque<SeqId>,
    batch: Batch,
    /// The sequence whose last token the context's current logits belong to,
    /// and their index in the batch: a prefill's final chunk leaves them, so
    /// a generation that starts before any other decode samples its first
    /// token at once instead of decoding that token again.
    fresh: Option<(SeqId, usize)>,
    cores: Arc<Cores>,
    /// Whether this lane counts as busy in `cores`.
    busy: bool,
    /// Embedding calls waiting or in progress, first come first served.
    embeds: VecDeque<EmbedJob>,
    embed_context: EmbedContext<'m>,
    /// Whether and how much generations draft (the operator's).
    speculation: Speculation,
    /// This lane's decode times by batch size, which drafting is weighed against.
    cost: DecodeCost,
    /// How often drafts were accepted on this lane, by the length of the
    /// match that found them: each new generation's prior.
    priors: MatchPriors,
    /// Most tokens one decode may hold (the context's batch size).
    batch_limit: usize,
}

impl<'m> Scheduler<'m> {
    /// `ctx`: the lane's context, made with `setup` (an embedding context
    /// like it is made at the first embedding call).
    pub fn new(
        model: &'m dyn Model,
        ctx: Box<dyn Context + 'm>,
        setup: &ContextSetup,
        cores: Arc<Cores>,
        speculation: Speculation,
    ) -> Self {
        let sequences = setup.sequences as usize;
        Self {
            model,
            ctx,
            seqs: (0..sequences).map(|_| None).collect(),
            prefills: VecDeque::new(),
            batch: Batch::with_capacity(PREFILL_CHUNK.max(sequences)),
            fresh: None,
            cores,
            busy: false,
            embeds: VecDeque::new(),
            embed_context: EmbedContext::NotYet(ContextSetup { batch: EMBED_CHUNK as u32, ..*setup }),
            speculation,
            cost: DecodeCost::default(),
            priors: MatchPriors::default(),
            batch_limit: setup.batch as usize,
        }
    }

    /// Serve commands until every handle to the engine is gone.
    pub fn run(mut self, commands: Receiver<Command>) {
        loop {
            let first = if self.has_work() {
                match commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                // Idle until the next command: the other lanes get our threads.
                self.cores.set_busy(&mut self.busy, false);
                self.ctx.rest();
                match commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            let mut next = first;
            while let Some(command) = next {
                self.handle(command);
                next = commands.try_recv().ok();
            }
            self.step_generations();
            self.prefill_chunk();
            self.embed_chunk();
        }
    }

    fn has_work(&self) -> bool {
        !self.prefills.is_empty()
            || !self.embeds.is_empty()
            || self.seqs.iter().flatten().any(|s| s.generation.as_ref().is_some_and(|g| g.shared.lock().has_room()))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Open { seq, limit, seed, shift } => {
                self.seqs[seq.index()] = Some(Sequence::new(limit as usize, seed, shift.map(|n| n as usize)));
            }
            Command::Close { seq } => {
                if let Some(g) = self.seqs[seq.index()].take().and_then(|s| s.generation) {
                    g.shared.push(Item::Finish(Finish { reason: FinishReason::Cancelled, usage: g.usage }));
                }
                self.prefills.retain(|&q| q != seq);
                self.forget_logits(seq);
                self.clear_kv(seq);
            }
            Command::Append { seq, input, reply } => {
                if let Some(result) = self.append(seq, input, &reply) {
                    let _ = reply.send(result);
                }
            }
            Command::Generate { seq, params, guide, deadline, reply } => {
                let _ = reply.send(self.start_generation(seq, &params, guide, deadline));
            }
            Command::Logits { seq, reply } => {
                let _ = reply.send(self.logits(seq));
            }
            Command::Tokens { seq, reply } => {
                let tokens = self.seqs[seq.index()].as_ref().map(|s| s.tokens.clone()).unwrap_or_default();
                let _ = reply.send(Ok(tokens));
            }
            Command::Rewind { seq, n, reply } => {
                self.forget_logits(seq);
                let _ = reply.send(self.rewind(seq, n));
            }
            Command::Reset { seq, reply } => {
                self.forget_logits(seq);
                let _ = reply.send(self.rewind(seq, u32::MAX).map(|_| ()));
            }
            Command::Resume { seq, keep, reply } => {
                self.forget_logits(seq);
                let _ = reply.send(self.resume(seq, keep));
            }
            Command::Fork { seq, child, reply } => {
                let _ = reply.send(self.fork(seq, child));
            }
            Command::Save { seq, model, reply } => {
                let _ = reply.send(self.save(seq, model));
            }
            Command::Restore { seq, snapshot, reply } => {
                self.forget_logits(seq);
                let result = self.restore(seq, snapshot);
                if result.is_err() {
                    self.clear_kv(seq);
                }
                let _ = reply.send(result);
            }
            Command::Cancel { seq, stream, reply } => {
                let usage = self.cancel(seq, stream);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(usage));
                }
            }
            Command::Embed { inputs, pooling, deadline, reply } => {
                self.embeds.push_back(EmbedJob::new(inputs, pooling, deadline, reply));
            }
            Command::Wake => {}
            Command::Barrier { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// The open sequence `seq`, free for a new request.
    fn sequence(&mut self, seq: SeqId) -> Result<&mut Sequence, LlmError> {
        let s = self.seqs[seq.index()].as_mut().ok_or_else(|| LlmError::EngineFailure("session is closed".into()))?;
        // A stream whose reader took its finish no longer holds the session.
        if s.stream.as_ref().is_some_and(|st| st.lock().drained) {
            s.stream = None;
        }
        if s.stream.is_some() || s.prefill.is_some() {
            return Err(LlmError::SessionBusy);
        }
        Ok(s)
    }

    /// The logits of `seq`'s last token, if the context still holds them
    /// (their batch index); they are used up by whoever takes them.
    fn take_fresh(&mut self, seq: SeqId) -> Option<usize> {
        match self.fresh {
            Some((s, index)) if s == seq => {
                self.fresh = None;
                Some(index)
            }
            _ => None,
        }
    }

    /// `seq`'s tokens are about to change without a decode.
    fn forget_logits(&mut self, seq: SeqId) {
        if self.fresh.is_some_and(|(s, _)| s == seq) {
            self.fresh = None;
        }
    }

    /// Tokenize and queue an append; `None` means the reply comes when the prefill is done.
    fn append(&mut self, seq: SeqId, input: Input, reply: &Reply<u32>) -> Option<Result<u32, LlmError>> {
        let model = self.model;
        let s = match self.sequence(seq) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let new = match input {
            // BOS (for models that want one) opens a session, never a later turn.
            Input::Text(text) => match tokenize(model, &text, s.tokens.is_empty()) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            },
            Input::Tokens(tokens) => tokens,
        };
        if new.is_empty() {
            return Some(Ok(0));
        }
        let used = s.tokens.len();
        if used + new.len() > s.limit {
            let too_long = LlmError::PromptTooLong(ContextOverflow {
                requested: (used + new.len()).min(u32::MAX as usize) as u32,
                used: used as u32,
                limit: s.limit as u32,
            });
            let needed = used + new.len() - s.limit;
            if s.shift.is_none_or(|keep| new.len() > s.limit - keep) || self.shift(seq, needed).is_err() {
                return Some(Err(too_long));
            }
        }
        self.forget_logits(seq);
        let s = match open(&mut self.seqs, seq) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let used = s.tokens.len();
        let added = new.len() as u32;
        if s.turn_start.is_none() {
            s.turn_at = Some(std::time::Instant::now());
        }
        s.turn_start.get_or_insert(s.n_past);
        s.tokens.extend(new);
        s.prefill = Some(Prefill { added, reply: reply.clone(), rollback_len: used, since: std::time::Instant::now() });
        self.prefills.push_back(seq);
        None
    }

    /// Evaluate the next chunk of the first waiting append. Its final chunk
    /// computes the logits of its last token and leaves them for a
    /// generation that follows at once.
    fn prefill_chunk(&mut self) {
        let Some(&seq) = self.prefills.front() else { return };
        let Some(s) = self.seqs[seq.index()].as_mut() else {
            self.prefills.pop_front();
            return;
        };
        let (start, len) = (s.n_past, s.tokens.len());
        let end = len.min(start + PREFILL_CHUNK);
        self.batch.clear();
        for (i, &token) in s.tokens[start..end].iter().enumerate() {
            let pos = start + i;
            self.batch.add(token, pos, seq.id(), pos + 1 == len);
        }
        if let Err(e) = self.decode() {
            return self.fail_prefill(seq, format!("prefill decode failed: {e}"));
        }
        self.copies_applied();
        let Ok(s) = open(&mut self.seqs, seq) else { return };
        s.n_past = end;
        if end == len {
            self.prefills.pop_front();
            if let Some(p) = s.prefill.take() {
                let ms = p.since.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(seq = seq.index(), "prefill done: {} tokens in {ms:.2} ms", p.added);
                let _ = p.reply.send(Ok(p.added));
            }
            self.fresh = Some((seq, end - start - 1));
        }
    }

    fn fail_prefill(&mut self, seq: SeqId, why: String) {
        self.prefills.pop_front();
        let Some(s) = self.seqs[seq.index()].as_mut() else { return };
        if let Some(p) = s.prefill.take() {
            s.tokens.truncate(p.rollback_len);
            s.n_past = s.n_past.min(p.rollback_len);
            let keep = s.n_past;
            self.remove_kv_from(seq, keep);
            let _ = p.reply.send(Err(LlmError::EngineFailure(why)));
        }
    }

    /// Raw logits for the token after `seq`'s last (base wasi-nn's tensor mode).
    fn logits(&mut self, seq: SeqId) -> Result<Vec<f32>, LlmError> {
        if self.sequence(seq)?.tokens.is_empty() {
            return Err(LlmError::invalid("the session is empty: there are no logits to compute"));
        }
        let index = match self.take_fresh(seq) {
            Some(index) => index,
            None => {
                self.decode_last(seq, true)?;
                0
            }
        };
        Ok(self.ctx.logits(index).to_vec())
    }

    /// Decode the batch with this lane's current share of the threads.
    fn decode(&mut self) -> Result<(), String> {
        self.fresh = None;
        self.cores.set_busy(&mut self.busy, true);
        self.ctx.use_threads(self.cores.share());
        self.ctx.decode(&self.batch)
    }

    /// A decode ran, so the context has applied every queued KV copy.
    fn copies_applied(&mut self) {
        for s in self.seqs.iter_mut().flatten() {
            s.copy_pending = false;
        }
    }
}

/// The open sequence `seq`. Every caller has checked that it is open; an
/// error here means the scheduler's own bookkeeping is wrong, and it fails
/// the one request instead of panicking the lane.
fn open(seqs: &mut [Option<Sequence>], seq: SeqId) -> Result<&mut Sequence, LlmError> {
    seqs.get_mut(seq.index())
        .and_then(Option::as_mut)
        .ok_or_else(|| LlmError::EngineFailure(format!("sequence {} is not open", seq.index())))
}

/// However the scheduler stops (a panic included), no reader may wait forever,
/// and the other lanes get its threads back.
impl Drop for Scheduler<'_> {
    fn drop(&mut self) {
        self.cores.set_busy(&mut self.busy, false);
        for s in self.seqs.iter_mut().flatten() {
            if let Some(stream) = s.stream.take() {
                stream.push(Item::Failed(LlmError::EngineFailure("the model's scheduler stopped".into())));
            }
        }
    }
}
