//! Decode and prefill at depths 16, 316 and 1000 on 1 and 2 threads: the
//! extension against the out-of-process baseline with flash attention on and
//! off, and llama.cpp's own llama-bench as a cross-check.

use anyhow::Result;
use wasi_nn_llm_host::engine::Engine;

use crate::baseline::{BenchRow, Config, Native};
use crate::guest::{Guest, f64_of};
use crate::report::{Table, Target, median, num, ratio};
use crate::single::{PASSAGE, QUESTION};

pub const DEPTHS: [u32; 3] = [16, 316, 1000];
pub const THREADS: [u32; 2] = [1, 2];
/// Tokens decoded after the prompt (llama-bench's tg128).
const TOKENS: u32 = 128;

/// One way's medians at one (threads, depth).
#[derive(Default, Clone, Copy)]
struct Point {
    prefill: f64,
    decode: f64,
}

pub struct DepthResult {
    pub markdown: String,
    pub targets: Vec<Target>,
}

/// `guests[i]` serves the model on `THREADS[i]` threads.
pub fn run(
    guests: &[&Guest],
    engines: &[&Engine],
    native: &Native,
    llama_bench: Option<&[BenchRow]>,
    runs: usize,
) -> Result<DepthResult> {
    let model = engines[0].name();
    let attention = engines[0].attention().expect("llama.cpp chooses a kernel").to_string();
    let mut table = Table::new(&[
        "threads",
        "depth",
        "baseline, flash on: prefill / decode",
        "baseline, flash off: prefill / decode",
        "llama-bench decode, flash on / off",
        "extension: prefill / decode",
        "decode vs best baseline",
        "prefill vs best baseline",
        "prefill vs baseline with the engine's kernel",
        "decode vs llama.cpp's default (flash on)",
    ]);
    let mut targets = Vec::new();
    for (t, &threads) in THREADS.iter().enumerate() {
        let engine_ctx = engines[t].ctx_size();
        for depth in DEPTHS {
            let (mut on, mut off, mut ext) = (Vec::new(), Vec::new(), Vec::new());
            let (mut decode_ratio, mut prefill_ratio, mut default_ratio) = (Vec::new(), Vec::new(), Vec::new());
            let mut same_kernel = Vec::new();
            let flash = engines[t].attention().expect("llama.cpp chooses a kernel").flash;
            let attention = engines[t].attention().expect("llama.cpp chooses a kernel").to_string();
            for run in 0..runs {
                eprintln!("  depth {model}: {threads} thread(s), depth {depth}, run {}/{runs}", run + 1);
                let config =
                    |flash| Config { threads, flash, depth, tokens: TOKENS, sequences: 1, ctx: Some(engine_ctx) };
                let a = native.run(config(true), 1)?;
                let b = native.run(config(false), 1)?;
                let e = &guests[t].run(&["depth", model, &TOKENS.to_string(), &depth.to_string(), PASSAGE])?[0];
                let ttft = f64_of(e, "ttft_ms")?;
                let x = Point {
                    prefill: f64::from(depth) / ttft * 1e3,
                    decode: (f64_of(e, "generated")? - 1.0) / f64_of(e, "decode_ms")? * 1e3,
                };
                decode_ratio.push(x.decode / a.decode_tps.max(b.decode_tps));
                prefill_ratio.push(x.prefill / a.prefill_tps.max(b.prefill_tps));
                default_ratio.push(x.decode / a.decode_tps);
                same_kernel.push(x.prefill / if flash { a.prefill_tps } else { b.prefill_tps });
                on.push(Point { prefill: a.prefill_tps, decode: a.decode_tps });
                off.push(Point { prefill: b.prefill_tps, decode: b.decode_tps });
                ext.push(x);
            }
            let med = |ps: &[Point]| Point {
                prefill: median(&ps.iter().map(|p| p.prefill).collect::<Vec<_>>()),
                decode: median(&ps.iter().map(|p| p.decode).collect::<Vec<_>>()),
            };
            let (on_m, off_m, ext_m) = (med(&on), med(&off), med(&ext));
            let (d, p, def) = (median(&decode_ratio), median(&prefill_ratio), median(&default_ratio));
            let same = median(&same_kernel);
            let bench_tps = |flash: bool| {
                llama_bench
                    .and_then(|rows| rows.iter().find(|r| r.threads == threads && r.depth == depth && r.flash == flash))
                    .map(|r| r.decode_tps)
            };
            let bench = |flash: bool| bench_tps(flash).map_or_else(|| "–".to_string(), num);
            table.row(vec![
                threads.to_string(),
                depth.to_string(),
                format!("{} / {}", num(on_m.prefill), num(on_m.decode)),
                format!("{} / {}", num(off_m.prefill), num(off_m.decode)),
                format!("{} / {}", bench(true), bench(false)),
                format!("{} / {}", num(ext_m.prefill), num(ext_m.decode)),
                ratio(d),
                ratio(p),
                ratio(same),
                ratio(def),
            ]);
            let spread = |xs: &[f64]| {
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(0.0, f64::max);
                format!("per run {lo:.2}–{hi:.2}")
            };
            let at = format!("{model}, {threads} thread(s), depth {depth}");
            targets.push(
                Target::new(format!("{at}: extension decode vs best baseline"), "≥ 0.95×", ratio(d), d >= 0.95)
                    .why_if_missed(format!(
                        "{}; baseline flash on {} / off {} tok/s, extension {} ({attention}).{}",
                        spread(&decode_ratio),
                        num(on_m.decode),
                        num(off_m.decode),
                        num(ext_m.decode),
                        // The cross-check: llama.cpp's own tool, same kernel choice.
                        bench_tps(flash).map_or_else(String::new, |b| format!(
                            " llama-bench, in this same run with the engine's kernel (flash {}), decodes {} tok/s \
                             here: the extension is {} of it.",
                            if flash { "on" } else { "off" },
                            num(b),
                            ratio(ext_m.decode / b)
                        ))
                    )),
            );
            let (own_kernel, other_kernel) =
                if flash { (on_m.prefill, off_m.prefill) } else { (off_m.prefill, on_m.prefill) };
            targets.push(
                Target::new(format!("{at}: extension prefill vs best baseline"), "≥ 0.95×", ratio(p), p >= 0.95)
                    .why_if_missed(format!(
                        "{}; baseline flash on {} / off {} tok/s, extension {}, which is {} of the baseline with \
                         the engine's own kernel (flash {}, chosen for decode). {}",
                        spread(&prefill_ratio),
                        num(on_m.prefill),
                        num(off_m.prefill),
                        num(ext_m.prefill),
                        ratio(same),
                        if flash { "on" } else { "off" },
                        if same >= 0.95 && other_kernel > own_kernel * 1.05 {
                            "The kernel is the gap: a context runs one attention kernel for prefill and decode \
                             (they lay the V cache out differently), and the engine takes the one that decodes \
                             faster."
                        } else if same >= 0.95 {
                            "The two kernels prefill within 5 % of each other here, so the best of the two per run \
                             is the faster moment of two back-to-back runs, not another kernel."
                        } else {
                            "Its time to first token also holds the append call, the first sample and the chunk's \
                             way to the guest."
                        }
                    )),
            );
            // Only where the default is slower beyond the runs' spread: with
            // the two kernels within noise of each other, the goal measures
            // nothing.
            let on_best = on.iter().map(|p| p.decode).fold(0.0, f64::max);
            let off_worst = off.iter().map(|p| p.decode).fold(f64::INFINITY, f64::min);
            if depth >= 300 && on_best < off_worst {
                // What bounds it is llama.cpp's own gap between its kernels:
                // 1.8× was set where that gap was wider (the Intel kind).
                targets.push(
                    Target::new(
                        format!("{at}: extension decode vs llama.cpp's default (flash on), where that is slower"),
                        "≥ 1.8×",
                        ratio(def),
                        def >= 1.8,
                    )
                    .why_if_missed(format!(
                        "llama.cpp's other kernel (flash off) decodes {} tok/s here against its default's {}, \
                         {} of it: a host on that kernel at the baseline's own speed would reach that much and \
                         no more. The goal presumes a wider gap between the kernels, as on the Intel kind.",
                        num(off_m.decode),
                        num(on_m.decode),
                        ratio(off_m.decode / on_m.decode)
                    )),
                );
            }
        }
    }
    let cross = match llama_bench {
        Some(_) => {
            "The llama-bench column is llama.cpp's own tool (`scripts/llama-tool.sh`: the llama.cpp tree vendored \
             in the `llama-cpp-python` 0.3.36 sdist, a newer llama.cpp than the crate's, built like ours: \
             `GGML_NATIVE`, no OpenMP, -O2), `tg128` after `-d DEPTH`, mean of 2 repetitions: a cross-check of \
             the baseline's order of magnitude, not a ratio's denominator."
        }
        None => "llama-bench could not be built here, so its column is empty.",
    };
    let markdown = format!(
        "Baseline: `llama-native` (`benches/native`), a process of its own that does what llama-bench does on this \
         workspace's llama.cpp build (the same kernels as the host): the model loaded and decoded on its main \
         thread, one context (batch 512), the threads in a ggml pool attached to it (polling 50, llama-bench's \
         default), DEPTH random tokens prefilled in batches of 512, then {TOKENS} single-token decodes of a fixed \
         token, no sampling; a short untimed warm-up first; as many KV cells per sequence as the engine gives a \
         session ({} here; llama-bench would size the context to DEPTH + {TOKENS}, see the concurrency \
         section for what that changes). Extension: the bench guest appends DEPTH token ids \
         to a new session and streams {TOKENS} greedy tokens (end-of-generation biased away) from an engine \
         loaded with that many threads; prefill tok/s is DEPTH over the time to the first chunk, decode tok/s \
         the tokens after the first over the time they took. The engine's attention kernel: {attention}. Each \
         run takes baseline flash on, baseline flash off and the extension back to back; ratios are per run, \
         then the median of {runs} runs.\n\n{cross}\n\n{}",
        engines[0].ctx_size(),
        table.markdown()
    );
    Ok(DepthResult { markdown, targets })
}

