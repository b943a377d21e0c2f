//! Speculative decoding changes how fast tokens come, never which: on 50
//! prompts, half of them asking the model to repeat what they hold and half
//! free, greedy output with speculation equals output without it, chunk by
//! chunk, finish and usage included, and seeded sampled generations are the
//! same text both ways but where a draw fell on a boundary.
//!
//! llama.cpp's arithmetic depends on the batch's shape (a drafted token is
//! decoded in a batch of several, the same token without speculation alone),
//! so a logit may move in its last bits. Where the two outputs differ, the
//! first differing position must be a near-tie in the logits without
//! speculation: its top two within [`NEAR_TIE`], the speculative token
//! being the runner-up. No other difference passes.

#[path = "speculation/corpus.rs"]
mod corpus;

use wasi_nn_llm_host::catalog::ModelSpec;
use wasi_nn_llm_host::engine::{
    Engine, EngineConfig, FinishReason, GenerateParams, Quota, SessionOptions, Speculation, SpeculationMode,
    TokenLogprob, Usage,
};
use wasi_nn_llm_host::registry::Models;
use wasi_nn_llm_host::runner::{Runtime, Stdio};
use wasi_nn_llm_tests::{CTX_SIZE, MODEL, Streamed, THREADS, chatml, guest, guest_p1, model_path, serial};

/// Largest gap between the top two logits (natural-log units) that counts
/// as a near-tie. Batch shape moves SmolLM2's logprobs here (AMD EPYC, 2
/// threads) by up to 0.09 when one other session decodes beside it (no
/// speculation at all) and up to 0.17 when drafts share the batch; the
/// first differences seen were gaps of 0.03 to 0.19, each the runner-up.
const NEAR_TIE: f32 = 0.25;
/// Tokens generated per prompt.
const MAX_TOKENS: u32 = 64;

/// SmolLM2's engine settings here: one lane of two sessions, `mode`.
fn config(mode: SpeculationMode) -> EngineConfig {
    EngineConfig {
        threads: THREADS,
        ctx_size: CTX_SIZE,
        max_sessions: 2,
        gpu_layers: Some(0),
        lanes: Some(1),
        speculation: Speculation { mode, ..Speculation::default() },
        ..EngineConfig::default()
    }
}

fn engine(mode: SpeculationMode) -> Engine {
    Engine::load(MODEL, &model_path(MODEL), &config(mode)).expect("loading SmolLM2")
}

/// One generation: its prompt's tokens, its chunks (text, tokens), the
/// logprobs of its tokens, why it ended, its usage.
#[derive(Debug)]
struct Output {
    prompt: Vec<u32>,
    chunks: Vec<(String, Vec<u32>)>,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
    usage: Usage,
}

impl Output {
    fn tokens(&self) -> Vec<u32> {
        self.chunks.iter().flat_map(|(_, t)| t.clone()).collect()
    }

    /// The same text in the same chunks, ended the same way: everything but
    /// the logprobs' last bits.
    fn same(&self, other: &Output) -> bool {
        (&self.prompt, &self.chunks, &self.finish, self.usage)
            == (&other.prompt, &other.chunks, &other.finish, other.usage)
            && self.logprobs.len() == other.logprobs.len()
    }
}

fn generate(engine: &Engine, prompt: &str, params: &GenerateParams) -> Output {
    let session = engine.open_session(&SessionOptions::default(), &Quota::unlimited()).expect("a session");
    session.append(prompt).expect("the prompt");
    let prompt = session.tokens().expect("the prompt's tokens");
    let mut stream = session.generate(params).expect("generate");
    let (mut chunks, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next_chunk().expect("a chunk") {
        chunks.push((chunk.text, chunk.tokens));
        logprobs.extend(chunk.logprobs);
    }
    let finish = stream.finish().expect("a finish").clone();
    Output { prompt, chunks, logprobs, finish: finish.reason, usage: finish.usage }
}

/// Where `with` first differs from `without` (which must otherwise be the
/// same), and the plain run's ranked alternatives there.
fn first_difference<'o>(user: &str, without: &'o Output, with: &Output) -> (usize, u32, u32, &'o [(u32, f32)]) {
    let (a, b) = (without.tokens(), with.tokens());
    let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or_else(|| {
        panic!("same tokens, different chunks, finish or usage for {user:?}:\n{without:?}\n{with:?}")
    });
    (at, a[at], b[at], &without.logprobs[at].top)
}

