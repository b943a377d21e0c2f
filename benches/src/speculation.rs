//! Speculative decoding (issue 31): decode speed of the same engine with
//! and without n-gram speculation, and of llama-server with each of its
//! n-gram speculation types (the best of a few settings each, tuned on the
//! same tasks), back to back per run, on tasks that repeat their input and
//! on free ones; four sessions at once; acceptance for each.
//!
//! Decode speed is decoded tokens per second after the first token: ours
//! from the stream (generated − 1 tokens from the first chunk to the
//! finish), llama-server's from its own timings (`predicted_n` over
//! `predicted_ms`, the generation phase after the prompt). Both sides get
//! the same prompt text (rendered by our engine's template) and decode
//! greedily.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use wasi_nn_llm_host::engine::{
    Engine, EngineConfig, GenerateParams, Quota, SessionOptions, Speculation, SpeculationMode,
};

use crate::process::{Proc, healthy, port, spawn};
use crate::report::{Table, Target, median, num, ratio, spread};

/// A task: its name, whether it repeats its input, the prompt's messages,
/// and the most tokens to generate.
struct Task {
    name: &'static str,
    repetitive: bool,
    turns: Vec<Vec<(String, String)>>,
    max_tokens: u32,
}

const PARAGRAPH: &str = "The committee met on Thursday morning to review the proposal for the new library. \
    After a long discussion about the budget, the members agreed that the building should have a larger \
    reading room, a quiet study area on the second floor, and a small garden where visitors can sit outside \
    when the weather is warm. The final plans will be presented to the city council next month.";

const NOTE: &str = "Remember to water the tomatoes every evening, to close the greenhouse door when it is \
    windy, and to pick the ripe beans before Saturday, because the neighbours are coming for dinner.";

const PACKING: &str = "1. Sunscreen with a high protection factor\n2. A large beach towel\n3. Sunglasses and a \
    wide hat\n4. A bottle of cold water\n5. A good book to read in the shade";

const FREE_CHAT: [&str; 10] = [
    "Hi! What is a good name for a cat?",
    "Why that name?",
    "What do cats like to eat?",
    "How often should I feed a kitten?",
    "Can cats drink milk?",
    "What toys do cats enjoy?",
    "How do I stop a cat from scratching the sofa?",
    "Why do cats purr?",
    "How long do cats sleep?",
    "Thanks! Any last tip?",
];

fn user(text: impl Into<String>) -> (String, String) {
    ("user".into(), text.into())
}

fn tasks(code: &str) -> Vec<Task> {
    let free_chat = (1..=FREE_CHAT.len())
        .map(|n| FREE_CHAT[..n].iter().flat_map(|q| [user(*q), ("assistant".into(), String::new())]).collect())
        .collect::<Vec<Vec<_>>>();
    vec![
        Task {
            name: "code: rename a variable in 41 lines",
            repetitive: true,
            turns: vec![vec![user(format!(
                "Rewrite this code, renaming the variable `item` to `entry` everywhere. Reply with the whole \
                 code only.\n\n```python\n{code}```"
            ))]],
            max_tokens: 384,
        },
        Task {
            name: "paragraph: repeat with one word changed",
            repetitive: true,
            turns: vec![vec![user(format!(
                "Repeat this paragraph exactly, but change the word \"Thursday\" to \"Friday\":\n\n{PARAGRAPH}"
            ))]],
            max_tokens: 128,
        },
        Task {
            name: "chat that quotes (third turn)",
            repetitive: true,
            turns: vec![vec![
                user(format!("Here is my note: {NOTE}")),
                ("assistant".into(), "Got it. I will remember your note about the garden.".into()),
                user("List five things to pack for a day at the beach, one per line."),
                ("assistant".into(), PACKING.into()),
                user("Write the same list again, and add a sixth item at the end."),
            ]],
            max_tokens: 96,
        },
        Task {
            name: "free: a story",
            repetitive: false,
            turns: vec![vec![user("Write a story about a dragon who learns to bake bread.")]],
            max_tokens: 256,
        },
        Task { name: "free: a 10-turn chat", repetitive: false, turns: free_chat, max_tokens: 48 },
    ]
}

/// One side's decode over a task: tokens decoded after the first, the
/// seconds they took, and drafts (checked, accepted, checking steps).
#[derive(Default, Clone, Copy)]
struct Decode {
    tokens: f64,
    seconds: f64,
    drafted: f64,
    accepted: f64,
    checks: f64,
}

