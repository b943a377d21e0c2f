//! Aggregate and per-session decode speed with 1, 2, 4 and 8 sessions: the
//! extension (sessions in one guest, and one session in each of several
//! guest instances) against llama.cpp batching in one context, and against
//! independent contexts with the threads split between them.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use wasi_nn_llm_host::engine::Engine;

use crate::Settings;
use crate::baseline::{Config, Native};
use crate::guest::{Guest, f64_of, f64s_of};
use crate::report::{Table, Target, median, num, ratio};

pub const SESSIONS: [u32; 4] = [1, 2, 4, 8];

/// Aggregate tok/s per session count, one curve per way.
pub struct Curve {
    pub name: &'static str,
    pub aggregate: Vec<f64>,
}

pub struct ConcurrencyResult {
    pub markdown: String,
    pub targets: Vec<Target>,
    pub curves: Vec<Curve>,
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

pub fn run(guest: &Guest, engine: &Engine, native: &Native, settings: &Settings) -> Result<ConcurrencyResult> {
    let model = engine.name();
    let prompt = engine.apply_chat_template(&[("user".into(), "Write a long story about a dragon.".into())], true)?;
    // The baselines prefill as many (random) tokens as the prompt has, and
    // run the engine's attention kernel, so both sides run the same kernels.
    let depth = engine.count_tokens(&prompt)?;
    let flash = engine.attention().expect("llama.cpp chooses a kernel").flash;
    let n = settings.concurrency_tokens;
    let n_arg = n.to_string();
    let names = [
        "llama.cpp batched (one context)",
        "llama.cpp partitioned (threads split)",
        "extension, one guest",
        "extension, one guest each",
        "llama.cpp batched, context sized to the run",
    ];
    let mut curves: Vec<Curve> = names.iter().map(|&name| Curve { name, aggregate: Vec::new() }).collect();
    let mut per_session = vec![Vec::new(); names.len()];
    let mut table = Table::new(&[
        "sessions",
        names[0],
        names[1],
        names[2],
        names[3],
        names[4],
        "one guest vs better baseline",
        "instances vs better baseline",
        "per-session tok/s (one guest)",
    ]);
    let lanes = engine.lanes() as u32;
    let lane_threads = (settings.threads / lanes as i32).max(1);
    // As many KV cells per sequence as the engine gives a session.
    let base = Config {
        threads: settings.threads as u32,
        flash,
        depth,
        tokens: n,
        sequences: 1,
        ctx: Some(engine.ctx_size()),
    };
    let shape = batch_shape(native, Config { threads: lane_threads as u32, ..base }, settings.runs)?;
    let mut targets = Vec::new();
    for k in SESSIONS {
        let mut agg = vec![Vec::new(); names.len()];
        let (mut one_ratio, mut many_ratio, mut session_rates) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..settings.runs {
            eprintln!("  concurrency {model}: {k} sessions, run {}/{}", run + 1, settings.runs);
            agg[0].push(native.run(Config { sequences: k, ..base }, 1)?.decode_tps);
            agg[1].push(native.partitioned(base, k)?);
            agg[4].push(native.run(Config { sequences: k, ctx: None, ..base }, 1)?.decode_tps);

            let one = &guest.run(&["concurrent", model, &k.to_string(), &n_arg, "0", &prompt])?[0];
            let times = f64s_of(one, "session_ms")?;
            let slowest = times.iter().copied().fold(0.0, f64::max);
            agg[2].push(f64_of(one, "generated")? / slowest * 1e3);
            session_rates.extend(times.iter().map(|ms| n as f64 / ms * 1e3));

            // Instances start decoding together, after all have prefilled.
            let go = (epoch_ms() + 1500.0 + 300.0 * k as f64) as u64;
            let lines =
                guest.run_parallel(k as usize, &["concurrent", model, "1", &n_arg, &go.to_string(), &prompt])?;
            let (mut start, mut end, mut generated) = (f64::MAX, 0.0f64, 0.0);
            for l in lines.iter().map(|l| &l[0]) {
                start = start.min(f64_of(l, "start_epoch_ms")?);
                end = end.max(f64_of(l, "end_epoch_ms")?);
                generated += f64_of(l, "generated")?;
            }
            agg[3].push(generated / (end - start) * 1e3);

            let best = agg[0][run].max(agg[1][run]);
            one_ratio.push(agg[2][run] / best);
            many_ratio.push(agg[3][run] / best);
        }
        for (c, a) in curves.iter_mut().zip(&agg) {
            c.aggregate.push(median(a));
        }
        per_session[2].push(median(&session_rates));
        let (one, many) = (median(&one_ratio), median(&many_ratio));
        table.row(vec![
            k.to_string(),
            num(median(&agg[0])),
            num(median(&agg[1])),
            num(median(&agg[2])),
            num(median(&agg[3])),
            num(median(&agg[4])),
            ratio(one),
            ratio(many),
            num(median(&session_rates)),
        ]);
        let per_lane = k.div_ceil(lanes);
        let best = median(&agg[0]).max(median(&agg[1]));
        let spread = |xs: &[f64]| {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(0.0, f64::max);
            format!("{lo:.2}–{hi:.2}")
        };
        let shape_note = if lanes == 1 {
            format!(
                "The engine's one lane decodes the batched baseline's very batch ({k} sequence(s), one context, {} \
                 threads); what it adds per step is sampling each sequence, turning tokens into text and handing \
                 chunks to the guest's thread on the same cores, where the baseline decodes a fixed token.",
                settings.threads
            )
        } else {
            match shape.iter().find(|(b, _)| *b == per_lane) {
                Some(&(_, alone)) => format!(
                    "Each of the engine's {lanes} lanes batches {per_lane} sessions on {lane_threads} thread(s); \
                     llama.cpp alone decodes such a batch at {} tok/s (batch-shape table), so {lanes} lanes can \
                     reach about {} against the better baseline's {}.",
                    num(alone),
                    num(alone * lanes as f64),
                    num(best)
                ),
                None => String::new(),
            }
        };
        targets.push(
            Target::new(
                format!("{model}: aggregate decode at {k} session(s) vs the better baseline"),
                "≥ 0.95×",
                format!("one guest {}, instances {}", ratio(one), ratio(many)),
                one >= 0.95 && many >= 0.95,
            )
            .why_if_missed(format!(
                "Per run: one guest {}, instances {}. {shape_note}",
                spread(&one_ratio),
                spread(&many_ratio)
            )),
        );
    }
    let mut shape_table = Table::new(&["sequences per batch", "aggregate tok/s"]);
    for (b, tps) in &shape {
        shape_table.row(vec![b.to_string(), num(*tps)]);
    }
    let markdown = format!(
        "Each session decodes {n} tokens (greedy, end-of-generation biased away) after its prompt is prefilled; \
         aggregate tok/s is all sessions' tokens over the wall time from the start of decoding to the last token. \
         Baselines are `llama-native` processes ({depth} random prompt tokens per sequence, no sampling, the \
         engine's attention kernel) with {} threads: (a) one process, one context holding all sequences, one \
         batch per step (llama-batched-bench's way); (b) one process per session, started together, with the \
         threads split between them (at least one each). Both give each sequence as many KV cells as the engine \
         gives a session ({} here); the last baseline column is (a) with the context sized to the run, as \
         llama-bench and llama-batched-bench size theirs, for what a session's reserved context costs llama.cpp \
         itself (without flash attention the V cache is stored transposed, so each step reads it with a stride of \
         the whole context). The engine spreads sessions over {lanes} lane(s) \
         (contexts), each taking an equal share of the threads while busy. Medians of {} runs.\n\n{}\n\
         Batch shape: llama.cpp decoding one context on {lane_threads} thread(s) (one lane's share when all \
         are busy), by sequences per batch.\n\n{}",
        settings.threads,
        engine.ctx_size(),
        settings.runs,
        table.markdown(),
        shape_table.markdown()
    );
    Ok(ConcurrencyResult { markdown, targets, curves })
}

/// Aggregate tok/s of one context on a lane's share of the threads by batch
/// size: what one lane can do when all are busy.
fn batch_shape(native: &Native, lane: Config, runs: usize) -> Result<Vec<(u32, f64)>> {
    [1, 2, 4]
        .into_iter()
        .map(|b| {
            let rates = (0..runs)
                .map(|_| Ok(native.run(Config { sequences: b, ..lane }, 1)?.decode_tps))
                .collect::<Result<Vec<_>>>()?;
            Ok((b, median(&rates)))
        })
        .collect()
}
