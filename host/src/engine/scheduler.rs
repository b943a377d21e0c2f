//! The one thread per lane that owns the lane's llama.cpp context and decides
//! what to decode next.
//!
//! Every session of the lane is a llama.cpp sequence in this context. Each
//! decode first takes the lane's share of the model's threads (see
//! `lanes.rs`). Each turn of the loop decodes one token for *every* generation that has room in its stream
//! buffer, in a single batch (so concurrency is batching, not contention),
//! then one prefill chunk of one appending session, so a long prompt never
//! stalls the other streams for more than a chunk.
//!
//! Invariants kept per sequence (see [`Sequence`]): the KV cache holds
//! `tokens[..n_past]`, and `n_past <= tokens.len()`; a generation step decodes
//! the last token and samples from its logits right away, so logits are never
//! read after another decode overwrote them. Every position handed to
//! llama.cpp is below the session's limit, which is at most the context's
//! per-sequence size, and every batch is at most `n_batch` tokens: nothing a
//! guest sends can reach a llama.cpp assertion.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::params::GenerateParams;
use super::quota::Deadline;
use super::sampler;
use super::snapshot::Snapshot;
use super::stream::{Finish, FinishReason, Item, Shared, Usage};
use super::text::{Pushed, TextAssembler, TokenLogprob};
use super::threads::{Cores, Workers};
use super::tokens::tokenize;
use crate::error::{ContextOverflow, LlmError, SnapshotError};

/// Tokens decoded per prefill batch; also the context's `n_batch`.
pub(crate) const PREFILL_CHUNK: usize = 512;

pub(crate) type Reply<T> = SyncSender<Result<T, LlmError>>;

/// What session handles and streams ask of the scheduler.
pub(crate) enum Command {
    /// `shift`: keep this many first tokens and drop the oldest after them
    /// when the context fills (else refuse).
    Open {
        seq: i32,
        limit: u32,
        seed: Option<u64>,
        shift: Option<u32>,
    },
    Close {
        seq: i32,
    },
    Append {
        seq: i32,
        input: Input,
        reply: Reply<u32>,
    },
    /// The session's tokens.
    Tokens {
        seq: i32,
        reply: Reply<Vec<LlamaToken>>,
    },
    Rewind {
        seq: i32,
        n: u32,
        reply: Reply<u32>,
    },
    Reset {
        seq: i32,
        reply: Reply<()>,
    },
    /// Copy `seq` into the free sequence `child`.
    Fork {
        seq: i32,
        child: i32,
        reply: Reply<()>,
    },
    /// The session as a snapshot of the model with this identity.
    Save {
        seq: i32,
        model: [u8; 32],
        reply: Reply<Snapshot>,
    },
    /// Load a checked snapshot into the freshly opened `seq`.
    Restore {
        seq: i32,
        snapshot: Snapshot,
        reply: Reply<()>,
    },
    Generate {
        seq: i32,
        params: GenerateParams,
        deadline: Option<Deadline>,
        reply: Reply<Arc<Shared>>,
    },
    /// Evaluate the session's last token and return its raw logits (base
    /// wasi-nn's tensor mode).
    Logits {
        seq: i32,
        reply: Reply<Vec<f32>>,
    },
    /// A reader dropped or cancelled its stream before the end; the reply,
    /// if asked for, is the usage of what was delivered.
    Cancel {
        seq: i32,
        stream: u64,
        reply: Option<Reply<Usage>>,
    },
    /// A reader made room in a full buffer.
    Wake,
    /// Answered once every command sent before it is handled.
    Barrier {
        reply: Reply<()>,
    },
}

/// What an append adds: guest text, or token ids already checked against the vocabulary.
pub(crate) enum Input {
    Text(String),
    Tokens(Vec<LlamaToken>),
}

/// One session's state, mirrored token by token (llama.cpp has no API that
/// reports what a sequence holds).
struct Sequence {
    limit: usize,
    seed: Option<u64>,
    /// Context shift: the first tokens always kept; `None` refuses instead.
    shift: Option<usize>,
    tokens: Vec<LlamaToken>,
    /// `tokens[..n_past]` are in the KV cache.
    n_past: usize,
    /// `n_past` when the current turn's first append came; `None` once a
    /// generation has started. Usage's cached-tokens comes from it.
    turn_start: Option<usize>,
    prefill: Option<Prefill>,
    generation: Option<Generation>,
    /// The last stream handed out, until its reader has drained it.
    stream: Option<Arc<Shared>>,
    /// A fork's KV copy that llama.cpp applies only at the next decode.
    copy_pending: bool,
}

