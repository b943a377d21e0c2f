//! The WASI 0.3 session (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`) against the 0.1.x pull API, on the same engine and the
//! same host: the boundary per chunk, one session's decode and first token,
//! several generations in one instance, and what the guest costs to write.
//! Each pair of figures comes from runs made back to back (pull, then p3).

use std::path::Path;

use anyhow::{Context, Result};
use wasi_nn_llm_host::engine::Engine;

use crate::Settings;
use crate::guest::{Guest, f64_of, f64s_of};
use crate::report::{Table, Target, median, num, ratio};
use crate::single::{PASSAGE, QUESTION};

/// Generations at once in one guest instance.
const CONCURRENT: [u32; 2] = [4, 8];
/// Rounds of the boundary measurement (six chunks each).
const BOUNDARY_ROUNDS: &str = "40";

/// Both ways' medians of one figure.
struct Pair {
    pull: Vec<f64>,
    p3: Vec<f64>,
}

impl Pair {
    fn new() -> Self {
        Self { pull: Vec::new(), p3: Vec::new() }
    }

    fn row(&self, what: &str) -> Vec<String> {
        let (pull, p3) = (median(&self.pull), median(&self.p3));
        vec![what.into(), num(pull), num(p3), ratio(p3 / pull)]
    }
}

pub fn run(guest: &Guest, p3_wasm: &Path, engine: &Engine, settings: &Settings) -> Result<(String, Vec<Target>)> {
    let model = engine.name();
    let p3 = guest.load(p3_wasm)?;
    let prompt = engine.apply_chat_template(&[("user".into(), format!("{PASSAGE}\n\n{QUESTION}"))], true)?;
    let n = settings.tokens;
    let n_arg = n.to_string();

    let (mut ttft, mut decode) = (Pair::new(), Pair::new());
    let mut aggregate: Vec<Pair> = CONCURRENT.iter().map(|_| Pair::new()).collect();
    for run in 0..settings.runs {
        eprintln!("  p3 vs pull {model}: run {}/{}", run + 1, settings.runs);
        let pull = &guest.run(&["single-ext", model, &n_arg, &prompt])?[0];
        let async_ = &guest.run_in(&p3, &["single-ext", model, &n_arg, &prompt])?[0];
        ttft.pull.push(f64_of(pull, "ttft_ms")?);
        ttft.p3.push(f64_of(async_, "ttft_ms")?);
        decode.pull.push(decode_tps(pull)?);
        decode.p3.push(decode_tps(async_)?);
        let c_arg = settings.concurrency_tokens.to_string();
        for (k, pair) in CONCURRENT.iter().zip(&mut aggregate) {
            let k = k.to_string();
            let pull = &guest.run(&["concurrent", model, &k, &c_arg, "0", QUESTION])?[0];
            let async_ = &guest.run_in(&p3, &["concurrent", model, &k, &c_arg, QUESTION])?[0];
            pair.pull.push(aggregate_tps(pull)?);
            pair.p3.push(aggregate_tps(async_)?);
        }
    }

    eprintln!("  p3 vs pull {model}: boundary");
    let pull_b = &guest.run(&["boundary", model, BOUNDARY_ROUNDS])?[0];
    let p3_b = &guest.run_in(&p3, &["boundary", model, BOUNDARY_ROUNDS])?[0];
    let one = Pair { pull: f64s_of(pull_b, "next_us")?, p3: f64s_of(p3_b, "read_us")? };
    let batched = Pair { pull: f64s_of(pull_b, "next_chunk_us_per_token")?, p3: f64s_of(p3_b, "read8_us_per_token")? };

    let mut table = Table::new(&["figure", "pull (0.1.x)", "p3 (WASI 0.3)", "p3 / pull"]);
    table.row(one.row("one chunk, ready: `next()` / one stream read (µs)"));
    table.row(batched.row("six ready tokens in one call: `next-chunk(8)` / a read of room 8 (µs per token)"));
    table.row(ttft.row("time to first token (ms)"));
    table.row(decode.row("decode tok/s, one session"));
    for (k, pair) in CONCURRENT.iter().zip(&aggregate) {
        table.row(pair.row(&format!("aggregate tok/s, {k} generations in one instance")));
    }
    let step_us = 1e6 / median(&decode.p3);
    let share = median(&one.p3) / step_us;
    let markdown = format!(
        "The same measurements through both APIs, on the same engine in the same host process, each pair run back \
         to back ({} runs; medians). The pull side is `benches/guest` (a `wasi:cli` command: `token-stream.next` \
         and `next-chunk`, and for several generations a round-robin of blocking `next()` calls); the p3 side is \
         `benches/guest-p3` (an async `run` export: `stream<chunk>` reads through wit-bindgen, the appends \
         awaited, several generations awaited together with `join_all`). Time to first token runs from handing \
         over the {}-token prompt to the first chunk; decode is the {} tokens after it. Several generations: \
         {} tokens each after the same short prompt, all sessions' tokens over the wall time from the first \
         `generate` to the last token. The boundary rows time one call on chunks already generated (the \
         generation had 150 ms to fill its buffer), {} rounds of six tokens; the batched row is one call taking \
         all six right after that wait (its first call, so it carries cold caches; the single-chunk rows are \
         mostly steady-state calls).\n\n{}\n\
         A p3 stream read of a ready chunk is {} µs against a decode step of {} ms: **{:.3} %** of a step.\n",
        settings.runs,
        engine.count_tokens(&prompt)?,
        n - 1,
        settings.concurrency_tokens,
        BOUNDARY_ROUNDS,
        table.markdown(),
        num(median(&one.p3)),
        num(step_us / 1e3),
        share * 100.0,
    );
    let target = Target::new(
        format!("{model}: host time per chunk through a p3 stream read"),
        "< 1 % of a decode step",
        format!("{:.3} %", share * 100.0),
        share < 0.01,
    );
    Ok((markdown, vec![target]))
}