impl Decode {
    fn add(&mut self, other: Decode) {
        self.tokens += other.tokens;
        self.seconds += other.seconds;
        self.drafted += other.drafted;
        self.accepted += other.accepted;
        self.checks += other.checks;
    }

    fn rate(&self) -> f64 {
        self.tokens / self.seconds.max(1e-9)
    }

    /// Decode steps taken: each emits one token, and the drafts it accepted.
    fn steps(&self) -> f64 {
        self.tokens - self.accepted
    }

    /// Milliseconds per decode step.
    fn step_ms(&self) -> f64 {
        1e3 * self.seconds / self.steps().max(1.0)
    }
}

/// Render each turn's conversation, the assistant's empty replies filled
/// by what `generate` answered to the turns before.
fn run_task(
    engine: &Engine,
    task: &Task,
    mut generate: impl FnMut(&str, u32) -> Result<(String, Decode)>,
) -> Result<Decode> {
    let mut total = Decode::default();
    let mut replies: Vec<String> = Vec::new();
    for turn in &task.turns {
        let mut messages = turn.clone();
        let mut answered = replies.iter();
        for m in messages.iter_mut().filter(|m| m.0 == "assistant" && m.1.is_empty()) {
            m.1 = answered.next().cloned().unwrap_or_default();
        }
        // A turn ends with the user's message; the reply is generated.
        if messages.last().is_some_and(|m| m.0 == "assistant") {
            messages.pop();
        }
        let prompt = engine.apply_chat_template(&messages, true)?;
        let (text, decode) = generate(&prompt, task.max_tokens)?;
        replies.push(text);
        total.add(decode);
    }
    Ok(total)
}

/// Our engine: one session per turn, greedy.
fn ours(engine: &Engine, prompt: &str, max_tokens: u32) -> Result<(String, Decode)> {
    let m = wasi_nn_llm_host::metrics::get();
    let before = (m.draft_tokens.get(), m.accepted_draft_tokens.get(), m.draft_checks.get());
    let session = engine.open_session(&SessionOptions::default(), &Quota::unlimited())?;
    session.append(prompt)?;
    let mut stream = session.generate(&GenerateParams::greedy(max_tokens))?;
    let (mut text, mut first, mut last) = (String::new(), None, Instant::now());
    while let Some(chunk) = stream.next_chunk()? {
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        text.push_str(&chunk.text);
    }
    let generated = stream.finish().context("a finish")?.usage.generated_tokens;
    drop(stream);
    drop(session);
    let after = (m.draft_tokens.get(), m.accepted_draft_tokens.get(), m.draft_checks.get());
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Ok((
        text,
        Decode {
            tokens: f64::from(generated.saturating_sub(1)),
            seconds,
            drafted: (after.0 - before.0) as f64,
            accepted: (after.1 - before.1) as f64,
            checks: (after.2 - before.2) as f64,
        },
    ))
}

/// llama-server with some speculation settings.
struct LlamaServer {
    _process: Proc,
    port: u16,
}

impl LlamaServer {
    fn start(bin: &Path, gguf: &Path, flash: bool, spec: &[&str], sessions: u32) -> Result<Self> {
        let port = port()?;
        let mut command = Command::new(bin);
        command
            .arg("-m")
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", "2", "-tb", "2"])
            .args(["-c", &(2048 * sessions).to_string(), "-np", &sessions.to_string(), "-b", "512", "-ub", "512"])
            .args(["-fa", if flash { "on" } else { "off" }, "--no-webui", "--cache-ram", "0"])
            .args(spec);
        let server = Self { _process: spawn(command).with_context(|| format!("starting {}", bin.display()))?, port };
        healthy(port).with_context(|| format!("llama-server {spec:?}"))?;
        Ok(server)
    }