impl Sequence {
    /// Tokens generated but not yet taken by the stream's reader.
    fn undelivered(&self) -> usize {
        self.generation.as_ref().map_or(0, |g| g.text.undelivered_tokens())
            + self.stream.as_ref().map_or(0, |st| st.lock().undelivered_tokens())
    }
}

/// An append waiting for its tokens to be evaluated.
struct Prefill {
    added: u32,
    reply: Reply<u32>,
    /// Where to return to if a decode fails midway.
    rollback_len: usize,
}

struct Generation {
    sampler: LlamaSampler,
    text: TextAssembler,
    remaining: Option<u32>,
    logprobs: Option<u32>,
    usage: Usage,
    shared: Arc<Shared>,
    deadline: Option<Deadline>,
}

pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    seqs: Vec<Option<Sequence>>,
    prefills: VecDeque<i32>,
    batch: LlamaBatch<'static>,
    cores: Arc<Cores>,
    /// Whether this lane counts as busy in `cores`.
    busy: bool,
    workers: Workers,
}

impl<'m> Scheduler<'m> {
    /// `threads`: what `ctx` was created with.
    pub fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        threads: u32,
        sequences: usize,
        cores: Arc<Cores>,
    ) -> Self {
        let capacity = PREFILL_CHUNK.max(sequences);
        Self {
            model,
            ctx,
            seqs: (0..sequences).map(|_| None).collect(),
            prefills: VecDeque::new(),
            batch: LlamaBatch::new(capacity, 1),
            cores,
            busy: false,
            workers: Workers::new(threads),
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
                self.workers.rest(&self.ctx);
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
        }
    }

    fn has_work(&self) -> bool {
        !self.prefills.is_empty()
            || self.seqs.iter().flatten().any(|s| s.generation.as_ref().is_some_and(|g| g.shared.lock().has_room()))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Open { seq, limit, seed, shift } => {
                self.seqs[seq as usize] = Some(Sequence {
                    limit: limit as usize,
                    seed,
                    shift: shift.map(|n| n as usize),
                    tokens: Vec::new(),
                    n_past: 0,
                    turn_start: None,
                    prefill: None,
                    generation: None,
                    stream: None,
                    copy_pending: false,
                });
            }
            Command::Close { seq } => {
                if let Some(g) = self.seqs[seq as usize].take().and_then(|s| s.generation) {
                    g.shared.push(Item::Finish(Finish { reason: FinishReason::Cancelled, usage: g.usage }));
                }
                self.prefills.retain(|&q| q != seq);
                let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            }
            Command::Append { seq, input, reply } => {
                let result = self.append(seq, input, &reply);
                if let Some(result) = result {
                    let _ = reply.send(result);
                }
            }
            Command::Generate { seq, params, deadline, reply } => {
                let _ = reply.send(self.start_generation(seq, &params, deadline));
            }
            Command::Logits { seq, reply } => {
                let _ = reply.send(self.logits(seq));
            }
            Command::Tokens { seq, reply } => {
                let tokens = self.seqs[seq as usize].as_ref().map(|s| s.tokens.clone()).unwrap_or_default();
                let _ = reply.send(Ok(tokens));
            }
            Command::Rewind { seq, n, reply } => {
                let _ = reply.send(self.rewind(seq, n));
            }
            Command::Reset { seq, reply } => {
                let _ = reply.send(self.rewind(seq, u32::MAX).map(|_| ()));
            }
            Command::Fork { seq, child, reply } => {
                let _ = reply.send(self.fork(seq, child));
            }
            Command::Save { seq, model, reply } => {
                let _ = reply.send(self.save(seq, model));
            }
            Command::Restore { seq, snapshot, reply } => {
                let result = self.restore(seq, snapshot);
                if result.is_err() {
                    let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                }
                let _ = reply.send(result);
            }
            Command::Cancel { seq, stream, reply } => {
                let usage = self.cancel(seq, stream);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(usage));
                }
            }
            Command::Wake => {}
            Command::Barrier { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn sequence(&mut self, seq: i32) -> Result<&mut Sequence, LlmError> {
        let s = self.seqs[seq as usize].as_mut().ok_or_else(|| LlmError::EngineFailure("session is closed".into()))?;
        // A stream whose reader took its finish no longer holds the session.
        if s.stream.as_ref().is_some_and(|st| st.lock().drained) {
            s.stream = None;
        }
        if s.stream.is_some() || s.prefill.is_some() {
            return Err(LlmError::SessionBusy);
        }
        Ok(s)
    }

    /// Tokenize and queue an append; `None` means the reply comes when the prefill is done.
    fn append(&mut self, seq: i32, input: Input, reply: &Reply<u32>) -> Option<Result<u32, LlmError>> {
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
        let s = match open(&mut self.seqs, seq) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let used = s.tokens.len();
        let added = new.len() as u32;
        s.turn_start.get_or_insert(s.n_past);
        s.tokens.extend(new);
        // The last token stays pending: the first generation step decodes it
        // and samples from its logits.
        if s.n_past + 1 >= s.tokens.len() {
            return Some(Ok(added));
        }
        s.prefill = Some(Prefill { added, reply: reply.clone(), rollback_len: used });
        self.prefills.push_back(seq);
        None
    }

    fn prefill_chunk(&mut self) {
        let Some(&seq) = self.prefills.front() else { return };
        let Some(s) = self.seqs[seq as usize].as_mut() else {
            self.prefills.pop_front();
            return;
        };
        let end = (s.tokens.len() - 1).min(s.n_past + PREFILL_CHUNK);
        self.batch.clear();
        for (i, &token) in s.tokens[s.n_past..end].iter().enumerate() {
            if let Err(e) = self.batch.add(token, (s.n_past + i) as i32, &[seq], false) {
                return self.fail_prefill(seq, format!("batch: {e}"));
            }
        }
        if let Err(e) = self.decode() {
            return self.fail_prefill(seq, format!("prefill decode failed: {e}"));
        }
        self.copies_applied();
        let Ok(s) = open(&mut self.seqs, seq) else { return };
        s.n_past = end;
        if end + 1 >= s.tokens.len() {
            self.prefills.pop_front();
            if let Some(p) = s.prefill.take() {
                let _ = p.reply.send(Ok(p.added));
            }
        }
    }

    fn fail_prefill(&mut self, seq: i32, why: String) {
        self.prefills.pop_front();
        let Some(s) = self.seqs[seq as usize].as_mut() else { return };
        if let Some(p) = s.prefill.take() {
            s.tokens.truncate(p.rollback_len);
            s.n_past = s.n_past.min(p.rollback_len);
            let _ = self.ctx.kv_cache_seq_rm(seq, Some(s.n_past as u32), None);
            let _ = p.reply.send(Err(LlmError::EngineFailure(why)));
        }
    }

    fn start_generation(
        &mut self,
        seq: i32,
        params: &GenerateParams,
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
        let sampler = sampler::build(model, params, s.seed, &s.tokens, s.limit)?;
        self.uncache_last(seq)?;
        let s = open(&mut self.seqs, seq)?;
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
        });
        s.stream = Some(shared.clone());
        Ok(shared)
    }

    /// One decode for every generation with room in its buffer, then sampling.
    fn step_generations(&mut self) {
        self.batch.clear();
        let mut members = Vec::new();
        for seq in 0..self.seqs.len() {
            let Some(s) = self.seqs[seq].as_mut() else { continue };
            let Some(g) = s.generation.as_ref() else { continue };
            if !g.shared.lock().has_room() {
                continue;
            }
            if let Some(deadline) = g.deadline.filter(|d| std::time::Instant::now() >= d.at) {
                self.fail_generation(seq, deadline.error());
                continue;
            }
            if s.tokens.len() >= s.limit && (s.shift.is_none() || self.shift(seq as i32, 1).is_err()) {
                self.finish(seq, FinishReason::ContextFull);
                continue;
            }
            let Ok(s) = open(&mut self.seqs, seq as i32) else { continue };
            let pos = s.tokens.len() - 1;
            if let Err(e) = self.batch.add(s.tokens[pos], pos as i32, &[seq as i32], true) {
                self.fail_generation(seq, LlmError::EngineFailure(format!("batch: {e}")));
                continue;
            }
            members.push(seq);
        }
        if members.is_empty() {
            return;
        }
        if let Err(e) = self.decode() {
            for seq in members {
                self.fail_generation(seq, LlmError::EngineFailure(format!("decode failed: {e}")));
            }
            return;
        }
        self.copies_applied();
        for (index, seq) in members.into_iter().enumerate() {
            self.sample(seq, index as i32);
        }
    }

    fn sample(&mut self, seq: usize, index: i32) {
        let model = self.model;
        let Some(s) = self.seqs[seq].as_mut() else { return };
        let Some(g) = s.generation.as_mut() else { return };
        s.n_past = s.tokens.len();
        let token = g.sampler.sample(&self.ctx, index);
        let vocab = model.vocab();
        if vocab.is_eog(token) {
            return self.finish(seq, FinishReason::EndOfSequence);
        }
        let logprob = g.logprobs.map(|n| logprob(self.ctx.get_logits_ith(index), token, n as usize));
        s.tokens.push(token);
        let bytes = vocab.token_to_piece(token, false, None);
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
                    }
                }
            }
            Pushed::Stopped(m) => {
                // Drop what follows the stop string, keep the text before it.
                let keep = s.tokens.len() - m.dropped;
                s.tokens.truncate(keep);
                let mut chunk = m.chunk;
                if !m.straddle.is_empty() {
                    let retok = model.vocab().tokenize(&m.straddle, false, false);
                    chunk.tokens.extend(retok.iter().map(|t| t.0 as u32));
                    s.tokens.extend(retok);
                }
                self.rewind_kv(seq, keep);
                let Some(g) = self.seqs[seq].as_mut().and_then(|s| s.generation.as_mut()) else { return };
                g.usage.generated_tokens += chunk.tokens.len() as u32;
                g.shared.push(Item::Chunk(chunk));
                self.finish(seq, FinishReason::Stop(m.stop));
            }
        }
    }

    /// Drop KV entries from position `keep` on, if the cache holds any.
    fn rewind_kv(&mut self, seq: usize, keep: usize) {
        let Some(s) = self.seqs[seq].as_mut() else { return };
        if s.n_past > keep {
            s.n_past = keep;
            if self.ctx.kv_cache_seq_rm(seq as i32, Some(keep as u32), None).is_err() {
                // The model cannot drop a tail (recurrent state): start over.
                let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                s.n_past = 0;
            }
        }
    }

    fn finish(&mut self, seq: usize, reason: FinishReason) {
        let Some(s) = self.seqs[seq].as_mut() else { return };
        let Some(mut g) = s.generation.take() else { return };
        if let Some(chunk) = g.text.flush() {
            g.usage.generated_tokens += chunk.tokens.len() as u32;
            g.shared.push(Item::Chunk(chunk));
        }
        g.shared.push(Item::Finish(Finish { reason, usage: g.usage }));
    }

    fn fail_generation(&mut self, seq: usize, error: LlmError) {
        let Some(s) = self.seqs[seq].as_mut() else { return };
        // Keep what was delivered; the undelivered tail leaves the session.
        let keep = s.tokens.len() - s.undelivered();
        let Some(g) = s.generation.take() else { return };
        g.shared.push(Item::Failed(error));
        s.tokens.truncate(keep);
        self.rewind_kv(seq, keep);
    }

    /// The reader is gone or gave up: the session keeps exactly the chunks it
    /// took. Returns the usage of what was delivered.
    fn cancel(&mut self, seq: i32, stream: u64) -> Usage {
        let Some(s) = self.seqs[seq as usize].as_mut() else { return Usage::default() };
        if s.stream.as_ref().is_none_or(|st| st.id != stream) {
            return Usage::default();
        }
        let undelivered = s.undelivered();
        let Some(shared) = s.stream.take() else { return Usage::default() };
        let finished = shared.lock().finished_usage();
        let mut usage = match s.generation.take() {
            Some(g) => g.usage,
            None => finished.unwrap_or_default(),
        };
        usage.generated_tokens = usage.generated_tokens.saturating_sub(undelivered as u32);
        let keep = s.tokens.len() - undelivered;
        s.tokens.truncate(keep);
        self.rewind_kv(seq as usize, keep);
        usage
    }

    /// Drop the last `n` tokens (all of them for `u32::MAX`); returns the new length.
    fn rewind(&mut self, seq: i32, n: u32) -> Result<u32, LlmError> {
        let s = self.sequence(seq)?;
        let len = s.tokens.len();
        let keep = match n {
            u32::MAX => 0,
            n if n as usize > len => {
                return Err(LlmError::invalid(format!("cannot rewind {n} tokens: the session holds {len}")));
            }
            n => len - n as usize,
        };
        s.tokens.truncate(keep);
        s.turn_start = s.turn_start.map(|t| t.min(keep));
        if keep == 0 {
            s.n_past = 0;
            s.turn_start = None;
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        } else {
            self.rewind_kv(seq as usize, keep);
        }
        Ok(keep as u32)
    }

    /// Make `child` a copy of `seq`: same tokens, and the KV cache copied
    /// whole inside llama.cpp (the only cross-stream copy it allows), so the
    /// fork needs no prefill.
    fn fork(&mut self, seq: i32, child: i32) -> Result<(), LlmError> {
        let parent = self.sequence(seq)?;
        let copy = Sequence {
            limit: parent.limit,
            seed: parent.seed,
            shift: parent.shift,
            tokens: parent.tokens.clone(),
            n_past: parent.n_past,
            turn_start: parent.turn_start,
            prefill: None,
            generation: None,
            stream: None,
            copy_pending: true,
        };
        self.ctx
            .copy_kv_cache_seq(seq, child, None, None)
            .map_err(|e| LlmError::EngineFailure(format!("copying the KV cache: {e}")))?;
        self.seqs[child as usize] = Some(copy);
        Ok(())
    }
}

