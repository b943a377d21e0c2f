//! The second backend against llama.cpp, on one model: facts for the RFC
//! on what the seam costs and what candle does, not goals (the point of a
//! second backend is neutrality, not speed).
//!
//! Both engines are loaded in this process from the same GGUF with the same
//! threads and context, and every figure is taken in turn, llama.cpp then
//! candle, run after run, so the machine's drift falls on both alike:
//! - prefill of a 316-token prompt, and decode of 64 greedy tokens after
//!   it (depth 316, the depth the attention-kernel probe uses), through a
//!   session and its stream;
//! - restore of a ~1k-token conversation against prefilling it, each to
//!   its first token;
//! - the boundary cost per chunk: the decode step through the engine
//!   (session, scheduler, sampler, text assembly, stream) minus the same
//!   step driven directly on the backend's `Context` below the seam (one
//!   token, argmax), per token.

use std::time::Instant;

use anyhow::{Context as _, Result};
use wasi_nn_llm_host::backend::{self, BackendKind, Batch, ContextSetup, LoadConfig};
use wasi_nn_llm_host::engine::{Engine, EngineConfig, GenerateParams, Quota, SessionOptions};

use crate::report::{Table, median, num, ratio};
use crate::single::{PASSAGE, list};

/// The prompt's length for prefill and decode.
const DEPTH: usize = 316;
/// Tokens decoded after it.
const DECODE: u32 = 64;

/// One backend's engine and figures.
struct Side {
    kind: BackendKind,
    engine: Engine,
    prefill_tps: Vec<f64>,
    decode_tps: Vec<f64>,
    reprefill_ms: Vec<f64>,
    restore_ms: Vec<f64>,
    direct_ms: Vec<f64>,
}

pub fn run(path: &std::path::Path, name: &str, config: &EngineConfig, runs: usize) -> Result<String> {
    let mut sides = Vec::new();
    for kind in [BackendKind::LlamaCpp, BackendKind::Candle] {
        let engine = Engine::load(name, path, &EngineConfig { backend: kind, ..config.clone() })?;
        sides.push(Side {
            kind,
            engine,
            prefill_tps: Vec::new(),
            decode_tps: Vec::new(),
            reprefill_ms: Vec::new(),
            restore_ms: Vec::new(),
            direct_ms: Vec::new(),
        });
    }
    let prompt = prompt_of(&sides[0].engine, DEPTH)?;
    let conversation = prompt_of(&sides[0].engine, 1000)?;
    for run in 0..runs {
        for side in &mut sides {
            eprintln!("  backends {name}: {}, run {}/{runs}", side.kind, run + 1);
            let (prefill, decode) = prefill_and_decode(&side.engine, &prompt)?;
            side.prefill_tps.push(prompt.len() as f64 / prefill);
            side.decode_tps.push(decode);
            let (reprefill, restore) = restore_vs_prefill(&side.engine, &conversation)?;
            side.reprefill_ms.push(reprefill * 1e3);
            side.restore_ms.push(restore * 1e3);
            side.direct_ms.push(direct_step(path, name, side.kind, config, &prompt)? * 1e3);
        }
    }
    let mut table = Table::new(&[
        "backend",
        "prefill 316 tokens, tok/s",
        "decode at depth 316, tok/s",
        "re-prefill ~1k tokens → first token, ms",
        "restore → first token, ms",
        "restore speed-up",
        "step through the engine, ms",
        "step on the backend alone, ms",
        "boundary cost per chunk, ms",
    ]);
    for side in &sides {
        let step = 1e3 / median(&side.decode_tps);
        let direct = median(&side.direct_ms);
        let speedups: Vec<f64> = side.reprefill_ms.iter().zip(&side.restore_ms).map(|(a, b)| a / b).collect();
        table.row(vec![
            side.kind.to_string(),
            num(median(&side.prefill_tps)),
            num(median(&side.decode_tps)),
            num(median(&side.reprefill_ms)),
            num(median(&side.restore_ms)),
            ratio(median(&speedups)),
            num(step),
            num(direct),
            num(step - direct),
        ]);
    }
    let per_run = sides
        .iter()
        .map(|s| format!("{}: decode tok/s {}; prefill tok/s {}", s.kind, list(&s.decode_tps), list(&s.prefill_tps)))
        .collect::<Vec<_>>()
        .join("; ");
    Ok(format!(
        "Both backends load `{name}` in this process with the same settings ({} threads, context {}, no GPU): \
         llama.cpp (its build of this workspace, flash attention as measured at load) and candle (candle-core \
         0.11.1's quantized matmuls on its own worker pool; one forward pass per session per step). Medians of \
         {runs} runs taken in turn. Per run: {per_run}. The boundary cost is the engine's decode step minus \
         one token decoded directly on the backend's context with an argmax, below the seam: what sessions, \
         the scheduler, the sampler, text assembly and the stream add per chunk of one token.\n\n{}",
        config.threads,
        config.ctx_size,
        table.markdown()
    ))
}