/// The chat guest (`examples/chat`) on a long reply: the decode speed it
/// reports itself, against the baseline decoding as many tokens from the
/// same depth (the better of flash on and off), back to back.
pub fn chat_guest(
    guest: &Guest,
    engine: &Engine,
    native: &Native,
    chat: &std::path::Path,
    runs: usize,
) -> Result<(String, Vec<Target>)> {
    let model = engine.name();
    let line = format!("{PASSAGE} {QUESTION}\n");
    let (mut reported, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prompt, mut generated) = (0, 0);
    let engine_ctx = engine.ctx_size();
    for run in 0..runs {
        eprintln!("  chat guest {model}: run {}/{runs}", run + 1);
        let stderr = guest.run_other(chat, &[model], &line)?;
        let (tps, tokens, prompt_tokens) =
            stats(&stderr).ok_or_else(|| anyhow::anyhow!("the chat guest printed no statistics line: {stderr}"))?;
        let config =
            |flash| Config { threads: 2, flash, depth: prompt_tokens, tokens, sequences: 1, ctx: Some(engine_ctx) };
        let best = native.run(config(true), 1)?.decode_tps.max(native.run(config(false), 1)?.decode_tps);
        reported.push(tps);
        base.push(best);
        ratios.push(tps / best);
        (prompt, generated) = (prompt_tokens, tokens);
    }
    let r = median(&ratios);
    let markdown = format!(
        "The chat guest answers one long message (a {prompt}-token prompt) with a {generated}-token greedy reply \
         and reports its own decode speed; the baseline decodes {generated} tokens from depth {prompt}. Medians \
         of {runs} runs: chat guest {} tok/s, baseline {} tok/s, ratio **{}** (per run {}).\n",
        num(median(&reported)),
        num(median(&base)),
        ratio(r),
        crate::single::list(&ratios)
    );
    let target = Target::new(
        format!("{model}: chat guest's own decode speed on a long reply vs the baseline at the same depth"),
        "≥ 0.9×",
        ratio(r),
        r >= 0.9,
    );
    Ok((markdown, vec![target]))
}

/// `[reason: N tokens, first after X ms, R tok/s; prompt P tokens, …]`: (R, N, P).
fn stats(stderr: &str) -> Option<(f64, u32, u32)> {
    let line = stderr.lines().find(|l| l.contains(" tok/s; prompt "))?;
    let number_before = |s: &str, key: &str| -> Option<f64> {
        let at = s.find(key)?;
        s[..at].split(|c: char| !(c.is_ascii_digit() || c == '.')).rfind(|w| !w.is_empty())?.parse().ok()
    };
    let tps = number_before(line, " tok/s")?;
    let tokens = number_before(line, " tokens, first")? as u32;
    let prompt = number_before(line, " tokens, ")
        .and(line.split("prompt ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))?;
    Some((tps, tokens, prompt))
}
