//! A 10-turn chat four ways: the extension's session against base wasi-nn
//! re-sending the history (text mode; tensor mode on a new execution context
//! per turn, and on one kept context whose prefix the host reuses).

use anyhow::Result;
use wasi_nn_llm_host::engine::Engine;

use crate::Settings;
use crate::guest::{Guest, f64_of};
use crate::report::{Table, Target, median, num, ratio};

pub const QUESTIONS: [&str; 10] = [
    "What is the capital of France?",
    "What river flows through it?",
    "Name three famous museums there.",
    "Which one holds the Mona Lisa?",
    "Who painted it, and when?",
    "What else did that painter invent or design?",
    "Give me a short poem about the city.",
    "What is a good day trip from there?",
    "How do I get there by train?",
    "Summarise our conversation in two sentences.",
];

/// Each turn's median over runs (`runs[run][turn]`).
pub fn per_turn(runs: &[Vec<f64>]) -> Vec<f64> {
    (0..QUESTIONS.len()).map(|t| median(&runs.iter().filter_map(|r| r.get(t).copied()).collect::<Vec<_>>())).collect()
}

/// One way's per-turn medians.
pub struct Series {
    pub name: &'static str,
    pub ttft_ms: Vec<f64>,
    pub prefilled: Vec<f64>,
}

pub struct ChatResult {
    pub markdown: String,
    pub targets: Vec<Target>,
    pub series: Vec<Series>,
}

const WAYS: [(&str, &str); 4] = [
    ("extension session", "chat-ext"),
    ("base text (re-prefill)", "chat-text"),
    ("base tensor, new context per turn", "chat-tensor-fresh"),
    ("base tensor, one kept context", "chat-tensor-keep"),
];

pub fn run(guest: &Guest, engine: &Engine, gguf: &str, settings: &Settings) -> Result<ChatResult> {
    let model = engine.name();
    let max = settings.chat_tokens.to_string();
    // [way][run][turn]
    let mut ttft = vec![Vec::new(); WAYS.len()];
    let mut prefilled = vec![Vec::new(); WAYS.len()];
    let mut total_ratio = Vec::new();
    for run in 0..settings.chat_runs {
        eprintln!("  10-turn chat {model}: run {}/{}", run + 1, settings.chat_runs);
        for (w, (_, command)) in WAYS.iter().enumerate() {
            let mut args: Vec<&str> = match *command {
                "chat-ext" => vec!["chat-ext", model, &max],
                "chat-text" => vec!["chat-text", model, gguf, &max],
                "chat-tensor-fresh" => vec!["chat-tensor", model, gguf, &max, "fresh"],
                _ => vec!["chat-tensor", model, gguf, &max, "keep"],
            };
            args.extend(QUESTIONS);
            let lines = guest.run(&args)?;
            ttft[w].push(lines.iter().map(|l| f64_of(l, "ttft_ms")).collect::<Result<Vec<_>>>()?);
            prefilled[w].push(lines.iter().map(|l| f64_of(l, "prefilled")).collect::<Result<Vec<_>>>()?);
        }
        let sum = |w: usize| ttft[w][run].iter().sum::<f64>();
        total_ratio.push(sum(0) / sum(1));
    }

    let series: Vec<Series> = WAYS
        .iter()
        .enumerate()
        .map(|(w, (name, _))| Series { name, ttft_ms: per_turn(&ttft[w]), prefilled: per_turn(&prefilled[w]) })
        .collect();

    let mut header = vec!["turn".to_string()];
    for (name, _) in WAYS {
        header.push(format!("{name}: first token ms"));
        header.push("prefilled".into());
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for t in 0..QUESTIONS.len() {
        let mut row = vec![(t + 1).to_string()];
        for s in &series {
            row.push(num(s.ttft_ms[t]));
            row.push(num(s.prefilled[t]));
        }
        table.row(row);
    }
    let mut totals = vec!["**total**".to_string()];
    for s in &series {
        totals.push(format!("**{}**", num(s.ttft_ms.iter().sum())));
        totals.push(format!("**{}**", num(s.prefilled.iter().sum())));
    }
    table.row(totals);
    let r = median(&total_ratio);

    let markdown = format!(
        "Ten user turns, greedy replies of at most {} tokens, medians of {} runs per turn. \"Prefilled\" is the \
         tokens the host evaluated before the turn's first token. Base text mode's first token is a \
         `max-tokens: 1` compute on the turn's full prompt (it cannot stream; the reply itself comes from a second \
         compute). The kept tensor context is our host's doing: the spec says nothing of state in an execution \
         context, so a guest cannot count on it, and it serves one conversation per context.\n\n{}\n\
         Total time to first token, extension / base text, per run: {} (median {}).\n",
        settings.chat_tokens,
        settings.chat_runs,
        table.markdown(),
        crate::single::list(&total_ratio),
        ratio(r),
    );
    let targets = vec![Target::new(
        format!("{model}: 10-turn total time to first token, extension vs base text"),
        "≤ 1/5 (0.20×)",
        ratio(r),
        r <= 0.2,
    )];
    Ok(ChatResult { markdown, targets, series })
}
