//! One turn four ways (the out-of-process baseline, the extension, base wasi-nn
//! text and tensor), and the boundary's cost per streamed chunk.

use anyhow::Result;
use wasi_nn_llm_host::engine::Engine;

use crate::Settings;
use crate::baseline::{Config, Native};
use crate::guest::{Guest, f64_of, f64s_of};
use crate::report::{Table, Target, median, num, ratio};

/// The prompt: a passage and a question, a few hundred tokens.
pub const PASSAGE: &str = "The Roman Republic began in 509 BC, when the last king of Rome was expelled, and it lasted until 27 BC, when Augustus became the first emperor. During those centuries Rome grew from a city-state on the Tiber into the ruler of the whole Mediterranean. Power was shared between two consuls elected each year, a Senate of former magistrates, and popular assemblies. The Republic fought three wars against Carthage, the Punic Wars, and after the destruction of Carthage in 146 BC no rival remained in the western Mediterranean. Yet success brought strain: the conquests filled Italy with slaves and wealth, small farmers lost their land, and ambitious generals commanded armies more loyal to them than to the state. The reforms of the Gracchi brothers ended in violence, Marius and Sulla fought civil wars, and finally Julius Caesar crossed the Rubicon in 49 BC. His murder in 44 BC did not save the Republic; his heir Octavian defeated Mark Antony and Cleopatra at Actium in 31 BC and ruled as Augustus. The Empire that followed brought two centuries of relative peace, the Pax Romana, with roads, aqueducts, and a common law from Britain to Egypt. In the third century the Empire nearly collapsed under invasions, plagues, and rapid changes of emperors, but Diocletian and Constantine restored it, and Constantine founded a new capital, Constantinople, in 330 AD.";

pub const QUESTION: &str = "Summarise this history in detail, century by century.";

pub struct Single {
    pub markdown: String,
    pub targets: Vec<Target>,
}

struct Figures {
    ttft_ms: Vec<f64>,
    prefill_tps: Vec<f64>,
    decode_tps: Vec<f64>,
}

impl Figures {
    fn new() -> Self {
        Self { ttft_ms: Vec::new(), prefill_tps: Vec::new(), decode_tps: Vec::new() }
    }

    fn push(&mut self, ttft_ms: f64, prompt_tokens: f64, decode_ms: f64, decoded: f64) {
        self.ttft_ms.push(ttft_ms);
        self.prefill_tps.push(prompt_tokens / ttft_ms * 1e3);
        self.decode_tps.push(decoded / decode_ms * 1e3);
    }
}

pub fn run(guest: &Guest, engine: &Engine, native: &Native, gguf: &str, settings: &Settings) -> Result<Single> {
    let model = engine.name();
    let user = format!("{PASSAGE}\n\n{QUESTION}");
    let prompt = engine.apply_chat_template(&[("user".into(), user)], true)?;
    let prompt_tokens = engine.count_tokens(&prompt)? as f64;
    let n = settings.tokens;
    let decoded = (n - 1) as f64;
    let n_arg = n.to_string();
    let (mut native_f, mut ext, mut text, mut tensor) =
        (Figures::new(), Figures::new(), Figures::new(), Figures::new());
    let mut decode_ratio = Vec::new();
    for run in 0..settings.runs {
        eprintln!("  single turn {model}: run {}/{}", run + 1, settings.runs);
        // The better of flash attention on and off at this depth.
        let (threads, engine_ctx) = (settings.threads as u32, engine.ctx_size());
        let config = |flash| Config {
            threads,
            flash,
            depth: prompt_tokens as u32,
            tokens: n,
            sequences: 1,
            ctx: Some(engine_ctx),
        };
        let (a, b) = (native.run(config(true), 1)?, native.run(config(false), 1)?);
        let best = if a.decode_tps >= b.decode_tps { a } else { b };
        native_f.push(prompt_tokens / best.prefill_tps * 1e3, prompt_tokens, decoded / best.decode_tps * 1e3, decoded);

        let e = &guest.run(&["single-ext", model, &n_arg, &prompt])?[0];
        ext.push(f64_of(e, "ttft_ms")?, prompt_tokens, f64_of(e, "decode_ms")?, f64_of(e, "generated")? - 1.0);

        let x = &guest.run(&["single-text", model, &n_arg, &prompt])?[0];
        let (first, full) = (f64_of(x, "first_ms")?, f64_of(x, "full_ms")?);
        text.push(first, prompt_tokens, full - first, decoded);

        let y = &guest.run(&["single-tensor", model, gguf, &n_arg, &prompt])?[0];
        tensor.push(f64_of(y, "ttft_ms")?, prompt_tokens, f64_of(y, "decode_ms")?, decoded);

        decode_ratio.push(ext.decode_tps[run] / native_f.decode_tps[run]);
    }

    let mut table =
        Table::new(&["way", "time to first token (ms)", "prefill tok/s", "decode tok/s", "decode vs native"]);
    for (name, f) in [
        ("baseline (`llama-native`, its own process, the better of flash on/off)", &native_f),
        ("extension (`session.generate` stream)", &ext),
        ("base wasi-nn, text (`prompt` → `text`)", &text),
        ("base wasi-nn, tensor (`tokens` → `logits`)", &tensor),
    ] {
        let per_run: Vec<f64> = f.decode_tps.iter().zip(&native_f.decode_tps).map(|(a, b)| a / b).collect();
        table.row(vec![
            name.into(),
            num(median(&f.ttft_ms)),
            num(median(&f.prefill_tps)),
            num(median(&f.decode_tps)),
            ratio(median(&per_run)),
        ]);
    }

    // The boundary: host time per next() on a ready chunk.
    eprintln!("  boundary {model}");
    let b = &guest.run(&["boundary", model, "40"])?[0];
    let next_us = median(&f64s_of(b, "next_us")?);
    let decode_step_ms = 1e3 / median(&ext.decode_tps);
    let share = next_us / 1e3 / decode_step_ms;

    let markdown = format!(
        "Prompt: {prompt_tokens} tokens (a passage and a question, in the model's template); {n} tokens generated \
         greedily, end-of-generation biased away so every way generates exactly {n}. Time to first token runs from \
         handing over the prompt text (tokenizing included) to the first token; prefill tok/s is prompt tokens over \
         that time; decode tok/s is the {decoded} tokens after the first over the time they took. Base wasi-nn text \
         mode cannot stream, so its first token is timed as a `max-tokens: 1` compute and its decode as the \
         difference to the full compute. The baseline row is `llama-native` at the same depth (random tokens, no \
         sampling, `benches/native`), its prefill timed without a first decode.\n\n{}\n\
         Per run decode ratios (extension / baseline): {}.\n\n\
         **Boundary cost per streamed chunk**: a `next()` on a chunk that is already generated takes {} µs \
         (median of {} calls, timed in the guest), against a decode step of {} ms: **{:.3} %** of a step.\n",
        table.markdown(),
        list(&decode_ratio),
        num(next_us),
        f64s_of(b, "next_us")?.len(),
        num(decode_step_ms),
        share * 100.0,
    );
    let targets = vec![Target::new(
        format!("{model}: host time per streamed chunk"),
        "< 1 % of a decode step",
        format!("{:.3} %", share * 100.0),
        share < 0.01,
    )];
    Ok(Single { markdown, targets })
}

/// Per-run ratios, for the record.
pub fn list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}