/// A prompt of `tokens` tokens of the passage, cut at a token boundary.
fn prompt_of(engine: &Engine, tokens: usize) -> Result<Vec<u32>> {
    let text = PASSAGE.repeat(tokens / 200 + 2);
    let mut ids = engine.tokenize(&text, true, false)?;
    anyhow::ensure!(ids.len() >= tokens, "the passage is too short for {tokens} tokens");
    ids.truncate(tokens);
    Ok(ids)
}

/// Seconds to prefill `prompt`, and decode tok/s of the greedy tokens after
/// the first (the first comes with the prefill's logits).
fn prefill_and_decode(engine: &Engine, prompt: &[u32]) -> Result<(f64, f64)> {
    let session = engine.open_session(&SessionOptions::default(), &Quota::unlimited())?;
    let start = Instant::now();
    session.append_tokens(prompt)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut stream = session.generate(&GenerateParams { stop: Vec::new(), ..GenerateParams::greedy(DECODE) })?;
    let mut first = None;
    let mut tokens = 0;
    while let Some(chunk) = stream.next_chunk()? {
        first.get_or_insert_with(Instant::now);
        tokens += chunk.tokens.len();
    }
    let first = first.context("no tokens generated")?;
    Ok((prefill, (tokens.saturating_sub(1)) as f64 / first.elapsed().as_secs_f64()))
}

/// Seconds to the first token by prefilling `conversation`, and by
/// restoring a saved session holding it.
fn restore_vs_prefill(engine: &Engine, conversation: &[u32]) -> Result<(f64, f64)> {
    let quota = Quota::unlimited();
    let one = GenerateParams::greedy(1);
    let first_token = |session: &wasi_nn_llm_host::engine::Session| -> Result<()> {
        let mut stream = session.generate(&one)?;
        while stream.next_chunk()?.is_some() {}
        Ok(())
    };
    let start = Instant::now();
    let session = engine.open_session(&SessionOptions::default(), &quota)?;
    session.append_tokens(conversation)?;
    first_token(&session)?;
    let reprefill = start.elapsed().as_secs_f64();
    session.rewind(1)?;
    let blob = session.save()?;
    drop(session);
    let start = Instant::now();
    let restored = engine.restore_session(&blob, &quota)?;
    first_token(&restored)?;
    Ok((reprefill, start.elapsed().as_secs_f64()))
}

/// Median seconds of one decode step driven directly on a fresh context of
/// the backend (below the seam): `prompt` evaluated, then single tokens at
/// the next positions, each argmax of the last logits.
fn direct_step(
    path: &std::path::Path,
    name: &str,
    kind: BackendKind,
    config: &EngineConfig,
    prompt: &[u32],
) -> Result<f64> {
    let load = LoadConfig {
        threads: config.threads,
        ctx_size: config.ctx_size,
        gpu_layers: config.gpu_layers,
        flash_attn: config.flash_attn,
    };
    let model = backend::load(kind, name, path, &load)?;
    let setup = ContextSetup { ctx_size: config.ctx_size, sequences: 1, threads: config.threads, batch: 512 };
    let mut ctx = model.new_context(&setup).map_err(anyhow::Error::msg)?;
    ctx.use_threads(config.threads);
    let mut batch = Batch::with_capacity(512);
    for (pos, &token) in prompt.iter().enumerate() {
        batch.add(token, pos, 0, pos + 1 == prompt.len());
    }
    ctx.decode(&batch).map_err(anyhow::Error::msg)?;
    let mut last = batch.len() - 1;
    let mut steps = Vec::new();
    for pos in prompt.len()..prompt.len() + DECODE as usize {
        let start = Instant::now();
        let logits = ctx.logits(last);
        let token = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0) as u32;
        batch.clear();
        batch.add(token, pos, 0, true);
        ctx.decode(&batch).map_err(anyhow::Error::msg)?;
        steps.push(start.elapsed().as_secs_f64());
        last = 0;
    }
    Ok(median(&steps))
}