    fn complete(&self, prompt: &str, max_tokens: u32) -> Result<(String, Decode)> {
        let body = json!({ "prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "cache_prompt": false });
        let mut curl = Command::new("curl")
            .args(["-sf", "-H", "Content-Type: application/json", "--data-binary", "@-"])
            .arg(format!("http://127.0.0.1:{}/completion", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        curl.stdin.take().context("curl's stdin")?.write_all(body.to_string().as_bytes())?;
        let out = curl.wait_with_output()?;
        if !out.status.success() {
            bail!("llama-server's /completion failed ({})", out.status);
        }
        let reply: Value = serde_json::from_slice(&out.stdout).context("llama-server answers JSON")?;
        let t = &reply["timings"];
        let get = |k: &str| t[k].as_f64().unwrap_or(0.0);
        let text = reply["content"].as_str().unwrap_or_default().to_owned();
        // Its timer starts as the prompt's decode ends, with the first token
        // sampled: the tokens timed are those after it, as ours are.
        let decode = Decode {
            tokens: (get("predicted_n") - 1.0).max(0.0),
            seconds: get("predicted_ms") / 1e3,
            drafted: get("draft_n"),
            accepted: get("draft_n_accepted"),
            checks: 0.0,
        };
        Ok((text, decode))
    }
}

/// llama-server's n-gram speculation settings tried: each type at its
/// defaults and with shorter keys and drafts (closer to ours).
const LLAMA_SERVER_SPECS: [(&str, &[&str]); 8] = [
    ("ngram-simple", &["--spec-type", "ngram-simple"]),
    (
        "ngram-simple n4 m16",
        &["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "4", "--spec-ngram-simple-size-m", "16"],
    ),
    ("ngram-map-k", &["--spec-type", "ngram-map-k"]),
    (
        "ngram-map-k n4 m16",
        &["--spec-type", "ngram-map-k", "--spec-ngram-map-k-size-n", "4", "--spec-ngram-map-k-size-m", "16"],
    ),
    ("ngram-mod", &["--spec-type", "ngram-mod"]),
    (
        "ngram-mod match 8, 4-16",
        &[
            "--spec-type",
            "ngram-mod",
            "--spec-ngram-mod-n-match",
            "8",
            "--spec-ngram-mod-n-min",
            "4",
            "--spec-ngram-mod-n-max",
            "16",
        ],
    ),
    ("ngram-cache", &["--spec-type", "ngram-cache"]),
    ("ngram-cache n-max 16", &["--spec-type", "ngram-cache", "--spec-draft-n-max", "16"]),
];

pub struct Setup<'a> {
    pub llama_server: &'a Path,
    pub model: &'a str,
    pub gguf: &'a Path,
    pub flash: bool,
    pub config: &'a EngineConfig,
    pub runs: usize,
}

pub struct Section {
    pub markdown: String,
    pub targets: Vec<Target>,
}

pub fn run(setup: &Setup) -> Result<Section> {
    let engine_with = |mode| {
        let config =
            EngineConfig { speculation: Speculation { mode, ..Speculation::default() }, ..setup.config.clone() };
        Engine::load(setup.model, setup.gguf, &config)
    };
    let (on, off) = (engine_with(SpeculationMode::Ngram)?, engine_with(SpeculationMode::Off)?);
    let code = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("speculation/inventory.py"))?;
    let tasks = tasks(&code);

    // Tune llama-server: each setting once over the repetitive tasks; the
    // best by decode speed is the one measured back to back.
    eprintln!("  speculation: tuning llama-server on {}", setup.model);
    let mut tuning = Vec::new();
    for (label, args) in LLAMA_SERVER_SPECS {
        let server = LlamaServer::start(setup.llama_server, setup.gguf, setup.flash, args, 1)?;
        let mut total = Decode::default();
        for task in tasks.iter().filter(|t| t.repetitive) {
            total.add(run_task(&on, task, |p, n| server.complete(p, n))?);
        }
        eprintln!("    {label}: {:.1} tok/s", total.rate());
        tuning.push((label, args, total));
    }
    // The two best settings, both measured back to back: one pass of
    // tuning is too noisy to pick one (ngram-mod won one pass by 10 %
    // and ngram-cache the next).
    let mut ranked: Vec<usize> = (0..tuning.len()).collect();
    ranked.sort_by(|&a, &b| tuning[b].2.rate().total_cmp(&tuning[a].2.rate()));
    let finalists = [ranked[0], ranked[1]];

    // Back to back: per run, per task, ours with and without, llama-server
    // with each finalist and without speculation.
    let plain_server = LlamaServer::start(setup.llama_server, setup.gguf, setup.flash, &[], 1)?;
    let spec_servers = finalists
        .iter()
        .map(|&f| LlamaServer::start(setup.llama_server, setup.gguf, setup.flash, tuning[f].1, 1))
        .collect::<Result<Vec<_>>>()?;
    // raw[task][side][run], sides: ours with, ours without, the finalists,
    // llama-server without.
    let mut raw = vec![vec![Vec::new(); 5]; tasks.len()];
    for run in 0..setup.runs {
        eprintln!("  speculation: run {} of {}", run + 1, setup.runs);
        for (t, task) in tasks.iter().enumerate() {
            // Alternate which goes first, so drift favours neither.
            let order: Vec<usize> = if run % 2 == 0 { vec![0, 1, 2, 3, 4] } else { vec![1, 0, 4, 3, 2] };
            for side in order {
                let decode = match side {
                    0 => run_task(&on, task, |p, n| ours(&on, p, n))?,
                    1 => run_task(&on, task, |p, n| ours(&off, p, n))?,
                    2 | 3 => run_task(&on, task, |p, n| spec_servers[side - 2].complete(p, n))?,
                    _ => run_task(&on, task, |p, n| plain_server.complete(p, n))?,
                };
                raw[t][side].push(decode);
            }
        }
    }
    // figures[task][side][run]: llama-server's best n-gram is, per run, the
    // faster finalist.
    let figures: Vec<Vec<Vec<Decode>>> = raw
        .iter()
        .map(|sides| {
            let best =
                sides[2].iter().zip(&sides[3]).map(|(a, b)| if a.rate() >= b.rate() { *a } else { *b }).collect();
            vec![sides[0].clone(), sides[1].clone(), best, sides[4].clone()]
        })
        .collect();
    let best_label = format!("{}` or `{}", tuning[finalists[0]].0, tuning[finalists[1]].0);
    drop((plain_server, spec_servers));

    // Four sessions at once, repetitive (the paragraph task), ours only.
    let concurrent = |engine: &Engine| -> Result<f64> {
        let task = &tasks[1];
        let prompt = on.apply_chat_template(&task.turns[0], true)?;
        let started = Instant::now();
        let tokens = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| ours(engine, &prompt, task.max_tokens))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a session thread").map(|(_, d)| d.tokens + 1.0))
                .sum::<Result<f64>>()
        })?;
        Ok(tokens / started.elapsed().as_secs_f64())
    };
    let mut four = (Vec::new(), Vec::new());
    for run in 0..setup.runs {
        if run % 2 == 0 {
            four.0.push(concurrent(&on)?);
            four.1.push(concurrent(&off)?);
        } else {
            four.1.push(concurrent(&off)?);
            four.0.push(concurrent(&on)?);
        }
    }

