//! llama.cpp driven directly through llama-cpp-2, in this process, on the
//! engine's own loaded model: the baselines every guest figure is divided by.
//!
//! Settings match the engine's: 2 threads (unless partitioned), batch 512,
//! the same per-session context, greedy with end-of-generation biased away.

use std::num::NonZeroU32;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use wasi_nn_llm_host::engine::{Engine, backend};

const BATCH: u32 = 512;

/// A single turn as llama.cpp's own tools run it: the prompt in one batch
/// with logits for its last token, then one token per decode.
pub struct Turn {
    pub ttft: Duration,
    pub decode: Duration,
}

fn context(model: &LlamaModel, ctx: u32, seqs: u32, threads: i32) -> Result<LlamaContext<'_>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(ctx * seqs))
        .with_n_batch(BATCH)
        .with_n_ubatch(BATCH)
        .with_n_seq_max(seqs)
        .with_kv_unified(false)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(backend()?, params).context("creating a llama.cpp context")
}

fn sampler(engine: &Engine) -> LlamaSampler {
    let info = engine.info();
    let biases: Vec<LlamaLogitBias> = [info.eos, info.eot]
        .into_iter()
        .flatten()
        .map(|id| LlamaLogitBias::new(LlamaToken(id as i32), f32::NEG_INFINITY))
        .collect();
    LlamaSampler::chain_simple([LlamaSampler::logit_bias(engine.model().n_vocab(), &biases), LlamaSampler::greedy()])
}

/// One turn: `prompt` (templated text), `n` tokens.
pub fn single(engine: &Engine, prompt: &str, n: u32, threads: i32) -> Result<Turn> {
    let model = engine.model();
    let mut ctx = context(model, engine.ctx_size(), 1, threads)?;
    let mut sampler = sampler(engine);
    let start = Instant::now();
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let end = prefill(&mut ctx, &tokens, 0)?;
    let mut token = sampler.sample(&ctx, -1);
    let ttft = start.elapsed();
    let mut batch = LlamaBatch::new(1, 1);
    for pos in end..end + n as i32 - 1 {
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        ctx.decode(&mut batch)?;
        token = sampler.sample(&ctx, -1);
    }
    Ok(Turn { ttft, decode: start.elapsed() - ttft })
}

/// Prefill `tokens` into sequence `seq` of `ctx` in batches, with logits for
/// the last token only; returns the position after it.
fn prefill(ctx: &mut LlamaContext, tokens: &[LlamaToken], seq: i32) -> Result<i32> {
    let mut batch = LlamaBatch::new(BATCH as usize, 1);
    for (chunk_at, chunk) in tokens.chunks(BATCH as usize).enumerate() {
        batch.clear();
        for (i, &t) in chunk.iter().enumerate() {
            let pos = chunk_at * BATCH as usize + i;
            batch.add(t, pos as i32, &[seq], pos == tokens.len() - 1)?;
        }
        ctx.decode(&mut batch)?;
    }
    Ok(tokens.len() as i32)
}

/// Baseline (a): one context, `k` sequences, one batch of `k` tokens per
/// step on all threads. Returns the time to decode `n` tokens each, after
/// every prompt is prefilled.
pub fn batched(engine: &Engine, prompt: &str, k: u32, n: u32, threads: i32) -> Result<Duration> {
    let model = engine.model();
    let mut ctx = context(model, engine.ctx_size(), k, threads)?;
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut samplers: Vec<LlamaSampler> = (0..k).map(|_| sampler(engine)).collect();
    let mut next = Vec::new();
    let mut pos = 0;
    for seq in 0..k as i32 {
        pos = prefill(&mut ctx, &tokens, seq)?;
        next.push(samplers[seq as usize].sample(&ctx, -1));
    }
    let start = Instant::now();
    let mut batch = LlamaBatch::new(k as usize, k as i32);
    for step in 1..n {
        batch.clear();
        for (seq, &t) in next.iter().enumerate() {
            batch.add(t, pos + step as i32 - 1, &[seq as i32], true)?;
        }
        ctx.decode(&mut batch)?;
        for (seq, t) in next.iter_mut().enumerate() {
            *t = samplers[seq].sample(&ctx, seq as i32);
        }
    }
    Ok(start.elapsed())
}

/// Baseline (b): `k` independent contexts, each on its own thread with the
/// threads split between them (at least one each), as `k` single-session
/// processes would run. Returns the wall time for all to decode `n` tokens.
pub fn partitioned(engine: &Engine, prompt: &str, k: u32, n: u32, threads: i32) -> Result<Duration> {
    let per = (threads / k as i32).max(1);
    let model = engine.model();
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    // Each context is made and prefilled on its own thread; the clock starts
    // when all are ready.
    let ready = Barrier::new(k as usize + 1);
    std::thread::scope(|scope| -> Result<Duration> {
        let workers: Vec<_> = (0..k)
            .map(|_| {
                let (ready, tokens) = (&ready, &tokens);
                scope.spawn(move || -> Result<()> {
                    let prepared = context(model, engine.ctx_size(), 1, per).and_then(|mut ctx| {
                        let pos = prefill(&mut ctx, tokens, 0)?;
                        Ok((ctx, pos))
                    });
                    ready.wait();
                    let (mut ctx, mut pos) = prepared?;
                    let mut sampler = sampler(engine);
                    let mut token = sampler.sample(&ctx, -1);
                    let mut batch = LlamaBatch::new(1, 1);
                    for _ in 1..n {
                        batch.clear();
                        batch.add(token, pos, &[0], true)?;
                        ctx.decode(&mut batch)?;
                        token = sampler.sample(&ctx, -1);
                        pos += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a decoding thread panicked"))??;
        }
        Ok(start.elapsed())
    })
}