/// Largest difference between the two runs' logprobs of the same tokens.
fn logprob_drift(without: &Output, with: &Output) -> f32 {
    without
        .logprobs
        .iter()
        .zip(&with.logprobs)
        .take_while(|(x, y)| x.token == y.token)
        .fold(0.0, |m, (x, y)| m.max((x.logprob - y.logprob).abs()))
}

fn drafted() -> (u64, u64) {
    let m = wasi_nn_llm_host::metrics::get();
    (m.draft_tokens.get(), m.accepted_draft_tokens.get())
}

#[test]
fn greedy_output_is_the_same_with_speculation_on_50_prompts() {
    let _serial = serial();
    let (plain, spec) = (engine(SpeculationMode::Off), engine(SpeculationMode::Ngram));
    let prompts = corpus::prompts();
    assert!(prompts.len() >= 50);
    let params = GenerateParams { logprobs: Some(2), ..GenerateParams::greedy(MAX_TOKENS) };
    let (mut near_ties, mut drift) = (Vec::new(), 0f32);
    let (mut accepted_repetitive, mut accepted_free) = (0, 0);
    for (repetitive, user) in &prompts {
        let prompt = plain.apply_chat_template(&[("user".into(), user.clone())], true).expect("template");
        let before = drafted();
        let with = generate(&spec, &prompt, &params);
        let accepted = drafted().1 - before.1;
        *(if *repetitive { &mut accepted_repetitive } else { &mut accepted_free }) += accepted;
        let without = generate(&plain, &prompt, &params);
        drift = drift.max(logprob_drift(&without, &with));
        if with.same(&without) {
            continue;
        }
        // The first token that differs must be a near-tie without speculation.
        let (at, plain_token, spec_token, top) = first_difference(user, &without, &with);
        let gap = top[0].1 - top[1].1;
        assert!(
            top[0].0 == plain_token && top[1].0 == spec_token && gap <= NEAR_TIE,
            "{user:?}: token {at} differs ({plain_token} without, {spec_token} with speculation) \
             but is no near-tie: top two without {top:?}"
        );
        near_ties.push((at, gap));
    }
    eprintln!(
        "{} prompts; drafts accepted: {accepted_repetitive} repetitive, {accepted_free} free; \
         largest logprob drift {drift}; near-ties (position, gap): {near_ties:?}",
        prompts.len()
    );
    assert!(accepted_repetitive > 4 * accepted_free.max(25), "repetitive prompts take the drafts");
}

#[test]
fn a_seeded_sampled_generation_is_the_same_with_speculation() {
    let _serial = serial();
    let (plain, spec) = (engine(SpeculationMode::Off), engine(SpeculationMode::Ngram));
    let params = GenerateParams {
        max_tokens: Some(MAX_TOKENS),
        temperature: Some(0.7),
        seed: Some(42),
        logprobs: Some(20),
        ..GenerateParams::default()
    };
    let before = drafted();
    let mut differences = Vec::new();
    for (_, user) in corpus::prompts().iter().filter(|(repetitive, _)| *repetitive).take(8) {
        let prompt = plain.apply_chat_template(&[("user".into(), user.clone())], true).expect("template");
        let (with, without) = (generate(&spec, &prompt, &params), generate(&plain, &prompt, &params));
        if with.same(&without) {
            continue;
        }
        let (at, plain_token, spec_token, top) = first_difference(user, &without, &with);
        let rank = |t: u32| top.iter().position(|&(c, _)| c == t);
        differences.push((at, rank(plain_token), rank(spec_token)));
    }
    eprintln!("sampled: first differences (position, ranks without and with): {differences:?}");
    assert!(drafted().1 > before.1, "sampled generations take drafts too");
    // The seed's draws are the same both ways; a draw only picks another
    // token where it fell on the boundary between two neighbours in the
    // ranked candidates, which a logit moving in its last bits shifts.
    for (at, plain, spec) in &differences {
        let (Some(plain), Some(spec)) = (plain, spec) else {
            panic!("token {at}: a sampled token outside the plain run's top 20: {differences:?}");
        };
        assert_eq!(plain.abs_diff(*spec), 1, "token {at} is no neighbour's: {differences:?}");
    }
    assert!(differences.len() <= 4, "most seeded generations are the same text: {differences:?}");
}