    report(setup, &tasks, &figures, &tuning, &best_label, &four)
}

/// The median ratio and the range of the runs, the range written bare
/// (`1.12× (0.87–1.16)`), as this section has always quoted it.
fn ratio_spread(xs: &[f64]) -> String {
    let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{} ({:.2}–{:.2})", ratio(median(xs)), lo, hi)
}

fn report(
    setup: &Setup,
    tasks: &[Task],
    figures: &[Vec<Vec<Decode>>],
    tuning: &[(&str, &[&str], Decode)],
    best: &str,
    four: &(Vec<f64>, Vec<f64>),
) -> Result<Section> {
    let model = setup.model;
    let mut md = String::new();
    let mut targets = Vec::new();
    let mut table = Table::new(&[
        "task",
        "ours, speculation",
        "ours, off",
        "llama-server, best n-gram",
        "llama-server, off",
        "ours spec / off",
        "ours spec / llama-server best",
    ]);
    let mut accept = Table::new(&[
        "task",
        "ours: drafted",
        "accepted",
        "mean accepted per check",
        "decodes, ms each",
        "llama-server: drafted",
        "accepted",
        "decodes, ms each",
    ]);
    for (t, task) in tasks.iter().enumerate() {
        let rates: Vec<Vec<f64>> = figures[t].iter().map(|runs| runs.iter().map(Decode::rate).collect()).collect();
        let per_run = |a: usize, b: usize| -> Vec<f64> { rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect() };
        let (vs_off, vs_server) = (per_run(0, 1), per_run(0, 2));
        table.row(vec![
            task.name.to_owned(),
            spread(&rates[0], num),
            spread(&rates[1], num),
            spread(&rates[2], num),
            spread(&rates[3], num),
            ratio_spread(&vs_off),
            ratio_spread(&vs_server),
        ]);
        let sum = |side: usize| {
            figures[t][side].iter().fold(Decode::default(), |mut acc, d| {
                acc.add(*d);
                acc
            })
        };
        let (o, s) = (sum(0), sum(2));
        let runs = setup.runs as f64;
        let share = |a: f64, d: f64| if d > 0.0 { format!("{:.0} %", 100.0 * a / d) } else { "–".into() };
        let steps = |d: &Decode| format!("{:.0}, {:.1}", d.steps() / runs, d.step_ms());
        accept.row(vec![
            task.name.to_owned(),
            format!("{:.0}", o.drafted / runs),
            share(o.accepted, o.drafted),
            if o.checks > 0.0 { format!("{:.1}", o.accepted / o.checks) } else { "–".into() },
            steps(&o),
            format!("{:.0}", s.drafted / runs),
            share(s.accepted, s.drafted),
            steps(&s),
        ]);
        let measured = format!("{} vs off, {} vs llama-server", ratio_spread(&vs_off), ratio_spread(&vs_server));
        // Why a goal was missed, from this run's own figures.
        let drafts = |d: &Decode| {
            if d.drafted == 0.0 {
                "drafted nothing".to_owned()
            } else {
                format!(
                    "drafted {:.0} tokens per run, {:.0} % accepted",
                    d.drafted / runs,
                    100.0 * d.accepted / d.drafted
                )
            }
        };
        let ours_drafts = format!(
            "ours {}{} of {:.0} decoded tokens per run",
            drafts(&o),
            if o.checks > 0.0 { format!(" ({:.1} per check)", o.accepted / o.checks) } else { String::new() },
            o.tokens / runs,
        );
        let what = format!("{model}: {} decode with speculation", task.name);
        let target = if task.repetitive {
            let (a, b) = (median(&vs_off), median(&vs_server));
            let mut why = vec![ours_drafts];
            if a < 1.5 {
                why.push(
                    "only accepted drafts save steps, and here a draft's first token costs about a step and \
                     each further one about half (BREAK-EVEN.md)"
                        .to_owned(),
                );
            }
            if b < 1.3 {
                why.push(format!(
                    "llama-server's best setting {}; a side's speed is its decodes and their cost: ours took {:.0} \
                     decodes per run at {:.1} ms each, llama-server {:.0} at {:.1} ms",
                    drafts(&s),
                    o.steps() / runs,
                    o.step_ms(),
                    s.steps() / runs,
                    s.step_ms()
                ));
            }
            Target::new(what, "≥ 1.5× ours without, ≥ 1.3× llama-server's best n-gram", measured, a >= 1.5 && b >= 1.3)
                .why_if_missed(why.join("; "))
        } else {
            let why = if o.drafted == 0.0 {
                format!(
                    "no drafts were checked, so both sides decoded the same batches; the ratio is the runs' drift \
                     (ours without: {})",
                    spread(&rates[1], num)
                )
            } else {
                ours_drafts
            };
            Target::new(what, "≥ 0.97× ours without", measured, median(&vs_off) >= 0.97).why_if_missed(why)
        };
        targets.push(target);
    }
    md.push_str(&format!(
        "Decode tok/s after the first token, median (range) of {} runs, each task's five sides back to back \
         (ours with and without, llama-server with its two best n-gram settings and without; order alternating \
         per run); ratios per run, then the median. Greedy, 2 threads, context 2048, batch \
         512, flash attention {fa} on both sides. Ours: the engine in this process, `--speculation ngram \
         --draft-max 16` against `off`. llama-server: llama.cpp's own server from the llama-cpp-python 0.3.36 \
         sdist's tree (`scripts/llama-tool.sh`, built as our llama.cpp is but not the same build), `-t 2 -tb 2 \
         -c 2048 -np 1 -b 512 -ub 512 --cache-ram 0`, timed by its own `predicted_ms`; its best n-gram setting \
         is, per run, the faster of the two best in tuning (`{best}`).\n\n{}\n",
        setup.runs,
        table.markdown(),
        fa = if setup.flash { "on" } else { "off" },
    ));
    md.push_str(&format!(
        "Drafted tokens per run, the share accepted, and the decode steps per run with their mean time (each step \
         emits a token and the drafts it accepted; fewer steps, or cheaper ones, make a side faster):\n\n{}\n",
        accept.markdown()
    ));
    let mut tune = Table::new(&["llama-server setting", "decode tok/s, repetitive tasks"]);
    for (label, args, d) in tuning {
        tune.row(vec![format!("{label} (`{}`)", args.join(" ")), num(d.rate())]);
    }
    md.push_str(&format!(
        "llama-server's settings, tuned once on the three repetitive tasks:\n\n{}\n",
        tune.markdown()
    ));
    let ratios: Vec<f64> = four.0.iter().zip(&four.1).map(|(a, b)| a / b).collect();
    md.push_str(&format!(
        "Four sessions at once on the paragraph task, aggregate tok/s (prefill included): with speculation {}, \
         without {}; ratio {}.\n\n",
        spread(&four.0, num),
        spread(&four.1, num),
        ratio_spread(&ratios)
    ));
    targets.push(Target::new(
        format!("{model}: 4 sessions, repetitive, aggregate tok/s with speculation"),
        "measured (no goal)",
        ratio_spread(&ratios),
        true,
    ));
    Ok(Section { markdown: md, targets })
}