impl Scheduler<'_> {
    /// Context shift (llama-server's): drop at least `needed` tokens, and
    /// half of what may go, from just after the first `n_keep`, and move the
    /// rest down in the KV cache. Tokens a stream has not delivered yet never
    /// go.
    fn shift(&mut self, seq: i32, needed: usize) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        let keep = s.shift.unwrap_or(s.limit);
        // Only evaluated tokens can move, and never the undelivered tail.
        let movable = s.n_past.min(s.tokens.len() - s.undelivered()).saturating_sub(keep);
        let drop = needed.max(movable / 2).min(movable);
        if drop < needed || drop == 0 {
            return Err(LlmError::ContextFull(ContextOverflow {
                requested: (s.tokens.len() + needed) as u32,
                used: s.tokens.len() as u32,
                limit: s.limit as u32,
            }));
        }
        let failed = |e: &dyn std::fmt::Display| LlmError::EngineFailure(format!("context shift: {e}"));
        self.ctx.kv_cache_seq_rm(seq, Some(keep as u32), Some((keep + drop) as u32)).map_err(|e| failed(&e))?;
        self.ctx.kv_cache_seq_add(seq, Some((keep + drop) as u32), None, -(drop as i32)).map_err(|e| failed(&e))?;
        let s = open(&mut self.seqs, seq)?;
        s.tokens.drain(keep..keep + drop);
        s.n_past -= drop;
        s.turn_start = s.turn_start.map(|t| if t > keep { t.saturating_sub(drop).max(keep) } else { t });
        Ok(())
    }

    /// Decode the batch with this lane's current share of the threads.
    fn decode(&mut self) -> Result<(), llama_cpp_2::DecodeError> {
        self.cores.set_busy(&mut self.busy, true);
        self.workers.run_on(&mut self.ctx, self.cores.share());
        self.ctx.decode(&mut self.batch)
    }

    /// A decode ran, so llama.cpp has applied every queued KV copy.
    fn copies_applied(&mut self) {
        for s in self.seqs.iter_mut().flatten() {
            s.copy_pending = false;
        }
    }

    /// Make the last token uncached, so that decoding it again yields its
    /// logits (they are gone once anything else was decoded).
    fn uncache_last(&mut self, seq: i32) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        let last = s.tokens.len() - 1;
        if s.n_past < last {
            // Only after a model that cannot drop a tail was rewound.
            return Err(LlmError::Unsupported("this model cannot rewind its state; reset the session".into()));
        }
        if s.n_past > last {
            self.ctx
                .kv_cache_seq_rm(seq, Some(last as u32), None)
                .map_err(|e| LlmError::EngineFailure(format!("cannot rewind the KV cache: {e}")))?;
            s.n_past = last;
        }
        Ok(())
    }

    /// Decode the last token alone, so the KV cache holds every token.
    fn decode_last(&mut self, seq: i32, logits: bool) -> Result<(), LlmError> {
        self.uncache_last(seq)?;
        let s = open(&mut self.seqs, seq)?;
        let failed = |e: &dyn std::fmt::Display| LlmError::EngineFailure(format!("decoding the last token: {e}"));
        self.batch.clear();
        self.batch.add(s.tokens[s.n_past], s.n_past as i32, &[seq], logits).map_err(|e| failed(&e))?;
        self.decode().map_err(|e| failed(&e))?;
        self.copies_applied();
        let s = open(&mut self.seqs, seq)?;
        s.n_past += 1;
        Ok(())
    }

    /// Make a forked sequence's KV copy real (llama.cpp copies between
    /// streams lazily, at the next decode) by decoding its last token.
    fn settle(&mut self, seq: i32) -> Result<(), LlmError> {
        let s = open(&mut self.seqs, seq)?;
        if s.tokens.is_empty() {
            s.copy_pending = false;
            return Ok(());
        }
        self.decode_last(seq, false)
    }

    fn logits(&mut self, seq: i32) -> Result<Vec<f32>, LlmError> {
        if self.sequence(seq)?.tokens.is_empty() {
            return Err(LlmError::invalid("the session is empty: there are no logits to compute"));
        }
        self.decode_last(seq, true)?;
        Ok(self.ctx.get_logits_ith(0).to_vec())
    }

    fn save(&mut self, seq: i32, model: [u8; 32]) -> Result<Snapshot, LlmError> {
        if self.sequence(seq)?.copy_pending {
            self.settle(seq)?;
        }
        let s = open(&mut self.seqs, seq)?;
        let file = StateFile::new(seq);
        self.ctx
            .state_seq_save_file(&file.0, seq, &s.tokens[..s.n_past])
            .map_err(|e| LlmError::EngineFailure(format!("saving the KV state: {e}")))?;
        let state =
            std::fs::read(&file.0).map_err(|e| LlmError::EngineFailure(format!("reading the KV state: {e}")))?;
        Ok(Snapshot {
            model,
            limit: s.limit as u32,
            seed: s.seed,
            tokens: s.tokens.iter().map(|t| t.0 as u32).collect(),
            n_past: s.n_past as u32,
            state,
        })
    }

    /// Load a snapshot the caller has checked (format, checksum, model,
    /// token ids, limit) into the empty sequence `seq`.
    fn restore(&mut self, seq: i32, snapshot: Snapshot) -> Result<(), LlmError> {
        let file = StateFile::new(seq);
        std::fs::write(&file.0, &snapshot.state)
            .map_err(|e| LlmError::EngineFailure(format!("writing the KV state: {e}")))?;
        let n_past = snapshot.n_past as usize;
        let tokens: Vec<LlamaToken> = snapshot.tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
        let (loaded, _) = self
            .ctx
            .state_seq_load_file(&file.0, seq, n_past)
            .map_err(|_| LlmError::InvalidSnapshot(SnapshotError::Corrupted))?;
        if loaded[..] != tokens[..n_past] {
            return Err(LlmError::InvalidSnapshot(SnapshotError::Corrupted));
        }
        let s = self.sequence(seq)?;
        s.limit = snapshot.limit as usize;
        s.seed = snapshot.seed;
        s.tokens = tokens;
        s.n_past = n_past;
        s.turn_start = None;
        Ok(())
    }
}

