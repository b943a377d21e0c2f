//! `llama-native`: the baseline every "vs native" figure of `make bench` is
//! divided by. A process of its own that does what llama.cpp's `llama-bench`
//! and `llama-batched-bench` do, and nothing of this project: it loads the
//! model and decodes on the main thread, on one context, with the threads in
//! a ggml pool attached to it (llama-bench's setup, polling level 50), and
//! decodes a fixed token per step without sampling.
//!
//! It links the very llama.cpp the host links (the workspace's llama-cpp-2),
//! so both sides run the same kernels. Each run prints one JSON line.

use std::num::NonZeroU32;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::threadpool::ThreadPool;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;

/// llama-bench's ubatch and batch.
const BATCH: usize = 512;
/// llama-bench's default polling level for its pool's workers.
const POLL: u32 = 50;

#[derive(Parser)]
#[command(about = "llama.cpp as llama-bench runs it: the out-of-process baseline of `make bench`")]
struct Args {
    /// The GGUF.
    #[arg(long)]
    model: std::path::PathBuf,
    /// CPU threads (one pool of this many).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Layers offloaded to the GPU (llama-bench's `-ngl`; more than the model
    /// has means all); 0 on a build without a GPU backend.
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// Flash attention.
    #[arg(long, value_enum)]
    flash: Flash,
    /// Tokens prefilled (in batches of 512) before decoding, per sequence.
    #[arg(long)]
    depth: usize,
    /// Tokens decoded one step at a time, per sequence.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// KV cells per sequence [default: depth + tokens, rounded up to 256, as
    /// llama-bench sizes its context].
    #[arg(long)]
    ctx: Option<u32>,
    /// Sequences decoded together in one batch per step (llama-batched-bench's `-npl`).
    #[arg(long, default_value_t = 1)]
    sequences: u32,
    /// Timed repetitions, after a short untimed warm-up (as llama-bench's).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Wait until this Unix time in milliseconds before decoding, so several
    /// processes (independent contexts with the threads split) decode at once.
    #[arg(long)]
    start_at: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Flash {
    On,
    Off,
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(
        &backend,
        &args.model,
        &LlamaModelParams::default().with_n_gpu_layers(args.gpu_layers),
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let needed = (args.depth + args.tokens) as u32;
    let per_seq = args.ctx.unwrap_or(needed.next_multiple_of(256));
    anyhow::ensure!(per_seq >= needed, "--ctx {per_seq} is smaller than --depth plus --tokens ({needed})");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(per_seq * args.sequences))
        .with_n_batch(BATCH as u32)
        .with_n_ubatch(BATCH as u32)
        .with_n_seq_max(args.sequences)
        .with_kv_unified(false)
        .with_n_threads(args.threads as i32)
        .with_n_threads_batch(args.threads as i32)
        .with_flash_attention_policy(match args.flash {
            Flash::On => 1,
            Flash::Off => 0,
        });
    let mut ctx = model.new_context(&backend, params).context("creating the context")?;
    if args.threads > 1 {
        ctx.attach_threadpool(ThreadPool::new(args.threads, POLL).context("creating the thread pool")?);
    }
    let n_vocab = model.n_vocab().max(1) as usize;
    let mut rng = 1u64;
    let mut token = move || {
        // A small LCG: any valid ids do, the time of a step does not depend on them.
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        LlamaToken(((rng >> 33) as usize % n_vocab) as i32)
    };

    // Warm-up, untimed: the first decodes of a context pay for buffers
    // and caches (llama-bench runs one too).
    prefill(&mut ctx, 0, args.depth.min(64), &mut token)?;
    decode(&mut ctx, args.depth.min(64), 4, 1, &mut token)?;

    let (mut prefill_tps, mut decode_tps) = (Vec::new(), Vec::new());
    let (mut start_ms, mut end_ms) = (0.0, 0.0);
    for rep in 0..args.reps {
        ctx.clear_kv_cache();
        let t0 = Instant::now();
        for seq in 0..args.sequences as i32 {
            prefill(&mut ctx, seq, args.depth, &mut token)?;
        }
        let prefill_s = t0.elapsed().as_secs_f64();
        if rep + 1 == args.reps
            && let Some(at) = args.start_at
        {
            let wait = at as f64 - epoch_ms();
            if wait > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(wait / 1e3));
            }
        }
        start_ms = epoch_ms();
        let t1 = Instant::now();
        decode(&mut ctx, args.depth, args.tokens, args.sequences, &mut token)?;
        let decode_s = t1.elapsed().as_secs_f64();
        end_ms = epoch_ms();
        prefill_tps.push((args.depth * args.sequences as usize) as f64 / prefill_s);
        decode_tps.push((args.tokens * args.sequences as usize) as f64 / decode_s);
    }
    println!(
        "{}",
        json!({
            "threads": args.threads,
            "flash": matches!(args.flash, Flash::On),
            "depth": args.depth,
            "sequences": args.sequences,
            "tokens": args.tokens,
            "prefill_tps": prefill_tps,
            "decode_tps": decode_tps,
            "start_epoch_ms": start_ms,
            "end_epoch_ms": end_ms,
        })
    );
    Ok(())
}

/// Decode `tokens` steps of one token for each of `sequences` sequences,
/// from position `depth` on (llama-bench's generation phase; llama-batched-bench's
/// for several sequences).
fn decode(
    ctx: &mut LlamaContext<'_>,
    depth: usize,
    tokens: usize,
    sequences: u32,
    token: &mut impl FnMut() -> LlamaToken,
) -> Result<()> {
    let mut batch = LlamaBatch::new(sequences as usize, 1);
    for step in 0..tokens {
        batch.clear();
        for seq in 0..sequences as i32 {
            batch.add(token(), (depth + step) as i32, &[seq], true)?;
        }
        ctx.decode(&mut batch).context("decode")?;
    }
    Ok(())
}

/// Prefill `depth` tokens into sequence `seq` in batches of 512, with
/// logits for the last one (llama-bench's prompt phase).
fn prefill(ctx: &mut LlamaContext<'_>, seq: i32, depth: usize, token: &mut impl FnMut() -> LlamaToken) -> Result<()> {
    let mut batch = LlamaBatch::new(BATCH, 1);
    let mut pos = 0;
    while pos < depth {
        batch.clear();
        let end = (pos + BATCH).min(depth);
        for p in pos..end {
            batch.add(token(), p as i32, &[seq], p + 1 == depth)?;
        }
        ctx.decode(&mut batch).context("prefill")?;
        pos = end;
    }
    Ok(())
}
