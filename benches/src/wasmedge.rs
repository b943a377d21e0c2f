//! WasmEdge's GGML ABI: a 10-turn chat held as LlamaEdge holds one (the
//! guest renders the template and re-sends the whole history every turn
//! through `wasi_ephemeral_nn`, streaming each reply with `compute_single`),
//! with the execution context's KV reuse on and off (off is what WasmEdge's
//! plugin does: it clears the KV cache at every prompt), beside the
//! extension's session, all on the same engine in this process.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use wasi_nn_llm_host::engine::Engine;
use wasi_nn_llm_host::policy::Policy;
use wasi_nn_llm_host::runner::Runtime;

use crate::Settings;
use crate::chat::{QUESTIONS, per_turn};
use crate::guest::{Guest, f64_of, json_lines};
use crate::report::{Table, Target, median, num, ratio};

/// One way's per-turn figures of one run.
#[derive(Default, Clone)]
struct Turns {
    ttft_ms: Vec<f64>,
    input: Vec<f64>,
    cached: Vec<f64>,
}

pub fn run(guest: &Guest, probe: &Path, engine: &Engine, settings: &Settings) -> Result<(String, Vec<Target>)> {
    let model = engine.name();
    let template = if engine.info().architecture.starts_with("gemma") { "gemma" } else { "chatml" };
    let max = settings.chat_tokens.to_string();
    // The bench guest's runtime has the default policy, which keeps the KV cache.
    let kept = &guest.runtime;
    let cleared = Runtime::with_policy(
        guest.runtime.models().clone(),
        Arc::new(Policy::parse("[wasi-ephemeral-nn]\nreuse-kv = false\n")?),
    )?;
    let mut args: Vec<&str> = vec!["chat", model, template, &max];
    args.extend(QUESTIONS);
    let mut ext_args: Vec<&str> = vec!["chat-ext", model, &max];
    ext_args.extend(QUESTIONS);

    // [way][run]: extension, ABI with reuse, ABI without.
    let mut ways: Vec<Vec<Turns>> = vec![Vec::new(); 3];
    for run in 0..settings.chat_runs {
        eprintln!("  wasi_ephemeral_nn 10-turn chat {model}: run {}/{}", run + 1, settings.chat_runs);
        let lines = guest.run(&ext_args)?;
        let ttft_ms = lines.iter().map(|l| f64_of(l, "ttft_ms")).collect::<Result<Vec<_>>>()?;
        ways[0].push(Turns { ttft_ms, ..Turns::default() });
        for (w, runtime) in [(1, kept), (2, &cleared)] {
            ways[w].push(abi_chat(runtime, probe, &args)?);
        }
    }

    let column = |runs: &[Turns], pick: fn(&Turns) -> &Vec<f64>| -> Vec<f64> {
        per_turn(&runs.iter().map(|r| pick(r).clone()).collect::<Vec<_>>())
    };
    let ttft: Vec<Vec<f64>> = ways.iter().map(|w| column(w, |t| &t.ttft_ms)).collect();
    let (input, cached) = (column(&ways[1], |t| &t.input), column(&ways[1], |t| &t.cached));
    let mut table = Table::new(&[
        "turn",
        "prompt tokens",
        "extension: first token ms",
        "ABI, reuse on: first token ms",
        "kept from the KV cache",
        "ABI, reuse off (WasmEdge): first token ms",
    ]);
    for t in 0..QUESTIONS.len() {
        table.row(vec![
            (t + 1).to_string(),
            num(input[t]),
            num(ttft[0][t]),
            num(ttft[1][t]),
            num(cached[t]),
            num(ttft[2][t]),
        ]);
    }
    let total = |w: usize| ttft[w].iter().sum::<f64>();
    table.row(vec![
        "**total**".into(),
        format!("**{}**", num(input.iter().sum())),
        format!("**{}**", num(total(0))),
        format!("**{}**", num(total(1))),
        format!("**{}**", num(cached.iter().sum())),
        format!("**{}**", num(total(2))),
    ]);
    let sums = |w: usize| -> Vec<f64> { ways[w].iter().map(|r| r.ttft_ms.iter().sum()).collect() };
    let (ext, on, off) = (sums(0), sums(1), sums(2));
    let on_off: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let on_ext: Vec<f64> = on.iter().zip(&ext).map(|(a, b)| a / b).collect();
    let (gain, cost) = (median(&on_off), median(&on_ext));

    let markdown = format!(
        "The guest (`tests/guests/wasmedge-probe`, wasm32-wasip1) holds the chat as LlamaEdge does: it renders \
         the {template} template itself and sends the whole history with `set_input` every turn, then streams \
         the reply with `compute_single`; greedy replies of at most {} tokens, medians of {} runs per turn. \
         \"Reuse off\" clears the context's KV cache at every prompt, as WasmEdge's GGML plugin does; \"reuse on\" \
         keeps the tokens the prompt shares with what the context holds. The extension's session (`Chat`) is \
         the same questions through `wasi-nn-llm:llm`. Time to first token is the guest's own clock, from the \
         call that sends the turn to its first piece.\n\n{}\n\
         Σ time to first token, reuse on / off, per run: {} (median {}); reuse on / extension: {} (median {}).\n\n\
         WasmEdge itself is not the anchor here: its GGML plugin's build fetches a pinned llama.cpp (b8757) \
         from GitHub, which this machine cannot reach, and built against another llama.cpp it would be neither \
         the plugin as released nor the kernels this engine runs. \"Reuse off\" is its design on this engine \
         instead: the KV cache cleared at every prompt, everything else equal.\n",
        settings.chat_tokens,
        settings.chat_runs,
        table.markdown(),
        crate::single::list(&on_off),
        ratio(gain),
        crate::single::list(&on_ext),
        ratio(cost),
    );
    let targets = vec![
        Target::new(
            format!("{model}: wasi_ephemeral_nn 10-turn Σ time to first token, reuse on vs off"),
            "≤ 0.50×",
            ratio(gain),
            gain <= 0.5,
        )
        .why_if_missed(format!(
            "the turns' prompts share {} of {} tokens with what the context held, and the rest of each first token \
             (the new turn's prefill and one decode) does not shrink with reuse",
            num(cached.iter().sum()),
            num(input.iter().sum())
        )),
        Target::new(
            format!("{model}: wasi_ephemeral_nn 10-turn Σ time to first token with reuse vs the extension"),
            "≤ 1.25×",
            ratio(cost),
            cost <= 1.25,
        )
        .why_if_missed(
            "the ABI re-sends and re-tokenizes the whole history and compares it with the context's tokens every \
             turn, and the reply's re-tokenized text can differ from the tokens generated, so more is evaluated \
             again than the extension's session appends",
        ),
    ];
    Ok((markdown, targets))
}

/// One chat through the ABI under `runtime`'s policy: per-turn figures.
fn abi_chat(runtime: &Runtime, probe: &Path, args: &[&str]) -> Result<Turns> {
    let lines = json_lines(runtime, &runtime.load(probe)?, "wasmedge-probe", args, &[])?;
    let field = |key: &str| lines.iter().map(|l| f64_of(l, key)).collect::<Result<Vec<_>>>();
    Ok(Turns { ttft_ms: field("ttft_ms")?, input: field("input_tokens")?, cached: field("cached_tokens")? })
}