/// A scratch file for llama.cpp's state API (the safe way to move a
/// sequence's state in and out), removed when dropped.
struct StateFile(std::path::PathBuf);

impl StateFile {
    fn new(seq: i32) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("wasi-nn-llm-{}-{seq}-{n}.state", std::process::id())))
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The open sequence `seq`. Every caller has checked that it is open; an
/// error here means the scheduler's own bookkeeping is wrong, and it fails
/// the one request instead of panicking the lane.
fn open(seqs: &mut [Option<Sequence>], seq: i32) -> Result<&mut Sequence, LlmError> {
    seqs.get_mut(seq as usize)
        .and_then(Option::as_mut)
        .ok_or_else(|| LlmError::EngineFailure(format!("sequence {seq} is not open")))
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

/// Log-probability of `token` and the `top` best alternatives, from raw logits.
fn logprob(logits: &[f32], token: LlamaToken, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    for (id, &l) in logits.iter().enumerate() {
        if best.len() < top || best.last().is_some_and(|&(_, b)| l > b) {
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (id as u32, l));
            best.truncate(top);
        }
    }
    let lp = |l: f32| l - log_sum;
    TokenLogprob {
        token: token.0 as u32,
        logprob: logits.get(token.0 as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(id, l)| (id, lp(l))).collect(),
    }
}
