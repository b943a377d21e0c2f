//! Embedding jobs on the lane's thread: a context of their own (the
//! backend's [`Embedder`], made at the first job, returning every token's
//! last hidden state), one chunk
//! ([`EMBED_CHUNK`] tokens) of one input per turn of the loop, so a long batch of inputs never
//! stalls the lane's generations for more than a chunk. Pooling happens
//! here, over the chunks (see `engine/embed.rs` for why not llama.cpp's).

use super::Scheduler;
use crate::backend::{ContextSetup, Embedder, Model};
use crate::engine::params::Pooling;
use crate::engine::protocol::Reply;
use crate::engine::quota::Deadline;
use crate::error::LlmError;

/// Tokens evaluated per embedding decode; also the embedding context's
/// batch. Every token of a chunk is an output, and llama.cpp's output
/// buffer holds logits for each (the vocabulary's width): 128 keeps that
/// to 25 MB for SmolLM2 and 134 MB for gemma3's 262k-token vocabulary.
pub(in crate::engine) const EMBED_CHUNK: usize = 128;

/// One call's inputs (checked: each 1..=context tokens, valid ids) and how
/// far it has come.
pub(super) struct EmbedJob {
    inputs: Vec<Vec<u32>>,
    pooling: Pooling,
    deadline: Option<Deadline>,
    reply: Reply<Vec<(Vec<f32>, u32)>>,
    /// The finished inputs' vectors and token counts.
    done: Vec<(Vec<f32>, u32)>,
    /// Tokens of the current input evaluated so far.
    n_past: usize,
    /// The current input's pooled vector so far (a sum, for the mean).
    pooled: Vec<f64>,
}

impl EmbedJob {
    pub fn new(
        inputs: Vec<Vec<u32>>,
        pooling: Pooling,
        deadline: Option<Deadline>,
        reply: Reply<Vec<(Vec<f32>, u32)>>,
    ) -> Self {
        Self { inputs, pooling, deadline, reply, done: Vec::new(), n_past: 0, pooled: Vec::new() }
    }

    /// Fold the hidden state of the current input's token at `pos` into its vector.
    fn pool(&mut self, pos: usize, len: usize, state: &[f32]) {
        if self.pooled.len() != state.len() {
            self.pooled = vec![0.0; state.len()];
        }
        let take = match self.pooling {
            Pooling::Mean => {
                self.pooled.iter_mut().zip(state).for_each(|(p, s)| *p += f64::from(*s));
                return;
            }
            Pooling::Cls => pos == 0,
            Pooling::Last => pos + 1 == len,
        };
        if take {
            self.pooled.iter_mut().zip(state).for_each(|(p, s)| *p = f64::from(*s));
        }
    }

    /// The current input is evaluated: keep its vector, start the next.
    fn finish_input(&mut self, len: usize) {
        let scale = if self.pooling == Pooling::Mean { 1.0 / len as f64 } else { 1.0 };
        let vector = self.pooled.iter().map(|p| (p * scale) as f32).collect();
        self.done.push((vector, len as u32));
        self.pooled.clear();
        self.n_past = 0;
    }
}

/// The embedding context, until the first job makes it.
pub(super) enum EmbedContext<'m> {
    /// What to make it with.
    NotYet(ContextSetup),
    Ready(Box<dyn Embedder + 'm>),
    Failed(String),
}

impl<'m> EmbedContext<'m> {
    /// The embedding context of `model`, made on first use.
    fn get(&mut self, model: &'m dyn Model) -> Result<&mut (dyn Embedder + 'm), LlmError> {
        if let EmbedContext::NotYet(setup) = self {
            *self = match model.new_embedder(setup) {
                Ok(embedder) => EmbedContext::Ready(embedder),
                Err(e) => EmbedContext::Failed(e),
            };
        }
        match self {
            EmbedContext::Ready(embedder) => Ok(&mut **embedder),
            EmbedContext::Failed(why) => Err(LlmError::EngineFailure(why.clone())),
            EmbedContext::NotYet(_) => Err(LlmError::EngineFailure("the embedding context was not made".into())),
        }
    }
}

impl<'m> Scheduler<'m> {
    /// Evaluate the next chunk of the first waiting embedding job; answer
    /// it once its last input is done.
    pub(super) fn embed_chunk(&mut self) {
        let Some(job) = self.embeds.front_mut() else { return };
        if let Some(deadline) = job.deadline.filter(|d| std::time::Instant::now() >= d.at) {
            return self.fail_embed(deadline.error());
        }
        let embedder = match self.embed_context.get(self.model) {
            Ok(e) => e,
            Err(e) => return self.fail_embed(e),
        };
        let input = &job.inputs[job.done.len()];
        let (start, len) = (job.n_past, input.len());
        let end = len.min(start + EMBED_CHUNK);
        // The lane's own workers sleep while the embedder's run on the cores.
        self.ctx.rest();
        self.cores.set_busy(&mut self.busy, true);
        embedder.use_threads(self.cores.share());
        let decoded = embedder.decode(&input[start..end], start);
        embedder.rest();
        if let Err(e) = decoded {
            return self.fail_embed(LlmError::EngineFailure(format!("embedding decode failed: {e}")));
        }
        for i in 0..end - start {
            let state = match embedder.hidden(i) {
                Ok(state) => state,
                Err(e) => return self.fail_embed(LlmError::EngineFailure(format!("embeddings: {e}"))),
            };
            job.pool(start + i, len, state);
        }
        job.n_past = end;
        if end < len {
            return;
        }
        job.finish_input(len);
        embedder.clear();
        if job.done.len() == job.inputs.len()
            && let Some(job) = self.embeds.pop_front()
        {
            let _ = job.reply.send(Ok(job.done));
        }
    }

    /// Answer the first job with `error` and drop it.
    fn fail_embed(&mut self, error: LlmError) {
        if let Some(job) = self.embeds.pop_front() {
            let _ = job.reply.send(Err(error));
        }
        if let EmbedContext::Ready(embedder) = &mut self.embed_context {
            embedder.clear();
        }
    }
}