/// Decode tok/s of a `single-ext` line: the tokens after the first over their time.
fn decode_tps(line: &serde_json::Value) -> Result<f64> {
    Ok((f64_of(line, "generated")? - 1.0) / f64_of(line, "decode_ms")? * 1e3)
}

fn aggregate_tps(line: &serde_json::Value) -> Result<f64> {
    let wall_ms = f64_of(line, "end_epoch_ms")? - f64_of(line, "start_epoch_ms")?;
    Ok(f64_of(line, "generated")? / wall_ms * 1e3)
}

/// What the same chat costs to write and ship both ways (`benches/chat-pull`
/// and `benches/chat-p3`): the component's size, and its lines of Rust
/// without blank lines and comments.
pub fn chat_cost(workspace: &Path) -> Result<String> {
    let mut table = Table::new(&["the same chat", "component (bytes)", "lines of guest code"]);
    for (name, wasm, src) in [
        ("pull (0.1.x), `benches/chat-pull`", "chat-pull.wasm", "benches/chat-pull/src/main.rs"),
        ("p3 (WASI 0.3), `benches/chat-p3`", "chat_p3.wasm", "benches/chat-p3/src/lib.rs"),
    ] {
        let path = workspace.join("target/wasm32-wasip2/release").join(wasm);
        let bytes =
            std::fs::metadata(&path).with_context(|| format!("{} (built by `make bench`)", path.display()))?.len();
        let code = std::fs::read_to_string(workspace.join(src))?;
        let lines = code.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).count();
        table.row(vec![name.into(), bytes.to_string(), lines.to_string()]);
    }
    Ok(format!(
        "Both read user turns from stdin, append only the new turn and stream the reply; release builds of this \
         workspace (line tables kept, as for every guest here).\n\n{}",
        table.markdown()
    ))
}