/// What every front door is asked: SmolLM2 copies it, so drafts are taken.
const COPY: &str = "Copy the following text word for word:\n\nThe old lighthouse stood at the edge of the cliff. \
    Every night its keeper climbed the spiral stairs, lit the lamp, and watched the ships pass safely through \
    the narrow channel below.";

/// Characters of each front door's reply that must equal the reply without
/// speculation. Only the start is asserted: the drafts a step takes depend
/// on measured decode times, so batch shapes (and a near-tie's outcome, as
/// the tests above bound it) may differ from run to run.
const SAME_START: usize = 60;

/// A runtime whose one model, SmolLM2, decodes speculatively (the test
/// host's does not: tests that compare two runs token for token need the
/// same batches both times, and drafting follows measured decode times).
fn speculative_runtime() -> Runtime {
    let models = Models::load(&[ModelSpec::new(MODEL, model_path(MODEL))], &config(SpeculationMode::Ngram))
        .expect("loading SmolLM2");
    Runtime::new(models).expect("creating the runtime")
}

/// Run `wasm` with `args` on `runtime`; its stdout's JSON lines.
fn run(runtime: &Runtime, wasm: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let guest = runtime.load(wasm).expect("compiling the guest");
    let argv: Vec<String> = std::iter::once("guest".to_owned()).chain(args.iter().map(|a| a.to_string())).collect();
    let out = runtime.run(&guest, &argv, Stdio::Captured { stdin: Vec::new() }, &[]).expect("the guest ran");
    assert_eq!(out.exit_code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The extension, base wasi-nn's text mode and WasmEdge's ABI all reach the
/// one engine's scheduler, so with speculation on all three decode
/// speculatively (the OpenAI
/// server's turn is in the serve suite): each takes drafts and answers as
/// the engine without speculation does.
#[test]
fn every_front_door_decodes_speculatively() {
    let _serial = serial();
    let prompt = chatml(COPY);
    let plain = engine(SpeculationMode::Off);
    let reference = generate(&plain, &prompt, &GenerateParams::greedy(64));
    let reference: String = reference.chunks.iter().map(|(t, _)| t.as_str()).collect();
    assert!(reference.len() > SAME_START, "{reference:?}");
    let runtime = speculative_runtime();
    let (probe, wasmedge) = (guest("probe"), guest_p1("wasmedge-probe"));
    let text = |line: &serde_json::Value| line["text"].as_str().expect("text").to_owned();
    for door in ["the extension", "base wasi-nn's text mode", "WasmEdge's ABI"] {
        let before = drafted();
        let text = match door {
            "the extension" => Streamed::parse(&run(&runtime, &probe, &["generate", MODEL, "64", &prompt])).text(),
            "base wasi-nn's text mode" => text(&run(&runtime, &probe, &["compute", MODEL, "64", &prompt])[0]),
            _ => text(&run(&runtime, &wasmedge, &["chat", MODEL, "chatml", "64", COPY])[0]),
        };
        let (checked, accepted) = (drafted().0 - before.0, drafted().1 - before.1);
        eprintln!("{door}: {checked} drafted tokens checked, {accepted} accepted");
        assert!(accepted > 0, "{door} took no drafts: {text:?}");
        assert!(
            text.get(..SAME_START) == reference.get(..SAME_START),
            "{door} answers otherwise than the engine without speculation:\n{text:?}\n{reference:?}"
        );
    }
}