/// Batch sizes timed for the break-even table.
const BATCHES: [usize; 6] = [1, 2, 3, 5, 9, 17];

/// Where drafting breaks even: the backend's decode time for a batch of
/// one sequence's tokens (the last token and k drafts, every one with
/// logits, as a speculative step decodes them), on 1 and 2 threads, and
/// the acceptance rate at which a draft of k pays for itself.
pub fn break_even(model: &str, gguf: &Path, runs: usize) -> Result<String> {
    use wasi_nn_llm_host::backend::{self, BackendKind, Batch, ContextSetup, FlashAttention, LoadConfig};
    let mut table =
        Table::new(&["threads", "1 token, ms", "2", "3", "5", "9", "17", "break-even rate k=1 / 2 / 4 / 8 / 16"]);
    for threads in [1, 2] {
        let load = LoadConfig { threads, ctx_size: 2048, gpu_layers: Some(0), flash_attn: FlashAttention::Auto };
        let backend_model = backend::load(BackendKind::LlamaCpp, model, gguf, &load)?;
        let setup = ContextSetup { ctx_size: 2048, sequences: 1, threads, batch: 512 };
        let mut ctx = backend_model.new_context(&setup).map_err(anyhow::Error::msg)?;
        let mut batch = Batch::with_capacity(512);
        // A 200-token history, as a chat's reply has.
        for i in 0..200 {
            batch.add(100 + i as u32, i, 0, false);
        }
        ctx.decode(&batch).map_err(anyhow::Error::msg)?;
        let mut ms = Vec::new();
        for n in BATCHES {
            let mut times = Vec::new();
            for _ in 0..runs.max(1) * 4 {
                batch.clear();
                for i in 0..n {
                    batch.add(500 + i as u32, 200 + i, 0, true);
                }
                let started = Instant::now();
                ctx.decode(&batch).map_err(anyhow::Error::msg)?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
                ctx.remove(0, 200, None).map_err(anyhow::Error::msg)?;
            }
            ms.push(median(&times));
        }
        // The rate r at which 1 + r + … + r^k tokens per step cost what k + 1
        // tokens' decode does, relative to one token's: solved by bisection.
        let rate_for = |k: usize, cost: f64| {
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            for _ in 0..40 {
                let mid = (lo + hi) / 2.0;
                let tokens: f64 = (0..=k as i32).map(|i| mid.powi(i)).sum();
                if tokens < cost { lo = mid } else { hi = mid }
            }
            if hi >= 1.0 - 1e-6 { "never".to_owned() } else { format!("{hi:.2}") }
        };
        let at = |n: usize| ms[BATCHES.iter().position(|&b| b == n).expect("a timed size")];
        let rates: Vec<String> = [1, 2, 4, 8, 16].iter().map(|&k| rate_for(k, at(k + 1) / at(1))).collect();
        let mut row = vec![threads.to_string()];
        row.extend(ms.iter().map(|&m| format!("{m:.1}")));
        row.push(rates.join(" / "));
        table.row(row);
    }
    Ok(format!(
        "{model}: decode time of one sequence's batch of n tokens, all with logits (median of {} decodes at depth \
         200), and the acceptance rate (each drafted token accepted with that probability given the ones before) \
         at which drafting k tokens decodes as fast as not drafting; above it, drafting gains.\n\n{}\n",
        runs.max(1) * 4,
        table.markdown()
    ))
}
